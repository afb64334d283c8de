"""A corruption benchmark: how fast does accuracy fall when PBC images look a little like another lab's?

Five kinds of corruption, each at five severities (0 is the clean image), applied to the *original*
RGB image before the run's own preprocessing (CLAHE, resize), as another lab's camera, stain or crop
would change it:

=========  ==========================================================  =================================
kind       what changes                                                levels (severity 1 → 5)
=========  ==========================================================  =================================
blur       Gaussian blur (out of focus, a weaker objective)            σ 0.6, 1.0, 1.6, 2.4, 3.6 px
jpeg       JPEG compression (another camera's or archive's settings)   quality 70, 45, 30, 18, 10
color      a colour cast: the whole image moved in the a*b* plane of   ΔE 4, 8, 12, 18, 25
           CIE LAB (illuminant, white balance, stain hue)
zoom       zoom in: centre crop, resized back (a tighter crop or a     ×1.15, 1.3, 1.5, 1.75, 2.0
           higher magnification: the cell fills more of the frame)     (cell area ×1.3 … ×4)
noise      Gaussian pixel noise (a noisier sensor, low light)          σ 3, 6, 10, 15, 22 (of 255)
=========  ==========================================================  =================================

``zoom_out`` (shrink and pad with the border's colour, ×1/1.15 … ×1/2) is available but not in :data:`KINDS`: the
external sets show the cell *larger* than PBC does, so zooming in is the relevant direction.

Blur σ is in pixels of a 128-px frame and scaled to the image (σ 1.0 is 2.8 px on a 360-px original),
so that a severity means the same optical blur whatever the resolution of the copy the benchmark runs
on. The colour cast has a fixed size (ΔE, the CIE76 colour difference) and a direction in the a*b*
plane drawn per image from the seed, unless one is given (``direction=90``: towards yellow, +b*).
Everything random is drawn from ``numpy.random.default_rng((seed, kind, image key))``, the same for all
severities of one image, so results are reproducible and a higher severity is the same change, only
stronger.

Typical use::

    import torch; torch.set_num_threads(1)
    from bcc_utils.corruptions import corruption_curves, plot_corruption_curves
    curves = corruption_curves("runs/lite0-cpu/best.pt", "pbc-128", limit=800)
    print(curves.table)
    plot_corruption_curves(curves, references={"dataset1-jtsc": 0.19})

or from the command line, writing the curves (and every prediction) for :func:`load_curves`::

    python -m bcc_utils robustness runs/lite0-cpu/best.pt --data-dir pbc-128 --limit 800 --json curves.json
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: The five corruption kinds of the benchmark, in plotting order.
KINDS: tuple[str, ...] = ("blur", "jpeg", "color", "zoom", "noise")
#: Severities 1-5 of each kind (severity 0 is the clean image); units in the module docstring.
LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.6, 1.0, 1.6, 2.4, 3.6),
    "jpeg": (70, 45, 30, 18, 10),
    "color": (4.0, 8.0, 12.0, 18.0, 25.0),
    "zoom": (1.15, 1.3, 1.5, 1.75, 2.0),
    "noise": (3.0, 6.0, 10.0, 15.0, 22.0),
    "zoom_out": (1.15, 1.3, 1.5, 1.75, 2.0),
}
#: What each level means, for tables and plot legends.
UNITS: dict[str, str] = {"blur": "σ px @128", "jpeg": "quality", "color": "ΔE a*b*", "zoom": "× zoom in",
                         "noise": "σ /255", "zoom_out": "× zoom out"}
#: Severities of the benchmark.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Frame side in which blur σ is given.
REFERENCE_SIDE = 128


def _check(rgb) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array HxWx3, got {getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"of shape {getattr(rgb, 'shape', None)}")
    return rgb


def _rng(seed: int, kind: str, key) -> np.random.Generator:
    """One generator per (seed, kind, image): a stable integer of the key (a path, an index) via CRC32."""
    k = zlib.crc32(str(key).encode()) if not isinstance(key, (int, np.integer)) else int(key)
    return np.random.default_rng((int(seed), zlib.crc32(kind.encode()), k))


def level(kind: str, severity: int) -> float:
    """The parameter of ``kind`` at ``severity`` (1-5); see :data:`LEVELS`."""
    if kind not in LEVELS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose one of {', '.join(LEVELS)}")
    if not 1 <= int(severity) <= len(LEVELS[kind]):
        raise ValueError(f"severity must be 0 (clean) to {len(LEVELS[kind])}, got {severity}")
    return LEVELS[kind][int(severity) - 1]


#: The parameter of each kind that means "no change" (severity 0).
CLEAN_LEVEL: dict[str, float] = {"blur": 0.0, "jpeg": 100.0, "color": 0.0, "zoom": 1.0, "noise": 0.0, "zoom_out": 1.0}


def nearest_severity(kind: str, value: float) -> int:
    """The severity (0-5) of ``kind`` whose parameter lies nearest ``value`` (e.g. a measured ΔE or size ratio)."""
    levels = [CLEAN_LEVEL[kind]] + [level(kind, s) for s in SEVERITIES]
    return int(np.argmin([abs(v - value) for v in levels]))


def _blur(rgb, sigma):
    s = sigma * min(rgb.shape[:2]) / REFERENCE_SIDE
    return cv2.GaussianBlur(rgb, (0, 0), s, borderType=cv2.BORDER_REFLECT_101)


def _jpeg(rgb, quality):
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def _color(rgb, delta_e, rng, direction):
    angle = np.deg2rad(direction) if direction is not None else rng.uniform(0, 2 * np.pi)
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab[..., 1] += delta_e * np.cos(angle)
    lab[..., 2] += delta_e * np.sin(angle)
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _zoom(rgb, factor):
    """Zoom in: crop the centre 1/factor of each side, then resize back (bicubic)."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = rgb[top:top + ch, left:left + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC)


def _zoom_out(rgb, factor):
    """Zoom out: shrink by ``factor`` (area interpolation), then pad back to size with the border's median colour.

    Not by reflection: that would mirror the cell itself into the frame at the higher severities.
    """
    h, w = rgb.shape[:2]
    sh, sw = max(1, round(h / factor)), max(1, round(w / factor))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    ring = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    colour = [int(v) for v in np.median(ring, axis=0)]
    top, left = (h - sh) // 2, (w - sw) // 2
    return cv2.copyMakeBorder(small, top, h - sh - top, left, w - sw - left, cv2.BORDER_CONSTANT, value=colour)


def _noise(rgb, sigma, rng):
    field = rng.standard_normal(rgb.shape, dtype=np.float32)  # one field per image, scaled by the severity
    return np.clip(rgb.astype(np.float32) + sigma * field + 0.5, 0, 255).astype(np.uint8)


def corrupt(rgb: np.ndarray, kind: str, severity: int, seed: int = 0, key=0,
            direction: float | None = None) -> np.ndarray:
    """One corrupted copy of an RGB ``uint8`` image (same shape); severity 0 returns an unchanged copy.

    Parameters
    ----------
    rgb
        The original image (before CLAHE and resizing).
    kind
        One of :data:`LEVELS` (``blur``, ``jpeg``, ``color``, ``zoom``, ``noise``, ``zoom_out``).
    severity
        0 (clean) to 5.
    seed, key
        Together choose the random draws (noise field, colour direction): pass the image's path or index
        as ``key`` so that each image gets its own, reproducible draw.
    direction
        ``color`` only: the direction of the cast in the a*b* plane, degrees (0: +a* red, 90: +b* yellow,
        180: green, 270: blue); ``None`` draws one per image.
    """
    _check(rgb)
    if int(severity) == 0:
        if kind not in LEVELS:
            raise ValueError(f"unknown corruption kind {kind!r}; choose one of {', '.join(LEVELS)}")
        return rgb.copy()
    value = level(kind, severity)
    if kind == "blur":
        return _blur(rgb, value)
    if kind == "jpeg":
        return _jpeg(rgb, value)
    if kind == "color":
        return _color(rgb, value, _rng(seed, kind, key), direction)
    if kind == "zoom":
        return _zoom(rgb, value)
    if kind == "zoom_out":
        return _zoom_out(rgb, value)
    return _noise(rgb, value, _rng(seed, kind, key))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, dB (``inf`` when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------------------------------- benchmark
def stratified_subset(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` items drawn per class in proportion to its size (largest remainders; seeded)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


@dataclass
class CorruptionCurves:
    """What :func:`corruption_curves` measured.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (kind, severity), severity 0 (the clean images) included for every kind:
        ``kind``, ``severity``, ``level``, ``unit``, ``accuracy``, ``accuracy_lo``, ``accuracy_hi``
        (bootstrap 95 %), ``balanced_accuracy``, ``n``.
    clean : float
        Accuracy on the clean images.
    predictions : dict
        ``{(kind, severity): predicted class indices}``, ``("clean", 0)`` for the clean images.
    labels : numpy.ndarray
        True class indices, in the order of ``paths``.
    """

    table: object
    clean: float
    n: int
    n_split: int
    split: str
    checkpoint: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    predictions: dict = field(repr=False)
    wall_s: float = 0.0
    seed: int = 0

    def accuracy(self, kind: str) -> list[float]:
        """Accuracy at severities 0, 1, … for ``kind``."""
        t = self.table[self.table["kind"] == kind].sort_values("severity")
        return t["accuracy"].tolist()

    def confusion(self, kind: str, severity: int) -> np.ndarray:
        """Confusion counts (rows: true class, columns: predicted) at one (kind, severity)."""
        k = len(self.classes)
        pred = self.predictions[("clean", 0) if severity == 0 else (kind, severity)]
        return np.bincount(self.labels * k + pred, minlength=k * k).reshape(k, k)


def corruption_curves(checkpoint, data_dir=None, kinds=KINDS, severities=SEVERITIES, limit: int | None = None,
                      *, split: str = "test", seed: int = 0, color_direction: float | None = None,
                      device: str = "cpu", batch_size: int | None = None, n_resamples: int = 1000,
                      progress: bool = False) -> CorruptionCurves:
    """Accuracy of a run on its test split under each corruption kind and severity, and on the clean images.

    Each image is read from ``data_dir`` (the copy the run was trained on), corrupted
    (:func:`corrupt`, keyed by its path), preprocessed with the run's CLAHE and size
    (:func:`bcc_utils.preprocess.preprocess_image`) and classified with the run's test-time
    augmentation, as :func:`bcc_utils.inference.predict_images` would. The clean accuracy is therefore
    the run's own test accuracy on these images.

    Parameters
    ----------
    checkpoint
        ``best.pt`` of a run (its manifest gives the split).
    data_dir
        The PBC copy the run was trained on (see :func:`bcc_utils.paths.find_data_dir`).
    kinds, severities
        Which corruptions (see :data:`LEVELS`) and severities (1-5) to measure.
    limit
        Use a stratified random subset of this many images (seeded by ``seed``); ``None``: the whole split.
        The benchmark classifies every image ``1 + len(kinds) × len(severities)`` times (26 by default):
        on one CPU thread the ``cpu`` run (96 px, 4-view TTA) managed about 26 such classifications a
        second, corruption and preprocessing included, so 800 images took 13 minutes.
    seed
        Seeds the subset and the random corruptions.
    color_direction
        Direction of the ``color`` cast (degrees in the a*b* plane); ``None``: one per image.
    device, batch_size, n_resamples
        Where to run the model, images per forward pass (default: the run's ``eval_batch_size``), bootstrap
        resamples for the accuracy intervals.

    Returns
    -------
    CorruptionCurves
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bcc_utils.config import TrainConfig
    from bcc_utils.data import locate_root
    from bcc_utils.data.scan import read_image
    from bcc_utils.device import resolve_device
    from bcc_utils.inference import predict_proba
    from bcc_utils.metrics import bootstrap_ci
    from bcc_utils.paths import find_data_dir
    from bcc_utils.preprocess import preprocess_image
    from bcc_utils.run import load_model

    t0 = time.perf_counter()
    kinds, severities = list(kinds), [int(s) for s in severities]
    for kind in kinds:
        for s in severities:
            level(kind, s)  # refuse unknown kinds and severities before any work
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, dev)
    cfg = TrainConfig.from_dict(ckpt["config"])
    classes = list(ckpt["classes"])
    manifest = pd.DataFrame(ckpt["manifest"])
    part = manifest[manifest["split"] == split].reset_index(drop=True)
    if part.empty:
        raise ValueError(f"split {split!r} is empty in this checkpoint's manifest")
    if limit and limit < len(part):
        part = part.iloc[stratified_subset(part["label"].to_numpy(), int(limit), seed)].reset_index(drop=True)
    root = locate_root(find_data_dir(data_dir))
    paths = list(part["path"])
    y = np.array([classes.index(c) for c in part["label"]])
    conditions = [("clean", 0)] + [(k, s) for k in kinds for s in severities]
    preds = {c: [] for c in conditions}
    batch_size = batch_size or cfg.eval_batch_size
    clahe = cfg.clahe_settings()
    norm = {"mean": ckpt["norm"]["mean"], "std": ckpt["norm"]["std"]}
    for a in tqdm(range(0, len(paths), batch_size), desc="corruptions", leave=False, disable=not progress):
        originals = [read_image(root / p) for p in paths[a:a + batch_size]]
        for kind, s in conditions:
            x = np.stack([preprocess_image(corrupt(rgb, kind, s, seed, key=p, direction=color_direction)
                                           if s else rgb, cfg.img_size, clahe)
                          for rgb, p in zip(originals, paths[a:a + batch_size])])
            prob = predict_proba(model, x, **norm, device=dev, batch_size=batch_size, tta=cfg.tta,
                                 channels_last=cfg.channels_last)
            preds[(kind, s)].append(prob.argmax(1))
    preds = {c: np.concatenate(v) for c, v in preds.items()}
    k = len(classes)

    def row(kind, s, pred):
        correct = pred == y
        recalls = [correct[y == c].mean() for c in np.unique(y)]
        lo, hi = bootstrap_ci(y, pred, k, n_resamples, seed)["accuracy"]
        return {"kind": kind, "severity": s, "level": 0.0 if s == 0 else float(level(kind, s)),
                "unit": UNITS.get(kind, ""), "accuracy": float(correct.mean()), "accuracy_lo": lo, "accuracy_hi": hi,
                "balanced_accuracy": float(np.mean(recalls)), "n": len(y)}

    clean = row("clean", 0, preds[("clean", 0)])
    rows = []
    for kind in kinds:
        rows.append({**clean, "kind": kind, "unit": UNITS[kind]})
        rows += [row(kind, s, preds[(kind, s)]) for s in severities]
    return CorruptionCurves(table=pd.DataFrame(rows), clean=clean["accuracy"], n=len(y),
                            n_split=int((manifest["split"] == split).sum()), split=split,
                            checkpoint=os.fspath(checkpoint), classes=classes, paths=paths, labels=y,
                            predictions=preds, wall_s=time.perf_counter() - t0, seed=int(seed))


def save_curves(curves: CorruptionCurves, path, extra: dict | None = None) -> Path:
    """Write ``curves`` to a JSON file that :func:`load_curves` reads back (predictions included).

    The checkpoint is recorded as ``<run folder>/<file>``, never as a path of this machine; ``extra`` (e.g. the
    command and hardware) is stored under ``"run_info"``.
    """
    from bcc_utils.atomic import write_json

    ckpt = Path(curves.checkpoint)
    out = {"schema_version": 1, "checkpoint": f"{ckpt.parent.name}/{ckpt.name}", "split": curves.split,
           "n": curves.n, "n_split": curves.n_split, "seed": curves.seed, "clean": curves.clean,
           "wall_s": round(curves.wall_s, 1), "classes": curves.classes, "levels": {k: list(v) for k, v in LEVELS.items()},
           "table": curves.table.to_dict(orient="records"), "paths": curves.paths,
           "labels": [int(v) for v in curves.labels],
           "predictions": {f"{k}:{s}": [int(v) for v in pred] for (k, s), pred in curves.predictions.items()}}
    if extra:
        out["run_info"] = extra
    return write_json(out, path)


def load_curves(path) -> CorruptionCurves:
    """The :class:`CorruptionCurves` saved by :func:`save_curves` (or the ``robustness`` command)."""
    import json

    import pandas as pd

    d = json.loads(Path(path).read_text(encoding="utf-8"))
    preds = {(k, int(s)): np.asarray(v) for k, s, v in ((*key.rsplit(":", 1), v) for key, v in d["predictions"].items())}
    return CorruptionCurves(table=pd.DataFrame(d["table"]), clean=d["clean"], n=d["n"], n_split=d["n_split"],
                            split=d["split"], checkpoint=d["checkpoint"], classes=d["classes"], paths=d["paths"],
                            labels=np.asarray(d["labels"]), predictions=preds, wall_s=d["wall_s"], seed=d["seed"])


def plot_corruption_curves(curves, references: dict[str, float] | None = None, ax=None, chance: bool = True):
    """Accuracy against severity, one line (with its 95 % band) per corruption kind.

    Parameters
    ----------
    curves
        A :class:`CorruptionCurves` or its ``table``.
    references
        ``{label: accuracy}`` drawn as dashed horizontal lines, e.g. the run's accuracy on external sets,
        to read off which severity of which corruption costs as much as the real shift.
    ax
        Axes to draw on (default: a new figure).
    chance
        Draw a dotted line at the accuracy of guessing uniformly (1 / number of classes).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    table = curves.table if hasattr(curves, "table") else curves
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    else:
        fig = ax.figure
    for kind in dict.fromkeys(table["kind"]):
        t = table[table["kind"] == kind].sort_values("severity")
        levels = [v for s, v in zip(t["severity"], t["level"]) if s > 0]
        span = f"{levels[0]:g}–{levels[-1]:g}" if levels else ""
        line, = ax.plot(t["severity"], t["accuracy"] * 100, marker="o", label=f"{kind} ({UNITS[kind]} {span})")
        ax.fill_between(t["severity"], t["accuracy_lo"] * 100, t["accuracy_hi"] * 100, color=line.get_color(),
                        alpha=0.15, linewidth=0)
    right = max(table["severity"]) if len(table) else 1
    for name, acc in (references or {}).items():  # labelled on the right: the legend sits at the lower left
        ax.axhline(acc * 100, color="0.3", linestyle="--", linewidth=1)
        ax.annotate(name, (right, acc * 100), xytext=(0, 2), textcoords="offset points", fontsize=8, color="0.3",
                    ha="right")
    if chance and hasattr(curves, "classes"):
        ax.axhline(100 / len(curves.classes), color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted(set(table["severity"])))
    n = int(table["n"].iloc[0]) if len(table) else 0
    ax.set_title(f"accuracy under corruption ({n} test images)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


__all__ = ["KINDS", "LEVELS", "UNITS", "SEVERITIES", "REFERENCE_SIDE", "CLEAN_LEVEL", "level", "nearest_severity", "corrupt", "psnr",
           "stratified_subset", "CorruptionCurves", "corruption_curves", "save_curves", "load_curves",
           "plot_corruption_curves"]
