"""Test-set metrics and the per-run ``metrics.json`` they are saved in.

All point estimates come from scikit-learn; the bootstrap resamples the test
images with replacement (seeded) and recomputes accuracy and macro-F1 from
confusion counts, vectorised.

``metrics.json`` schema (``schema_version`` 1)
----------------------------------------------
::

    schema_version   int, 1
    run              str, name of the run folder
    model            str, timm architecture
    preset           str, "paper" | "cpu" | "smoke" | ... (the preset the config started from)
    config           dict, every TrainConfig field (see bcc_utils.train.TrainConfig)
    dataset          {data_dir_name: str, manifest_hash: str (sha256 hex), n_train, n_val, n_test: int}
    hardware         {device: str (e.g. "cpu", "cuda:NVIDIA T4"), torch: str, cpu_count: int, cpu_model: str}
    timing           {train_s: float  (training + validation epochs, summed over resumes),
                      total_s: float  (whole run incl. manifest, cache and test evaluation),
                      train_img_per_s: float (training images per second of training steps),
                      infer_img_per_s: float (test images per second, TTA included)}
    test             {accuracy: float (0-1), accuracy_ci: [lo, hi] (bootstrap 95 %),
                      balanced_accuracy, macro_f1, macro_f1_ci: [lo, hi], weighted_f1: float,
                      per_class: {class: {precision, recall, f1: float, support: int}},
                      confusion_matrix: [[int]]  (rows = true class, columns = predicted, CLASSES order),
                      confusion_matrix_normalized: [[float]] (each row divided by its support),
                      n: int, bootstrap: {n_resamples: int, seed: int, level: float}}
    params           int, parameters of the model; trainable_params: int (fewer with freeze_blocks)
    best_epoch       int, 1-based epoch whose checkpoint was evaluated
    classes          [str], class names in label order

``predictions.csv`` next to it has one row per test image:
``path, label, pred, confidence, prob_<class>...``.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _per_class_f1(cms: np.ndarray) -> np.ndarray:
    """F1 of each class (zero when undefined, as scikit-learn's ``zero_division=0``) of B×K×K counts: B×K."""
    tp = np.diagonal(cms, axis1=1, axis2=2).astype(float)
    denom = cms.sum(1) + cms.sum(2)  # (tp+fn) + (tp+fp) = 2tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _acc_macro_f1(cms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of B×K×K counts."""
    tp = np.diagonal(cms, axis1=1, axis2=2).astype(float)
    return tp.sum(1) / cms.sum((1, 2)), _per_class_f1(cms).mean(1)


def _bootstrap_confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int, n_resamples: int, seed: int) -> np.ndarray:
    """Confusion matrices (n_resamples×K×K) of the test set resampled with replacement."""
    rng = np.random.default_rng(seed)
    codes = y_true * k + y_pred
    cms = np.empty((n_resamples, k, k), dtype=np.int64)
    for b in range(n_resamples):
        cms[b] = np.bincount(codes[rng.integers(0, len(codes), len(codes))], minlength=k * k).reshape(k, k)
    return cms


def bootstrap_ci(y_true, y_pred, n_classes: int | None = None, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of accuracy and macro-F1.

    Parameters
    ----------
    y_true, y_pred
        Integer labels.
    n_classes
        Number of classes (default: largest label + 1).
    n_resamples, seed, level
        Resamples of the test set (with replacement), RNG seed, interval coverage.

    Returns
    -------
    dict
        ``{"accuracy": [lo, hi], "macro_f1": [lo, hi]}``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    k = int(n_classes or max(y_true.max(), y_pred.max()) + 1)
    acc, f1 = _acc_macro_f1(_bootstrap_confusions(y_true, y_pred, k, n_resamples, seed))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"accuracy": np.percentile(acc, q).tolist(), "macro_f1": np.percentile(f1, q).tolist()}


def per_class_f1_ci(y_true, y_pred, classes, n_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of each class's F1 (the test images resampled with replacement).

    Parameters
    ----------
    y_true, y_pred
        Class names (as in ``predictions.csv``) or integer labels.
    classes
        Class names in label order.

    Returns
    -------
    dict
        ``{class: (lo, hi)}``.
    """
    classes = list(classes)
    idx = {c: i for i, c in enumerate(classes)}
    y_true, y_pred = (np.asarray([idx.get(v, v) for v in a], dtype=np.int64) for a in (y_true, y_pred))
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    f1 = _per_class_f1(_bootstrap_confusions(y_true, y_pred, len(classes), n_resamples, seed))
    lo, hi = np.percentile(f1, [(1 - level) / 2 * 100, (1 + level) / 2 * 100], axis=0)
    return {c: (float(lo[i]), float(hi[i])) for i, c in enumerate(classes)}


def classification_report_dict(y_true, y_prob, classes, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The ``test`` section of ``metrics.json`` from labels and class probabilities.

    Parameters
    ----------
    y_true
        Integer labels, shape (N,).
    y_prob
        Probabilities (or scores), shape (N, K); the prediction is the arg-max.
    classes
        K class names in label order.
    n_resamples, seed
        Bootstrap settings (see :func:`bootstrap_ci`).
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    y_prob = np.asarray(y_prob)
    classes = list(classes)
    k = len(classes)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), k):
        raise ValueError(f"y_prob must have shape ({len(y_true)}, {k}), got {y_prob.shape}")
    y_pred = y_prob.argmax(1)
    labels = list(range(k))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1, keepdims=True)
    cm_norm = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    ci = bootstrap_ci(y_true, y_pred, k, n_resamples, seed)
    f1 = lambda avg: float(skm.f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0))  # noqa: E731
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "accuracy_ci": ci["accuracy"],
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if len(set(y_true)) else 0.0,
        "macro_f1": f1("macro"),
        "macro_f1_ci": ci["macro_f1"],
        "weighted_f1": f1("weighted"),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": cm_norm.round(6).tolist(),
        "n": int(len(y_true)),
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "level": 0.95},
    }


def hardware_info(device) -> dict:
    """The ``hardware`` section of ``metrics.json`` for a torch device."""
    import platform

    import torch

    device = torch.device(device)
    name = f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": name, "torch": str(torch.__version__), "cpu_count": os.cpu_count(), "cpu_model": cpu}


def load_results(pattern: str | os.PathLike) -> dict[str, dict]:
    """Read ``metrics.json`` files: a run folder, a file, a folder of runs, or a glob.

    Returns
    -------
    dict
        ``{run name: metrics dict}`` sorted by run name.
    """
    from bcc_utils.run import METRICS

    pattern = Path(pattern).expanduser()
    if pattern.is_file():
        files = [pattern]
    elif (pattern / METRICS).is_file():
        files = [pattern / METRICS]
    elif pattern.is_dir():
        files = sorted(pattern.glob(f"*/{METRICS}"))
    else:
        hits = [Path(p) for p in sorted(glob.glob(str(pattern)))]
        files = [p / METRICS if p.is_dir() else p for p in hits]
        files = [p for p in files if p.is_file()]
    if not files:
        raise FileNotFoundError(f"No metrics.json found at {pattern}")
    out = {}
    for f in files:
        m = json.loads(Path(f).read_text(encoding="utf-8"))
        out[m.get("run") or Path(f).parent.name] = m
    return dict(sorted(out.items()))


def results_table(results: dict[str, dict]):
    """One row per run: model, preset, accuracy with CI, macro-F1 with CI, params, speed (pandas DataFrame)."""
    import pandas as pd

    rows = []
    for run, m in results.items():
        t, tm = m["test"], m.get("timing", {})
        rows.append({
            "run": run, "model": m.get("model"), "preset": m.get("preset"),
            "img_size": m.get("config", {}).get("img_size"),
            "accuracy": t["accuracy"], "acc_lo": t["accuracy_ci"][0], "acc_hi": t["accuracy_ci"][1],
            "balanced_accuracy": t["balanced_accuracy"], "macro_f1": t["macro_f1"],
            "f1_lo": t["macro_f1_ci"][0], "f1_hi": t["macro_f1_ci"][1], "weighted_f1": t["weighted_f1"],
            "params": m.get("params"), "train_img_per_s": tm.get("train_img_per_s"),
            "infer_img_per_s": tm.get("infer_img_per_s"), "train_s": tm.get("train_s"),
            "device": m.get("hardware", {}).get("device"), "n_test": t.get("n"),
        })
    return pd.DataFrame(rows).set_index("run")
