"""Run an exported ONNX model with onnxruntime: preprocessing from its sidecar, probabilities, parity.

:class:`OnnxClassifier` reads ``model.onnx`` and its sidecar ``model.onnx.json`` (written by
:func:`bcc_utils.export.export_onnx`) and classifies image files with the library's own
preprocessing functions, the sidecar's settings, the run's test-time augmentation and temperature:
the results match :func:`bcc_utils.inference.predict_images` on the checkpoint.

The pair is checked before use, because a wrong setting gives confident wrong answers, not an
error: the sidecar names the SHA-256 of the model it was written with (a model replaced alone, or
an export killed between the two files, is refused), and the settings that decide the answer
(classes, temperature, preprocessing, TTA) are also stored in the model's ``metadata_props``,
so an edited sidecar (two classes swapped) is refused too.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path

import numpy as np

#: Version 2 added the model's SHA-256 and the settings copied into the ONNX metadata.
SIDECAR_FORMAT = "bcc-onnx-2"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: ``metadata_props`` keys are this prefix plus a key of :func:`model_settings`.
METADATA_PREFIX = "bcc."
TTA_MODES = ("none", "dihedral")
_EXPORT_AGAIN = "export the model again (python -m bcc_utils export CHECKPOINT --onnx FILE)"


def require(module: str):
    """Import ``module`` (``onnx``, ``onnxruntime``, ``onnxscript``), or say what to install (``RuntimeError``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"{module} is not installed; ONNX export and inference need it: "
                           f"pip install 'bcc_utils[export]' (or pip install {module})") from exc


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The sidecar of ``model.onnx``: ``model.onnx.json``."""
    return Path(str(onnx_path) + ".json")


def check_temperature(t, where: str = "temperature") -> float:
    """``t`` as a float if it is a finite number > 0, else ``ValueError`` naming ``where``.

    0 divides the logits by zero (NaN probabilities) and a negative value reverses the ranking.
    """
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ValueError(f"{where} must be a finite number > 0, got {t!r}")
    return float(t)


def model_settings(classes, temperature, img_size, clahe, mean, std, tta) -> dict:
    """The settings that decide a prediction, in the form both the sidecar and the ONNX metadata hold."""
    return {"classes": [str(c) for c in classes], "temperature": float(temperature), "img_size": int(img_size),
            "clahe": None if clahe is None else {"clip_limit": float(clahe.clip_limit),
                                                 "tile_grid_size": int(clahe.tile_grid_size), "space": clahe.space},
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "tta": str(tta)}


def settings_metadata(settings: dict) -> dict[str, str]:
    """``metadata_props`` entries (string values, JSON) of :func:`model_settings` output."""
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in settings.items()}


def _get(side: Path, obj, *keys, what: str = "field"):
    """``obj[k1][k2]...``, or a one-line ``ValueError`` naming the sidecar and the missing field."""
    for i, k in enumerate(keys):
        try:
            obj = obj[k]
        except (KeyError, IndexError, TypeError):
            field = ".".join(map(str, keys[:i + 1]))
            raise ValueError(f"{side}: missing or malformed {what} '{field}'; {_EXPORT_AGAIN}") from None
    return obj


def _numbers(side: Path, values, what: str, positive: bool = False) -> list[float]:
    ok = isinstance(values, list) and len(values) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not ok or (positive and min(values) <= 0):
        raise ValueError(f"{side}: '{what}' must be three finite numbers{' > 0' if positive else ''}, got {values!r}")
    return [float(v) for v in values]


def read_sidecar(side: str | os.PathLike) -> tuple[dict, dict, str]:
    """Read and validate a sidecar.

    Returns
    -------
    (sidecar, settings, sha256)
        The whole file, its :func:`model_settings` and the SHA-256 of the model it was written with.

    Raises
    ------
    ValueError
        One line naming the file: not JSON, an older format, a missing field or an impossible value.
    """
    from bcc_utils.preprocess import ClaheSettings

    side = Path(side)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{side} is not valid JSON ({exc}); {_EXPORT_AGAIN}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == "bcc-onnx-1":
        raise ValueError(f"{side} is an older sidecar ({fmt}) without a checksum of its model; {_EXPORT_AGAIN}")
    if fmt != SIDECAR_FORMAT:
        raise ValueError(f"{side} is not a bcc ONNX sidecar (expected format {SIDECAR_FORMAT})")

    classes = _get(side, data, "classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise ValueError(f"{side}: 'classes' must be a list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{side}: 'classes' names a class twice: {classes}")
    temperature = check_temperature(_get(side, data, "temperature"), f"{side}: 'temperature'")
    pre = _get(side, data, "preprocessing")
    if not isinstance(pre, list):
        raise ValueError(f"{side}: 'preprocessing' must be a list of steps, got {pre!r}")
    steps = {str(_get(side, step, "op")): step for step in pre}
    size = _get(side, steps, "resize", "size", what="preprocessing step")
    if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1] and isinstance(size[0], int)
            and not isinstance(size[0], bool) and size[0] > 0):
        raise ValueError(f"{side}: resize 'size' must be [S, S] with S a positive integer, got {size!r}")
    clahe = _get(side, steps, "clahe", "settings", what="preprocessing step")
    if clahe is not None:
        try:
            clahe = ClaheSettings(**clahe)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{side}: clahe 'settings' are not valid ({exc})") from None
    step = "preprocessing step"
    mean = _numbers(side, _get(side, steps, "normalize", "mean", what=step), "normalize.mean")
    std = _numbers(side, _get(side, steps, "normalize", "std", what=step), "normalize.std", positive=True)
    tta = _get(side, data, "tta", "run_setting")
    if tta not in TTA_MODES:
        raise ValueError(f"{side}: 'tta.run_setting' must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    sha = _get(side, data, "onnx_file", "sha256")
    if not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError(f"{side}: 'onnx_file.sha256' must be a hex SHA-256, got {sha!r}")
    return data, model_settings(classes, temperature, size[0], clahe, mean, std, tta), sha


class OnnxClassifier:
    """An exported model with its sidecar, run by onnxruntime on the CPU.

    Parameters
    ----------
    onnx_path
        The ``.onnx`` file; ``<onnx_path>.json`` must sit beside it.
    threads
        onnxruntime intra-op threads (0 = its default: all cores).

    Attributes
    ----------
    sidecar : dict
        The sidecar; ``classes``, ``img_size``, ``clahe``, ``mean``, ``std``, ``temperature`` and
        ``tta`` are read from it (and checked against the model, see the module docstring).

    Raises
    ------
    FileNotFoundError, ValueError
        One line naming the file: a file missing, a sidecar not valid, or a pair not written together.
    """

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0):
        from bcc_utils.preprocess import ClaheSettings

        ort = require("onnxruntime")
        self.path, side = Path(onnx_path), sidecar_path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        if not side.is_file():
            raise FileNotFoundError(f"sidecar {side.name} not found beside {self.path} "
                                    "(write both with: python -m bcc_utils export CHECKPOINT --onnx FILE)")
        self.sidecar, self.settings, sha = read_sidecar(side)
        data = self.path.read_bytes()  # the bytes checked are the bytes run: the file may be replaced meanwhile
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"{self.path} was not written together with {side} (SHA-256 differs); {_EXPORT_AGAIN}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
            raise ValueError(f"onnxruntime cannot load {self.path}: {str(exc).strip().splitlines()[0]}") from None
        self._check_model(side)
        s = self.settings
        self.classes, self.img_size, self.tta = s["classes"], s["img_size"], s["tta"]
        self.temperature = s["temperature"]
        self.clahe = None if s["clahe"] is None else ClaheSettings(**s["clahe"])
        self.mean, self.std = s["mean"], s["std"]

    def _check_model(self, side: Path) -> None:
        """The sidecar's settings against the graph's shapes and the settings stored in the model."""
        s = self.settings
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        if out.shape[-1] != len(s["classes"]):
            raise ValueError(f"{side}: {len(s['classes'])} classes, but {self.path.name} gives {out.shape[-1]} logits")
        if list(inp.shape[1:]) != [3, s["img_size"], s["img_size"]]:
            raise ValueError(f"{side}: images of {s['img_size']} px, but {self.path.name} takes input {inp.shape}")
        meta = self.session.get_modelmeta().custom_metadata_map
        for key, value in s.items():
            stored = meta.get(METADATA_PREFIX + key)
            if stored is None:
                raise ValueError(f"{self.path} holds no '{METADATA_PREFIX + key}' metadata; {_EXPORT_AGAIN}")
            if json.loads(stored) != value:
                raise ValueError(f"{side}: '{key}' is {value}, but {self.path.name} was exported with "
                                 f"{json.loads(stored)} (sidecar edited?); {_EXPORT_AGAIN}")

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """Decoded RGB uint8 image -> S×S×3 uint8 (CLAHE and resize as the run did)."""
        from bcc_utils.preprocess import preprocess_image

        return preprocess_image(rgb, self.img_size, self.clahe)

    def to_input(self, images: np.ndarray):
        """uint8 N×S×S×3 -> normalised float32 N×3×S×S torch tensor (contiguous)."""
        from bcc_utils.batches import nhwc_to_nchw, to_input

        return to_input(nhwc_to_nchw(np.asarray(images)), self.mean, self.std, "cpu", channels_last=False)

    def run(self, x) -> np.ndarray:
        """Logits of an already normalised N×3×S×S float32 batch (array or tensor)."""
        x = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Single-view logits (N, classes) of preprocessed uint8 N×S×S×3 images."""
        images = np.asarray(images)
        out = [self.run(self.to_input(images[a:a + batch_size])) for a in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def proba(self, images: np.ndarray, tta: str | None = None, temperature: float | None = None) -> np.ndarray:
        """Probabilities (N, classes): mean of ``softmax(logits / T)`` over the TTA views.

        ``tta`` and ``temperature`` default to the sidecar's (the run's TTA, the fitted temperature).
        """
        from bcc_utils.batches import tta_views
        from bcc_utils.inference import views_to_proba

        t = self.temperature if temperature is None else check_temperature(temperature)
        x = self.to_input(images)
        views = [self.run(v.contiguous()) for v in tta_views(x, self.tta if tta is None else tta)]
        return views_to_proba(np.stack(views), t)

    def predict(self, inputs, top_k: int = 3, temperature: float | None = None) -> list[dict]:
        """Classify image files and folders; same result format as :func:`bcc_utils.inference.predict_images`.

        Returns
        -------
        list of dict
            ``{"file", "class", "confidence", "top": [{"class", "prob"}, ...]}`` per image
            (temperature-scaled probabilities, the run's TTA).
        """
        from bcc_utils.data.files import iter_images

        results = []
        for f, rgb in iter_images(inputs):
            prob = self.proba(self.preprocess(rgb)[None], temperature=temperature)[0]
            order = np.argsort(-prob)[:top_k]
            results.append({"file": str(f), "class": self.classes[order[0]], "confidence": float(prob[order[0]]),
                            "top": [{"class": self.classes[i], "prob": float(prob[i])} for i in order]})
        return results


def check_parity(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, inputs, limit: int = 32) -> dict:
    """Single-view logits of PyTorch (eager) and onnxruntime on the same preprocessed real images.

    The model is also run in float64 on the CPU: both float32 results are compared with that
    reference, which shows how much of their difference is float32 rounding on either side.

    Parameters
    ----------
    inputs
        Image files/folders (at most ``limit`` images are used, spread over them), or a
        preprocessed uint8 N×S×S×3 array.

    Returns
    -------
    dict
        ``n``, ``max_abs_diff`` (onnxruntime vs PyTorch float32), ``onnx_vs_float64``,
        ``pytorch_vs_float64``, ``max_abs_logit`` (of the float64 reference), ``same_class``
        (count of equal top classes, onnxruntime vs PyTorch float32) and ``all_same_class``.
    """
    import torch

    from bcc_utils.data.files import iter_images
    from bcc_utils.inference import predict_logits
    from bcc_utils.run import load_model

    clf = OnnxClassifier(onnx_path)
    model, ckpt = load_model(checkpoint, "cpu")
    if isinstance(inputs, np.ndarray):
        x = inputs
    else:
        images = [clf.preprocess(rgb) for _, rgb in iter_images(inputs, limit)]
        if not images:
            raise ValueError(f"no readable images in {', '.join(map(str, inputs))}")
        x = np.stack(images)
    ref = predict_logits(model, x, mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"],
                         channels_last=ckpt["config"]["channels_last"])[0]
    with torch.no_grad():
        exact = model.double().to(memory_format=torch.contiguous_format)(clf.to_input(x).double()).numpy()
    got = clf.logits(x)
    same = int((ref.argmax(1) == got.argmax(1)).sum())
    return {"n": len(x), "max_abs_diff": float(np.abs(ref - got).max()),
            "onnx_vs_float64": float(np.abs(got - exact).max()), "pytorch_vs_float64": float(np.abs(ref - exact).max()),
            "max_abs_logit": float(np.abs(exact).max()), "same_class": same, "all_same_class": same == len(x)}
