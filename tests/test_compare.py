"""Wilson intervals, McNemar's exact test, paired predictions and subgroup tables (bcc_utils.compare).

On real data: the committed predictions of notebook 04's run (``results/lite0-cpu``) and the images of the
committed sample. scipy (installed with scikit-learn) is the independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from bcc_utils.compare import (BACKGROUNDS, LILAC_BLUE, background_groups, background_rgb, difference_interval,
                               load_predictions,
                               mcnemar_exact, paired_bootstrap_diff, paired_outcomes, paired_runs, rate_table,
                               wilson_interval)
from bcc_utils.paths import CLASSES

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN = RESULTS / "lite0-cpu"


@pytest.fixture(scope="module")
def pred() -> pd.DataFrame:
    return pd.read_csv(RUN / "predictions.csv")


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((RUN / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def second_opinion(pred) -> pd.DataFrame:
    """A second, real classifier on the same images: the run's runner-up class wherever it was unsure."""
    probs = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
    runner_up = np.array(CLASSES)[np.argsort(probs, axis=1)[:, -2]]
    out = pred.copy()
    out["pred"] = np.where(pred["confidence"] < 0.7, runner_up, pred["pred"])
    return out


# --- Wilson ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (45, 50), (991, 1000)])
def test_wilson_matches_scipy(k, n):
    assert wilson_interval(k, n) == pytest.approx(tuple(binomtest(k, n).proportion_ci(method="wilson")), abs=1e-12)


def test_wilson_on_a_real_test_accuracy_matches_scipy_at_two_levels(pred):
    k, n = int((pred["pred"] == pred["label"]).sum()), len(pred)
    for level in (0.9, 0.99):
        ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert wilson_interval(k, n, level) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_closed_form_with_no_success():
    """With k = 0 the interval is [0, z²/(n + z²)] exactly."""
    z = NormalDist().inv_cdf(0.975)
    for n in (1, 10, 3415):
        assert wilson_interval(0, n) == (0.0, pytest.approx(z * z / (n + z * z), rel=1e-12))
        assert wilson_interval(n, n) == (pytest.approx(n / (n + z * z), rel=1e-12), 1.0)


def test_wilson_rejects_an_empty_group_and_impossible_counts():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 4)


@pytest.mark.parametrize("k1, n1, k2, n2, lo, hi", [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090),
                                                     (6, 7, 2, 7, 0.0582, 0.8062), (5, 56, 0, 29, -0.0381, 0.1926)])
def test_difference_interval_reproduces_newcombes_published_examples(k1, n1, k2, n2, lo, hi):
    """Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (four decimals)."""
    d, low, high = difference_interval(k1, n1, k2, n2)
    assert d == pytest.approx(k1 / n1 - k2 / n2)
    assert (round(low, 4), round(high, 4)) == (lo, hi)


def test_difference_interval_on_real_subgroups_and_empty_ones(pred):
    correct = (pred["pred"] == pred["label"]).to_numpy()
    ig = (pred["label"] == "ig").to_numpy()
    k1, n1, k2, n2 = correct[ig].sum(), ig.sum(), correct[~ig].sum(), (~ig).sum()
    d, lo, hi = difference_interval(k1, n1, k2, n2)
    swapped = difference_interval(k2, n2, k1, n1)
    assert swapped == pytest.approx((-d, -hi, -lo)), "swapping the groups mirrors the interval"
    assert lo < d < hi and hi - lo < (wilson_interval(k1, n1)[1] - wilson_interval(k1, n1)[0]) + (
        wilson_interval(k2, n2)[1] - wilson_interval(k2, n2)[0]), "narrower than the two intervals laid end to end"
    with pytest.raises(ValueError, match="at least one trial"):
        difference_interval(3, 4, 0, 0)


# --- McNemar -----------------------------------------------------------------------------------------------------

def test_mcnemar_on_two_real_classifiers_matches_scipy(pred, second_opinion):
    a = pred["pred"] == pred["label"]
    b = second_opinion["pred"] == second_opinion["label"]
    r = mcnemar_exact(a, b)
    assert r["only_a"] == int((a & ~b).sum()) and r["only_b"] == int((~a & b).sum())
    assert r["only_a"] + r["only_b"] > 0, "the runner-up rule must change some outcomes"
    assert r["both"] + r["neither"] + r["only_a"] + r["only_b"] == r["n_images"] == len(pred)
    assert r["p_value"] == pytest.approx(binomtest(r["only_a"], r["only_a"] + r["only_b"]).pvalue, rel=1e-9)
    swapped = mcnemar_exact(b, a)
    assert (swapped["only_a"], swapped["only_b"], swapped["p_value"]) == (r["only_b"], r["only_a"], r["p_value"])


@pytest.mark.parametrize("only_a, only_b", [(0, 1), (1, 1), (5, 12), (12, 5), (0, 9), (30, 30), (400, 460)])
def test_mcnemar_matches_scipy_for_given_discordant_counts(only_a, only_b):
    a = np.r_[np.ones(only_a, bool), np.zeros(only_b, bool), np.ones(50, bool), np.zeros(3, bool)]
    b = np.r_[np.zeros(only_a, bool), np.ones(only_b, bool), np.ones(50, bool), np.zeros(3, bool)]
    r = mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"], r["both"], r["neither"]) == (only_a, only_b, 50, 3)
    assert r["p_value"] == pytest.approx(binomtest(only_a, only_a + only_b).pvalue, rel=1e-9)


def test_mcnemar_when_both_models_agree_everywhere(pred):
    correct = pred["pred"] == pred["label"]
    r = mcnemar_exact(correct, correct)
    assert (r["only_a"], r["only_b"], r["p_value"]) == (0, 0, 1.0)
    all_right = mcnemar_exact(np.ones(10, int), np.ones(10, int))
    assert (all_right["both"], all_right["p_value"]) == (10, 1.0)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match="equally long"):
        mcnemar_exact([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([2, 0], [1, 0])


# --- paired outcomes and the paired bootstrap ----------------------------------------------------------------------

def test_paired_outcomes_line_up_shuffled_predictions(pred, second_opinion):
    shuffled = second_opinion.sample(frac=1, random_state=0)
    both = paired_outcomes(pred, shuffled, names=("lite0", "other"))
    assert len(both) == len(pred) and both["path"].is_monotonic_increasing
    assert both["correct_lite0"].sum() == (pred["pred"] == pred["label"]).sum()
    assert both["correct_other"].sum() == (second_opinion["pred"] == second_opinion["label"]).sum()
    merged = pred.merge(second_opinion, on="path", suffixes=("", "_2"))
    assert (both["pred_other"].to_numpy() == merged.sort_values("path")["pred_2"].to_numpy()).all()


def test_paired_outcomes_refuse_different_test_sets(pred):
    with pytest.raises(ValueError, match="same images"):
        paired_outcomes(pred, pred.iloc[1:])
    relabelled = pred.copy()
    relabelled.loc[0, "label"] = "platelet" if pred.loc[0, "label"] != "platelet" else "basophil"
    with pytest.raises(ValueError, match="same labels"):
        paired_outcomes(pred, relabelled)


def test_paired_bootstrap_difference(pred, second_opinion):
    a = (pred["pred"] == pred["label"]).to_numpy()
    b = (second_opinion["pred"] == second_opinion["label"]).to_numpy()
    diff, lo, hi = paired_bootstrap_diff(a, b, n_resamples=1000, seed=0)
    assert diff == pytest.approx(a.mean() - b.mean())
    # the paired normal approximation: SE² = (b + c - (b - c)² / n) / n²
    n, only_a, only_b = len(a), (a & ~b).sum(), (~a & b).sum()
    se = np.sqrt(only_a + only_b - (only_a - only_b) ** 2 / n) / n
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert paired_bootstrap_diff(a, a) == (0.0, 0.0, 0.0), "identical models: no difference in any resample"


# --- subgroups -----------------------------------------------------------------------------------------------------

def test_rate_table_reproduces_the_runs_accuracy_and_recalls(pred, metrics):
    correct = pred["pred"] == pred["label"]
    overall = rate_table(correct, pd.Series("all", index=pred.index))
    assert overall.loc["all", "rate"] == pytest.approx(metrics["test"]["accuracy"])
    per_class = rate_table(correct, pd.Categorical(pred["label"], categories=CLASSES))
    for c in CLASSES:
        assert per_class.loc[c, "rate"] == pytest.approx(metrics["test"]["per_class"][c]["recall"])
        assert per_class.loc[c, "n"] == metrics["test"]["per_class"][c]["support"]
        assert (per_class.loc[c, "lo"], per_class.loc[c, "hi"]) == wilson_interval(per_class.loc[c, "hits"],
                                                                                   per_class.loc[c, "n"])


def test_rate_table_keeps_empty_groups(pred):
    correct = pred["pred"] == pred["label"]
    only_peach = pd.Categorical(["peach"] * len(pred), categories=BACKGROUNDS)
    t = rate_table(correct, only_peach)
    assert list(t.index) == list(BACKGROUNDS)
    assert t.loc["lilac", "n"] == 0 and t.loc["lilac", ["rate", "lo", "hi"]].isna().all()
    two_keys = rate_table(correct, [pd.Series(pred["label"], name="class"), pd.Series(only_peach, name="bg")])
    assert two_keys.index.names == ["class", "bg"] and (two_keys.xs("lilac", level="bg")["n"] == 0).all()
    with pytest.raises(ValueError, match="one value per outcome"):
        rate_table(correct, only_peach[:-1])


def test_background_groups_on_real_images(sample_root):
    paths = sorted(str(p.relative_to(sample_root)) for p in sample_root.rglob("*.jpg") if not p.name.startswith("."))
    bg = background_groups(paths, sample_root)
    assert list(bg["background"].cat.categories) == list(BACKGROUNDS) and len(bg) == len(paths)
    assert ((bg["B"] > LILAC_BLUE) == (bg["background"] == "lilac")).all()
    first = sample_root / paths[0]
    assert bg.loc[paths[0], ["R", "G", "B"]].to_numpy() == pytest.approx(background_rgb(first))
    # notebook 01: the IG_ and NEUTROPHIL_ prefixed images are a separate, lilac batch
    batch = bg.index.str.contains(r"/(?:IG|NEUTROPHIL)_")
    assert batch.any() and bg.loc[batch, "B"].mean() > bg.loc[~batch, "B"].mean() + 10
    assert 0 < (bg["background"] == "lilac").sum() < len(bg) / 4


def test_load_predictions_follows_the_metrics(tmp_path):
    (tmp_path / "lite0-cpu").mkdir()
    (tmp_path / "lite0-cpu" / "metrics.json").write_text((RUN / "metrics.json").read_text())
    assert load_predictions("lite0-cpu", tmp_path, RESULTS) is None, "metrics without predictions: nothing"
    assert len(load_predictions("lite0-cpu", tmp_path / "missing", RESULTS)) == len(pd.read_csv(RUN / "predictions.csv"))
    assert load_predictions("no-such-run", tmp_path, RESULTS) is None


def test_paired_runs_wants_one_run_per_model_on_one_split(metrics):
    def run(model, preset, split):
        return {**metrics, "model": model, "preset": preset, "dataset": {**metrics["dataset"], "manifest_hash": split}}

    results = {"lite0-cpu": run("tf_efficientnet_lite0", "cpu", "s1"), "resnet18-cpu": run("resnet18", "resnet18-cpu", "s1"),
               "efficientnet_b0-paper": run("efficientnet_b0", "paper", "s2")}
    assert paired_runs(results) == ("lite0-cpu", "resnet18-cpu"), "the paper run has no partner on its split"
    results["resnet50-paper"] = run("resnet50", "paper", "s2")
    assert paired_runs(results) == ("efficientnet_b0-paper", "resnet50-paper"), "paper runs rank first"
    results["resnet50-paper"] = run("resnet50", "paper", "s3")
    assert paired_runs(results) == ("lite0-cpu", "resnet18-cpu")
    assert paired_runs({"lite0-cpu": results["lite0-cpu"], "x": run("resnet18", "cpu", "s9")}) is None
    assert paired_runs({}) is None
