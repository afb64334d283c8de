"""CLAHE, square resize and device-side normalisation, on real PBC cells."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bcc_utils.data import read_image
from bcc_utils.paths import CLASSES
from bcc_utils.preprocess import (
    CLAHE_SPACES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClaheSettings,
    apply_clahe,
    clahe_variants,
    denormalize_batch,
    lightness_histogram,
    normalize_batch,
    preprocess_image,
    resize_square,
)


@pytest.fixture(scope="module")
def cells(sample_root):
    """Three real images per class (24 cells)."""
    out = []
    for name in CLASSES:
        files = sorted(p for p in (sample_root / name).glob("*.jpg") if not p.name.startswith("."))
        out += [read_image(p) for p in files[:3]]
    return out


def _lab(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float64)


def _local_contrast(rgb):
    """Mean standard deviation of lightness in 15×15 windows."""
    lum = _lab(rgb)[..., 0]
    var = cv2.blur(lum * lum, (15, 15)) - cv2.blur(lum, (15, 15)) ** 2
    return float(np.sqrt(np.maximum(var, 0)).mean())


def test_settings_validate_and_key():
    assert ClaheSettings().key() == "clahe-lab-c2-t8"
    assert ClaheSettings(clip_limit=3.0).key() != ClaheSettings().key()
    assert ClaheSettings(space="rgb").key() != ClaheSettings().key()
    with pytest.raises(ValueError, match="lab"):
        ClaheSettings(space="yuv")
    with pytest.raises(ValueError):
        ClaheSettings(clip_limit=0)
    with pytest.raises(ValueError):
        ClaheSettings(tile_grid_size=0)


def test_clahe_increases_local_contrast_on_every_cell(cells):
    ratios = [_local_contrast(apply_clahe(x)) / _local_contrast(x) for x in cells]
    assert min(ratios) > 1.2, ratios


def test_clahe_is_deterministic(cells):
    x = cells[5]
    first = apply_clahe(x, ClaheSettings())
    for _ in range(3):
        assert np.array_equal(apply_clahe(x, ClaheSettings()), first)
    assert np.array_equal(apply_clahe(x), first)  # None means the defaults


def test_clahe_lab_keeps_the_stain_colour(cells):
    """LAB equalises lightness only; per-channel RGB equalisation shifts the colour (a, b)."""

    def colour_shift(space):
        return np.mean([np.abs(_lab(apply_clahe(x, ClaheSettings(space=space)))[..., 1:] - _lab(x)[..., 1:]).mean()
                        for x in cells])

    lab, rgb = colour_shift("lab"), colour_shift("rgb")
    assert lab < 1.0
    assert rgb > 3 * lab


@pytest.mark.parametrize("space", CLAHE_SPACES)
def test_every_space_gives_rgb_uint8(cells, space):
    x = cells[0]
    y = apply_clahe(x, ClaheSettings(space=space))
    assert y.shape == x.shape and y.dtype == np.uint8
    assert not np.array_equal(y, x)
    if space == "gray":
        assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 1], y[..., 2])


def test_clahe_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        apply_clahe(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        apply_clahe(np.zeros((10, 10), np.uint8))


def test_resize_square_shrinks_with_area_averaging():
    board = (np.indices((900, 900)).sum(axis=0) % 2 * 255).astype(np.uint8)
    board = np.repeat(board[:, :, None], 3, axis=2)
    out = resize_square(board, 300)
    assert out.shape == (300, 300, 3) and out.dtype == np.uint8
    # 3×3 blocks of a 1-pixel checkerboard average to ~113 or ~142; sampling would give 0 or 255
    assert out.min() > 100 and out.max() < 160


def test_resize_square_real_sizes(cells):
    x = cells[0]
    big, small = resize_square(x, 300), resize_square(x, 128)
    assert big.shape == (300, 300, 3) and small.shape == (128, 128, 3)
    assert resize_square(small, 300).shape == (300, 300, 3)  # enlarging (the 128 px copy)
    assert resize_square(big, 300) is big


def test_preprocess_image_is_clahe_then_resize(cells):
    x = cells[3]
    out = preprocess_image(x, 300, ClaheSettings())
    assert out.shape == (300, 300, 3) and out.dtype == np.uint8
    assert np.array_equal(out, resize_square(apply_clahe(x), 300))
    assert np.array_equal(preprocess_image(x, 300, None), resize_square(x, 300))


def test_normalize_batch_values_and_round_trip():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0, 255
    y = normalize_batch(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and y.device == x.device
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(y[0, :, 0, 0], -mean / std, atol=1e-5)
    assert torch.allclose(y[0, :, 0, 1], (1 - mean) / std, atol=1e-5)
    assert torch.equal(denormalize_batch(y), x)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(normalize_batch(cl), y)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(x.float())


def test_notebook_helpers(cells):
    x = cells[2]
    variants = clahe_variants(x, clip_limit=3.0, tile_grid_size=4)
    assert list(variants) == ["original", *CLAHE_SPACES]
    assert np.array_equal(variants["lab"], apply_clahe(x, ClaheSettings(3.0, 4, "lab")))
    before, after = lightness_histogram(x), lightness_histogram(variants["lab"])
    assert before.shape == (256,) and before.sum() == after.sum() == x.shape[0] * x.shape[1]
    # equalisation spreads the lightness: more distinct levels in use
    assert (after > 0).sum() > (before > 0).sum()
