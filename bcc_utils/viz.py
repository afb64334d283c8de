"""Figures of training runs: curves, confusion matrices, per-class F1, misclassified cells, calibration, ablation.

Every function returns a :class:`matplotlib.figure.Figure` made without pyplot (nothing is shown
twice, nothing stays open); a notebook cell shows it by ending with it.
Inputs are what :func:`bcc_utils.train.train` writes: ``history.csv``, ``metrics.json``
(see :mod:`bcc_utils.metrics`) and ``predictions.csv``. Figures showing cells carry the
dataset's attribution (:data:`PBC_CREDIT`, CC BY 4.0 asks for it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bcc_utils.figures import PBC_CREDIT, image_grid
from bcc_utils.run import HISTORY_CSV, PREDICTIONS


def _history(history) -> pd.DataFrame:
    if isinstance(history, (str, os.PathLike)):
        p = Path(history)
        return pd.read_csv(p / HISTORY_CSV if p.is_dir() else p)
    return pd.DataFrame(history)


def plot_history(history, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch (train and validation).

    Parameters
    ----------
    history
        A run folder, a ``history.csv`` path, a DataFrame or a list of history rows.
    """
    h = _history(history)
    fig = Figure(figsize=(11, 3.0), layout="tight")
    axes = fig.subplots(1, 3)
    if h.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no epoch yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    e = h["epoch"]
    # two different quantities: the training loss includes label smoothing and is measured on augmented (mixed)
    # images while the weights change; the validation loss is the plain NLL of clean images after the epoch
    axes[0].plot(e, h["train_loss"], "o-", label="train: loss minimised\n(smoothing, augmented)")
    axes[0].plot(e, h["val_loss"], "s-", label="validation: NLL\n(clean images)")
    axes[0].set(title="loss (two different measures)", xlabel="epoch")
    axes[1].plot(e, h["train_acc"], "o-", label="train (augmented, during the epoch)")
    axes[1].plot(e, h["val_acc"], "s-", label="validation (after the epoch)")
    best = h.loc[h["val_acc"].idxmax()]
    axes[1].annotate(f"best {best['val_acc']:.2%}", (best["epoch"], best["val_acc"]), textcoords="offset points",
                     xytext=(0, -14), ha="center", fontsize=8)
    axes[1].set(title="accuracy", xlabel="epoch")
    axes[2].plot(e, h["lr"], "o-", color="0.3")
    axes[2].set(title="learning rate (start of epoch)", xlabel="epoch", yscale="log")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return fig


class LiveCurves:
    """A training callback that redraws :func:`plot_history` in a notebook after every epoch.

    Use as ``train(cfg, data_dir, out, callback=LiveCurves())``; outside IPython it prints the rows.
    """

    def __init__(self, title: str | None = None):
        self.rows: list[dict] = []
        self.title = title
        self._handle = None

    def __call__(self, row: dict) -> None:
        self.rows.append(dict(row))
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            return
        fig = plot_history(self.rows, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)


def plot_confusion_matrix(metrics_or_cm, classes: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Confusion matrix heatmaps: counts (left) and row-normalised recall per class (right).

    Parameters
    ----------
    metrics_or_cm
        A ``metrics.json`` dict (or its ``test`` section), or a K×K count matrix.
    classes
        Class names (taken from the metrics when given one).
    """
    import seaborn as sns

    m = metrics_or_cm
    if isinstance(m, Mapping):
        classes = classes or m.get("classes") or list(m.get("per_class", m.get("test", {}).get("per_class", {})))
        m = m.get("test", m)["confusion_matrix"]
    cm = np.asarray(m, dtype=float)
    classes = list(classes or range(len(cm)))
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig = Figure(figsize=(12, 4.8), layout="tight")
    axes = fig.subplots(1, 2)
    sns.heatmap(cm, annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=axes[0],
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 7})
    sns.heatmap(norm, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=axes[1],
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 7})
    axes[0].set_title("counts")
    axes[1].set_title("row-normalised (recall)")
    for ax in axes:
        ax.set(xlabel="predicted", ylabel="true")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.tick_params(axis="y", rotation=0, labelsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_per_class_f1(results: Mapping[str, dict], title: str = "F1 per class (test split)",
                      intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> Figure:
    """Grouped bars of per-class F1, one bar colour per run, with 95 % intervals where given.

    Parameters
    ----------
    results
        ``{run name: metrics dict}`` (e.g. from :func:`bcc_utils.metrics.load_results`).
    intervals
        ``{run name: {class: (lo, hi)}}`` drawn as error bars (e.g. :func:`bcc_utils.metrics.per_class_f1_ci`
        of the run's ``predictions.csv``); runs without intervals (a paper's table) get none.
    """
    intervals = intervals or {}
    runs = list(results)
    classes = list(next(iter(results.values()))["test"]["per_class"])
    width = 0.8 / max(len(runs), 1)
    fig = Figure(figsize=(max(7, len(classes) * 0.5 * (1 + len(runs))), 3.4), layout="tight")
    ax = fig.subplots()
    x = np.arange(len(classes))
    for i, run in enumerate(runs):
        pc = results[run]["test"]["per_class"]
        f1 = np.array([pc[c]["f1"] for c in classes])
        err = None
        if run in intervals:
            lo_hi = np.array([intervals[run][c] for c in classes]).T
            err = np.clip(np.stack([f1 - lo_hi[0], lo_hi[1] - f1]), 0, None)
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, f1, width, label=run, yerr=err, capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, classes, rotation=30, ha="right")
    low = min([results[r]["test"]["per_class"][c]["f1"] for r in runs for c in classes]
              + [iv[c][0] for iv in intervals.values() for c in classes])
    ax.set_ylim(max(0.0, min(0.9, low - 0.05)), 1.0)
    ax.set_ylabel("F1")
    ax.set_title(title, pad=22)
    # above the axes, so that no bar is hidden behind it
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(results), frameon=False)
    return fig


def misclassified_gallery(predictions, data_dir, n: int = 16, ncols: int = 8, clahe=None) -> Figure:
    """The most confidently wrong test images with true class, predicted class and confidence.

    Parameters
    ----------
    predictions
        ``predictions.csv`` path, a run folder, or its DataFrame.
    data_dir
        The dataset folder the run was trained on (paths in the predictions are relative to it).
    n
        How many images (the most confident mistakes first).
    clahe
        Optional :class:`~bcc_utils.preprocess.ClaheSettings` to show the images as the model saw them.
    """
    from bcc_utils.data import locate_root, read_image
    from bcc_utils.preprocess import apply_clahe

    df = predictions
    if not isinstance(df, pd.DataFrame):
        p = Path(df)
        df = pd.read_csv(p / PREDICTIONS if p.is_dir() else p)
    wrong = df[df["label"] != df["pred"]].sort_values("confidence", ascending=False).head(n)
    if wrong.empty:
        fig = Figure(figsize=(4, 1))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return fig
    root = locate_root(data_dir)
    images = []
    for path in wrong["path"]:
        rgb = read_image(root / path)
        images.append(apply_clahe(rgb, clahe) if clahe is not None else rgb)
    titles = [f"true {t}\npred {p} {c:.0%}" for t, p, c in zip(wrong["label"], wrong["pred"], wrong["confidence"])]
    return image_grid(images, titles, ncols=min(ncols, len(images)), size=1.6,
                      suptitle=f"{len(wrong)} most confident mistakes", credit=PBC_CREDIT)


def plot_speed_accuracy(results: Mapping[str, dict], paper: Mapping[str, float] | None = None) -> Figure:
    """Test accuracy (with 95 % CI) against training images/s per run, with the paper's values as lines."""
    fig = Figure(figsize=(6, 3.4), layout="tight")
    ax = fig.subplots()
    for run, m in results.items():
        t, speed = m["test"], m["timing"]["train_img_per_s"]
        lo, hi = t["accuracy_ci"]
        ax.errorbar(speed, t["accuracy"], yerr=[[t["accuracy"] - lo], [hi - t["accuracy"]]], fmt="o", capsize=3,
                    label=run)
    for name, acc in (paper or {}).items():
        ax.axhline(acc, ls="--", lw=1, color="0.5")
        ax.text(ax.get_xlim()[0], acc, f" paper {name} {acc:.2%}", va="bottom", fontsize=7, color="0.4")
    ax.set(xlabel="training images / s", ylabel="test accuracy", xscale="log")
    ax.legend(fontsize=7)
    return fig


def plot_reliability(predictions: Mapping[str, tuple], n_bins: int = 15, title: str | None = None) -> Figure:
    """Reliability diagram on the full [0, 1] range, one line per ``{label: (prob, y)}``, with each bin's count.

    Accuracy against mean confidence per bin; the diagonal is perfect calibration, below it the model is
    over-confident, above it under-confident. Each label shows its ECE (:func:`bcc_utils.calibration.ece`).
    A marker's area grows with its bin's count, and the bars underneath give the counts (log scale): the
    crowded bins are the ones the ECE weighs. Introduced in notebook 08.
    """
    from bcc_utils.calibration import ece, reliability_table

    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.1])
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    width = (1 / n_bins) / (len(predictions) + 0.5)
    for i, (label, (prob, y)) in enumerate(predictions.items()):
        t = reliability_table(prob, y, n_bins)
        t = t[t["count"] > 0]
        line, = ax.plot(t["confidence"], t["accuracy"], "-", lw=1.2, label=f"{label}: ECE {ece(prob, y, n_bins):.2%}")
        # area ∝ sqrt(share): a bin of a few cells stays visible beside one of thousands
        ax.scatter(t["confidence"], t["accuracy"], s=10 + 300 * np.sqrt(t["count"] / t["count"].sum()),
                   color=line.get_color(), alpha=0.6, edgecolors="white", linewidths=0.5, zorder=3, clip_on=False)
        ax_n.bar(t["lo"] + (i + 0.5) * width, t["count"], width, color=line.get_color(), label=label)
    ax.set(ylabel="accuracy in bin", xlim=(0, 1), ylim=(0, 1),
           title=title or f"Reliability diagram ({n_bins} equal-width bins)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax_n.set(yscale="log", xlabel="confidence", ylabel="predictions", xlim=(0, 1),
             title="predictions per bin (log scale): the marker areas above grow with these counts")
    ax_n.grid(alpha=0.3, axis="y")
    return fig


def plot_selective(predictions: Mapping[str, tuple], target: float = 0.995, threshold: float | None = None,
                   xlim: tuple[float, float] = (0.5, 1.0)) -> Figure:
    """Accuracy on the kept predictions against coverage, one line per ``{label: (prob, y)}``.

    The dotted line is ``target``. The marker on each line is where ``threshold`` (a confidence
    threshold chosen beforehand, e.g. on the validation split) lands; without one, each line's own
    best threshold for ``target`` (:func:`bcc_utils.calibration.threshold_for_accuracy`). ``xlim``: the
    coverage shown (``(0, 1)`` for a model that must refer most cells, e.g. on another lab's images).
    """
    from bcc_utils.calibration import at_threshold, selective_curve, threshold_for_accuracy

    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for label, (prob, y) in predictions.items():
        c = selective_curve(prob, y)
        point = at_threshold(prob, y, threshold) if threshold is not None else threshold_for_accuracy(prob, y, target)
        marked = point["threshold"] is not None and point["kept"]
        # the marked point goes into the legend: a note beside the point would leave the axes at low coverage
        note = (f"{label}: conf ≥ {point['threshold']:.3f}: {point['coverage']:.1%} kept, {point['accuracy']:.2%} right, "
                f"{point['referred']} referred" if marked else f"{label}: nothing kept at the threshold")
        line, = ax.plot(c["coverage"], c["accuracy"], label=note)
        if marked:
            ax.plot(point["coverage"], point["accuracy"], "o", color=line.get_color())
    ax.axhline(target, ls=":", color="0.3", lw=1)
    ax.set(xlabel="coverage (share of cells the model decides)", ylabel="accuracy on the decided cells",
           title="Refer when unsure: accuracy against coverage (dot: the threshold)", xlim=xlim)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return fig


def plot_ablation(summary: pd.DataFrame, title: str | None = None, seeds: str = "bootstrap") -> Figure:
    """Difference to the full pipeline per variant with its two intervals (see :func:`bcc_utils.ablation.summarize`).

    Thin line: the test-image interval; thick line: test images and seeds, from the two-level bootstrap
    (``seeds="bootstrap"``: ``diff_lo, diff_hi``) or Welch's t over the seeds (``seeds="t"``: ``t_lo, t_hi``).
    Grey: the thick interval contains 0 (no measurable effect at this budget); red: removing the component
    measurably hurts; green: removing it measurably helps.
    """
    if seeds not in ("bootstrap", "t"):
        raise ValueError(f"seeds must be 'bootstrap' or 't', got {seeds!r}")
    lo_col, hi_col, sig_col = ("diff_lo", "diff_hi", "significant") if seeds == "bootstrap" else ("t_lo", "t_hi",
                                                                                                  "t_significant")
    s = summary.drop(index="full", errors="ignore").iloc[::-1]
    fig = Figure(figsize=(7.5, 0.42 * len(s) + 1.4), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(s))
    for yi, (_, r) in zip(y, s.iterrows()):
        c = "tab:red" if r[sig_col] and r["diff"] < 0 else "tab:green" if r[sig_col] else "tab:gray"
        ax.plot([100 * r[lo_col], 100 * r[hi_col]], [yi, yi], color=c, lw=5, alpha=0.35, solid_capstyle="butt")
        ax.plot([100 * r["test_lo"], 100 * r["test_hi"]], [yi, yi], color=c, lw=1.5)
        ax.plot(100 * r["diff"], yi, "o", color=c)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, [f"{v.replace('_', ' ')} (n={n})" for v, n in zip(s.index, s["n_seeds"])])
    ax.set_xlabel("test accuracy minus full pipeline, percentage points\nthin: interval over test images; thick: "
                  + ("over test images and seeds" if seeds == "bootstrap" else "Welch t over seeds, plus test images"))
    ax.set_title(title or "What removing each component does")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_grid_curves(runs: pd.DataFrame, reference: str = "full") -> Figure:
    """Learning curves of an ablation grid (records with ``history``, see :func:`bcc_utils.ablation.run_record`).

    Left: the ``reference`` runs' training accuracy (augmented, mixed images, during the epoch) and validation
    accuracy (clean images, after it), one line per seed. Right: every variant's validation accuracy per epoch,
    mean over its seeds. Still rising at the last epoch means the budget under-fits; a falling validation
    curve while training accuracy rises means it over-fits.
    """
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, r in enumerate(runs[runs["variant"] == reference].itertuples()):
        h = pd.DataFrame(r.history)
        left.plot(h["epoch"], 100 * h["train_acc"], "o-", color="tab:orange", ms=3, alpha=0.8,
                  label=None if i else "train (augmented, mixup)")
        left.plot(h["epoch"], 100 * h["val_acc"], "s-", color="tab:blue", ms=3, alpha=0.8,
                  label=None if i else "validation (clean)")
    left.set(title=f"{reference}: one line per seed", xlabel="epoch", ylabel="accuracy (%)")
    left.legend(fontsize=8, loc="lower right")
    curves = {v: pd.concat([pd.DataFrame(h) for h in part["history"]]).groupby("epoch")["val_acc"].mean()
              for v, part in runs.groupby("variant", sort=False)}
    for v, c in curves.items():
        right.plot(c.index, 100 * c, "-", lw=2.5 if v == reference else 1.2, color="black" if v == reference else None,
                   label=f"{v.replace('_', ' ')} (n={int((runs['variant'] == v).sum())})")
    right.set(title="validation accuracy, mean over seeds", xlabel="epoch", ylabel="accuracy (%)")
    last = min(len(c) for c in curves.values())
    low = min(float(c.iloc[last // 2:].min()) for c in curves.values())
    right.set_ylim(100 * low - 1, None)  # the second half, where the variants differ
    right.set_xlim(last // 2 + 0.5, None)
    right.legend(fontsize=7, ncol=2, loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_per_class_change(changes: Mapping[str, pd.DataFrame], title: str | None = None) -> Figure:
    """Heatmaps of per-class changes in percentage points, one per measure (e.g. precision and recall).

    Parameters
    ----------
    changes
        ``{measure: DataFrame}``, rows classes, columns variants, values "variant minus reference" as fractions
        (e.g. ``per_class_precision(runs).sub(…["full"], axis=0)``).
    """
    import seaborn as sns

    fig = Figure(figsize=(5.2 * len(changes), 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(changes)))
    lim = max(float(np.nanmax(np.abs(100 * d.to_numpy()))) for d in changes.values()) or 1.0
    for ax, (name, d) in zip(axes, changes.items()):
        with warnings.catch_warnings():  # seaborn 0.13 calls a colormap method that matplotlib 3.11 deprecates
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(100 * d, annot=True, fmt="+.1f", cmap="RdBu", vmin=-lim, vmax=lim, center=0, ax=ax,
                        cbar=ax is axes[-1], cbar_kws={"label": "points"}, annot_kws={"fontsize": 7})
        ax.set_title(f"{name}: variant minus full pipeline")
        ax.set(xlabel="", ylabel="")
        ax.set_xticklabels([t.get_text().replace("_", " ") for t in ax.get_xticklabels()], rotation=35, ha="right")
        ax.tick_params(axis="y", rotation=0)
    if title:
        fig.suptitle(title)
    return fig


def plot_shift_ablation(pbc_diff: pd.Series, external: pd.DataFrame, reference: str = "full",
                        measure: str = "accuracy", title: str = "Removing one component: PBC's own test split vs "
                                                              "other labs' cells") -> Figure:
    """What removing each component does on PBC's test split and on external sets, in percentage points.

    Parameters
    ----------
    pbc_diff
        Difference to the reference per variant on the PBC test split (``summarize(runs)["diff"]``).
    external
        :func:`bcc_utils.ablation.external_summary`: one dot per set at the mean over seeds, its line
        from the lowest to the highest seed (each minus the reference's mean on that set).
    measure
        What ``external`` holds (``"accuracy"`` or ``"balanced_accuracy"``), for the axis label.
    title
        The axes' title.
    """
    variants = [v for v in pbc_diff.index if v != reference][::-1]
    sets = list(dict.fromkeys(external.index.get_level_values("set")))
    fig = Figure(figsize=(7.5, 0.5 * len(variants) + 2.0), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(variants))
    step = 0.22
    ax.plot(100 * pbc_diff.loc[variants], y + step, "D", color="black", label="PBC test split")
    for k, (s, colour) in enumerate(zip(sets, ("tab:orange", "tab:purple", "tab:green", "tab:brown"))):
        e = external.xs(s, level="set").reindex(variants)
        ref_mean = e["mean"] - e["diff"]
        yk = y - k * step
        ax.hlines(yk, 100 * (e["min"] - ref_mean), 100 * (e["max"] - ref_mean), color=colour, lw=1.5)
        ax.plot(100 * e["diff"], yk, "o", color=colour, label=f"{s} (line: seed range)")
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(y, [v.replace("_", " ") for v in variants])
    ax.set_xlabel("accuracy minus the full pipeline's, percentage points" if measure == "accuracy" else
                  f"minus the full pipeline's, points (PBC: accuracy; other sets: {measure.replace('_', ' ')})")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_external_confusion(reports: Mapping[str, dict], title: str | None = None) -> Figure:
    """Row-normalised confusion of external sets into *all* training classes, one heatmap per set.

    ``reports``: ``{label: report}`` from :func:`bcc_utils.external.evaluate_external`. Rows are the classes the
    set has (with their counts), columns every class the model knows — the model may answer one the set lacks.
    """
    fig = Figure(figsize=(4.3 * len(reports) + 0.8, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(reports)))
    for ax, (label, r) in zip(axes, reports.items()):
        counts = np.asarray(r["confusion"]["counts"], dtype=float)
        share = counts / counts.sum(1, keepdims=True)
        im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i, j in np.ndindex(share.shape):
            if counts[i, j]:
                ax.text(j, i, f"{share[i, j]:.0%}" if share[i, j] >= 0.005 else "<1%", ha="center", va="center",
                        fontsize=7, color="white" if share[i, j] < 0.6 else "black")
        rows = [f"{c} ({r['n_per_class'][c]})" for c in r["confusion"]["rows"]]
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xticks(range(len(r["confusion"]["columns"])), r["confusion"]["columns"], rotation=45, ha="right",
                      fontsize=8)
        ax.set_xlabel("predicted (all training classes)")
        ax.set_title(f"{label}: accuracy {r['accuracy']:.0%}, balanced {r['balanced_accuracy']:.0%}", fontsize=9)
    axes[0].set_ylabel("true class (count)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of the true class")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
