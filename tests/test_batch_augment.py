"""The vectorised augmentations of ``augment="batch"`` on real cells: what each component does, and that
nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcc_utils.augment import COMPONENTS, AugmentParams
from bcc_utils.batch_augment import augment_batch
from conftest import first_readable_cells


@pytest.fixture(scope="module")
def cells(sample_root):
    return first_readable_cells(sample_root, ("basophil", "eosinophil", "lymphocyte", "platelet"))


def only(name):
    return [c for c in COMPONENTS if c != name]


def always(**kw):
    p = {f"{c}_p": 1.0 for c in ("rotate", "scale", "shift_scale_rotate", "brightness_contrast", "hue_saturation",
                                 "noise", "motion_blur", "cutout")}
    return AugmentParams().with_overrides(**{**p, **kw})


def test_all_disabled_is_the_identity_and_draws_are_reproducible(cells):
    assert torch.equal(augment_batch(cells, torch.Generator().manual_seed(0), disable=COMPONENTS), cells)
    a = augment_batch(cells, torch.Generator().manual_seed(3))
    b = augment_batch(cells, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == cells.shape
    assert not torch.equal(a, augment_batch(cells, torch.Generator().manual_seed(4)))


def test_brightness_and_contrast_move_the_mean_and_the_spread(cells):
    g = torch.Generator().manual_seed(0)
    p = always(brightness_limit=0.2, contrast_limit=0.0)
    out = augment_batch(cells, g, p, disable=only("brightness_contrast")).float()
    shift = (out.mean((1, 2, 3)) - cells.float().mean((1, 2, 3))).abs()
    assert (shift > 0.5).all() and (shift <= 0.2 * 255 + 1).all()


def test_hue_saturation_changes_colour_not_geometry(cells):
    out = augment_batch(cells, torch.Generator().manual_seed(0), always(), disable=only("hue_saturation")).float()
    grey_in, grey_out = cells.float().mean(1), out.mean(1)
    # edges stay where they were: the lightness of the two images is strongly correlated pixel by pixel
    r = [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(grey_in, grey_out)]
    assert min(r) > 0.9 and (out - cells.float()).abs().mean() > 2


def test_rotation_keeps_the_centre_and_moves_the_rest(cells):
    p = always(rotate_limit=90.0)
    out = augment_batch(cells, torch.Generator().manual_seed(1), p, disable=only("rotate"))
    c = cells.shape[-1] // 2
    assert (out[..., c - 1:c + 1, c - 1:c + 1].float() - cells[..., c - 1:c + 1, c - 1:c + 1].float()).abs().mean() < 25
    assert (out.float() - cells.float()).abs().mean() > 10


def test_cutout_blackens_square_holes_of_the_right_size(cells):
    p = always(cutout_holes=(1, 1), cutout_size=(0.25, 0.25))
    out = augment_batch(cells, torch.Generator().manual_seed(0), p, disable=only("cutout"))
    zero = (out == 0).all(1) & (cells > 0).any(1)
    side = round(0.25 * cells.shape[-1])
    for z in zero:
        assert 0 < z.sum() <= side * side  # one hole, clipped at the border


def test_noise_has_the_configured_strength(cells):
    p = always(noise_std_range=(0.02, 0.02))
    out = augment_batch(cells, torch.Generator().manual_seed(0), p, disable=only("noise")).float()
    std = (out - cells.float()).std().item()
    assert 0.02 * 255 * 0.8 < std < 0.02 * 255 * 1.2  # rounding and clipping aside


def test_bad_input_is_refused_in_one_line(cells):
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(cells.float())
    with pytest.raises(ValueError, match="Unknown augmentation component"):
        augment_batch(cells, disable=["blur"])


def test_a_run_trains_with_batch_augmentation_mixup_and_balancing(data_dir, tmp_path, monkeypatch):
    import json

    from bcc_utils.train import config_for, train

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config_for("smoke", augment="batch", augment_disable="cutout", mixup_p=0.5, balance="loss", num_threads=1,
                     bootstrap_resamples=20)
    out = train(cfg, data_dir, tmp_path / "run", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["augment"] == "batch" and m["test"]["n"] > 0
