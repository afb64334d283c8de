"""The corruption benchmark (:mod:`bcc_utils.corruptions`) on real PBC images and a smoke run trained on them."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from bcc_utils.cli import main
from bcc_utils.corruptions import (
    KINDS,
    LEVELS,
    corrupt,
    corruption_curves,
    level,
    load_curves,
    plot_corruption_curves,
    psnr,
    stratified_subset,
)
from bcc_utils.data.scan import read_image
from bcc_utils.paths import CLASSES

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def images(sample_root) -> list[np.ndarray]:
    """Three real cells of different classes and sizes, and one image of another size than 360×363."""
    picks = (("neutrophil", 1), ("lymphocyte", 0), ("platelet", 2))
    files = [sorted(f for f in (sample_root / c).glob("*.jpg") if not f.name.startswith("."))[i] for c, i in picks]
    out = [read_image(f) for f in files]
    odd = next(f for f in sorted(sample_root.rglob("*.jpg")) if not f.name.startswith(".")
               and read_image(f).shape[:2] != (363, 360))
    return [*out, read_image(odd)]


@pytest.mark.parametrize("kind", list(LEVELS))
def test_severity_zero_is_the_identity(images, kind):
    for rgb in images:
        out = corrupt(rgb, kind, 0, seed=3, key="x")
        assert out is not rgb and np.array_equal(out, rgb)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_type(images, kind):
    for rgb in images:
        for s in (1, 5):
            out = corrupt(rgb, kind, s, key=1)
            assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous


@pytest.mark.parametrize("kind", KINDS)
def test_psnr_falls_as_severity_rises(images, kind):
    """Every kind moves the image further from the clean one at every step, on every test image."""
    for i, rgb in enumerate(images):
        values = [psnr(rgb, corrupt(rgb, kind, s, seed=0, key=i)) for s in range(6)]
        assert values[0] == float("inf")
        assert all(a > b for a, b in itertools.pairwise(values)), (kind, i, values)


@pytest.mark.parametrize("kind", ["noise", "color"])
def test_random_kinds_are_seeded(images, kind):
    rgb = images[0]
    a = corrupt(rgb, kind, 3, seed=7, key="neutrophil/x.jpg")
    assert np.array_equal(a, corrupt(rgb, kind, 3, seed=7, key="neutrophil/x.jpg"))
    assert not np.array_equal(a, corrupt(rgb, kind, 3, seed=8, key="neutrophil/x.jpg"))
    assert not np.array_equal(a, corrupt(rgb, kind, 3, seed=7, key="neutrophil/y.jpg"))


def test_color_cast_has_the_asked_size_and_direction(images):
    from bcc_utils.shift import rgb_to_lab

    rgb = images[1]
    yellow = corrupt(rgb, "color", 3, direction=90)  # +b*, ΔE 12
    shift = np.median(rgb_to_lab(yellow) - rgb_to_lab(rgb), axis=(0, 1))
    assert shift == pytest.approx([0, 0, LEVELS["color"][2]], abs=1.5)


def test_zoom_makes_the_cell_larger(images):
    """Zooming in by 1.5 (severity 3) multiplies the measured cell area by about 1.5² = 2.25."""
    from bcc_utils.shift import stained_region

    rgb = images[1]
    base = stained_region(rgb).mean()
    ratio = stained_region(corrupt(rgb, "zoom", 3)).mean() / base
    assert ratio == pytest.approx(level("zoom", 3) ** 2, rel=0.15)
    assert stained_region(corrupt(rgb, "zoom_out", 3)).mean() < base


def test_errors_are_clear(images):
    with pytest.raises(ValueError, match="unknown corruption kind 'fog'"):
        corrupt(images[0], "fog", 1)
    with pytest.raises(ValueError, match="severity must be 0"):
        corrupt(images[0], "blur", 6)
    with pytest.raises(ValueError, match="RGB uint8"):
        corrupt(images[0].astype(np.float32), "blur", 1)


def test_stratified_subset():
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    idx = stratified_subset(labels, 20, seed=1)
    assert len(idx) == 20 and len(set(idx)) == 20 and list(idx) == sorted(idx)
    assert pd.Series(labels[idx]).value_counts().to_dict() == {"a": 12, "b": 6, "c": 2}
    assert np.array_equal(idx, stratified_subset(labels, 20, seed=1))


# -------------------------------------------------------------------------------- the benchmark on a run
@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A smoke run made through the command line (cache in a temporary folder)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("corrupt") / "run"
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
                 "--set", "num_threads=1", "--set", "bootstrap_resamples=100"]) == 0
    yield out
    mp.undo()


def test_corruption_curves_on_a_smoke_run(run_dir, data_dir):
    curves = corruption_curves(run_dir / "best.pt", data_dir, kinds=("blur", "zoom"), severities=(1, 5), limit=16,
                               n_resamples=100)
    t = curves.table
    assert list(t.columns[:4]) == ["kind", "severity", "level", "unit"]
    assert list(zip(t["kind"], t["severity"])) == [("blur", 0), ("blur", 1), ("blur", 5),
                                                   ("zoom", 0), ("zoom", 1), ("zoom", 5)]
    assert (t["n"] == 16).all() and curves.n == 16 and curves.n_split > 16
    assert t["accuracy"].between(0, 1).all() and (t["accuracy_lo"] <= t["accuracy"] + 1e-9).all()
    assert (t["accuracy"] <= t["accuracy_hi"] + 1e-9).all()
    assert t.loc[t["severity"] == 0, "accuracy"].eq(curves.clean).all()
    assert curves.accuracy("zoom")[0] == curves.clean and len(curves.accuracy("zoom")) == 3
    assert t.loc[(t["kind"] == "blur") & (t["severity"] == 5), "level"].item() == LEVELS["blur"][4]
    assert set(curves.predictions) == {("clean", 0), ("blur", 1), ("blur", 5), ("zoom", 1), ("zoom", 5)}
    assert curves.confusion("blur", 5).sum() == 16 and curves.classes == list(CLASSES)
    # the subset is stratified: every test class is present (the sample's test split has 6-7 per class)
    assert len(set(curves.labels)) == 8
    # the clean predictions are the run's own test predictions for these images
    run = pd.read_csv(run_dir / "predictions.csv").set_index("path")
    assert [CLASSES[i] for i in curves.predictions[("clean", 0)]] == list(run.loc[curves.paths, "pred"])
    # deterministic
    again = corruption_curves(run_dir / "best.pt", data_dir, kinds=("blur",), severities=(5,), limit=16,
                              n_resamples=100)
    assert np.array_equal(again.predictions[("blur", 5)], curves.predictions[("blur", 5)])

    fig = plot_corruption_curves(curves, references={"other lab": 0.3})
    ax = fig.axes[0]
    assert len(ax.lines) == 2 + 2 and ax.get_ylim() == (0, 100)  # two kinds, one reference, chance
    assert [t.get_text().split(" ")[0] for t in ax.get_legend().get_texts()] == ["blur", "zoom"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_corruption_curves_refuses_unknown_kinds_before_work(run_dir, data_dir):
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corruption_curves(run_dir / "best.pt", data_dir, kinds=("fog",))


def test_robustness_command_writes_curves_that_load_back(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "curves.json"
    argv = ["robustness", str(run_dir / "best.pt"), "--data-dir", str(data_dir), "--kinds", "blur", "jpeg",
            "--severities", "2", "5", "--limit", "16", "--seed", "3", "--threads", "1", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "16 of" in printed and "blur:" in printed and "jpeg:" in printed
    loaded = load_curves(out)
    direct = corruption_curves(run_dir / "best.pt", data_dir, kinds=("blur", "jpeg"), severities=(2, 5), limit=16,
                               seed=3)
    assert set(loaded.predictions) == set(direct.predictions)
    for key, pred in direct.predictions.items():
        assert np.array_equal(loaded.predictions[key], pred), key
    assert loaded.paths == direct.paths and np.array_equal(loaded.labels, direct.labels)
    pd.testing.assert_frame_equal(loaded.table, direct.table, check_dtype=False)
    assert loaded.confusion("jpeg", 5).sum() == 16 and loaded.clean == direct.clean
    saved = json.loads(out.read_text())
    # no path of the machine that ran it: the checkpoint is named by its run folder
    assert saved["checkpoint"] == f"{run_dir.name}/best.pt" and str(tmp_path) not in out.read_text()
    assert saved["run_info"]["command"].startswith(f"python -m bcc_utils robustness {run_dir.name}/best.pt")


def test_robustness_command_errors_are_one_line(run_dir, data_dir, tmp_path, capsys):
    for argv, message in (
        (["--kinds", "fog"], "unknown corruption kind"),
        (["--severities", "7"], "severity"),
        (["--json", str(tmp_path)], "is a folder"),
    ):
        assert main(["robustness", str(run_dir / "best.pt"), "--data-dir", str(data_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and "Traceback" not in err
    assert main(["robustness", str(tmp_path / "missing.pt"), "--data-dir", str(data_dir)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_nearest_severity_includes_the_clean_image():
    from bcc_utils.corruptions import LEVELS, nearest_severity

    assert nearest_severity("color", 0.5) == 0 and nearest_severity("color", 25.0) == 5
    assert nearest_severity("zoom", 1.45) == 3 and nearest_severity("zoom", 1.02) == 0
    assert nearest_severity("jpeg", 95) == 0 and nearest_severity("jpeg", 44) == 2
    assert all(nearest_severity(k, v) == s + 1 for k, levels in LEVELS.items() for s, v in enumerate(levels))
