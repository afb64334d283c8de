"""``python -m bcc_utils export``: a trained checkpoint as an ONNX model plus a JSON sidecar.

:func:`export_onnx` writes two files: ``model.onnx`` (normalised float32 N×3×S×S images -> logits,
any batch size, weights inside the file) and ``model.onnx.json`` beside it (the ONNX file name with
``.json`` appended). The sidecar holds everything needed to use the model elsewhere: class names,
input size and layout, the preprocessing steps in order with their parameters, the temperature,
the run's test-time augmentation (not in the graph) and where the model came from.
:class:`~bcc_utils.onnx_predict.OnnxClassifier` reads both and classifies image files.

Exporter: both exporters of ``torch.onnx.export`` work offline and give the same logits up to
float32 rounding. The default is the TorchScript exporter (``"torchscript"``): it exports in about
a second, writes older opsets too, needs no ``onnxscript`` and exists in every torch this library supports.
Torch marks it deprecated (since 2.9) in favour of the ``torch.export``-based exporter
(``"dynamo"``, needs ``onnxscript``), which takes 15-20 s per model on a CPU and writes opset 18 or
newer only (converting down fails for these models); choose it with ``exporter="dynamo"``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import sys
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from bcc_utils.onnx_predict import (INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, SIDECAR_FORMAT, OnnxClassifier,
                                    check_parity, model_settings, require, settings_metadata, sidecar_path)

EXPORTERS = ("torchscript", "dynamo")
#: ``export --check`` (and the tests) accept |logit - the float64 model's logit| up to
#: ``PARITY_ULPS * FLOAT32_EPS * max(1, largest |logit|)`` (:func:`parity_tolerance`).
#: Relative, because float32 rounding is: a fixed 1e-4 failed for Lite0 with logits up to 24, where each
#: runtime was 7e-5 (~24 eps x 24) from float64 and the two 1.2e-4 apart. 250 eps leaves 10x for other
#: CPUs' kernels (vector width, summation order), and a real bug stays far above it: on the same images
#: a mean off by 1/255 moved the logits by 3e5 eps x 24, BGR or swapped H and W by 6e6 eps x 24.
#: The floor of 1: rounding grows with the activations inside the network, which do not shrink with
#: the logits (an untrained model's logits of 0.2 still carry 2e-7 of it).
PARITY_ULPS = 250
FLOAT32_EPS = 2.0 ** -23
_CLAHE_HOW = {
    "lab": "equalise the L channel of 8-bit CIE LAB (OpenCV COLOR_RGB2LAB), convert back with COLOR_LAB2RGB",
    "hsv-v": "equalise the V channel of 8-bit HSV (OpenCV COLOR_RGB2HSV), convert back with COLOR_HSV2RGB",
    "rgb": "equalise R, G and B separately",
    "gray": "convert to grey (OpenCV COLOR_RGB2GRAY), equalise, repeat it in three channels",
}


def parity_tolerance(max_abs_logit: float) -> float:
    """Largest |logit difference| from the float64 model that float32 rounding explains (see ``PARITY_ULPS``)."""
    return PARITY_ULPS * FLOAT32_EPS * max(1.0, float(max_abs_logit))


def _preprocessing(settings: dict) -> list[dict]:
    """Ordered preprocessing steps with their parameters (what :func:`bcc_utils.preprocess.preprocess_image` does)."""
    clahe, s = settings["clahe"], settings["img_size"]
    return [
        {"op": "decode", "output": "RGB uint8 H×W×3",
         "how": "decode every pixel; grey -> three equal channels; alpha composited over white; 16-bit -> 8-bit "
                "((v + 128) // 257). OpenCV decodes to BGR: convert to RGB"},
        {"op": "clahe", "settings": clahe,
         "how": "skipped: this run did not use CLAHE" if clahe is None else
         f"at the decoded resolution, before resizing: cv2.createCLAHE(clipLimit={clahe['clip_limit']:g}, "
         f"tileGridSize=({clahe['tile_grid_size']}, {clahe['tile_grid_size']})); {_CLAHE_HOW[clahe['space']]}"},
        {"op": "resize", "size": [s, s],
         "how": f"stretch to {s}×{s} (no crop, no padding; aspect ratio not kept) with cv2.resize: INTER_AREA when "
                f"height and width are both >= {s}, otherwise INTER_CUBIC; an image already {s}×{s} is unchanged. "
                "Round to uint8 as OpenCV does"},
        {"op": "scale", "how": "convert to float32 and divide by 255 -> [0, 1]"},
        {"op": "normalize", "mean": settings["mean"], "std": settings["std"],
         "how": "per channel, RGB order: (x - mean) / std"},
        {"op": "to_nchw", "how": "H×W×3 -> 3×H×W, stack images along a new first axis -> N×3×S×S float32"},
    ]


def _settings(checkpoint: Path, ckpt: dict) -> dict:
    """The prediction settings of a checkpoint (:func:`~bcc_utils.onnx_predict.model_settings`)."""
    from bcc_utils.config import TrainConfig
    from bcc_utils.run import load_temperature

    cfg = TrainConfig.from_dict(ckpt["config"])
    return model_settings(ckpt["classes"], load_temperature(checkpoint), cfg.img_size, cfg.clahe_settings(),
                          ckpt["norm"]["mean"], ckpt["norm"]["std"], cfg.tta)


def _sidecar(checkpoint: Path, ckpt: dict, settings: dict, onnx_path: Path, onnx_bytes: bytes, exporter: str,
             opset: int) -> dict:
    import onnx
    import torch

    from bcc_utils.run import CALIBRATION, sha256

    classes, s, tta = settings["classes"], settings["img_size"], settings["tta"]
    ckpt_sha = sha256(checkpoint)
    cal_file = checkpoint.parent / CALIBRATION
    cal = json.loads(cal_file.read_text(encoding="utf-8")) if cal_file.is_file() else None
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    if exporter == "dynamo":
        versions["onnxscript"] = require("onnxscript").__version__
    if cal is None:
        source = f"none: no {CALIBRATION} in the run folder, so 1.0"
    elif cal.get("checkpoint_sha256") != ckpt_sha:  # bcc_utils.run.load_temperature ignored it
        source = f"none: the run's {CALIBRATION} was fitted on other weights, so 1.0"
    else:
        source = (f"{CALIBRATION} of the run (fitted on {cal.get('fitted_on', '?')} split, "
                  f"tta {cal.get('tta', '?')}, checkpoint {cal.get('checkpoint', '?')})")
    return {
        "format": SIDECAR_FORMAT,
        "model": ckpt["config"]["model"],
        "onnx_file": {"name": onnx_path.name, "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                      "bytes": len(onnx_bytes),
                      "metadata": f"'{METADATA_PREFIX}*' entries of metadata_props repeat classes, temperature, "
                                  "preprocessing and tta: a sidecar that disagrees is refused"},
        "classes": classes,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, s, s], "dtype": "float32", "layout": "NCHW",
                  "color_order": "RGB", "what": "images after every step of 'preprocessing'"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classes)], "dtype": "float32",
                   "what": "logits in the order of 'classes' (no softmax in the graph)"},
        "preprocessing": _preprocessing(settings),
        "temperature": settings["temperature"],
        "postprocessing": {
            "probabilities": "softmax(logits / temperature) over the class axis",
            "temperature_source": source,
        },
        "tta": {
            "run_setting": tta, "in_graph": False,
            "how": "the ONNX graph sees one view. The run's evaluation used only the image itself" if tta == "none"
            else "the ONNX graph sees one view. To reproduce the run's 'dihedral' evaluation, run 4 views of each "
                 "image (identity; flip width, axis 3; flip height, axis 2; swap height and width, axes 2 and 3) "
                 "and average softmax(logits / temperature) over them",
        },
        "provenance": {
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})", "opset": opset, **versions,
            "python": platform.python_version(),
            "checkpoint": {"file": checkpoint.name, "sha256": ckpt_sha, "epoch": int(ckpt["epoch"]),
                           "manifest_hash": ckpt.get("manifest_hash"), "data_dir_name": ckpt.get("data_dir_name")},
            "config": ckpt["config"],
        },
    }


def _is_onnx_model(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (protobuf parses almost any bytes, so a graph is required too)."""
    import onnx

    if zipfile.is_zipfile(path):  # a torch checkpoint (or another archive), never an ONNX model
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises several types for foreign bytes; all mean "not ONNX"
        return False
    return len(model.graph.node) > 0 and len(model.opset_import) > 0


def check_target(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike) -> None:
    """Refuse an export target that would destroy something other than an earlier export (``ValueError``).

    The target must end in ``.onnx`` (``predict`` recognises exported models by it) and must not be the
    checkpoint, a folder, or an existing file that is not an ONNX model; the sidecar must not be a folder.
    """
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    side = sidecar_path(onnx_path)
    for target in (onnx_path, side):
        if checkpoint.exists() and (target.exists() and os.path.samefile(target, checkpoint)
                                    or target.resolve() == checkpoint.resolve()):
            raise ValueError(f"the export target {target} is the checkpoint itself; choose another file name")
    if onnx_path.is_dir():
        raise ValueError(f"the export target {onnx_path} is a folder; give a file name such as "
                         f"{onnx_path / 'model.onnx'}")
    if onnx_path.suffix.lower() != ".onnx":
        raise ValueError(f"the export target {onnx_path} must end in .onnx (predict recognises models by it)")
    if onnx_path.exists() and not _is_onnx_model(onnx_path):
        raise ValueError(f"{onnx_path} exists and is not an ONNX model; refusing to overwrite it")
    if side.is_dir():
        raise ValueError(f"the sidecar {side} of the export target is a folder")


def export_onnx(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, opset: int | None = None,
                exporter: str = "torchscript") -> tuple[Path, Path]:
    """Export a checkpoint to ONNX and write its sidecar; returns ``(onnx_path, sidecar_path)``.

    Both files are written under temporary names and renamed into place only when both are complete,
    so an interrupted export leaves the previous pair (or a pair that
    :class:`~bcc_utils.onnx_predict.OnnxClassifier` refuses by its checksum), never half a file.

    Parameters
    ----------
    checkpoint
        ``best.pt``/``last.pt`` of a run; a ``calibration.json`` beside it supplies the temperature.
    onnx_path
        Output ``.onnx`` file (one file, weights included); the sidecar is ``<onnx_path>.json``.
        An existing file is replaced only if it is an ONNX model (see :func:`check_target`).
    opset
        ONNX opset (default: the exporter's); ``"dynamo"`` needs 18 or newer.
    exporter
        ``"torchscript"`` (fast, any opset; deprecated by torch) or ``"dynamo"`` (``torch.export``-based,
        opset >= 18, needs ``onnxscript``); see the module docstring.
    """
    import torch

    from bcc_utils.atomic import atomic_path, json_text, remove_stale_temps
    from bcc_utils.run import load_model

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and opset is not None and opset < 18:
        raise ValueError(f"the dynamo exporter writes opset 18 or newer (asked: {opset}); "
                         "use the torchscript exporter for older opsets")
    onnx = require("onnx")
    if exporter == "dynamo":
        require("onnxscript")
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    check_target(checkpoint, onnx_path)
    remove_stale_temps(onnx_path.parent)  # what an export killed earlier left (only files of dead processes)
    model, ckpt = load_model(checkpoint, "cpu")
    settings = _settings(checkpoint, ckpt)
    model = model.eval().to(memory_format=torch.contiguous_format)
    s = settings["img_size"]
    example = (torch.zeros(2, 3, s, s),)  # batch 2: torch.export would fix a batch of 1 as a constant
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    side = sidecar_path(onnx_path)
    # The sidecar's temporary is renamed first, then the model's: in between the pair is refused by the
    # checksum, which is what matters (a reader never gets a new model with the old settings unnoticed).
    with atomic_path(onnx_path) as tmp_model, atomic_path(side) as tmp_side:
        if exporter == "dynamo":
            program = torch.onnx.export(model, example, dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
            program.save(str(tmp_model), external_data=False)
        else:
            # torch < 2.5 has no ``dynamo`` argument (TorchScript was then the only exporter)
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "use the dynamo exporter": see the docstring
                torch.onnx.export(model, example, str(tmp_model), dynamic_axes={INPUT_NAME: {0: "batch"},
                                  OUTPUT_NAME: {0: "batch"}}, **legacy, **names)
        graph = onnx.load(str(tmp_model), load_external_data=False)
        written = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        if opset is not None and written != opset:
            raise RuntimeError(f"asked for opset {opset}, but the exporter wrote opset {written}")
        meta = settings_metadata(settings)  # the copy a sidecar is checked against (see onnx_predict)
        keep = [p for p in graph.metadata_props if p.key not in meta]
        del graph.metadata_props[:]
        graph.metadata_props.extend(keep)
        for key, value in meta.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(graph, full_check=True)
        data = graph.SerializeToString()
        tmp_model.write_bytes(data)
        tmp_side.write_text(json_text(_sidecar(checkpoint, ckpt, settings, onnx_path, data, exporter, written)),
                            encoding="utf-8")
    return onnx_path, side


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint; with ``--check``, compare with PyTorch on real images."""
    from bcc_utils.cli import warnings_to_stderr

    with warnings_to_stderr():
        model, side = export_onnx(args.checkpoint, args.onnx, args.opset, args.exporter)
    meta = json.loads(side.read_text(encoding="utf-8"))
    print(f"ONNX model: {model} (opset {meta['provenance']['opset']}, {model.stat().st_size / 1e6:.1f} MB)")
    print(f"sidecar:    {side} (temperature {meta['temperature']:g}, run TTA {meta['tta']['run_setting']}, "
          f"not in the graph)")
    if args.check:
        with warnings_to_stderr():
            r = check_parity(args.checkpoint, model, [args.check])
        print(f"check on {r['n']} images (largest |logit| {r['max_abs_logit']:.2f}): max |logit difference| "
              f"onnxruntime vs PyTorch {r['max_abs_diff']:.1e}; vs the model in float64: onnxruntime "
              f"{r['onnx_vs_float64']:.1e}, PyTorch {r['pytorch_vs_float64']:.1e}; "
              f"same class for {r['same_class']}/{r['n']}")
        tol = parity_tolerance(r["max_abs_logit"])
        if not r["all_same_class"] or r["onnx_vs_float64"] > tol:
            print(f"warning: the ONNX model differs from the checkpoint more than float32 rounding ({tol:.1e})",
                  file=sys.stderr)
            return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the command-line parser."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX (plus a JSON sidecar for use elsewhere)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file (sidecar: FILE.json)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch exporter (default: torchscript; dynamo: slower, opset >= 18, needs onnxscript)")
    p.add_argument("--check", metavar="DATA_DIR_OR_FOLDER",
                   help="compare ONNX and PyTorch logits on up to 32 images from this folder")
    p.set_defaults(func=cmd_export)


__all__ = ["export_onnx", "check_target", "parity_tolerance", "OnnxClassifier", "check_parity", "sidecar_path",
           "EXPORTERS"]
