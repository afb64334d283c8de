"""Comparing results honestly: binomial intervals, paired tests, subgroups (notebook 06).

A test accuracy is a proportion: k of n images classified correctly. :func:`wilson_interval` gives its 95 %
interval from k and n alone (no resampling), so it also works for a paper that reports only a percentage and a
test-set size. Two models evaluated on the *same* test images are compared image by image: only the images that
exactly one of them gets right carry information about which is better (:func:`mcnemar_exact`,
:func:`paired_bootstrap_diff`). :func:`rate_table` breaks an accuracy (or a per-class recall) down by subgroups,
such as the background colour of notebook 01 (:func:`background_groups`), with an interval per cell.
"""

from __future__ import annotations

import os
from math import comb, sqrt
from pathlib import Path
from statistics import NormalDist

import numpy as np

#: Notebook 01: an image whose background (top rows) has a mean blue above this is "lilac", else "peach".
LILAC_BLUE = 205
#: Pixel rows at the top of an image that count as background (away from the central cell), as in notebook 01.
BACKGROUND_ROWS = 8
#: The two background colours, the usual one first.
BACKGROUNDS = ("peach", "lilac")


def wilson_interval(k, n, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion k / n.

    Parameters
    ----------
    k, n
        Successes (e.g. correctly classified images) and trials; ``0 <= k <= n``, ``n >= 1``.
    level
        Coverage of the interval.

    Returns
    -------
    (float, float)
        Lower and upper bound, inside [0, 1] even for k = 0 or k = n (unlike the plain p ± z·SE).
    """
    if n < 1:
        raise ValueError(f"a proportion needs at least one trial (n={n}): there is nothing to estimate")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 (k = n) the bound is exactly 0 (1); the formula leaves a rounding error there
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def difference_interval(k1, n1, k2, n2, level: float = 0.95) -> tuple[float, float, float]:
    """The difference of two independent proportions k1/n1 − k2/n2, with Newcombe's interval.

    For two groups of *different* images (lilac vs peach backgrounds), where no pairing exists. Newcombe's
    hybrid score interval combines the two Wilson intervals: each side of the difference moves by the root sum
    of squares of the relevant distances from estimate to Wilson bound.

    Parameters
    ----------
    k1, n1, k2, n2
        Successes and trials of the two groups (``n >= 1`` each).
    level
        Coverage of the interval.

    Returns
    -------
    (float, float, float)
        The difference and its lower and upper bound.
    """
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, level), wilson_interval(k2, n2, level)  # rejects n = 0
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return d, d - sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _as_bool(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError("outcomes must be booleans or 0/1 (1 = classified correctly)")
    return a.astype(bool)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test: do two models, scored on the same images, differ in accuracy?

    Images both models get right (or both wrong) say nothing about which is better. Of the n = b + c images
    that exactly one gets right, each is equally likely to favour A or B if the models are equally good, so
    b follows Binomial(n, 1/2); the two-sided p-value is twice the smaller tail (at most 1).

    Parameters
    ----------
    correct_a, correct_b
        Per image, whether model A (B) classified it correctly; same images, same order.

    Returns
    -------
    dict
        ``only_a`` (b: A right, B wrong), ``only_b`` (c), ``both``, ``neither``, ``n_images``, ``p_value``.
    """
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("need two equally long, non-empty 1-D outcome vectors of the same images")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    # exact integer arithmetic: 2**n and the binomial coefficients are Python ints, so large n loses nothing
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    p = min(1.0, 2 * tail / 2**n)
    return {"only_a": only_a, "only_b": only_b, "both": int((a & b).sum()), "neither": int((~a & ~b).sum()),
            "n_images": len(a), "p_value": float(p)}


def paired_bootstrap_diff(correct_a, correct_b, n_resamples: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B, with a paired percentile-bootstrap interval.

    Paired: each resample draws test *images* with replacement and scores both models on the same draw, so the
    interval reflects only the images on which they disagree.

    Parameters
    ----------
    correct_a, correct_b
        Per image, whether model A (B) classified it correctly; same images, same order.
    n_resamples, seed, level
        Resamples of the test images, RNG seed, interval coverage.

    Returns
    -------
    (float, float, float)
        The observed difference and its lower and upper bound.
    """
    a, b = _as_bool(correct_a), _as_bool(correct_b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("need two equally long, non-empty 1-D outcome vectors of the same images")
    d = a.astype(np.int8) - b.astype(np.int8)
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_resamples)])
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(d.mean()), float(lo), float(hi)


def load_predictions(run: str, *folders: str | os.PathLike):
    """A run's ``predictions.csv`` from the first folder that holds the run's ``metrics.json``.

    The same precedence as :func:`bcc_utils.paper.find_results`, so predictions and metrics come from one run
    folder. Returns ``None`` when that folder has no predictions (an older run, or metrics copied alone).
    """
    import pandas as pd

    from bcc_utils.run import METRICS, PREDICTIONS

    for folder in folders:
        run_dir = Path(folder) / run
        if (run_dir / METRICS).is_file():
            return pd.read_csv(run_dir / PREDICTIONS) if (run_dir / PREDICTIONS).is_file() else None
    return None


def paired_outcomes(pred_a, pred_b, names: tuple[str, str] = ("a", "b")):
    """Line up two runs' predictions image by image.

    Parameters
    ----------
    pred_a, pred_b
        ``predictions.csv`` DataFrames (``path``, ``label``, ``pred``) of two runs.
    names
        Column suffixes for the two runs.

    Returns
    -------
    pandas.DataFrame
        ``path``, ``label``, ``pred_<name>``, ``correct_<name>`` for both, sorted by path.

    Raises
    ------
    ValueError
        If the runs were not tested on the same images with the same labels (different splits).
    """
    a, b = (p[["path", "label", "pred"]].set_index("path").sort_index() for p in (pred_a, pred_b))
    if not a.index.equals(b.index) or not (a["label"] == b["label"]).all():
        raise ValueError("the two runs were not tested on the same images with the same labels: compare runs "
                         "whose metrics.json has the same dataset.manifest_hash")
    out = a[["label"]].copy()
    for name, p in zip(names, (a, b)):
        out[f"pred_{name}"] = p["pred"]
        out[f"correct_{name}"] = p["pred"] == p["label"]
    return out.reset_index()


def paired_runs(results: dict[str, dict], roles: tuple[str, str] = ("efficientnet_b0", "resnet50")):
    """The two runs to compare image by image: one per paper model, tested on the same split.

    Parameters
    ----------
    results
        ``{run name: metrics}`` (:func:`bcc_utils.paper.find_results`).
    roles
        The two paper models (see :data:`bcc_utils.paper.PAPER_ROLE`).

    Returns
    -------
    (str, str) or None
        Of all pairs with equal ``dataset.manifest_hash``, the one whose presets rank best (``paper``, then the
        CPU presets, as :func:`bcc_utils.paper.pick_runs`); ``None`` if no pair shares a split.
    """
    from bcc_utils.paper import PAPER_ROLE, PRESET_RANK

    ranked = {role: [(PRESET_RANK.get(m.get("preset"), 2), name) for name, m in results.items()
                     if PAPER_ROLE.get(m.get("model")) == role] for role in roles}
    split = {name: m.get("dataset", {}).get("manifest_hash") for name, m in results.items()}
    pairs = sorted((ra + rb, a, b) for ra, a in ranked[roles[0]] for rb, b in ranked[roles[1]]
                   if split[a] is not None and split[a] == split[b])
    return (pairs[0][1], pairs[0][2]) if pairs else None


def background_rgb(path: str | os.PathLike, rows: int = BACKGROUND_ROWS) -> np.ndarray:
    """Mean RGB of an image's top ``rows`` pixel rows: the background, away from the central cell (notebook 01)."""
    from bcc_utils.data import read_image

    return read_image(path)[:rows].reshape(-1, 3).mean(axis=0)


def background_groups(paths, root: str | os.PathLike, threshold: float = LILAC_BLUE):
    """The background colour of each image: ``"lilac"`` (blue above ``threshold``) or ``"peach"``.

    Parameters
    ----------
    paths
        Image paths relative to ``root`` (as in ``predictions.csv``).
    root
        The folder holding the class folders (:func:`bcc_utils.data.locate_root`).

    Returns
    -------
    pandas.DataFrame
        Indexed by path: ``R``, ``G``, ``B`` (background mean) and ``background`` (a categorical with both
        colours as categories, so an empty group still shows up in tables).
    """
    import pandas as pd

    paths = list(paths)
    rgb = np.array([background_rgb(Path(root) / p) for p in paths]).reshape(-1, 3)
    out = pd.DataFrame(rgb, columns=["R", "G", "B"], index=pd.Index(paths, name="path"))
    out["background"] = pd.Categorical(np.where(out["B"] > threshold, "lilac", "peach"), categories=BACKGROUNDS)
    return out


def rate_table(hits, by, level: float = 0.95):
    """The share of hits per group, with its Wilson interval: accuracy per subgroup, recall per class.

    Recall of class c is the accuracy on the images whose label is c, so ``by=[label, background]`` gives the
    per-class recall in each background group.

    Parameters
    ----------
    hits
        0/1 or boolean outcome per image (1 = classified correctly).
    by
        One grouping (array-like or ``pandas.Series``) or a list of them; categoricals keep their empty
        categories, which appear with ``n = 0`` and no estimate.
    level
        Coverage of the intervals.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``n``, ``hits``, ``rate``, ``lo``, ``hi`` (NaN where ``n = 0``).
    """
    import pandas as pd

    hits = pd.Series(_as_bool(hits).astype(int))
    keys = [k if isinstance(k, pd.Series) else pd.Series(k) for k in (by if isinstance(by, list) else [by])]
    keys = [k.reset_index(drop=True) for k in keys]  # align with the outcomes by position
    if any(len(k) != len(hits) for k in keys):
        raise ValueError("every grouping needs one value per outcome")
    g = hits.groupby(keys, observed=False)
    out = pd.DataFrame({"n": g.size(), "hits": g.sum()}).fillna(0).astype(int)
    out["rate"] = out["hits"] / out["n"].where(out["n"] > 0)
    bounds = [wilson_interval(k, n, level) if n else (np.nan, np.nan) for k, n in zip(out["hits"], out["n"])]
    out["lo"], out["hi"] = np.array(bounds, dtype=float).reshape(-1, 2).T
    return out

__all__ = ["LILAC_BLUE", "BACKGROUND_ROWS", "BACKGROUNDS", "wilson_interval", "difference_interval", "mcnemar_exact",
           "paired_bootstrap_diff", "load_predictions", "paired_outcomes", "paired_runs", "background_rgb", "background_groups",
           "rate_table"]
