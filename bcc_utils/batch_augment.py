"""The paper's augmentations on a whole uint8 batch at once, for the CPU path (``augment="batch"``).

The per-image albumentations pipeline (:mod:`bcc_utils.augment`) costs more than a small model's
training step on two CPU cores. Here every component is one vectorised torch operation over the
batch, with its own random draw per image, and the same strengths and probabilities
(:class:`bcc_utils.augment.AugmentParams`):

* geometric — rotation, scaling and shift-scale-rotate merged into one affine warp per image
  (``grid_sample``, reflected border, as the albumentations pipeline merges them); flips and
  transposes come from :func:`bcc_utils.batches.dihedral_augment`;
* photometric — brightness/contrast, and hue/saturation/value (hue as a rotation of the chroma
  plane in YIQ, a linear stand-in for OpenCV's HSV shift);
* noise and motion blur — Gaussian noise of the same standard deviation, and a 1-D box blur along a
  random axis (horizontal or vertical only: flips and transposes make every direction of the cell
  equally likely), its kernel scaled from the paper's 300 px to the batch's size;
* cutout — 1–8 black squares of 4–8 % of the side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bcc_utils.augment import COMPONENTS, AugmentParams, check_component_names

# YIQ: Y is luma; I and Q span the chroma plane, so a rotation there shifts hue and keeps brightness.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _u(n, lo, hi, g):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _on(n, p, g):
    return torch.rand(n, generator=g) < p


def check_uint8_batch(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a uint8 B×3×S×S batch of square images."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} expects uint8 B×3×S×S square images, got {x.dtype} {tuple(x.shape)}")


def _affine(x, p: AugmentParams, enabled, g):
    n, s = x.shape[0], x.shape[-1]
    angle, scale, shift = torch.zeros(n), torch.ones(n), torch.zeros(n, 2)
    if "rotate" in enabled:
        angle += torch.where(_on(n, p.rotate_p, g), _u(n, -p.rotate_limit, p.rotate_limit, g), 0.0)
    if "scale" in enabled:
        scale *= torch.where(_on(n, p.scale_p, g), _u(n, 1 - p.scale_limit, 1 + p.scale_limit, g), 1.0)
    if "shift_scale_rotate" in enabled:
        on = _on(n, p.shift_scale_rotate_p, g)
        angle += torch.where(on, _u(n, -p.ssr_rotate_limit, p.ssr_rotate_limit, g), 0.0)
        scale *= torch.where(on, _u(n, 1 - p.ssr_scale_limit, 1 + p.ssr_scale_limit, g), 1.0)
        shift += torch.where(on[:, None], _u(2 * n, -p.shift_limit, p.shift_limit, g).view(n, 2), 0.0)
    if not (angle.any() or (scale != 1).any() or shift.any()):
        return x
    a = angle * math.pi / 180
    # affine_grid maps output to input coordinates: the inverse of "scale up, then rotate"
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    theta = torch.stack([torch.stack([cos, -sin, 2 * shift[:, 0]], 1), torch.stack([sin, cos, 2 * shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _photometric(x, p: AugmentParams, enabled, g):
    n = x.shape[0]
    if "brightness_contrast" in enabled:
        on = _on(n, p.brightness_contrast_p, g)
        b = torch.where(on, _u(n, -p.brightness_limit, p.brightness_limit, g), 0.0).view(n, 1, 1, 1) * 255
        c = torch.where(on, _u(n, 1 - p.contrast_limit, 1 + p.contrast_limit, g), 1.0).view(n, 1, 1, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean + b
    if "hue_saturation" in enabled:
        on = _on(n, p.hue_saturation_p, g)
        hue = torch.where(on, _u(n, -p.hue_shift_limit, p.hue_shift_limit, g), 0.0) * 2 * math.pi / 180  # OpenCV: 2°
        sat = torch.where(on, 1 + _u(n, -p.sat_shift_limit, p.sat_shift_limit, g) / 255 * 2, 1.0)
        val = torch.where(on, _u(n, -p.val_shift_limit, p.val_shift_limit, g), 0.0)
        x = hue_saturation(x, hue, sat, val)
    return x


def hue_saturation(x: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the chroma plane of float RGB images by ``hue`` radians, scale it by ``sat``, add ``val`` to luma.

    One value per image (B-vectors). YIQ keeps brightness (Y) apart from colour (I, Q), so the rotation
    changes hue only: a linear stand-in for OpenCV's HSV shift that runs on a whole batch.
    """
    n = x.shape[0]
    yiq = torch.einsum("ij,bjhw->bihw", _RGB2YIQ, x)
    i, q = yiq[:, 1], yiq[:, 2]
    cos, sin = torch.cos(hue).view(n, 1, 1), torch.sin(hue).view(n, 1, 1)
    s = sat.view(n, 1, 1)
    y = yiq[:, 0] if val is None else yiq[:, 0] + val.view(n, 1, 1)
    yiq = torch.stack([y, s * (cos * i - sin * q), s * (sin * i + cos * q)], 1)
    return torch.einsum("ij,bjhw->bihw", _YIQ2RGB, yiq)


def _noise_blur(x, p: AugmentParams, enabled, g):
    n = x.shape[0]
    if "motion_blur" in enabled:
        on = _on(n, p.motion_blur_p, g)
        # the paper's kernel limit is for 300-px images: scaled to this size, at least 3
        limit = max(3, round(p.motion_blur_limit * x.shape[-1] / 300))
        k = 2 * torch.randint(1, limit // 2 + 1, (n,), generator=g) + 1  # odd, 3..limit
        vertical = _on(n, 0.5, g)
        blurred = x.clone()
        for size in k[on].unique().tolist():
            pick = on & (k == size)
            for vert in (False, True):
                m = pick & (vertical == vert)
                if m.any():
                    kernel = torch.full((3, 1, size, 1) if vert else (3, 1, 1, size), 1.0 / size)
                    pad = (0, 0, size // 2, size // 2) if vert else (size // 2, size // 2, 0, 0)
                    blurred[m] = F.conv2d(F.pad(x[m], pad, mode="replicate"), kernel, groups=3)
        x = blurred
    if "noise" in enabled:
        on = _on(n, p.noise_p, g).view(n, 1, 1, 1)
        std = _u(n, *p.noise_std_range, g).view(n, 1, 1, 1) * 255
        x = x + on * std * torch.randn(x.shape, generator=g)
    return x


def _cutout(x, p: AugmentParams, g):
    n, s = x.shape[0], x.shape[-1]
    on = _on(n, p.cutout_p, g)
    holes = torch.randint(p.cutout_holes[0], p.cutout_holes[1] + 1, (n,), generator=g)
    keep = torch.ones(n, 1, s, s)
    ys, xs = torch.arange(s).view(1, s, 1), torch.arange(s).view(1, 1, s)
    for h in range(p.cutout_holes[1]):
        active = on & (holes > h)
        side = (_u(n, *p.cutout_size, g) * s).round().clamp(min=1).view(n, 1, 1)
        y0 = (torch.rand(n, generator=g) * s).floor().view(n, 1, 1)
        x0 = (torch.rand(n, generator=g) * s).floor().view(n, 1, 1)
        inside = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side) & active.view(n, 1, 1)
        keep[:, 0] = keep[:, 0] * (~inside)
    return x * keep


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, params: AugmentParams | None = None,
                  disable=()) -> torch.Tensor:
    """The paper's augmentations (less flips, see :func:`bcc_utils.batches.dihedral_augment`) on a uint8 batch.

    Parameters
    ----------
    x
        uint8 B×3×S×S (CPU; any memory format).
    generator
        Source of every random draw (one per image and component), so a seeded epoch is reproducible.
    params
        Strengths and probabilities (default :class:`bcc_utils.augment.AugmentParams`).
    disable
        Component names (:data:`bcc_utils.augment.COMPONENTS`) to leave out, as ``cfg.augment_disable``.

    Returns
    -------
    torch.Tensor
        uint8 B×3×S×S, rounded and clipped to 0–255.
    """
    check_uint8_batch(x, "augment_batch")
    check_component_names(list(disable))
    p = params or AugmentParams()
    enabled = set(COMPONENTS) - set(disable)
    out = x.float().contiguous()
    out = _affine(out, p, enabled, generator)
    out = _photometric(out, p, enabled, generator)
    out = _noise_blur(out, p, enabled, generator)
    if "cutout" in enabled:
        out = _cutout(out, p, generator)
    return out.round_().clamp_(0, 255).to(torch.uint8)
