"""How far can the model's confidence be trusted? Calibration, temperature scaling, selective prediction.

* :func:`ece` and :func:`reliability_table` — expected calibration error with equal-width confidence
  bins (Guo et al. 2017; 15 bins by default).
* :func:`fit_temperature` — one scalar ``T`` that divides the logits, fitted on the *validation*
  split by minimising the negative log-likelihood; :func:`confidence_direction` reads it (``T < 1``:
  the model was under-confident, ``T > 1``: over-confident). Dividing every logit by the same
  positive number never changes which class is largest, so accuracy stays exactly the same. (With test-time
  augmentation the softmax of several views is averaged; there a temperature can, rarely, swap
  the top two classes of a near-tie.)
* :func:`selective_curve` and :func:`threshold_for_accuracy` — "refer when unsure": keep the
  predictions whose confidence reaches a threshold and send the rest to a human.
* :func:`calibrate_run` — all of it for a trained run; writes ``calibration.json`` beside the
  checkpoint, which :func:`load_temperature` (prediction, ONNX export) then reads.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from bcc_utils.run import CALIBRATION as CALIBRATION_FILE
from bcc_utils.run import load_temperature

#: The search interval of the temperature; a fit on its edge means the search, not the data, decided.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _check(prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob, y = np.asarray(prob, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if prob.ndim != 2 or len(prob) != len(y) or not len(y):
        raise ValueError(f"expected N×K probabilities and N labels, got {prob.shape} and {y.shape}")
    return prob, y


def reliability_table(prob, y, n_bins: int = 15):
    """Per confidence bin ``(lo, hi]``: count, mean confidence, accuracy and gap (empty bins included).

    Parameters
    ----------
    prob
        N×K class probabilities.
    y
        N true class indices.
    n_bins
        Equal-width bins on [0, 1].
    """
    import pandas as pd

    prob, y = _check(prob, y)
    conf, correct = prob.max(1), prob.argmax(1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    # bin i holds confidences in (edges[i], edges[i + 1]]; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, correct, n_bins) / count
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": count, "confidence": mean_conf,
                         "accuracy": acc, "gap": acc - mean_conf})


def ece(prob, y, n_bins: int = 15) -> float:
    """Expected calibration error: ``Σ_b (n_b / N) · |accuracy_b − confidence_b|`` over equal-width bins."""
    t = reliability_table(prob, y, n_bins)
    t = t[t["count"] > 0]
    return float((t["count"] * (t["accuracy"] - t["confidence"]).abs()).sum() / t["count"].sum())


def nll(prob, y) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    prob, y = _check(prob, y)
    return float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, None)).mean())


def _views(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return z[None] if z.ndim == 2 else z


def scaled_proba(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from N×K logits (or views×N×K, averaged after the softmax) divided by ``temperature``.

    :func:`bcc_utils.inference.views_to_proba` in float64 (the temperature fit compares small NLL changes).
    """
    import torch

    from bcc_utils.inference import views_to_proba

    return views_to_proba(_views(logits), temperature, dtype=torch.float64)


def fit_temperature(logits, y, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (one-dimensional, bounded search).

    Parameters
    ----------
    logits
        N×K logits, or V×N×K logits of V test-time-augmentation views (the probabilities are the mean
        softmax over the views, as in evaluation).
    y
        N true class indices — of the *validation* split, never the test split.
    bounds
        Search interval for ``T``. A result within 1 % of either end is returned with a warning: the
        bound, not the data, chose it (e.g. a model that is right or wrong with near-certainty).
    """
    from scipy.optimize import minimize_scalar

    z, y = _views(logits), np.asarray(y, dtype=np.int64)
    if z.shape[1] != len(y):
        raise ValueError(f"{z.shape[1]} logits rows but {len(y)} labels")
    res = minimize_scalar(lambda log_t: nll(scaled_proba(z, np.exp(log_t)), y), method="bounded",
                          bounds=tuple(np.log(bounds)), options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    if t <= bounds[0] * 1.01 or t >= bounds[1] / 1.01:
        warnings.warn(f"the fitted temperature {t:.3g} lies on the search bound {bounds}: the NLL keeps falling "
                      "beyond it, so this value is not a fit; check the logits and labels", stacklevel=2)
    return t


def selective_curve(prob, y):
    """Accuracy of the kept predictions as the confidence threshold rises.

    Returns
    -------
    DataFrame
        One row per distinct confidence (descending): ``threshold`` (keep ``confidence >= threshold``),
        ``kept``, ``coverage`` (kept / N), ``accuracy`` (on the kept ones), ``referred`` (N − kept).
    """
    import pandas as pd

    prob, y = _check(prob, y)
    conf, correct = prob.max(1), prob.argmax(1) == y
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    kept = np.arange(1, len(conf) + 1)
    acc = np.cumsum(correct) / kept
    last = np.r_[conf[1:] != conf[:-1], True]  # ties: a threshold keeps all equal confidences or none
    df = pd.DataFrame({"threshold": conf[last], "kept": kept[last], "accuracy": acc[last]})
    df["coverage"] = df["kept"] / len(conf)
    df["referred"] = len(conf) - df["kept"]
    return df[["threshold", "kept", "coverage", "accuracy", "referred"]].reset_index(drop=True)


def threshold_for_accuracy(prob, y, target: float = 0.995) -> dict:
    """The lowest confidence threshold whose kept predictions reach ``target`` accuracy (most coverage).

    Returns
    -------
    dict
        ``threshold, kept, coverage, accuracy, referred`` — or, when no threshold reaches the target,
        the same keys with ``threshold`` = ``None`` and the highest-confidence prediction's values.
    """
    curve = selective_curve(prob, y)
    ok = curve[curve["accuracy"] >= target]
    row = ok.iloc[-1] if len(ok) else curve.iloc[0]
    out = {k: (float(row[k]) if k in ("threshold", "coverage", "accuracy") else int(row[k]))
           for k in ("threshold", "kept", "coverage", "accuracy", "referred")}
    if not len(ok):
        out["threshold"] = None
    return out


def at_threshold(prob, y, threshold: float) -> dict:
    """What a confidence threshold (chosen elsewhere, e.g. on val) does here: ``kept, coverage, accuracy, referred``."""
    prob, y = _check(prob, y)
    keep = prob.max(1) >= threshold
    n_keep = int(keep.sum())
    acc = float((prob.argmax(1)[keep] == y[keep]).mean()) if n_keep else float("nan")
    return {"threshold": float(threshold), "kept": n_keep, "coverage": n_keep / len(y), "accuracy": acc,
            "referred": int(len(y) - n_keep)}


def confidence_direction(temperature: float, tol: float = 0.05) -> str:
    """What a temperature fitted on held-out data says about the model's confidence.

    ``"under-confident"`` when ``T < 1`` (dividing the logits by ``T`` sharpens the probabilities),
    ``"over-confident"`` when ``T > 1`` (it flattens them), ``"calibrated"`` when ``|log T| < tol``.
    """
    if not temperature > 0:
        raise ValueError(f"a temperature must be > 0, got {temperature}")
    if abs(np.log(temperature)) < tol:
        return "calibrated"
    return "under-confident" if temperature < 1 else "over-confident"


def summary(prob, y, n_bins: int = 15) -> dict:
    """``accuracy, ece, nll, mean_confidence`` of one set of predictions."""
    prob, y = _check(prob, y)
    return {"accuracy": float((prob.argmax(1) == y).mean()), "ece": ece(prob, y, n_bins), "nll": nll(prob, y),
            "mean_confidence": float(prob.max(1).mean())}


def split_logits(checkpoint, data_dir=None, splits=("val", "test"), tta: str = "dihedral", cache_dir=None,
                 device: str = "auto", progress: bool = False, limit: int | None = None) -> dict:
    """Logits of a checkpoint on splits of its own manifest: ``{split: (V×N×K logits, y, seconds)}``.

    With ``tta="dihedral"`` view 0 is the plain image, so one pass gives both the single-view and
    the TTA predictions. ``limit`` keeps only the first images of each split: enough to time a
    setting without running the whole split again (notebook 08).
    """
    from bcc_utils.config import TrainConfig
    from bcc_utils.device import amp_dtype, resolve_device
    from bcc_utils.inference import predict_logits
    from bcc_utils.run import load_with_images

    dev = resolve_device(device)
    model, ckpt, images, manifest = load_with_images(checkpoint, data_dir, cache_dir, dev, progress)
    cfg = TrainConfig.from_dict(ckpt["config"])
    classes, out = list(ckpt["classes"]), {}
    for split in splits:
        part = manifest[manifest["split"] == split]
        rows = np.array([images.index_of(p) for p in part["path"]])[:limit]
        t0 = time.perf_counter()
        z = predict_logits(model, images.array, rows, mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"],
                           device=dev, batch_size=cfg.eval_batch_size, tta=tta, channels_last=cfg.channels_last,
                           amp=amp_dtype(cfg.amp, dev), limit_batches=cfg.limit_eval_batches, progress=progress,
                           desc=split)
        y = np.array([classes.index(c) for c in part["label"]])[: z.shape[1]]
        out[split] = (z, y, time.perf_counter() - t0)
    return out


def compare_views(logits: dict, n_bins: int = 15):
    """Calibration with one view and with all TTA views, before and after a temperature fitted on val.

    Parameters
    ----------
    logits
        :func:`split_logits` output with ``"val"`` and ``"test"`` (V×N×K logits).

    Returns
    -------
    (DataFrame, dict)
        One row per (views, split, temperature) with :func:`summary`'s columns; and the fitted
        temperature per views setting, ``{"1 view": T1, "4 views": T4}``.
    """
    import pandas as pd

    z_val, y_val, _ = logits["val"]
    settings = {"1 view": slice(0, 1)}
    if z_val.shape[0] > 1:
        settings[f"{z_val.shape[0]} views"] = slice(None)
    rows, temps = [], {}
    for name, views in settings.items():
        temps[name] = fit_temperature(z_val[views], y_val)
        for split, (z, y, _) in logits.items():
            for label, t in (("none", 1.0), ("fitted on val", temps[name])):
                rows.append({"views": name, "split": split, "temperature": label, "T": round(t, 4),
                             **summary(scaled_proba(z[views], t), y, n_bins)})
    return pd.DataFrame(rows), temps


def run_views(logits, tta: str) -> np.ndarray:
    """The views of V×N×K dihedral logits (:func:`split_logits`) that a run with test-time augmentation ``tta`` uses:
    all four for ``"dihedral"``, the plain image alone (view 0) for ``"none"``."""
    z = _views(logits)
    return z if tta == "dihedral" else z[:1]


def calibrate_run(checkpoint, data_dir=None, n_bins: int = 15, cache_dir=None, device: str = "auto",
                  progress: bool = False, write: bool = True) -> dict:
    """Fit the temperature on the validation split and report calibration before/after on val and test.

    The temperature is fitted for the run's own test-time augmentation (``cfg.tta``) and written,
    with the numbers, to ``calibration.json`` in the checkpoint's folder.

    Returns
    -------
    dict
        The JSON written, plus ``"logits"``: the :func:`split_logits` output (not written), so a
        notebook can draw the figures without running the model again.
    """
    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.run import write_calibration

    checkpoint = Path(checkpoint)
    ckpt_tta = load_checkpoint(checkpoint)["config"]["tta"]
    logits = split_logits(checkpoint, data_dir, ("val", "test"), "dihedral", cache_dir, device, progress)

    z_val, y_val, _ = logits["val"]
    t = fit_temperature(run_views(z_val, ckpt_tta), y_val)
    report = {"schema_version": 1, "temperature": round(t, 6), "fitted_on": "val", "tta": ckpt_tta,
              "n_bins": n_bins, "checkpoint": checkpoint.name}
    for split, (z, y, _) in logits.items():
        z = run_views(z, ckpt_tta)
        report[split] = {"n": int(len(y)), "before": summary(scaled_proba(z), y, n_bins),
                         "after": summary(scaled_proba(z, t), y, n_bins)}
    if write:
        write_calibration(report, checkpoint)
    return {**report, "logits": logits}


__all__ = ["reliability_table", "ece", "nll", "scaled_proba", "run_views", "fit_temperature", "confidence_direction",
           "selective_curve", "threshold_for_accuracy", "at_threshold", "summary", "split_logits", "compare_views",
           "calibrate_run", "load_temperature", "CALIBRATION_FILE"]
