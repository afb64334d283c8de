"""Deterministic preprocessing: CLAHE, square resize, ImageNet normalisation.

This is the part of the pipeline that gives the same output every epoch, so
:mod:`bcc_utils.cache` computes it once per image. Everything here works on
RGB ``uint8`` arrays; only :func:`normalize_batch` produces floats, and it runs
on the training device, after the DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

#: Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB; columns: optical density of
#: R, G, B), as in ``skimage.color.rgb_from_hed``; their inverse turns optical density into stain amounts
#: (used by :mod:`bcc_utils.shift` to measure stains and by :mod:`bcc_utils.robust_augment` to vary them).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

if TYPE_CHECKING:  # torch is imported lazily: preprocessing alone does not need it
    import torch

#: Colour spaces :func:`apply_clahe` can equalise in.
CLAHE_SPACES: tuple[str, ...] = ("lab", "hsv-v", "rgb", "gray")

#: ImageNet statistics (RGB, 0–1 scale) used by every pretrained backbone in the series.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClaheSettings:
    """Settings of Contrast Limited Adaptive Histogram Equalisation.

    Parameters
    ----------
    clip_limit
        OpenCV clip limit (2.0 in the paper); higher means more contrast and more noise.
    tile_grid_size
        Number of tiles per side (8 → an 8×8 grid, whatever the image size).
    space
        Where to equalise, one of :data:`CLAHE_SPACES`; see :func:`apply_clahe`.
    """

    clip_limit: float = 2.0
    tile_grid_size: int = 8
    space: str = "lab"

    def __post_init__(self) -> None:
        if self.space not in CLAHE_SPACES:
            raise ValueError(f"Unknown CLAHE space {self.space!r}; choose one of {', '.join(CLAHE_SPACES)}.")
        if not self.clip_limit > 0:
            raise ValueError(f"clip_limit must be > 0, got {self.clip_limit}.")
        if int(self.tile_grid_size) != self.tile_grid_size or self.tile_grid_size < 1:
            raise ValueError(f"tile_grid_size must be a positive integer, got {self.tile_grid_size}.")

    def key(self) -> str:
        """Short string identifying these settings (used in cache keys and file names)."""
        return f"clahe-{self.space}-c{float(self.clip_limit):g}-t{int(self.tile_grid_size)}"


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"Expected an RGB uint8 array of shape HxWx3, got shape {shape} and dtype {dtype}.")


def apply_clahe(rgb: np.ndarray, settings: ClaheSettings | None = None) -> np.ndarray:
    """Apply CLAHE with a fixed clip limit (deterministic, unlike ``albumentations.CLAHE(clip_limit=2.0)``).

    The default equalises only the lightness channel L of CIE LAB. Equalising
    R, G and B separately stretches each channel by a different curve, which
    changes their ratios and therefore the *hue* of the stain (purple nuclei
    drift towards blue or red, eosinophil granules change colour) — colour is
    diagnostic here, so we keep a and b untouched. ``"hsv-v"`` (equalise V of
    HSV), ``"rgb"`` (each channel) and ``"gray"`` (grey image, returned as three
    equal channels) exist so the alternatives can be compared.

    Parameters
    ----------
    rgb
        RGB ``uint8`` image, HxWx3.
    settings
        :class:`ClaheSettings`; ``None`` means the defaults (clip 2.0, 8×8 tiles, LAB).

    Returns
    -------
    numpy.ndarray
        New RGB ``uint8`` image of the same shape.
    """
    _check_rgb(rgb)
    s = settings or ClaheSettings()
    clahe = cv2.createCLAHE(clipLimit=float(s.clip_limit), tileGridSize=(int(s.tile_grid_size),) * 2)
    if s.space == "lab":
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if s.space == "hsv-v":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hsv[..., 2] = clahe.apply(np.ascontiguousarray(hsv[..., 2]))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if s.space == "rgb":
        return cv2.merge([clahe.apply(np.ascontiguousarray(rgb[..., c])) for c in range(3)])
    gray = clahe.apply(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def clahe_variants(rgb: np.ndarray, clip_limit: float = 2.0, tile_grid_size: int = 8) -> dict[str, np.ndarray]:
    """``{"original": rgb, space: CLAHE in that space}`` for every space in :data:`CLAHE_SPACES` (figures, widgets)."""
    out = {"original": rgb}
    for space in CLAHE_SPACES:
        out[space] = apply_clahe(rgb, ClaheSettings(clip_limit, tile_grid_size, space))
    return out


def lightness(rgb: np.ndarray) -> np.ndarray:
    """The L channel of CIE LAB (OpenCV's 8-bit scale, 0-255) of an RGB ``uint8`` image."""
    _check_rgb(rgb)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0]


def lightness_histogram(rgb: np.ndarray) -> np.ndarray:
    """Histogram (256 bins, counts) of the L channel of LAB — the channel CLAHE equalises by default."""
    return np.bincount(lightness(rgb).ravel(), minlength=256)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` × ``size`` (the PBC images are nearly square: 360×363 → ≤1 % stretch).

    Area interpolation when shrinking (averages pixels, no aliasing), bicubic
    when enlarging (e.g. the 128 px copy at 300 px). Returns the input itself
    when it already has the target size.
    """
    _check_rgb(rgb)
    size = int(size)
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def preprocess_image(rgb: np.ndarray, size: int, clahe: ClaheSettings | None = ClaheSettings()) -> np.ndarray:
    """Deterministic part of the pipeline: CLAHE (at the source resolution), then :func:`resize_square`.

    Parameters
    ----------
    rgb
        Decoded RGB ``uint8`` image (e.g. from :func:`bcc_utils.data.read_image`).
    size
        Side of the square output (300 in the paper's protocol).
    clahe
        CLAHE settings, or ``None`` to skip CLAHE.
    """
    out = apply_clahe(rgb, clahe) if clahe is not None else rgb
    return resize_square(out, size)


def normalize_batch(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=None) -> torch.Tensor:
    """Turn a ``uint8`` BCHW batch into normalised floats, on the batch's own device.

    Call it after ``batch.to(device)``: the DataLoader then moves 1 byte per
    value instead of 4 and the GPU does the arithmetic.

    Parameters
    ----------
    x
        ``uint8`` tensor, B×3×H×W (any memory format).
    mean, std
        Per-channel statistics on the 0–1 scale (ImageNet by default).
    dtype
        Output floating dtype (default ``torch.float32``).

    Returns
    -------
    torch.Tensor
        ``(x / 255 - mean) / std``.
    """
    import torch

    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"Expected a uint8 B×3×H×W tensor, got dtype {x.dtype} and shape {tuple(x.shape)}.")
    dtype = dtype or torch.float32
    m = torch.tensor(mean, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
    return (x.to(dtype) - m) / s


def denormalize_batch(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Inverse of :func:`normalize_batch`, rounded back to ``uint8`` (for showing images)."""
    import torch

    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.float() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
