"""The paper's augmentation pipeline: shapes, switches, strictness, borders, speed-ups, worker seeding."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bcc_utils import augment
from bcc_utils.augment import (
    COMPONENTS,
    AugmentParams,
    build_eval_transform,
    build_train_transform,
    component_names,
    find_component,
    iter_transforms,
    preview_components,
    preview_grid,
)
from bcc_utils.data import read_image
from bcc_utils.preprocess import preprocess_image
from bcc_utils.transforms import AffineChain, GaussNoiseU8
from bcc_utils.workers import reseed_transform, worker_init_fn

#: The stock class that implements each component (scale and shift_scale_rotate are both Affine).
STOCK = {
    "rotate": A.Rotate, "flip": A.HorizontalFlip, "brightness_contrast": A.RandomBrightnessContrast,
    "hue_saturation": A.HueSaturationValue, "noise": A.GaussNoise, "motion_blur": A.MotionBlur,
    "cutout": A.CoarseDropout,
}


@pytest.fixture(scope="module")
def cell(sample_root):
    """A real eosinophil, preprocessed to 300 px."""
    path = sorted(p for p in (sample_root / "eosinophil").glob("*.jpg"))[0]
    return preprocess_image(read_image(path), 300)


def _count(transform, cls):
    return sum(type(t) is cls or (cls is A.GaussNoise and isinstance(t, cls)) for t in iter_transforms(transform))


@pytest.mark.parametrize("merge", [True, False])
def test_output_shape_dtype_range(cell, merge):
    t = build_train_transform(300, merge_geometry=merge, seed=1)
    for _ in range(5):
        out = t(image=cell)["image"]
        assert out.shape == (300, 300, 3) and out.dtype == np.uint8
    assert component_names(t) == [n for n in augment.PIPELINE_ORDER]
    assert set(component_names(t)) == set(COMPONENTS)


def test_other_input_sizes_are_resized(sample_root):
    raw = read_image(sorted((sample_root / "monocyte").glob("*.jpg"))[0])
    assert build_train_transform(224, seed=0)(image=raw)["image"].shape == (224, 224, 3)
    assert build_eval_transform(224)(image=raw)["image"].shape == (224, 224, 3)


def test_eval_transform_is_identity_at_size(cell):
    assert np.array_equal(build_eval_transform(300)(image=cell)["image"], cell)


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("name", COMPONENTS)
def test_each_component_can_be_disabled(cell, name, merge):
    full = build_train_transform(300, merge_geometry=merge)
    t = build_train_transform(300, disable=[name], merge_geometry=merge)
    assert name not in component_names(t)
    assert find_component(t, name) == [] and find_component(full, name) != []
    assert component_names(t) == [n for n in component_names(full) if n != name]
    if name in STOCK:
        assert _count(full, STOCK[name]) == 1 and _count(t, STOCK[name]) == 0
    else:  # scale / shift_scale_rotate: one Affine fewer
        assert _count(t, A.Affine) == _count(full, A.Affine) - 1
    assert t(image=cell)["image"].shape == (300, 300, 3)


def test_disable_everything_leaves_identity(cell):
    t = build_train_transform(300, disable=COMPONENTS)
    assert component_names(t) == []
    assert np.array_equal(t(image=cell)["image"], cell)


def test_unknown_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match="shift_scale_rotate"):
        build_train_transform(300, disable=["rotation"])
    with pytest.raises(ValueError, match="rotate_limit"):
        build_train_transform(300, rotate_limt=10)
    with pytest.raises(ValueError):
        augment.build_component("blur")


def test_misspelt_albumentations_argument_fails_loudly():
    # albumentations 2.x without strict only warns and ignores the argument
    with pytest.warns(UserWarning, match="var_limit"):
        A.GaussNoise(var_limit=(10, 50))
    with pytest.raises(ValueError, match="var_limit"):
        GaussNoiseU8(var_limit=(10, 50), strict=True)
    with pytest.raises(ValueError, match="bogus"):
        AffineChain([], bogus=1, strict=True)


def test_every_transform_is_built_with_strict(monkeypatch):
    """Record the keyword arguments of every albumentations constructor the builders call."""
    calls = []

    def recorder(cls):
        def make(*args, **kwargs):
            calls.append((cls.__name__, kwargs.get("strict")))
            return cls(*args, **kwargs)

        return make

    for name in ["Rotate", "Affine", "HorizontalFlip", "VerticalFlip", "RandomBrightnessContrast",
                 "HueSaturationValue", "MotionBlur", "CoarseDropout", "Resize", "Compose"]:
        monkeypatch.setattr(A, name, recorder(getattr(A, name)))
    for cls in (GaussNoiseU8, AffineChain):
        monkeypatch.setattr(augment, cls.__name__, recorder(cls))
    build_train_transform(300)
    build_train_transform(300, merge_geometry=False)
    build_eval_transform(300)
    assert len(calls) >= 2 * len(COMPONENTS)
    assert all(strict is True for _, strict in calls), [c for c in calls if c[1] is not True]


def test_strength_overrides_reach_the_transforms():
    t = build_train_transform(300, rotate_limit=10, noise_p=0.0, cutout_holes=(2, 3))
    (rot,) = find_component(t, "rotate")
    (noise,) = find_component(t, "noise")
    (cut,) = find_component(t, "cutout")
    assert tuple(rot.limit) == (-10, 10)
    assert noise.p == 0.0
    assert tuple(cut.num_holes_range) == (2, 3)
    assert AugmentParams().with_overrides(rotate_limit=5).rotate_limit == 5


def test_rotation_reflects_borders_no_black_corners(cell):
    t = build_train_transform(300, disable=[n for n in COMPONENTS if n != "rotate"],
                              always=True, rotate_limit=45, seed=3)
    for _ in range(4):
        out = t(image=cell)["image"]
        assert not np.array_equal(out, cell)
        for corner in (out[:12, :12], out[:12, -12:], out[-12:, :12], out[-12:, -12:]):
            assert corner.mean() > 60  # the light PBC background mirrored; a constant border would be 0


def test_seed_makes_pipelines_reproducible(cell):
    a = [x for x in preview_grid(cell, n=4, seed=7)]
    b = [x for x in preview_grid(cell, n=4, seed=7)]
    c = [x for x in preview_grid(cell, n=4, seed=8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_preview_components_dict(cell):
    out = preview_components(cell, seed=0)
    assert list(out) == ["original", *COMPONENTS]
    for name in COMPONENTS:
        assert out[name].shape == cell.shape and out[name].dtype == np.uint8
        assert not np.array_equal(out[name], cell), name
    assert augment.augment_once(cell, enabled=["flip"], seed=0).shape == cell.shape


def _twin_transforms(make, seed=11):
    a, b = make(), make()
    chain, stock = A.Compose([AffineChain(a, strict=True)], strict=True), A.Compose(b, strict=True)
    for i, (x, y) in enumerate(zip(a, b)):  # same random stream for each pair of twins
        reseed_transform(x, seed + i)
        reseed_transform(y, seed + i)
    return chain, stock


@pytest.mark.parametrize("kinds", [["rotate"], ["affine"], ["hflip", "vflip"]])
def test_affine_chain_equals_stock_transform_exactly(cell, kinds):
    makers = {
        "rotate": lambda: A.Rotate(limit=25, border_mode=augment.BORDER, p=1, strict=True),
        "affine": lambda: A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-45, 45),
                                   keep_ratio=True, border_mode=augment.BORDER, p=1, strict=True),
        "hflip": lambda: A.HorizontalFlip(p=0.5, strict=True),
        "vflip": lambda: A.VerticalFlip(p=0.5, strict=True),
    }
    chain, stock = _twin_transforms(lambda: [makers[k]() for k in kinds])
    for _ in range(4):
        assert np.array_equal(chain(image=cell)["image"], stock(image=cell)["image"])


def test_affine_chain_matches_sequential_warps_inside_the_frame(cell):
    def make():
        return [A.HorizontalFlip(p=0.5, strict=True),
                A.Rotate(limit=25, border_mode=augment.BORDER, p=1, strict=True),
                A.Affine(scale=(0.85, 1.15), keep_ratio=True, border_mode=augment.BORDER, p=1, strict=True)]

    chain, stock = _twin_transforms(make)
    for _ in range(4):
        a, b = chain(image=cell)["image"].astype(int), stock(image=cell)["image"].astype(int)
        centre = np.abs(a - b)[75:225, 75:225]
        assert centre.mean() < 4  # same geometry, one resampling instead of two


def test_gauss_noise_u8_has_the_requested_std():
    grey = np.full((300, 300, 3), 128, np.uint8)
    noise = GaussNoiseU8(std_range=(0.02, 0.02), p=1, strict=True)
    diff = noise(image=grey)["image"].astype(float) - 128
    assert diff.std(axis=(0, 1)) == pytest.approx([0.02 * 255] * 3, rel=0.05)
    assert abs(diff.mean()) < 0.2
    shared = GaussNoiseU8(std_range=(0.02, 0.02), per_channel=False, p=1, strict=True)(image=grey)["image"]
    assert np.array_equal(shared[..., 0], shared[..., 2])
    as_float = GaussNoiseU8(std_range=(0.02, 0.02), p=1, strict=True)(image=grey.astype(np.float32) / 255)["image"]
    assert as_float.dtype == np.float32 and 0.01 < as_float.std() < 0.03


class _Repeat(Dataset):
    def __init__(self, image):
        self.image, self.transform = image, build_train_transform(64)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.from_numpy(self.transform(image=self.image)["image"])


def test_worker_init_fn_gives_workers_and_epochs_their_own_augmentations(cell):
    ds = _Repeat(np.ascontiguousarray(cell[::4, ::4][:64, :64]))

    def epoch():
        return [b[0] for b in DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=worker_init_fn)]

    first, second = epoch(), epoch()
    # items 0/1, 2/3, … come from worker 0 and worker 1 at the same step of their random streams
    assert not any(torch.equal(first[k], first[k + 1]) for k in range(0, 8, 2))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_describe_groups_every_parameter_once():
    groups = augment.describe(AugmentParams(rotate_limit=12))
    assert list(groups) == list(COMPONENTS)
    names = [k for g in groups.values() for k in g]
    assert sorted(names) == sorted(AugmentParams.__dataclass_fields__) and len(names) == len(set(names))
    assert groups["rotate"]["rotate_limit"] == 12
    assert all(f"{c}_p" in groups[c] for c in COMPONENTS)
