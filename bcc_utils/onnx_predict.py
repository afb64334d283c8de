"""Run an exported ONNX model with onnxruntime: preprocessing from its sidecar, probabilities, parity.

:class:`OnnxClassifier` reads ``model.onnx`` and its sidecar ``model.onnx.json`` (written by
:func:`bcc_utils.export.export_onnx`) and classifies image files with the library's own
preprocessing functions, the sidecar's settings, the run's test-time augmentation and temperature:
the results match :func:`bcc_utils.inference.predict_images` on the checkpoint.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np

from bcc_utils.inference import iter_images

SIDECAR_FORMAT = "bcc-onnx-1"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


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
        ``tta`` are read from it.
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
        self.sidecar = json.loads(side.read_text(encoding="utf-8"))
        if self.sidecar.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{side} is not a bcc ONNX sidecar (expected format {SIDECAR_FORMAT})")
        steps = {step["op"]: step for step in self.sidecar["preprocessing"]}
        self.classes = list(self.sidecar["classes"])
        self.img_size = int(steps["resize"]["size"][0])
        self.clahe = ClaheSettings(**steps["clahe"]["settings"]) if steps["clahe"]["settings"] else None
        self.mean, self.std = steps["normalize"]["mean"], steps["normalize"]["std"]
        self.temperature = float(self.sidecar["temperature"])
        self.tta = self.sidecar["tta"]["run_setting"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

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

        x = self.to_input(images)
        views = [self.run(v.contiguous()) for v in tta_views(x, self.tta if tta is None else tta)]
        return views_to_proba(np.stack(views), self.temperature if temperature is None else temperature)

    def predict(self, inputs, top_k: int = 3, temperature: float | None = None) -> list[dict]:
        """Classify image files and folders; same result format as :func:`bcc_utils.inference.predict_images`.

        Returns
        -------
        list of dict
            ``{"file", "class", "confidence", "top": [{"class", "prob"}, ...]}`` per image
            (temperature-scaled probabilities, the run's TTA).
        """
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
        ``pytorch_vs_float64``, ``max_abs_logit``, ``same_class`` (count of equal top classes,
        onnxruntime vs PyTorch float32) and ``all_same_class``.
    """
    import torch

    from bcc_utils.inference import load_model, predict_logits

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
            "max_abs_logit": float(np.abs(ref).max()), "same_class": same, "all_same_class": same == len(x)}
