"""What the model sees: colour, apparent cell size and sharpness of each image, and how datasets differ.

A model trained on PBC (one hospital, one analyser, one stain) meets another lab's cells with another
stain, camera, illumination and crop. This module puts numbers on those differences, per image
(:func:`measure_image`, :func:`measure_dataset`) and per dataset (:func:`compare_datasets`):

* **colour** in stain-aware spaces: CIE L*a*b* (lightness, green-red, blue-yellow; differences are
  roughly perceptual, so "the background is 20 units more yellow" means something) of the whole image,
  of the background (the brightest quarter of the pixels outside the white cell: the plasma and glass,
  which shows the illuminant and white balance, not the stain) and of the stained region; and the
  optical densities of haematoxylin, eosin and DAB after Ruifrok & Johnston's colour deconvolution
  (:func:`rgb_to_hed`, the matrix of ``skimage.color.rgb2hed``). PBC and the external sets are
  Romanowsky-type stains (May-Grünwald-Giemsa and similar), not H&E: read H/E/D as a fixed, physically
  motivated projection of optical density that is comparable across datasets, not as true
  concentrations of those dyes.
* **apparent size** as a fraction of the frame. External sets with masks (``masks/NNN.png`` beside
  ``images/``: nucleus white, cytoplasm grey, background black) give the true nucleus and cell
  fractions. PBC has no masks, so :func:`stained_region` estimates the *stained region* (the nucleus and
  densely stained granules; pale cytoplasm is missed), the same way on every dataset. Its error against
  the masks is measured by :func:`estimator_error`.
* **sharpness**: variance of the Laplacian of the grey image at the model's input size (comparable
  across datasets: every image is resized to it) and at the native size (depends on resolution, so only
  comparable between images of one size), and the native resolution itself.

Typical use::

    from bcc_utils.shift import measure_external, measure_pbc, compare_datasets
    frames = {"pbc test": measure_pbc("pbc-128", manifest="runs/lite0-cpu/manifest.csv"),
              "jtsc": measure_external("wbc-external/dataset1-jtsc")}
    print(compare_datasets(frames).round(3))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from bcc_utils.preprocess import HED_FROM_RGB, RGB_FROM_HED

#: The model input size of the ``cpu`` preset (EfficientNet-Lite0 at 96 px); pass the run's ``img_size``.
DEFAULT_INPUT_SIZE = 96
#: Share of the non-cell pixels, the brightest, that count as background (plasma and glass, not red cells).
BACKGROUND_QUANTILE = 0.75
#: The measures :func:`compare_datasets` summarises by default.
MEASURES = ("L_mean", "a_mean", "b_mean", "L_std", "bg_L", "bg_a", "bg_b", "stain_L", "stain_a", "stain_b",
            "H_mean", "E_mean", "stain_H", "stain_E", "stained_fraction", "mask_nucleus_fraction", "mask_cell_fraction",
            "sharpness_input", "sharpness_native", "width", "height")


# ------------------------------------------------------------------------------------------ colour
def _check_rgb(rgb) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array HxWx3, got {getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"of shape {getattr(rgb, 'shape', None)}")
    return rgb


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (sRGB, D65) of an RGB ``uint8`` image, float32: L* 0–100, a* and b* about −128…127.

    OpenCV's 8-bit LAB rescales the channels; converting floats in 0–1 gives the CIE units, in which a
    difference of about 2 is just visible and the numbers of different datasets can be compared.
    """
    return cv2.cvtColor(_check_rgb(rgb).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB optical densities (colour deconvolution), float32 HxWx3, ≥ 0.

    Written after the definition of ``skimage.color.rgb2hed`` (scikit-image is not a dependency; a test
    compares the two where it is installed): optical density
    ``log(rgb) / log(1e-6)`` (with ``rgb`` in 0–1, at least 1e-6) times :data:`HED_FROM_RGB`, negatives
    set to 0. Why optical density: stain absorbs light multiplicatively (Beer–Lambert), so in the log
    domain the dyes add up and can be separated linearly.
    """
    x = np.maximum(_check_rgb(rgb).astype(np.float32) / 255.0, 1e-6)
    stains = (np.log(x) / np.log(1e-6)) @ HED_FROM_RGB.astype(np.float32)
    return np.maximum(stains, 0.0)


# ------------------------------------------------------------------------------------------- size
def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask: everything not reachable from the border through the background."""
    m = mask.astype(np.uint8)
    h, w = m.shape
    padded = np.pad(m, 1)  # a border of background, so the flood fill starts outside everything
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (padded | (1 - flood))[1:-1, 1:-1].astype(bool)


def stained_region(rgb: np.ndarray) -> np.ndarray:
    """Estimate the stained region of the centred white cell (or platelet): a boolean HxW mask.

    The rule, chosen on PBC images by eye and then checked against the masks of the external sets:

    1. score = HSV saturation × darkness (100 − L*): nuclei are both strongly coloured and dark; a yellow
       background is saturated but light, red cells and pale cytoplasm are light and weakly saturated;
    2. smooth it (Gaussian, σ = frame/200) so granules and noise do not split the region;
    3. threshold with Otsu (per image: every lab stains and lights differently);
    4. close small gaps (elliptical kernel about frame/30: joins the lobes of a segmented nucleus);
    5. keep the largest connected component (the cell of interest; stray platelets fall away) and fill
       its holes.

    What it finds is the nucleus plus densely stained granules (eosinophils', basophils'), not the whole
    cell: pale cytoplasm is missed. On the wbc-external sets its area differs from the expert nucleus
    mask by a median of under 1 % of the frame (see :func:`estimator_error`), more for eosinophils.
    """
    lab = rgb_to_lab(rgb)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    score = sat * (100.0 - lab[..., 0])
    h, w = score.shape
    score = cv2.GaussianBlur(score, (0, 0), max(h, w) / 200.0)
    score8 = cv2.normalize(score, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if int(score8.max()) == int(score8.min()):
        return np.zeros((h, w), dtype=bool)  # a flat image has no stained region
    t, _ = cv2.threshold(score8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = max(3, round(max(h, w) / 30) | 1)
    closed = cv2.morphologyEx((score8 > t).astype(np.uint8), cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return _fill_holes(_largest_component(closed))


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(cell, nucleus)`` boolean masks from a wbc-external mask (nucleus white, cytoplasm grey, background black).

    Cell = nucleus + cytoplasm (any non-black pixel); nucleus = the brightest level (> 191, so that
    a resampled or JPEG-saved mask still reads right).
    """
    from bcc_utils.data.scan import read_image

    grey = read_image(path).max(axis=2)
    return grey > 63, grey > 191


def background_region(rgb: np.ndarray, cell: np.ndarray, quantile: float = BACKGROUND_QUANTILE) -> np.ndarray:
    """The brightest ``1 - quantile`` of the pixels outside ``cell`` (dilated by frame/20): plasma and glass.

    Why the brightest: outside the white cell lie red cells too; what is left when they are excluded
    shows the illuminant and white balance, which differ between microscopes and cameras. The dilation
    keeps the blurred rim of the cell out.
    """
    h, w = cell.shape
    k = max(3, round(max(h, w) / 20) | 1)
    around = cv2.dilate(cell.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    outside = ~around
    if outside.sum() < 16:  # a cell that fills the frame leaves no background worth measuring
        return np.zeros((h, w), dtype=bool)
    light = rgb_to_lab(rgb)[..., 0]
    return outside & (light >= np.quantile(light[outside], quantile))


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """Mean RGB (float, 0–255) of the background (:func:`background_region` around :func:`stained_region`).

    ``NaN`` three times when the cell fills the frame and no background is left to measure.
    """
    bg = background_region(rgb, stained_region(rgb))
    if not bg.any():
        return np.full(3, np.nan)
    return _check_rgb(rgb)[bg].astype(np.float64).mean(0)


def white_balance(rgb: np.ndarray, target) -> np.ndarray:
    """Scale each RGB channel so that the image's background colour becomes ``target`` (RGB, 0–255).

    A test-time normalisation that needs no label: the glass and plasma around a cell should look the same
    under every microscope, so a gain per channel that makes them match the training lab's removes the
    illuminant's and camera's share of the colour shift (a von Kries adaptation). It cannot undo a
    different stain. An image without background (see :func:`background_colour`) is returned unchanged.
    """
    rgb = _check_rgb(rgb)
    bg = background_colour(rgb)
    if not np.isfinite(bg).all() or (bg <= 0).any():
        return rgb.copy()
    gain = np.asarray(target, dtype=np.float64) / bg
    return np.clip(rgb.astype(np.float64) * gain + 0.5, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------- sharpness
def laplacian_variance(rgb: np.ndarray, size: int | None = None) -> float:
    """Variance of the Laplacian of the grey image (0–255 scale): high for sharp edges, low for blur.

    ``size``: resize to ``size`` × ``size`` first, as the model's preprocessing does
    (:func:`bcc_utils.preprocess.resize_square`), without CLAHE, so that optics and resolution are
    measured, not the contrast stretch; ``None`` measures at the native size.
    """
    from bcc_utils.preprocess import resize_square

    img = resize_square(_check_rgb(rgb), size) if size else rgb
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F, ksize=1).var())


# -------------------------------------------------------------------------------------- one image
def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def measure_image(rgb: np.ndarray, mask=None, input_size: int = DEFAULT_INPUT_SIZE) -> dict:
    """Every shift measure of one image.

    Parameters
    ----------
    rgb
        RGB ``uint8`` image, as :func:`bcc_utils.data.read_image` returns it.
    mask
        ``None``, a mask file (see :func:`read_mask`) or a ``(cell, nucleus)`` pair of boolean arrays.
    input_size
        The model's input side, for ``sharpness_input``.

    Returns
    -------
    dict
        ``width``, ``height``; ``L_mean``, ``a_mean``, ``b_mean`` and ``L_std``, ``a_std``, ``b_std`` (CIE LAB
        of the whole image); ``bg_L``, ``bg_a``, ``bg_b`` (mean of the background, see
        :func:`background_region`: outside the mask's cell when there is a mask, else outside the stained
        region); ``stain_L``, ``stain_a``, ``stain_b`` (mean inside the stained region); ``H_mean``,
        ``E_mean``, ``D_mean`` and ``H_std``, ``E_std`` (optical densities of the whole frame, :func:`rgb_to_hed`:
        they grow with the share of the frame the cell covers); ``stain_H``, ``stain_E`` (mean optical densities
        inside the stained region: the stain itself, whatever the cell's size);
        ``stained_fraction`` (the estimate of :func:`stained_region`); ``mask_nucleus_fraction`` and
        ``mask_cell_fraction`` (NaN without a mask); ``sharpness_input`` and ``sharpness_native``.
    """
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    lab = rgb_to_lab(rgb)
    hed = rgb_to_hed(rgb)
    stained = stained_region(rgb)
    cell = nucleus = None
    if mask is not None:
        cell, nucleus = read_mask(mask) if isinstance(mask, (str, os.PathLike)) else mask
        if cell.shape != (h, w):
            raise ValueError(f"mask of shape {cell.shape} does not fit an image of {h}×{w}")
    bg = background_region(rgb, cell if cell is not None else stained)
    out = {"width": w, "height": h}
    for i, c in enumerate("Lab"):
        out[f"{c}_mean"] = float(lab[..., i].mean())
    for i, c in enumerate("Lab"):
        out[f"{c}_std"] = float(lab[..., i].std())
    for i, c in enumerate("Lab"):
        out[f"bg_{c}"] = _mean(lab[..., i][bg])
    for i, c in enumerate("Lab"):
        out[f"stain_{c}"] = _mean(lab[..., i][stained])
    for i, c in enumerate("HED"):
        out[f"{c}_mean"] = float(hed[..., i].mean())
    out["H_std"], out["E_std"] = float(hed[..., 0].std()), float(hed[..., 1].std())
    out["stain_H"], out["stain_E"] = _mean(hed[..., 0][stained]), _mean(hed[..., 1][stained])
    out["stained_fraction"] = float(stained.mean())
    out["mask_nucleus_fraction"] = float(nucleus.mean()) if nucleus is not None else float("nan")
    out["mask_cell_fraction"] = float(cell.mean()) if cell is not None else float("nan")
    out["sharpness_input"] = laplacian_variance(rgb, input_size)
    out["sharpness_native"] = laplacian_variance(rgb)
    return out


# ----------------------------------------------------------------------------------------- datasets
def external_items(folder, class_map=None) -> list[tuple[Path, str, Path | None]]:
    """``(image, class, mask or None)`` of an external set (see :func:`bcc_utils.external.resolve_class_folders`).

    The mask of ``<set>/images/<class>/NNN.png`` is ``<set>/masks/NNN.png`` (any image suffix), when it exists.
    """
    from bcc_utils.data.files import IMAGE_SUFFIXES, image_files
    from bcc_utils.external import resolve_class_folders

    root, folders = resolve_class_folders(folder, class_map)
    masks_dir = root.parent / "masks"
    masks = {}
    if masks_dir.is_dir():
        masks = {f.stem: f for f in sorted(masks_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES}
    return [(f, c, masks.get(f.stem)) for c, dirs in folders.items() for f in image_files(dirs, warn=False)]


def pbc_items(data_dir=None, manifest=None, split: str | None = "test") -> list[tuple[Path, str, None]]:
    """``(image, class, None)`` of a PBC copy: the rows of ``manifest`` in ``split``, or every image.

    Parameters
    ----------
    data_dir
        Anything :func:`bcc_utils.paths.find_data_dir` accepts (``None``: ``$BCC_DATA_DIR``, the cache).
    manifest
        A split manifest (DataFrame or CSV with ``path,label,split``), e.g. a run's ``manifest.csv``;
        ``None``: every decodable image of the class folders (scanned, without hashes).
    split
        Which split of the manifest (``None``: all rows).
    """
    import pandas as pd

    from bcc_utils.data import locate_root
    from bcc_utils.paths import find_data_dir

    root = locate_root(find_data_dir(data_dir))
    if manifest is None:
        from bcc_utils.data.scan import scan

        records = scan(root, hashes=False).records
        return [(root / p, c, None) for p, c in zip(records["path"], records["label"])]
    df = manifest if isinstance(manifest, pd.DataFrame) else pd.read_csv(manifest)
    if split is not None:
        df = df[df["split"] == split]
    return [(root / p, c, None) for p, c in zip(df["path"], df["label"])]


def measure_dataset(items, name: str = "", input_size: int = DEFAULT_INPUT_SIZE, limit: int | None = None,
                    progress: bool = False):
    """Measure every image of a list of ``(image, class, mask or None)``: one tidy row per image.

    ``limit`` keeps at most that many items, spread evenly over the list. Unreadable files are skipped
    with a warning. Returns a DataFrame with ``dataset``, ``path``, ``label`` and the columns of
    :func:`measure_image`.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bcc_utils.data.scan import read_image

    items = list(items)
    if limit and len(items) > limit:
        items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
    rows = []
    for path, label, mask in tqdm(items, desc=name or "measure", leave=False, disable=not progress):
        try:
            rgb = read_image(path)
        except ValueError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            continue
        rows.append({"dataset": name, "path": Path(path).as_posix(), "label": label,
                     **measure_image(rgb, mask, input_size)})
    return pd.DataFrame(rows)


def measure_external(folder, class_map=None, input_size: int = DEFAULT_INPUT_SIZE, name: str | None = None,
                     progress: bool = False):
    """:func:`measure_dataset` of an external set (masks used where present); ``name`` defaults to the folder's.

    ``path`` is relative to the set's class folders, as in the predictions of
    :func:`bcc_utils.external.evaluate_external`, so the two tables merge on it.
    """
    from bcc_utils.external import resolve_class_folders

    name = name or Path(folder).name
    root = resolve_class_folders(folder, class_map)[0]
    df = measure_dataset(external_items(folder, class_map), name, input_size, progress=progress)
    if len(df):
        df["path"] = [Path(p).relative_to(root).as_posix() for p in df["path"]]
    return df


def measure_pbc(data_dir=None, manifest=None, split: str | None = "test", input_size: int = DEFAULT_INPUT_SIZE,
                name: str = "pbc", limit: int | None = None, progress: bool = False):
    """:func:`measure_dataset` of a PBC copy (see :func:`pbc_items`)."""
    return measure_dataset(pbc_items(data_dir, manifest, split), name, input_size, limit, progress)


def compare_datasets(frames, measures=MEASURES, by: str | None = None):
    """Median and interquartile range of each measure, per dataset (and per class with ``by="label"``).

    Parameters
    ----------
    frames
        ``{name: DataFrame}`` from :func:`measure_dataset` (or one DataFrame with a ``dataset`` column).
    measures
        Columns to summarise (those missing are left out).
    by
        An extra grouping column, e.g. ``"label"``.

    Returns
    -------
    pandas.DataFrame
        One row per measure (and group), columns ``(dataset, "median" | "q25" | "q75" | "iqr" | "n")``,
        so that the datasets stand side by side. Medians and quartiles, not means: a few odd images
        (a smudged cell, an empty frame) should not move the summary.
    """
    import pandas as pd

    df = pd.concat([f.assign(dataset=k) for k, f in frames.items()]) if isinstance(frames, dict) else frames
    measures = [m for m in measures if m in df.columns]
    keys = ["dataset"] + ([by] if by else [])
    long = df.melt(id_vars=keys, value_vars=measures, var_name="measure").dropna(subset=["value"])
    g = long.groupby([*keys[1:], "measure", "dataset"], sort=False)["value"]
    out = pd.DataFrame({"median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75), "n": g.size()})
    out["iqr"] = out["q75"] - out["q25"]
    out = out[["median", "q25", "q75", "iqr", "n"]].unstack("dataset")
    out = out.swaplevel(0, 1, axis=1)
    datasets = list(dict.fromkeys(df["dataset"]))
    out = out.reindex(columns=pd.MultiIndex.from_product([datasets, ["median", "q25", "q75", "iqr", "n"]]))
    order = {m: i for i, m in enumerate(measures)}
    return out.sort_index(key=lambda idx: idx.map(order) if idx.name == "measure" else idx, kind="stable")


def explain_confusions(external, reference, measures=("stained_fraction", "stain_a", "stain_b", "stain_H", "stain_E",
                                                    "sharpness_input", "bg_b"), top: int = 5, min_n: int = 3,
                       min_separation: float = 0.5):
    """Which measure makes the most common confusions look like the class the model chose.

    For each frequent confusion *true → predicted* of an external set, each measure's median over those
    images is placed on the reference (training) data's scale: ``position`` is 0 at the reference median
    of the true class and 1 at that of the predicted class (0.5: halfway). A position near or beyond 1
    says that, on this measure, the confused cells look like the predicted class in the training data —
    a candidate reason, not a proof (measures correlate, and the model may use none of them).

    A measure on which the two classes hardly differ in the reference data (their medians closer than
    ``min_separation`` times their mean interquartile range — e.g. the background colour, which is the same for
    every class of one lab) cannot say which class a cell resembles: its ``position`` is NaN. A position well
    beyond 1 means the whole set moved in the predicted class's direction, further than the two classes differ.

    Within a confusion, the measures that place the cells at least halfway (``position >= 0.5``) come first,
    the one that best separates the two classes in the reference data (largest ``separation``) at the top.

    Parameters
    ----------
    external
        Rows of :func:`measure_external` with a ``pred`` column (merged from the predictions on ``path``).
    reference
        Rows of :func:`measure_pbc` (e.g. the training lab's test split), with ``label``.
    measures
        Columns to place (those missing are left out).
    top, min_n
        The ``top`` most frequent confusions with at least ``min_n`` images.
    min_separation
        See above.

    Returns
    -------
    pandas.DataFrame
        One row per (confusion, measure): ``true``, ``pred``, ``n``, ``measure``, ``confused`` (median of the
        confused images), ``ref_true`` and ``ref_pred`` (reference medians), ``separation`` (their distance in
        interquartile ranges), ``position``; sorted by confusion frequency, then as described above.
    """
    import pandas as pd

    for col in ("label", "pred"):
        if col not in external.columns:
            raise ValueError(f"explain_confusions needs a {col!r} column in the external rows")
    measures = [m for m in measures if m in external.columns and m in reference.columns]
    wrong = external[external["label"] != external["pred"]]
    pairs = wrong.groupby(["label", "pred"]).size().sort_values(ascending=False, kind="stable")
    pairs = pairs[pairs >= min_n].head(top)
    grouped = reference.groupby("label")[measures]
    ref, iqr = grouped.median(), grouped.quantile(0.75) - grouped.quantile(0.25)
    rows = []
    for (t, p), n in pairs.items():
        if t not in ref.index or p not in ref.index:
            continue
        confused = wrong[(wrong["label"] == t) & (wrong["pred"] == p)][measures].median()
        for m in measures:
            span = ref.loc[p, m] - ref.loc[t, m]
            spread = (iqr.loc[p, m] + iqr.loc[t, m]) / 2
            separation = abs(span) / spread if spread > 0 else (float("inf") if span else float("nan"))
            pos = (confused[m] - ref.loc[t, m]) / span if separation >= min_separation else float("nan")
            rows.append({"true": t, "pred": p, "n": int(n), "measure": m, "confused": float(confused[m]),
                         "ref_true": float(ref.loc[t, m]), "ref_pred": float(ref.loc[p, m]),
                         "separation": float(separation), "position": float(pos)})
    out = pd.DataFrame(rows, columns=["true", "pred", "n", "measure", "confused", "ref_true", "ref_pred", "separation",
                                      "position"])
    if len(out):
        out["_order"] = out.groupby(["true", "pred"], sort=False).ngroup()
        out["_halfway"] = out["position"] >= 0.5
        out = (out.sort_values(["_order", "_halfway", "separation"], ascending=[True, False, False], kind="stable")
               .drop(columns=["_order", "_halfway"]))
    return out.reset_index(drop=True)


def estimator_error(df, target: str = "mask_nucleus_fraction", by: str | None = None):
    """How far :func:`stained_region`'s area lies from a mask's, as fractions of the frame.

    Parameters
    ----------
    df
        Rows of :func:`measure_dataset` with masks (others are ignored).
    target
        ``"mask_nucleus_fraction"`` (what the estimator aims at) or ``"mask_cell_fraction"``.
    by
        Optional grouping column besides ``dataset`` (e.g. ``"label"``).

    Returns
    -------
    pandas.DataFrame
        Per group: ``n``, ``median_abs_error``, ``p90_abs_error``, ``bias`` (median signed error,
        estimate − mask), ``median_rel_error`` (abs error / mask area), ``within_0.02`` (share of images
        within 2 % of the frame) and ``pearson_r``.
    """
    import pandas as pd

    d = df.dropna(subset=[target])
    keys = ["dataset"] + ([by] if by else [])
    rows = []
    for key, g in d.groupby(keys, sort=False):
        err = g["stained_fraction"] - g[target]
        ok = g[target] > 0
        r = np.corrcoef(g["stained_fraction"], g[target])[0, 1] if len(g) > 2 else float("nan")
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "n": len(g),
                     "median_abs_error": float(err.abs().median()), "p90_abs_error": float(err.abs().quantile(0.9)),
                     "bias": float(err.median()),
                     "median_rel_error": float((err.abs()[ok] / g[target][ok]).median()),
                     "within_0.02": float((err.abs() <= 0.02).mean()), "pearson_r": float(r)})
    return pd.DataFrame(rows)


__all__ = ["RGB_FROM_HED", "HED_FROM_RGB", "DEFAULT_INPUT_SIZE", "BACKGROUND_QUANTILE", "MEASURES", "rgb_to_lab",
           "rgb_to_hed", "stained_region", "read_mask", "background_region", "background_colour", "white_balance",
           "laplacian_variance", "measure_image", "explain_confusions",
           "external_items", "pbc_items", "measure_dataset", "measure_external", "measure_pbc", "compare_datasets",
           "estimator_error"]
