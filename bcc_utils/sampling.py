"""Class balancing: 1/frequency weights, a weighted sampler, and the double-correction trap.

Two tools fight class imbalance: *resampling* (draw minority images more often,
:func:`make_sampler`) and *loss weighting* (count minority errors more,
:func:`class_weights` in the cross-entropy). Each one alone, at 1/frequency,
gives every class the same total influence. Using both — as the paper does —
corrects twice: a class's influence becomes proportional to 1/frequency, so
the rarest class now dominates. :func:`effective_class_weights` and
:func:`balancing_table` put numbers on it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: The four ways to balance, compared by the ablation.
BALANCE_MODES: tuple[str, ...] = ("none", "sampler", "loss", "both")


def class_counts(labels: Sequence[int], n_classes: int) -> np.ndarray:
    """Number of samples per class (length ``n_classes``)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got range [{labels.min()}, {labels.max()}].")
    return np.bincount(labels, minlength=n_classes)


def class_weights(labels: Sequence[int], n_classes: int, normalise: bool = True):
    """Per-class weights proportional to 1 / frequency (as a float32 torch tensor).

    Parameters
    ----------
    labels
        Integer labels of the training samples.
    n_classes
        Number of classes.
    normalise
        ``False``: ``w_c = 1 / n_c``. ``True``: scaled so that the *mean weight
        over the samples* is 1, i.e. ``w_c = N / (C · n_c)`` (scikit-learn's
        "balanced"), which keeps the loss on its usual scale.

    Classes absent from ``labels`` get weight 0 (nothing to weight).
    """
    import torch

    counts = class_counts(labels, n_classes).astype(np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no labels given")
    w = np.zeros(n_classes)
    w[present] = 1.0 / counts[present]
    if normalise:
        w *= counts.sum() / present.sum()
    return torch.tensor(w, dtype=torch.float32)


def make_sampler(labels: Sequence[int], n_classes: int, num_samples: int | None = None, seed: int = 0):
    """``WeightedRandomSampler`` drawing every class equally often (with replacement).

    Each sample's weight is 1/frequency of its class. ``num_samples`` defaults
    to ``len(labels)`` (one "epoch"). The sampler owns a generator seeded with
    ``seed``: reproducible, yet a different draw each epoch.
    """
    import torch
    from torch.utils.data import WeightedRandomSampler

    labels = np.asarray(labels, dtype=np.int64)
    per_sample = class_weights(labels, n_classes, normalise=False).numpy()[labels]
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        torch.as_tensor(per_sample, dtype=torch.double),
        num_samples=int(num_samples or len(labels)),
        replacement=True,
        generator=generator,
    )


def _check_mode(mode: str) -> None:
    if mode not in BALANCE_MODES:
        raise ValueError(f"Unknown balancing mode {mode!r}; choose one of {', '.join(BALANCE_MODES)}.")


def balancing(labels: Sequence[int], n_classes: int, mode: str, seed: int = 0):
    """``(sampler or None, loss weight tensor or None)`` for a balancing mode.

    ``"none"``: neither; ``"sampler"``: :func:`make_sampler`; ``"loss"``:
    normalised :func:`class_weights` for the cross-entropy; ``"both"``: the two
    together (the paper's set-up, which over-corrects: see :func:`effective_class_weights`).
    """
    _check_mode(mode)
    sampler = make_sampler(labels, n_classes, seed=seed) if mode in ("sampler", "both") else None
    weight = class_weights(labels, n_classes, normalise=True) if mode in ("loss", "both") else None
    return sampler, weight


def effective_class_weights(labels: Sequence[int], n_classes: int, mode: str) -> np.ndarray:
    """Share of the training loss each class receives under ``mode`` (sums to 1).

    Share of class c ∝ (how often c is drawn) × (its loss weight):
    ``none`` → n_c/N (the imbalance as is); ``sampler`` or ``loss`` → 1/C each
    (balanced); ``both`` → ∝ 1/n_c (the minority over-weighted as much as it
    was under-weighted before). PyTorch's weighted cross-entropy divides each
    batch by its sum of weights; that rescales the batch, not these shares.
    """
    _check_mode(mode)
    counts = class_counts(labels, n_classes).astype(np.float64)
    present = counts > 0
    draw = np.where(present, 1.0, 0.0) / present.sum() if mode in ("sampler", "both") else counts / counts.sum()
    weight = class_weights(labels, n_classes, normalise=True).numpy() if mode in ("loss", "both") else present * 1.0
    share = draw * weight
    return share / share.sum()


def balancing_table(labels: Sequence[int], n_classes: int, classes: Sequence[str] | None = None):
    """A ``pandas.DataFrame``: per class, count, frequency and the loss share under every mode.

    The last two rows give, for each mode, the ratio largest/smallest share and
    the share of the rarest class relative to a balanced 1/C.
    """
    import pandas as pd

    counts = class_counts(labels, n_classes)
    names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
    table = pd.DataFrame({"count": counts, "frequency": counts / counts.sum()}, index=pd.Index(names, name="class"))
    for mode in BALANCE_MODES:
        table[f"share_{mode}"] = effective_class_weights(labels, n_classes, mode)
    shares = table[[f"share_{m}" for m in BALANCE_MODES]]
    present = counts > 0
    rarest = int(np.argmin(np.where(present, counts, np.inf)))
    summary = pd.DataFrame(
        [shares[present].max() / shares[present].min(), shares.iloc[rarest] * present.sum()],
        index=["max/min share", "rarest class × C"],
    )
    return pd.concat([table, summary])


def epoch_class_counts(labels: Sequence[int], n_classes: int, sampler=None) -> np.ndarray:
    """Class counts over one epoch: of the sampler's draw, or of plain shuffling when ``sampler`` is None."""
    labels = np.asarray(labels, dtype=np.int64)
    drawn = labels if sampler is None else labels[np.fromiter(iter(sampler), dtype=np.int64)]
    return np.bincount(drawn, minlength=n_classes)
