"""Calibration: ECE, temperature scaling, selective prediction, and ``calibrate`` on a real smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcc_utils.calibration import (
    at_threshold,
    confidence_direction,
    ece,
    fit_temperature,
    load_temperature,
    reliability_table,
    scaled_proba,
    selective_curve,
    split_logits,
    threshold_for_accuracy,
)
from bcc_utils.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def test_ece_equals_the_hand_computed_value():
    # 3 bins. Bin (1/3, 2/3]: confidences 0.5, 0.6 (one right) -> |0.5 - 0.55| = 0.05, weight 2/5.
    # Bin (2/3, 1]: confidences 0.9, 0.8, 1.0 (all right) -> |1 - 0.9| = 0.1, weight 3/5.
    prob = np.array([[0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    y = np.array([0, 1, 0, 1, 0])
    assert ece(prob, y, n_bins=3) == pytest.approx(2 / 5 * 0.05 + 3 / 5 * 0.1)
    t = reliability_table(prob, y, n_bins=3)
    assert t["count"].tolist() == [0, 2, 3]
    assert t.loc[1, "accuracy"] == pytest.approx(0.5) and t.loc[2, "confidence"] == pytest.approx(0.9)


def test_perfectly_calibrated_predictions_have_a_small_ece():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20_000)
    correct = rng.uniform(size=conf.size) < conf  # right exactly as often as claimed
    prob = np.stack([conf, 1 - conf], 1)
    y = np.where(correct, 0, 1)
    assert ece(prob, y) < 0.01
    assert ece(np.stack([np.full_like(conf, 0.99), np.full_like(conf, 0.01)], 1), y) > 0.15  # over-confident


def test_temperature_never_changes_the_argmax():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, size=(2000, 8))
    for t in (0.05, 0.5, 1.7, 10.0, fit_temperature(z, z.argmax(1))):
        assert (scaled_proba(z, t).argmax(1) == z.argmax(1)).all()


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, size=(20_000, 8))
    true_t = 2.5
    p = scaled_proba(z, true_t)
    y = (rng.uniform(size=(len(p), 1)) > p.cumsum(1)).sum(1)  # labels drawn from softmax(z / 2.5)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.05)


@pytest.mark.parametrize("true_t, direction", [(2.5, "over-confident"), (0.5, "under-confident")])
def test_the_fitted_temperature_tells_the_direction(true_t, direction):
    # labels drawn from softmax(z / true_t): with true_t > 1 the truth is flatter than softmax(z), the model too sure
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, size=(20_000, 8))
    p = scaled_proba(z, true_t)
    y = (rng.uniform(size=(len(p), 1)) > p.cumsum(1)).sum(1)
    assert confidence_direction(fit_temperature(z, y)) == direction
    assert confidence_direction(1.01) == "calibrated"
    with pytest.raises(ValueError, match="> 0"):
        confidence_direction(0.0)


def test_selective_curve_and_threshold_by_hand():
    prob = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 0, 1, 0, 1])  # the 0.8 one is wrong
    c = selective_curve(prob, y)
    assert c["kept"].tolist() == [1, 2, 3, 4, 5]
    assert c["accuracy"].tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    best = threshold_for_accuracy(prob, y, target=0.99)
    assert best["threshold"] == pytest.approx(0.9) and best["kept"] == 2 and best["referred"] == 3
    assert threshold_for_accuracy(prob[[2]], y[[2]], target=0.99)["threshold"] is None


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A smoke run (real sample images) trained through the command line."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("cal") / "run"
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
                 "--set", "num_threads=1", "--set", "epochs=2", "--set", "bootstrap_resamples=50"]) == 0
    yield out
    mp.undo()


def test_calibrate_command_fits_on_val_and_keeps_accuracy(run_dir, data_dir, sample_root, capsys):
    from bcc_utils.inference import predict_images

    assert load_temperature(run_dir) == 1.0  # nothing fitted yet
    before = predict_images(run_dir / "best.pt", [sample_root / "basophil"], top_k=8)
    assert main(["calibrate", str(run_dir / "best.pt"), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert "temperature" in capsys.readouterr().out
    report = json.loads((run_dir / "calibration.json").read_text())
    assert report["fitted_on"] == "val" and report["tta"] == "dihedral"
    for split in ("val", "test"):
        assert report[split]["after"]["accuracy"] == report[split]["before"]["accuracy"]
    assert report["val"]["after"]["nll"] <= report["val"]["before"]["nll"] + 1e-9  # T = 1 was a candidate
    t = load_temperature(run_dir / "best.pt")
    assert t == pytest.approx(report["temperature"]) and t != 1.0
    after = predict_images(run_dir / "best.pt", [sample_root / "basophil"], top_k=8)
    assert [r["class"] for r in after] == [r["class"] for r in before]
    assert any(abs(a["confidence"] - b["confidence"]) > 1e-4 for a, b in zip(after, before))


def test_a_bad_temperature_file_is_refused(tmp_path):
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="finite number > 0"):
        load_temperature(tmp_path)


def test_a_threshold_chosen_elsewhere_is_applied_as_is():
    prob = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    r = at_threshold(prob, y, 0.85)
    assert (r["kept"], r["referred"], r["coverage"], r["accuracy"]) == (2, 2, 0.5, 0.5)
    assert np.isnan(at_threshold(prob, y, 0.99)["accuracy"]) and at_threshold(prob, y, 0.99)["kept"] == 0


def test_split_logits_limit_is_the_start_of_the_full_pass(run_dir, data_dir):
    z, y, _ = split_logits(run_dir / "best.pt", data_dir, ("test",), tta="dihedral")["test"]
    z5, y5, seconds = split_logits(run_dir / "best.pt", data_dir, ("test",), tta="none", limit=5)["test"]
    assert z5.shape == (1, 5, 8) and seconds > 0
    assert np.allclose(z5[0], z[0, :5], atol=1e-5) and (y5 == y[:5]).all()  # view 0 of the TTA pass is the plain image


def test_reliability_diagram_shows_every_point_on_0_1_and_each_bins_count(run_dir, data_dir):
    from bcc_utils.viz import plot_reliability

    z, y, _ = split_logits(run_dir / "best.pt", data_dir, ("test",))["test"]
    # plus three cells by hand: a bin whose accuracy (0) lies far below its confidence (0.4)
    hand = (np.array([[0.4, 0.35, 0.25], [0.95, 0.03, 0.02], [0.9, 0.05, 0.05]]), np.array([1, 0, 0]))
    predictions = {"smoke run": (scaled_proba(z), y), "by hand": hand}
    fig = plot_reliability(predictions, n_bins=10)
    ax, ax_n = fig.axes
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1), "the whole range, so no bin runs off the plot"
    for (prob, labels), dots, bars in zip(predictions.values(), ax.collections, ax_n.containers, strict=True):
        t = reliability_table(prob, labels, n_bins=10).query("count > 0")
        assert np.allclose(dots.get_offsets(), t[["confidence", "accuracy"]].to_numpy())
        assert [b.get_height() for b in bars] == t["count"].tolist() and sum(t["count"]) == len(labels)
        sizes = np.broadcast_to(dots.get_sizes(), len(t))
        assert (np.diff(sizes[np.argsort(t["count"].to_numpy(), kind="stable")]) >= 0).all(), "bigger bin, bigger dot"


def test_plot_selective_names_the_threshold_point_in_the_legend():
    from bcc_utils.calibration import at_threshold
    from bcc_utils.viz import plot_selective

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    prob = rng.dirichlet(np.ones(3), 300)
    prob[np.arange(300), y] += 0.6
    prob /= prob.sum(1, keepdims=True)
    fig = plot_selective({"home": (prob, y), "abroad": (prob[:, ::-1], y)}, 0.99, threshold=0.6, xlim=(0, 1))
    ax = fig.axes[0]
    home = at_threshold(prob, y, 0.6)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == (f"home: conf ≥ 0.600: {home['coverage']:.1%} kept, {home['accuracy']:.2%} right, "
                        f"{home['referred']} referred")
    assert texts[1].startswith("abroad: conf ≥ 0.600") and ax.get_xlim() == (0, 1)
    assert all(0 <= x <= 1 for line in ax.lines for x in np.atleast_1d(line.get_xdata()))
    nothing = plot_selective({"home": (prob, y)}, 0.99, threshold=1.01)
    assert [t.get_text() for t in nothing.axes[0].get_legend().get_texts()] == ["home: nothing kept at the threshold"]


def test_run_views_keeps_the_views_a_run_uses():
    from bcc_utils.calibration import run_views

    z = np.arange(4 * 3 * 2, dtype=float).reshape(4, 3, 2)
    assert np.array_equal(run_views(z, "dihedral"), z)
    assert np.array_equal(run_views(z, "none"), z[:1])
    assert run_views(z[0], "none").shape == (1, 3, 2)  # N×K logits are one view
