"""Figures for the data notebooks (01-03): image grids, count bars, histograms.

Every function returns a :class:`matplotlib.figure.Figure` made without pyplot
(so nothing is shown twice and nothing stays open); a notebook cell shows the
figure by ending with it, a widget with ``IPython.display.display(fig)``. The
figures are sized for committed notebooks (small, ``dpi`` from
:func:`set_style`). Images are RGB ``uint8`` arrays as returned by
:func:`bcc_utils.data.read_image`.

Figures of training runs (curves, confusion matrices) live in :mod:`bcc_utils.viz`.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from bcc_utils.preprocess import lightness  # re-exported: the histograms of notebook 02

#: Attribution shown under figures of PBC images (CC BY 4.0 asks for it).
PBC_CREDIT = "Images: PBC dataset, Acevedo et al. 2020, CC BY 4.0"


class PhotoFigure(Figure):
    """A figure of photographs, shown as JPEG in notebooks.

    Cell images compress about ten times better as JPEG than as PNG, which keeps
    committed notebooks light. :func:`set_style` tells IPython to skip the PNG
    copy of these figures; plots with lines and text stay PNG.
    """

    jpeg_quality = 85

    def _repr_jpeg_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="jpeg", bbox_inches="tight", pil_kwargs={"quality": self.jpeg_quality})
        return buf.getvalue()


def set_style(dpi: int = 80) -> None:
    """Matplotlib defaults for the series: small dpi (light notebooks), no top/right spines.

    Inside IPython, also register how figures are shown when a cell ends with
    one: PNG for plots, JPEG only for :class:`PhotoFigure` (our figures are made
    without pyplot, so the inline backend may not have registered itself yet).
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython comes with Jupyter
        shell = None
    if shell is not None:
        png = shell.display_formatter.formatters["image/png"]
        png.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight", base64=True))
        png.for_type(PhotoFigure, lambda fig: None)
    mpl.rcParams.update(
        {
            "figure.dpi": dpi,
            "savefig.dpi": dpi,
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.constrained_layout.use": False,
        }
    )


def add_credit(fig: Figure, text: str | None = PBC_CREDIT) -> Figure:
    """Write the dataset attribution in small grey letters at the bottom right of ``fig`` (``None``: nothing)."""
    if text:
        fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=6, color="0.45")
    return fig


def image_grid(
    images: Sequence[np.ndarray | None],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.4,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    credit: str | None = PBC_CREDIT,
    title_size: float = 7,
) -> Figure:
    """Show images in a grid, row by row.

    Parameters
    ----------
    images
        RGB (or grey) arrays; ``None`` leaves a cell empty.
    titles
        One title per image (``""`` for none).
    ncols
        Images per row.
    size
        Inches per image.
    row_labels
        A label written left of each row (e.g. the class name).
    suptitle
        Title of the whole figure.
    credit
        Small attribution line at the bottom right (``None`` for none).
    title_size
        Font size of the per-image titles.
    """
    n = len(images)
    nrows = max(1, -(-n // ncols))
    label_w = 0.9 if row_labels else 0.0
    # room for the suptitle above the first row's (possibly multi-line) image titles
    lines = max((str(t).count("\n") + 1 for t in titles or () if t), default=0)
    top = 0.35 + lines * title_size / 72 * 1.3 if suptitle else 0.0
    fig = PhotoFigure(figsize=(ncols * size + label_w, nrows * (size + (0.2 if titles else 0.0)) + top + 0.15))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i >= n or images[i] is None:
            continue
        img = images[i]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else None)
        if titles is not None and titles[i]:
            ax.set_title(titles[i], fontsize=title_size, pad=2)
    if row_labels:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
    if suptitle:  # anchored in inches from the top, so tall grids do not push it into the first titles
        fig.suptitle(suptitle, fontsize=10, y=1 - 0.06 / fig.get_figheight(), va="top")
    fig.subplots_adjust(
        left=label_w / fig.get_figwidth() if row_labels else 0.005, right=0.995,
        top=1 - top / fig.get_figheight() if suptitle else 0.99 - (0.0 if titles else 0.0),
        bottom=0.12 / fig.get_figheight() + 0.005, wspace=0.04, hspace=0.25 if titles else 0.04,
    )
    return add_credit(fig, credit)


def count_bars(
    counts: Mapping[str, int],
    title: str = "Images per class",
    xlabel: str = "images",
    highlight_ratio: bool = True,
    color: str = "tab:blue",
) -> Figure:
    """Horizontal bars of counts, each labelled with its number.

    With ``highlight_ratio`` the largest and smallest non-zero bars are coloured,
    labelled "(largest)" and "(smallest)", and the ratio between them is written
    in the title.
    """
    names = list(counts)
    values = np.array([counts[k] for k in names], dtype=float)
    fig = Figure(figsize=(6.0, 0.32 * len(names) + 0.9))
    ax = fig.subplots()
    colors = [color] * len(names)
    if highlight_ratio and (values > 0).any():
        nz = np.where(values > 0)[0]
        big, small = nz[values[nz].argmax()], nz[values[nz].argmin()]
        colors[big], colors[small] = "tab:red", "tab:orange"
        title = f"{title}: largest/smallest = {values[big] / values[small]:.2f}"
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names)
    notes = {c: f" ({word})" for c, word in (("tab:red", "largest"), ("tab:orange", "smallest"))}
    for yi, v, c in zip(y, values, colors):  # the coloured bars say what their colour means
        ax.text(v, yi, f" {int(v):,}{notes.get(c, '') if c != color else ''}", va="center", fontsize=8)
    ax.set_xlim(0, values.max() * 1.3 if len(values) else 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def size_bars(
    size_counts: Mapping[str, int],
    title: str = "Image sizes (width × height)",
    stated: str | None = "360x363",
    log: bool | None = None,
) -> Figure:
    """Bars of image-size counts, each labelled with its number.

    Parameters
    ----------
    size_counts
        ``{"WIDTHxHEIGHT": count}``, largest first.
    stated
        The size a paper states: its bar is blue, all others orange, and a
        legend says so (``None``: every bar blue, no legend).
    log
        Log axis; ``None`` chooses it only where rare sizes would be invisible
        on a linear axis (largest/smallest count above 50).
    """
    names = list(size_counts)
    values = [size_counts[k] for k in names]
    if log is None:
        log = bool(values) and max(values) / max(1, min(values)) > 50
    fig = Figure(figsize=(6.0, 0.3 * len(names) + 1.0))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    is_stated = [n == stated for n in names]
    colors = ["tab:blue" if s or stated is None else "tab:orange" for s in is_stated]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, [n.replace("x", " × ") for n in names])
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(0.8, max(values) * 4)
        ax.set_xlabel("images (log scale)")
    else:
        ax.set_xlim(0, max(values, default=1) * 1.15)
        ax.set_xlabel("images")
    if stated is not None:
        from matplotlib.patches import Patch

        handles = [Patch(color="tab:blue", label=f"the stated size ({stated.replace('x', ' × ')})"),
                   Patch(color="tab:orange", label="other sizes")]
        ax.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pipeline_diagram(
    stages: Sequence[str],
    kinds: Sequence[str] | None = None,
    title: str | None = None,
    box_width: float = 1.15,
) -> Figure:
    """Boxes joined by arrows, left to right: a data pipeline at a glance (notebook 02).

    Parameters
    ----------
    stages
        One label per box, in order (``"\\n"`` breaks a label into lines).
    kinds
        Optional group of each stage (e.g. ``"once"``, ``"every epoch"``): boxes of
        one kind share a colour, and a legend names the kinds in order of appearance.
    title
        Title above the boxes.
    box_width
        Inches per box (arrows included).
    """
    from matplotlib.patches import FancyBboxPatch, Patch

    n = len(stages)
    palette = ["#dbe9f6", "#fde0c5", "#d9f0d3", "#e8dff0", "#f0f0f0"]
    order = list(dict.fromkeys(kinds)) if kinds else []
    colour_of = {k: palette[i % len(palette)] for i, k in enumerate(order)}
    fig = Figure(figsize=(n * box_width + 0.2, 1.25 + (0.25 if title else 0.0) + (0.3 if order else 0.0)))
    ax = fig.add_axes((0.0, 0.3 / fig.get_figheight() if order else 0.0, 1.0,
                       1.0 - (0.3 / fig.get_figheight() if order else 0.0) - (0.25 / fig.get_figheight() if title else 0.0)))
    ax.set_xlim(0, n)
    ax.set_ylim(0, 1)
    ax.axis("off")
    w, h = 0.72, 0.62
    for i, label in enumerate(stages):
        face = colour_of[kinds[i]] if kinds else palette[0]
        ax.add_patch(FancyBboxPatch((i + (1 - w) / 2, (1 - h) / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=face, edgecolor="0.35", linewidth=0.8))
        ax.text(i + 0.5, 0.5, label, ha="center", va="center", fontsize=8)
        if i < n - 1:
            ax.annotate("", xy=(i + 1 + (1 - w) / 2 - 0.02, 0.5), xytext=(i + (1 + w) / 2 + 0.02, 0.5),
                        arrowprops={"arrowstyle": "-|>", "color": "0.3", "lw": 1.0, "shrinkA": 0, "shrinkB": 0})
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig.get_figheight(), va="top")
    if order:
        fig.legend(handles=[Patch(facecolor=colour_of[k], edgecolor="0.35", label=k) for k in order],
                   loc="lower center", ncols=len(order), fontsize=8, frameon=False, borderaxespad=0.1)
    return fig


def _short_model_name(name: str) -> str:
    """``tf_efficientnet_lite0`` -> ``EffNet-Lite0``, ``resnet50`` -> ``ResNet50``: fits a diagram's box."""
    name = name.removeprefix("tf_")
    if name.startswith("efficientnet_"):
        return "EffNet-" + name.removeprefix("efficientnet_").capitalize()
    return name.replace("resnet", "ResNet")


def training_stages(cfg) -> tuple[list[str], list[str]]:
    """Stage labels and kinds of one training run of ``cfg`` (a :class:`bcc_utils.config.TrainConfig`).

    The labels name this config's choices (size, sampler, augmentation, mixup, loss, schedule), so the
    diagrams of two presets show where they differ. Kinds: ``"once per image, cached"``,
    ``"every batch"``, ``"every epoch"``.
    """
    sampler = "class-balanced" if cfg.balance in ("sampler", "both") else "shuffled"
    augment = {"paper": "paper's 9\n(per image)", "batch": "paper's 9\n(per batch)", "robust": "lab-shift\n(per batch)",
               "batch+robust": "paper's 9 + lab-shift\n(per batch)",
               "dihedral": "flips\n(per batch)", "none": "none"}[cfg.augment]
    loss = ("class-weighted\n" if cfg.balance in ("loss", "both") else "") + "cross-entropy"
    if cfg.label_smoothing:
        loss += f"\n(smoothing {cfg.label_smoothing:g})"
    stages = [f"CLAHE +\nresize {cfg.img_size}" if cfg.clahe else f"resize {cfg.img_size}",
              f"sampler\n({sampler})", f"augment\n{augment}",
              f"mixup\np = {cfg.mixup_p:g}" if cfg.mixup_p else "no mixup",
              f"{_short_model_name(cfg.model)}\n({'%d stages frozen' % cfg.freeze_blocks if cfg.freeze_blocks else 'all trained'})",
              loss, f"{cfg.optimizer.replace('adamw', 'AdamW')} step\n({cfg.scheduler} lr)",
              "validate:\nkeep best"]
    kinds = ["once per image, cached"] + ["every batch"] * 6 + ["every epoch"]
    return stages, kinds


def training_diagram(cfg, title: str | None = None) -> Figure:
    """:func:`pipeline_diagram` of one training run of ``cfg`` (see :func:`training_stages`)."""
    stages, kinds = training_stages(cfg)
    return pipeline_diagram(stages, kinds, title=title, box_width=1.35)


def grouped_bars(
    table,
    title: str = "",
    ylabel: str = "",
    fmt: str = "{:.0f}",
    colors: Sequence[str] | None = None,
    annotate: bool = True,
) -> Figure:
    """Grouped vertical bars of a pandas DataFrame: one group per row, one bar per column.

    Parameters
    ----------
    table
        ``DataFrame`` indexed by group (e.g. class), one column per series (e.g. sampling mode).
    fmt
        Format of the numbers written on the bars.
    """
    groups, series = list(table.index), list(table.columns)
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig = Figure(figsize=(max(6.0, 0.75 * len(groups) * max(1, len(series)) ** 0.5), 3.0))
    ax = fig.subplots()
    for j, name in enumerate(series):
        vals = table[name].to_numpy(dtype=float)
        bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width,
                      label=str(name), color=None if colors is None else colors[j])
        if annotate and len(groups) * len(series) <= 40:
            for b, v in zip(bars, vals):
                ax.text(b.get_x() + b.get_width() / 2, v, fmt.format(v), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    top = float(np.nanmax(table.to_numpy(dtype=float))) if table.size else 1.0
    ax.set_ylim(0, top * (1.3 if len(series) > 1 else 1.1))  # room for the legend above the bars
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, ncols=min(4, len(series)), loc="upper center")
    fig.tight_layout()
    return fig


def before_after(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: tuple[str, str] = ("original", "CLAHE"),
    histogram: bool = True,
    size: float = 1.5,
    credit: str | None = PBC_CREDIT,
) -> Figure:
    """Columns of (before, after) images, optionally with their lightness histograms below.

    Parameters
    ----------
    pairs
        ``{column title: (before, after)}``, e.g. one cell type per column.
    labels
        Row labels of the two image rows.
    histogram
        Add a row with the L-channel histograms of before (grey) and after (colour).
    """
    names = list(pairs)
    nrows = 3 if histogram else 2
    fig = PhotoFigure(figsize=(len(names) * size + 0.6, nrows * size * 0.95 + 0.3))
    axes = fig.subplots(nrows, len(names), squeeze=False, gridspec_kw={"height_ratios": [1, 1, 0.7][:nrows]})
    for j, name in enumerate(names):
        before, after = pairs[name]
        for i, img in enumerate((before, after)):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[0, j].set_title(name, fontsize=8, pad=2)
        if histogram:
            ax = axes[2, j]
            bins = np.arange(257)
            ax.hist(lightness(before).ravel(), bins=bins, color="0.55", histtype="stepfilled", alpha=0.7,
                    label=labels[0])
            ax.hist(lightness(after).ravel(), bins=bins, color="tab:purple", histtype="step", label=labels[1])
            ax.set_yticks([])
            ax.set_xticks([0, 128, 255])
            ax.tick_params(labelsize=6)
            first, *_, last = ax.get_xticklabels()
            first.set_horizontalalignment("left")
            last.set_horizontalalignment("right")
            ax.set_xlim(0, 255)
            if j == 0:
                ax.set_ylabel("L histogram", fontsize=7)
    for i, label in enumerate(labels):
        axes[i, 0].set_ylabel(label, fontsize=8)
    if histogram:
        axes[2, -1].legend(fontsize=6, frameon=False, loc="upper left")
    fig.subplots_adjust(left=0.6 / fig.get_figwidth(), right=0.995, top=0.94, bottom=0.1, wspace=0.06, hspace=0.12)
    return add_credit(fig, credit)
