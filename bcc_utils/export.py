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
import re
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from bcc_utils.onnx_predict import (INPUT_NAME, OUTPUT_NAME, SIDECAR_FORMAT, OnnxClassifier, check_parity,
                                    require, sidecar_path)

EXPORTERS = ("torchscript", "dynamo")
#: Largest |logit difference| from the float64 model that ``export --check`` accepts (float32 rounding
#: alone reaches ~1e-4 when logits are ~20).
PARITY_TOL = 1e-4
_CLAHE_HOW = {
    "lab": "equalise the L channel of 8-bit CIE LAB (OpenCV COLOR_RGB2LAB), convert back with COLOR_LAB2RGB",
    "hsv-v": "equalise the V channel of 8-bit HSV (OpenCV COLOR_RGB2HSV), convert back with COLOR_HSV2RGB",
    "rgb": "equalise R, G and B separately",
    "gray": "convert to grey (OpenCV COLOR_RGB2GRAY), equalise, repeat it in three channels",
}


def write_sidecar(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, lists of numbers and names on one line (atomic)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    one_line = re.compile(r"\[\s*\n\s*([^\[\]{}]*?)\s*\n\s*\]")  # a list without nested lists/objects
    text = one_line.sub(lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _preprocessing(cfg, norm: dict) -> list[dict]:
    """Ordered preprocessing steps with their parameters (what :func:`bcc_utils.preprocess.preprocess_image` does)."""
    from bcc_utils.inference import clahe_settings

    clahe = clahe_settings(cfg)
    s = int(cfg.img_size)
    return [
        {"op": "decode", "output": "RGB uint8 H×W×3",
         "how": "decode every pixel; grey -> three equal channels; alpha composited over white; 16-bit -> 8-bit "
                "((v + 128) // 257). OpenCV decodes to BGR: convert to RGB"},
        {"op": "clahe", "settings": None if clahe is None else
         {"clip_limit": float(clahe.clip_limit), "tile_grid_size": int(clahe.tile_grid_size), "space": clahe.space},
         "how": "skipped: this run did not use CLAHE" if clahe is None else
         f"at the decoded resolution, before resizing: cv2.createCLAHE(clipLimit={float(clahe.clip_limit):g}, "
         f"tileGridSize=({int(clahe.tile_grid_size)}, {int(clahe.tile_grid_size)})); {_CLAHE_HOW[clahe.space]}"},
        {"op": "resize", "size": [s, s],
         "how": f"stretch to {s}×{s} (no crop, no padding; aspect ratio not kept) with cv2.resize: INTER_AREA when "
                f"height and width are both >= {s}, otherwise INTER_CUBIC; an image already {s}×{s} is unchanged. "
                "Round to uint8 as OpenCV does"},
        {"op": "scale", "how": "convert to float32 and divide by 255 -> [0, 1]"},
        {"op": "normalize", "mean": [float(m) for m in norm["mean"]], "std": [float(v) for v in norm["std"]],
         "how": "per channel, RGB order: (x - mean) / std"},
        {"op": "to_nchw", "how": "H×W×3 -> 3×H×W, stack images along a new first axis -> N×3×S×S float32"},
    ]


def _sidecar(checkpoint: Path, ckpt: dict, onnx_file: Path, exporter: str, opset: int) -> dict:
    import onnx
    import torch

    from bcc_utils.calibration import CALIBRATION_FILE, load_temperature
    from bcc_utils.config import TrainConfig

    cfg = TrainConfig.from_dict(ckpt["config"])
    classes = list(ckpt["classes"])
    s = int(cfg.img_size)
    cal_file = checkpoint.parent / CALIBRATION_FILE
    cal = json.loads(cal_file.read_text(encoding="utf-8")) if cal_file.is_file() else None
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    if exporter == "dynamo":
        versions["onnxscript"] = require("onnxscript").__version__
    return {
        "format": SIDECAR_FORMAT,
        "model": cfg.model,
        "classes": classes,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, s, s], "dtype": "float32", "layout": "NCHW",
                  "color_order": "RGB", "what": "images after every step of 'preprocessing'"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classes)], "dtype": "float32",
                   "what": "logits in the order of 'classes' (no softmax in the graph)"},
        "preprocessing": _preprocessing(cfg, ckpt["norm"]),
        "temperature": load_temperature(checkpoint),
        "postprocessing": {
            "probabilities": "softmax(logits / temperature) over the class axis",
            "temperature_source": "none: no calibration.json in the run folder, so 1.0" if cal is None else
            f"{CALIBRATION_FILE} of the run (fitted on {cal.get('fitted_on', '?')} split, "
            f"tta {cal.get('tta', '?')}, checkpoint {cal.get('checkpoint', '?')})",
        },
        "tta": {
            "run_setting": cfg.tta, "in_graph": False,
            "how": "the ONNX graph sees one view. The run's evaluation used only the image itself" if cfg.tta == "none"
            else "the ONNX graph sees one view. To reproduce the run's 'dihedral' evaluation, run 4 views of each "
                 "image (identity; flip width, axis 3; flip height, axis 2; swap height and width, axes 2 and 3) "
                 "and average softmax(logits / temperature) over them",
        },
        "provenance": {
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})", "opset": opset, **versions,
            "python": platform.python_version(), "onnx_file": onnx_file.name,
            "checkpoint": {"file": checkpoint.name, "sha256": _sha256(checkpoint), "epoch": int(ckpt["epoch"]),
                           "manifest_hash": ckpt.get("manifest_hash"), "data_dir_name": ckpt.get("data_dir_name")},
            "config": ckpt["config"],
        },
    }


def export_onnx(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, opset: int | None = None,
                exporter: str = "torchscript") -> tuple[Path, Path]:
    """Export a checkpoint to ONNX and write its sidecar; returns ``(onnx_path, sidecar_path)``.

    Parameters
    ----------
    checkpoint
        ``best.pt``/``last.pt`` of a run; a ``calibration.json`` beside it supplies the temperature.
    onnx_path
        Output file (one file, weights included); the sidecar is ``<onnx_path>.json``.
    opset
        ONNX opset (default: the exporter's); ``"dynamo"`` needs 18 or newer.
    exporter
        ``"torchscript"`` (fast, any opset; deprecated by torch) or ``"dynamo"`` (``torch.export``-based,
        opset >= 18, needs ``onnxscript``); see the module docstring.
    """
    import torch

    from bcc_utils.inference import load_model

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and opset is not None and opset < 18:
        raise ValueError(f"the dynamo exporter writes opset 18 or newer (asked: {opset}); "
                         "use the torchscript exporter for older opsets")
    onnx = require("onnx")
    if exporter == "dynamo":
        require("onnxscript")
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    model, ckpt = load_model(checkpoint, "cpu")
    model = model.eval().to(memory_format=torch.contiguous_format)
    s = int(ckpt["config"]["img_size"])
    example = (torch.zeros(2, 3, s, s),)  # batch 2: torch.export would fix a batch of 1 as a constant
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "dynamo":
        program = torch.onnx.export(model, example, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        program.save(str(onnx_path), external_data=False)
    else:
        # torch < 2.5 has no ``dynamo`` argument (TorchScript was then the only exporter)
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "use the dynamo exporter": see the docstring
            torch.onnx.export(model, example, str(onnx_path), dynamic_axes={INPUT_NAME: {0: "batch"},
                              OUTPUT_NAME: {0: "batch"}}, **legacy, **names)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    written = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise RuntimeError(f"asked for opset {opset}, but the exporter wrote opset {written}")
    side = write_sidecar(_sidecar(checkpoint, ckpt, onnx_path, exporter, written), sidecar_path(onnx_path))
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
        if not r["all_same_class"] or r["onnx_vs_float64"] > PARITY_TOL:
            print(f"warning: the ONNX model differs from the checkpoint more than float32 rounding ({PARITY_TOL:g})",
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


__all__ = ["export_onnx", "OnnxClassifier", "check_parity", "sidecar_path", "EXPORTERS"]
