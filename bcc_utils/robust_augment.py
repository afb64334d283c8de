"""Augmentations against another lab's images, on a whole uint8 batch (``augment="robust"``).

PBC comes from one hospital, one analyser and one stain, so a model trained on it learns that
hospital's colours and scale as if they were biology. Each component below varies one thing that
differs between labs, with its own random draw per image (flips and transposes come from
:func:`bcc_utils.batches.dihedral_augment`, as in the other batch paths):

* ``zoom`` — cell size relative to the frame: a log-uniform zoom (other labs crop tighter or looser),
  with a free rotation (a cell has no "up") and a small shift, in one affine warp (reflected border);
* ``stain`` — the stain itself: each optical-density channel of Ruifrok & Johnston's colour
  deconvolution (:data:`bcc_utils.preprocess.HED_FROM_RGB`) is scaled and shifted (Tellez et al. 2018, "HED
  jitter"), because dyes add in optical density (Beer–Lambert), not in RGB;
* ``colour`` — what the stain's hue alone would teach: a rotation of hue, a change of saturation, and
  sometimes grey (so that granules and nuclear shape must carry the class when colour misleads);
* ``white_balance`` — the illuminant and camera: a gain per RGB channel (a yellow or blue background)
  and a brightness/contrast change;
* ``blur`` — focus and resolution: a Gaussian blur of random width (an upsampled small crop is soft).

Strengths are in :class:`RobustParams`; :data:`COMPONENTS` names them for ``cfg.augment_disable``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from bcc_utils.augment import check_names
from bcc_utils.batch_augment import _on, _u, check_uint8_batch, hue_saturation
from bcc_utils.preprocess import HED_FROM_RGB, RGB_FROM_HED

#: Names of the components, in the order they are applied.
COMPONENTS: tuple[str, ...] = ("zoom", "stain", "colour", "white_balance", "blur")


@dataclasses.dataclass(frozen=True)
class RobustParams:
    """Probabilities (``<component>_p``) and strengths of :func:`robust_batch`.

    ``image_p`` is the share of images that are augmented at all (each component then with its own
    probability); the rest pass unchanged, so the model still sees PBC as it is and keeps its accuracy there.

    ``zoom_range`` is the factor by which the cell grows (log-uniform; the external sets' cells are about
    1.4–1.5 times PBC's side, :mod:`bcc_utils.shift`);
    ``stain_scale`` is the range of the factor on each optical density (log-uniform; one external set's eosin
    density is 2.5 times PBC's) and ``stain_shift`` is added to it (a stain's OD is about 0–1 on these images);
    ``hue_limit`` is in degrees; ``grey_p`` is the share of images turned grey (among those coloured);
    ``gain_log`` is the largest log-gain per RGB channel (0.35: −30 % to +42 %), as far as the yellow
    background of one external set lies from PBC's; ``blur_sigma`` in pixels at 96 px (that set is 0.16 times
    as sharp).
    """

    image_p: float = 0.5
    zoom_range: tuple[float, float] = (0.9, 1.8)
    shift_limit: float = 0.05
    zoom_p: float = 0.8
    stain_scale: tuple[float, float] = (0.67, 2.5)
    stain_shift: float = 0.05
    stain_p: float = 0.8
    hue_limit: float = 25.0
    sat_range: tuple[float, float] = (0.6, 1.4)
    grey_p: float = 0.1
    colour_p: float = 0.8
    gain_log: float = 0.35
    brightness_limit: float = 0.15
    contrast_limit: float = 0.2
    white_balance_p: float = 0.8
    blur_sigma: tuple[float, float] = (0.3, 2.0)
    blur_p: float = 0.5


def check_component_names(names) -> None:
    """Raise ``ValueError`` listing the valid names if any of ``names`` is not in :data:`COMPONENTS`."""
    check_names(names, COMPONENTS, "robust augmentation component")


def _zoom(x, p: RobustParams, g):
    n, s = x.shape[0], x.shape[-1]
    on = _on(n, p.zoom_p, g)
    lo, hi = math.log(p.zoom_range[0]), math.log(p.zoom_range[1])
    scale = torch.where(on, torch.exp(_u(n, lo, hi, g)), 1.0)
    angle = torch.where(on, _u(n, -math.pi, math.pi, g), 0.0)
    shift = torch.where(on[:, None], _u(2 * n, -p.shift_limit, p.shift_limit, g).view(n, 2), 0.0)
    # affine_grid maps output to input coordinates: the inverse of "scale up, then rotate"
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 2 * shift[:, 0]], 1), torch.stack([sin, cos, 2 * shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _stain(x, p: RobustParams, g):
    n = x.shape[0]
    on = _on(n, p.stain_p, g).view(n, 1, 1)
    lo, hi = math.log(p.stain_scale[0]), math.log(p.stain_scale[1])
    alpha = torch.where(on, torch.exp(_u(3 * n, lo, hi, g)).view(n, 1, 3), 1.0)
    beta = torch.where(on, _u(3 * n, -p.stain_shift, p.stain_shift, g).view(n, 1, 3), 0.0)
    to_hed = torch.as_tensor(HED_FROM_RGB, dtype=torch.float32)
    to_rgb = torch.as_tensor(RGB_FROM_HED, dtype=torch.float32)
    b, _, h, w = x.shape
    od = -torch.log((x.clamp(min=1.0) / 255.0)).permute(0, 2, 3, 1).reshape(b, h * w, 3)
    od = (od @ to_hed * alpha + beta) @ to_rgb
    return (255.0 * torch.exp(-od)).reshape(b, h, w, 3).permute(0, 3, 1, 2)


def _colour(x, p: RobustParams, g):
    n = x.shape[0]
    on = _on(n, p.colour_p, g)
    hue = torch.where(on, _u(n, -p.hue_limit, p.hue_limit, g), 0.0) * math.pi / 180
    sat = torch.where(on, _u(n, *p.sat_range, g), 1.0)
    sat = torch.where(on & _on(n, p.grey_p, g), 0.0, sat)
    return hue_saturation(x, hue, sat)


def _white_balance(x, p: RobustParams, g):
    n = x.shape[0]
    on = _on(n, p.white_balance_p, g).view(n, 1, 1, 1)
    gain = torch.exp(_u(3 * n, -p.gain_log, p.gain_log, g)).view(n, 3, 1, 1)
    c = _u(n, 1 - p.contrast_limit, 1 + p.contrast_limit, g).view(n, 1, 1, 1)
    b = _u(n, -p.brightness_limit, p.brightness_limit, g).view(n, 1, 1, 1) * 255
    mean = x.mean((1, 2, 3), keepdim=True)
    y = (x * gain - mean) * c + mean + b
    return torch.where(on, y, x)


def _blur(x, p: RobustParams, g):
    n = x.shape[0]
    on = _on(n, p.blur_p, g)
    if not on.any():
        return x
    sigma = _u(n, *p.blur_sigma, g)
    radius = max(1, math.ceil(3 * p.blur_sigma[1]))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma[on, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # one normalised 1-D kernel per blurred image
    m = int(on.sum())
    y = x[on].reshape(1, m * 3, *x.shape[-2:])
    kk = k.repeat_interleave(3, 0)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kk.view(m * 3, 1, 1, -1), groups=m * 3)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kk.view(m * 3, 1, -1, 1), groups=m * 3)
    out = x.clone()
    out[on] = y.view(m, 3, *x.shape[-2:])
    return out


def robust_batch(x: torch.Tensor, generator: torch.Generator | None = None, params: RobustParams | None = None,
                 disable=()) -> torch.Tensor:
    """The lab-shift augmentations (less flips) on a uint8 batch.

    Parameters
    ----------
    x
        uint8 B×3×S×S (CPU; any memory format).
    generator
        Source of every random draw, so a seeded epoch is reproducible.
    params
        Strengths and probabilities (default :class:`RobustParams`).
    disable
        Component names (:data:`COMPONENTS`) to leave out, as ``cfg.augment_disable``.

    Returns
    -------
    torch.Tensor
        uint8 B×3×S×S, rounded and clipped to 0–255.
    """
    check_uint8_batch(x, "robust_batch")
    check_component_names(list(disable))
    p = params or RobustParams()
    chosen = _on(x.shape[0], p.image_p, generator).view(-1, 1, 1, 1)
    out = x.float().contiguous()
    steps = {"zoom": _zoom, "stain": _stain, "colour": _colour, "white_balance": _white_balance, "blur": _blur}
    for name in COMPONENTS:
        if name not in disable:
            out = steps[name](out, p, generator)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return torch.where(chosen, out, x)


__all__ = ["COMPONENTS", "RobustParams", "robust_batch", "check_component_names"]
