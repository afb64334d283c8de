"""Inference with a trained checkpoint: class probabilities, test-split evaluation, single images.

The same preprocessing as in training is applied everywhere: decode, CLAHE (if the run used it),
square resize (:func:`bcc_utils.preprocess.preprocess_image`), normalisation with the model's
statistics, and the run's test-time augmentation.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from bcc_utils.batches import nhwc_to_nchw, to_input, tta_views
from bcc_utils.config import TrainConfig
from bcc_utils.device import amp_dtype, resolve_device


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images, rows=None, *, mean, std, device="cpu", batch_size: int = 128,
                   tta: str = "none", channels_last: bool = True, amp: torch.dtype | None = None,
                   limit_batches: int = 0, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits of uint8 N×S×S×3 images, one slice per TTA view: shape ``(views, N, classes)``.

    Parameters
    ----------
    model
        Classifier; put in eval mode here.
    images
        Array-like N×S×S×3 uint8 (numpy, memmap or tensor); only ``rows`` are read, batch by batch.
    rows
        Indices into ``images`` (default: all).
    mean, std
        Normalisation (see :func:`bcc_utils.models.input_stats`).
    tta
        ``"none"`` (one view) or ``"dihedral"`` (four; see :func:`bcc_utils.batches.tta_views`).
    limit_batches
        Stop after this many batches (0 = all).
    """
    from tqdm.auto import tqdm

    model.eval()
    device = torch.device(device)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    starts = list(range(0, len(rows), batch_size))[: limit_batches or None]
    out = []
    for a in tqdm(starts, desc=desc, leave=False, disable=not progress):
        batch = images[rows[a:a + batch_size]]
        x = to_input(nhwc_to_nchw(np.asarray(batch) if not torch.is_tensor(batch) else batch),
                     mean, std, device, channels_last)
        views = []
        for view in tta_views(x, tta):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                views.append(model(view).float().cpu())
        out.append(torch.stack(views))
    return torch.cat(out, 1).numpy() if out else np.zeros((1 + 3 * (tta == "dihedral"), 0, 0), dtype=np.float32)


def views_to_proba(logits: np.ndarray, temperature: float = 1.0, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Mean softmax over the TTA views of :func:`predict_logits` output, logits divided by ``temperature``."""
    z = torch.as_tensor(logits, dtype=dtype) / float(temperature)
    return z.softmax(-1).mean(0).numpy()


def predict_proba(model: torch.nn.Module, images, rows=None, *, temperature: float = 1.0, **kwargs) -> np.ndarray:
    """Softmax probabilities (mean over TTA views) of uint8 N×S×S×3 images.

    Same arguments as :func:`predict_logits`; ``temperature`` divides the logits first (1 = none).
    """
    return views_to_proba(predict_logits(model, images, rows, **kwargs), temperature)


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir=None, split: str = "test", cache_dir=None,
                        device: str = "auto", progress: bool = True, rebuild_cache: bool = False) -> dict:
    """Recompute the test metrics of ``metrics.json`` from a checkpoint and the manifest stored in it.

    Returns
    -------
    dict
        ``{"split", "test": <metrics.json test section>, "predictions": DataFrame, "infer_s", "n",
        "manifest_hash", "best_epoch"}``.
    """
    import pandas as pd

    from bcc_utils.metrics import classification_report_dict

    from bcc_utils.run import load_with_images

    dev = resolve_device(device)
    model, ckpt, images, manifest = load_with_images(checkpoint, data_dir, cache_dir, dev, progress, rebuild_cache)
    cfg = TrainConfig.from_dict(ckpt["config"])
    part = manifest[manifest["split"] == split]
    if part.empty:
        raise ValueError(f"split {split!r} is empty in this checkpoint's manifest")
    rows = np.array([images.index_of(p) for p in part["path"]])
    classes = list(ckpt["classes"])
    y = np.array([classes.index(c) for c in part["label"]])
    t0 = time.perf_counter()
    prob = predict_proba(model, images.array, rows, mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"], device=dev,
                         batch_size=cfg.eval_batch_size, tta=cfg.tta,
                         channels_last=cfg.channels_last, amp=amp_dtype(cfg.amp, dev),
                         limit_batches=cfg.limit_eval_batches, progress=progress, desc=split)
    infer_s = time.perf_counter() - t0
    y = y[: len(prob)]
    report = classification_report_dict(y, prob, classes, cfg.bootstrap_resamples, seed=cfg.seed)
    pred = prob.argmax(1)
    df = pd.DataFrame({"path": list(part["path"])[: len(prob)], "label": [classes[i] for i in y],
                       "pred": [classes[i] for i in pred], "confidence": prob.max(1).round(6)})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = prob[:, i].round(6)
    return {"split": split, "test": report, "predictions": df, "infer_s": infer_s, "n": int(len(prob)),
            "manifest_hash": ckpt["manifest_hash"], "best_epoch": int(ckpt["epoch"])}


def predict_images(checkpoint: str | os.PathLike | tuple, inputs, top_k: int = 3, device: str = "cpu",
                   temperature: float | None = None) -> list[dict]:
    """Classify image files with a trained checkpoint.

    Parameters
    ----------
    checkpoint
        Path of ``best.pt``/``last.pt`` (or a ``(model, ckpt)`` pair from :func:`bcc_utils.run.load_model`).
    temperature
        Divides the logits before the softmax. ``None``: the run's fitted temperature
        (``calibration.json`` beside the checkpoint, see :mod:`bcc_utils.calibration`), else 1.
    inputs
        Image files and/or folders (see :func:`bcc_utils.data.files.image_files`). A named file that cannot be decoded
        raises :class:`bcc_utils.data.ImageReadError` naming it; such files inside a folder are
        skipped with a warning.

    Returns
    -------
    list of dict
        ``{"file", "class", "confidence", "top": [{"class", "prob"}, ...]}`` per image (probabilities
        temperature-scaled).
    """
    from bcc_utils.data.files import iter_images
    from bcc_utils.preprocess import preprocess_image
    from bcc_utils.run import open_for_inference

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    model, ckpt, cfg, temperature, dev = open_for_inference(checkpoint, device, temperature)
    classes, clahe = list(ckpt["classes"]), cfg.clahe_settings()
    results = []
    for f, rgb in iter_images(inputs):
        x = preprocess_image(rgb, cfg.img_size, clahe)[None]
        prob = predict_proba(model, x, mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"], device=dev,
                             tta=cfg.tta, channels_last=cfg.channels_last, temperature=temperature)[0]
        order = np.argsort(-prob)[:top_k]
        results.append({"file": str(f), "class": classes[order[0]], "confidence": float(prob[order[0]]),
                        "top": [{"class": classes[i], "prob": float(prob[i])} for i in order]})
    return results
