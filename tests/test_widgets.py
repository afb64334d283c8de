"""Tests for the interactive panels of bcc_utils.widgets (run without a browser: the controls are set in Python)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from bcc_utils import widgets
from bcc_utils.augment import COMPONENTS, AugmentParams
from bcc_utils.data import read_image
from bcc_utils.preprocess import preprocess_image


@pytest.fixture(scope="module")
def cells(sample_root):
    paths = {"eosinophil": next(iter(sorted((sample_root / "eosinophil").glob("EO_*.jpg")))),
             "platelet": next(iter(sorted((sample_root / "platelet").glob("PLATELET_*.jpg"))))}
    return {name: preprocess_image(read_image(p), 96, None) for name, p in paths.items()}


def _control(panel, name):
    (widget,) = [w for w in panel.kwargs_widgets if w._kwarg == name]
    return widget


def test_every_strength_slider_sets_valid_parameters():
    assert set(widgets.STRENGTH_SLIDERS) == set(COMPONENTS) - {"flip"}
    for component, (_, names, lo, hi, _, default) in widgets.STRENGTH_SLIDERS.items():
        assert lo <= default <= hi
        for value in (lo, default, hi):
            overrides = widgets.strength_overrides(component, value)
            assert set(overrides) == set(names)
            AugmentParams().with_overrides(**overrides)  # raises on an unknown field
    assert widgets.strength_overrides("noise", 0.04) == {"noise_std_range": (0.02, 0.04)}
    assert widgets.strength_overrides("motion_blur", 8) == {"motion_blur_limit": 9}  # odd kernel sizes only


def test_clahe_panel_runs_once_and_follows_its_controls(cells):
    panel = widgets.clahe_explorer(cells, display=False)
    assert panel.result.axes[0].get_title() == "eosinophil: clip 2, 8×8 tiles, lab"  # ran with the defaults
    _control(panel, "clip_limit").value = 4.0
    _control(panel, "cell").value = "platelet"
    assert panel.result.axes[0].get_title() == "platelet: clip 4, 8×8 tiles, lab"
    after = panel.result.axes[1].images[0].get_array()
    before = panel.result.axes[0].images[0].get_array()
    assert not np.array_equal(after, before)


def test_augmentation_panel_toggles_components(cells):
    image = cells["eosinophil"]
    panel = widgets.augmentation_explorer(image, n=2, display=False)
    assert "every component" in panel.result._suptitle.get_text()
    assert len([ax for ax in panel.result.axes if ax.images]) == 3
    for name in COMPONENTS:
        _control(panel, f"use_{name}").value = name == "flip"
    assert panel.result._suptitle.get_text().endswith(", ".join(c for c in COMPONENTS if c != "flip"))
    for ax in panel.result.axes[1:]:  # only flips: the same pixels, maybe mirrored
        shown = np.asarray(ax.images[0].get_array())
        assert any(np.array_equal(shown, v) for v in (image, image[::-1], image[:, ::-1], image[::-1, ::-1]))
    _control(panel, "use_flip").value = False
    assert "nothing" in panel.result._suptitle.get_text()
    assert np.array_equal(np.asarray(panel.result.axes[1].images[0].get_array()), image)
