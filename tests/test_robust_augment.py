"""The lab-shift augmentations of ``augment="robust"`` on real cells: each component changes what it
claims to change (size, stain, illuminant, sharpness) and leaves the rest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bcc_utils.config import config_for
from bcc_utils.robust_augment import COMPONENTS, RobustParams, robust_batch
from conftest import first_readable_cells


@pytest.fixture(scope="module")
def cells(sample_root):
    return first_readable_cells(sample_root, ("basophil", "eosinophil", "lymphocyte", "neutrophil"))


def only(name, **kw):
    p = dataclasses.replace(RobustParams(), **{"image_p": 1.0, f"{name}_p": 1.0, **kw})
    return p, [c for c in COMPONENTS if c != name]


def dark_fraction(x, reference):
    """Share of the frame darker than the darkest tenth of ``reference`` (the nucleus): the cell's apparent size."""
    threshold = reference.float().mean(1).flatten(1).quantile(0.1, dim=1).view(-1, 1, 1)
    return (x.float().mean(1) < threshold).float().mean((1, 2))


def test_all_disabled_is_the_identity_and_draws_are_reproducible(cells):
    assert torch.equal(robust_batch(cells, torch.Generator().manual_seed(0), disable=COMPONENTS), cells)
    a = robust_batch(cells, torch.Generator().manual_seed(3))
    b = robust_batch(cells, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == cells.shape
    assert not torch.equal(a, robust_batch(cells, torch.Generator().manual_seed(4)))


def test_images_not_chosen_pass_unchanged_and_the_chosen_ones_change(cells):
    batch = cells.repeat(16, 1, 1, 1)
    out = robust_batch(batch, torch.Generator().manual_seed(0), dataclasses.replace(RobustParams(), image_p=0.5))
    same = (out == batch).flatten(1).all(1)
    assert 0.25 < same.float().mean() < 0.75  # about half, of 16 x 4 images
    changed = (out.int() - batch.int()).abs().flatten(1).float().mean(1)
    assert (changed[~same] > 1.0).all()  # chosen images are really augmented, not rounded back
    assert torch.equal(robust_batch(batch, torch.Generator().manual_seed(0), dataclasses.replace(RobustParams(), image_p=0.0)),
                       batch)


def test_zoom_in_makes_the_cell_larger_and_zoom_out_smaller(cells):
    p, off = only("zoom", zoom_range=(2.0, 2.0), shift_limit=0.0)
    bigger = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off)
    p, off = only("zoom", zoom_range=(0.7, 0.7), shift_limit=0.0)
    smaller = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off)
    before = dark_fraction(cells, cells)
    # area grows with the square of the zoom (less what leaves the frame and what interpolation softens)
    assert (dark_fraction(bigger, cells) > 1.8 * before).all()
    assert (dark_fraction(smaller, cells) < 0.97 * before).all()  # the reflected border adds some dark back


def test_stain_jitter_with_no_change_is_the_identity_within_rounding(cells):
    p, off = only("stain", stain_scale=(1.0, 1.0), stain_shift=0.0)
    out = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off)
    assert (out.int() - cells.int()).abs().max() <= 1  # RGB -> optical density -> stains -> back


def test_stain_jitter_changes_colour_not_geometry(cells):
    p, off = only("stain")
    out = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off).float()
    grey_in, grey_out = cells.float().mean(1), out.mean(1)
    r = [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(grey_in, grey_out)]
    assert min(r) > 0.9 and (out - cells.float()).abs().mean() > 2


def test_white_balance_changes_the_background_colour(cells):
    p, off = only("white_balance", brightness_limit=0.0, contrast_limit=0.0, gain_log=0.2)
    out = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off).float()
    bright = cells.float().mean(1) > 200  # background pixels
    ratio = torch.stack([(out[i][:, bright[i]].mean(1) + 1) / (cells.float()[i][:, bright[i]].mean(1) + 1)
                         for i in range(len(cells))])
    spread = ratio.max(1).values / ratio.min(1).values  # the channels moved by different gains
    assert (spread > 1.02).all() and (ratio < 1.25).all()


def test_blur_lowers_sharpness(cells):
    p, off = only("blur", blur_sigma=(1.0, 1.5))
    out = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off).float()

    def sharpness(x):  # mean squared horizontal gradient of the grey image
        grey = x.float().mean(1)
        return (grey[:, :, 1:] - grey[:, :, :-1]).pow(2).mean((1, 2))

    assert (sharpness(out) < 0.7 * sharpness(cells)).all()
    assert (out.mean((1, 2, 3)) - cells.float().mean((1, 2, 3))).abs().max() < 2  # brightness kept


def test_config_accepts_robust_components_and_rejects_others():
    assert config_for("cpu", augment="robust", augment_disable="stain,zoom").disabled_components == ["stain", "zoom"]
    with pytest.raises(ValueError, match="cutout"):
        config_for("cpu", augment="robust", augment_disable="cutout")
    with pytest.raises(ValueError, match="valid names"):
        config_for("cpu", augment="batch", augment_disable="stain")


def test_colour_turns_some_cells_grey_and_keeps_their_lightness(cells):
    p, off = only("colour", grey_p=1.0)
    out = robust_batch(cells, torch.Generator().manual_seed(0), p, disable=off).float()
    assert (out.std(1).mean((1, 2)) < 1.0).all()  # R = G = B up to rounding: no colour left
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert ((out * luma).sum(1) - (cells.float() * luma).sum(1)).abs().mean() < 1.0


def test_both_families_apply_the_paper_s_then_the_lab_shift_ones(cells):
    """``augment="batch+robust"``: each family gets its own disabled names, with the same random draws as alone."""
    from bcc_utils import augment
    from bcc_utils.batch_augment import augment_batch
    from bcc_utils.feed import _Augmented

    batches = [(cells, torch.zeros(len(cells), dtype=torch.long))]

    def through(disable, seed=3):
        return next(iter(_Augmented(batches, disable, torch.Generator().manual_seed(seed), "batch+robust")))[0]

    only_robust = through(list(augment.COMPONENTS))
    assert torch.equal(only_robust, robust_batch(cells, torch.Generator().manual_seed(3)))
    only_paper = through(list(COMPONENTS))
    assert torch.equal(only_paper, augment_batch(cells, torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(through([]), robust_batch(augment_batch(cells, g), g))  # paper first, one generator
    assert torch.equal(through(list(augment.COMPONENTS) + list(COMPONENTS)), cells)


def test_config_for_both_families_takes_either_family_s_names():
    cfg = config_for("cpu", augment="batch+robust", augment_disable="cutout,stain")
    assert cfg.disabled_components == ["cutout", "stain"]
    with pytest.raises(ValueError, match="valid names"):
        config_for("cpu", augment="batch+robust", augment_disable="sparkles")


def test_a_run_trains_with_both_families(data_dir, tmp_path, monkeypatch):
    import json

    from bcc_utils.train import train

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = config_for("smoke", augment="batch+robust", augment_disable="cutout", num_threads=1, bootstrap_resamples=20)
    out = train(cfg, data_dir, tmp_path / "run", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["augment"] == "batch+robust" and m["test"]["n"] > 0
