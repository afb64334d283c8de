"""The ablation grid: every variant really switches its component off; runs, records and summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcc_utils.ablation import VARIANTS, base_config, load_ablation, run_ablation, summarize, variant_config
from bcc_utils.augment import COMPONENTS, build_train_transform, component_names

from bcc_utils.sampling import balancing

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _built(cfg):
    """What the trainer builds from a config: augmentation components, CLAHE, mixup, sampler, loss weight."""
    transform = build_train_transform(cfg.img_size, cfg.disabled_components)
    sampler, weight = balancing(np.repeat(np.arange(8), [5, 10, 20, 40, 5, 10, 20, 40]), 8, cfg.balance, seed=0)
    return {"components": set(component_names(transform)), "clahe": cfg.clahe_settings() is not None,
            "mixup": cfg.mixup_p > 0, "sampler": sampler is not None, "weighted_loss": weight is not None}


@pytest.mark.parametrize("base", ["cpu", "classroom", "paper", "smoke"])
def test_each_variant_removes_exactly_its_component(base):
    full_cfg = base_config(base)
    full = _built(full_cfg)
    assert full == {"components": set(COMPONENTS), "clahe": True, "mixup": True, "sampler": True,
                    "weighted_loss": True}
    expected_missing = {
        "full": set(), "no_clahe": {"clahe"}, "no_mixup": {"mixup"}, "no_cutout": {"cutout"},
        "no_geometric": {"flip", "rotate", "scale", "shift_scale_rotate"},
        "no_photometric": {"brightness_contrast", "hue_saturation"},
        "no_noise_blur": {"noise", "motion_blur"},
        "balance_none": {"sampler", "weighted_loss"}, "balance_sampler": {"weighted_loss"},
        "balance_loss": {"sampler"},
    }
    assert set(expected_missing) == set(VARIANTS)
    for name, missing in expected_missing.items():
        cfg = variant_config(name, full_cfg, seed=3)
        got = _built(cfg)
        off = (set(COMPONENTS) - got["components"]) | {k for k in ("clahe", "mixup", "sampler", "weighted_loss")
                                                       if not got[k]}
        assert off == missing, name
        # nothing else in the config changes (besides the seed)
        diff = set(cfg.differences(full_cfg)) - {"seed"}
        assert diff == set(VARIANTS[name][1]), name


def test_the_classroom_recipe_is_the_cpu_preset_and_full_adds_the_papers_pipeline():
    from bcc_utils.config import PRESETS, RUNTIME_FIELDS

    base = base_config("classroom")
    recipe = variant_config("classroom", base, seed=PRESETS["cpu"].seed)
    assert set(recipe.differences(PRESETS["cpu"], ignore=RUNTIME_FIELDS)) == {"bootstrap_resamples"}
    full = _built(variant_config("full", base, seed=0))
    assert full["components"] == set(COMPONENTS) and full["mixup"] and full["sampler"] and full["weighted_loss"]
    assert base.augment == "batch" and base.epochs == PRESETS["cpu"].epochs


def test_each_remedy_variant_leaves_out_exactly_its_component():
    from bcc_utils.ablation import REMEDIES, default_variants
    from bcc_utils.robust_augment import COMPONENTS as REMEDY_COMPONENTS

    full = base_config("robust")
    assert "robust" in full.augment and not full.disabled_components
    assert default_variants("robust") == ["full", *REMEDIES] and default_variants("cpu") == list(VARIANTS)
    for name, (_, overrides) in REMEDIES.items():
        cfg = variant_config(name, full, seed=3)
        kept = set() if "robust" not in cfg.augment else set(REMEDY_COMPONENTS) - set(cfg.disabled_components)
        left_out = set(REMEDY_COMPONENTS) - kept
        assert left_out == (set(REMEDY_COMPONENTS) if name == "no_remedies" else {name.removeprefix("no_")}), name
        assert set(cfg.differences(full)) - {"seed"} <= set(overrides), name


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown ablation variant"):
        variant_config("no_magic", base_config("smoke"), 0)
    with pytest.raises(ValueError, match="Unknown augmentation component"):
        base_config("smoke", augment_disable="cutout,sparkles")
    with pytest.raises(ValueError, match="only applies to augment='paper'"):
        base_config("smoke", augment="dihedral", augment_disable="cutout")


def test_a_remedy_on_a_base_without_it_fails_before_any_training(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown augmentation component.*zoom"):
        run_ablation(tmp_path / "data", tmp_path / "results", tmp_path / "runs", base="smoke", variants=["no_zoom"])
    assert not (tmp_path / "runs").exists()


def test_smoke_grid_writes_records_resumes_and_summarizes(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    res, runs = tmp_path / "res", tmp_path / "runs"
    logs = []
    run_ablation(data_dir, res, runs, base="smoke", variants=["full", "no_cutout"], seeds=[0, 1],
                 progress=False, log=logs.append)
    files = sorted(p.name for p in res.glob("*-s*.json"))
    assert files == ["full-s0.json", "full-s1.json", "no_cutout-s0.json", "no_cutout-s1.json"]
    rec = json.loads((res / "no_cutout-s1.json").read_text())
    assert rec["config"]["augment_disable"] == "cutout" and rec["config"]["seed"] == 1
    assert len(rec["y_true"]) == len(rec["y_pred"]) == rec["dataset"]["n_test"]
    assert rec["accuracy"] == pytest.approx(np.mean(np.array(rec["y_true"]) == np.array(rec["y_pred"])))
    history = pd.read_csv(runs / "no_cutout-s1" / "history.csv")
    assert rec["val_acc"] == pytest.approx(history["val_acc"].max())  # the validation number a choice may use
    assert [h["epoch"] for h in rec["history"]] == history["epoch"].tolist()  # the learning curves travel along
    assert [h["val_acc"] for h in rec["history"]] == pytest.approx(history["val_acc"].tolist(), abs=1e-5)
    grid = json.loads((res / "ablation.json").read_text())
    assert grid["invocations"][0]["runs_trained"] == 4 and grid["invocations"][0]["wall_s"] > 0
    # a second call trains nothing new
    run_ablation(data_dir, res, runs, base="smoke", variants=["full", "no_cutout"], seeds=[0, 1],
                 progress=False, log=logs.append)
    assert logs[-1] == "ablation: 4 of 4 runs done; 0 to train"
    runs_df, grid = load_ablation(res)
    assert len(runs_df) == 4 and len(grid["invocations"]) == 2
    table = summarize(runs_df)
    assert list(table.index) == ["full", "no_cutout"] and table.loc["full", "diff"] == 0
    # another base config may not be mixed into the same folder
    with pytest.raises(ValueError, match="different base config"):
        run_ablation(data_dir, res, runs, base="smoke", variants=["full"], seeds=[0], overrides={"epochs": 2},
                     progress=False, log=logs.append)


def _record(variant, seed, correct):
    y_true = [0] * len(correct)
    return {"variant": variant, "seed": seed, "removes": variant, "accuracy": float(np.mean(correct)),
            "macro_f1": 0.0, "paths_sha": "same", "y_true": y_true, "y_pred": [0 if c else 1 for c in correct]}


def test_an_interrupted_grid_still_says_what_it_is(data_dir, tmp_path, monkeypatch):
    import bcc_utils.train

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # the session ends during the first run

    monkeypatch.setattr(bcc_utils.train, "train_or_load", stop)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(data_dir, tmp_path / "results", tmp_path / "runs", base="smoke", variants=["full", "no_mixup"],
                     seeds=[0], progress=False, log=lambda *a: None)
    grid = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert grid["base"] == "smoke" and grid["base_config"] == base_config("smoke").to_dict()
    assert {"full", "no_mixup"} <= set(grid["variants"]) and grid["invocations"] == []
    assert not list((tmp_path / "results").glob("*-s*.json")) and not list((tmp_path / "results" / ".claims").glob("*.claim"))


def test_summary_difference_and_its_two_intervals():
    rng = np.random.default_rng(0)
    n = 2000
    full = [rng.uniform(size=n) < 0.95 for _ in range(2)]
    worse = [f & (rng.uniform(size=n) < 0.9) for f in full]  # loses ~9.5 points in both seeds
    same = [f.copy() for f in full]
    # seed noise larger than the effect: one seed 3 points better than full, the other 6 points worse
    noisy = [full[0] | (rng.uniform(size=n) < 0.6), full[1] & (rng.uniform(size=n) < 0.94)]
    runs = pd.DataFrame([_record("full", s, full[s]) for s in (0, 1)] + [_record("no_cutout", s, worse[s])
                        for s in (0, 1)] + [_record("no_mixup", s, same[s]) for s in (0, 1)]
                        + [_record("no_clahe", s, noisy[s]) for s in (0, 1)])
    t = summarize(runs)
    expected = np.mean([worse[s].mean() - full[s].mean() for s in (0, 1)])
    assert t.loc["no_cutout", "diff"] == pytest.approx(expected)
    assert t.loc["no_cutout", "diff_lo"] < expected < t.loc["no_cutout", "diff_hi"] < 0
    assert bool(t.loc["no_cutout", "significant"])
    assert t.loc["no_mixup", "diff"] == 0 and not t.loc["no_mixup", "significant"]
    assert not t.loc["full", "significant"]
    # the test-image interval alone calls the noisy variant different; the seed-aware interval does not
    assert t.loc["no_clahe", "test_hi"] < 0 or t.loc["no_clahe", "test_lo"] > 0
    assert t.loc["no_clahe", "diff_lo"] < 0 < t.loc["no_clahe", "diff_hi"] and not t.loc["no_clahe", "significant"]
    # a stricter level (Bonferroni over three comparisons) widens both intervals around the same difference
    strict = summarize(runs, confidence=1 - 0.05 / 3)
    assert (strict["diff"] == t["diff"]).all()
    assert (strict["diff_lo"] <= t["diff_lo"]).all() and (strict["diff_hi"] >= t["diff_hi"]).all()
    assert (strict["test_hi"] - strict["test_lo"] > t["test_hi"] - t["test_lo"]).loc[["no_cutout", "no_clahe"]].all()
    with pytest.raises(ValueError, match="confidence"):
        summarize(runs, confidence=95)
    runs.loc[0, "paths_sha"] = "other"
    with pytest.raises(ValueError, match="different test sets"):
        summarize(runs)


def test_two_processes_share_one_grid_each_run_trained_once(data_dir, tmp_path):
    """Two ``ablate`` invocations on one results folder (as on two machines): no run twice, no record lost."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BCC_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "bcc_utils", "ablate", "--base", "smoke", "--variants", "full", "no_cutout",
            "no_mixup", "--seeds", "0", "1", "--data-dir", str(data_dir), "--results", str(tmp_path / "res"),
            "--runs", str(tmp_path / "runs"), "--quiet"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    grid = json.loads((tmp_path / "res" / "ablation.json").read_text())
    runs = [r for inv in grid["invocations"] for r in inv["runs"]]
    assert len(grid["invocations"]) == 2 and sorted(runs) == sorted(f"{v}-s{s}" for v in ("full", "no_cutout",
                                                                                            "no_mixup") for s in (0, 1))
    assert len(list((tmp_path / "res").glob("*-s*.json"))) == 6
    assert not list((tmp_path / "res" / ".claims").glob("*.claim"))  # every claim released


def test_a_claim_of_a_dead_process_is_taken_over_and_a_live_one_respected(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from bcc_utils.atomic import try_claim

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    claim = tmp_path / "full-s0.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))
    assert try_claim(claim) and json.loads(claim.read_text())["pid"] == os.getpid()
    assert not try_claim(claim)  # held by a live process (this one)
    claim.write_text(json.dumps({"host": "another-machine", "pid": dead}))
    assert not try_claim(claim)  # another machine's claim cannot be checked: respected


def test_per_class_recall_is_the_mean_over_seeds_of_each_class_recall():
    runs = pd.DataFrame([
        {"variant": "full", "seed": 0, "classes": ["a", "b"], "y_true": [0, 0, 1, 1], "y_pred": [0, 1, 1, 1]},
        {"variant": "full", "seed": 1, "classes": ["a", "b"], "y_true": [0, 0, 1, 1], "y_pred": [0, 0, 0, 1]},
        {"variant": "classroom", "seed": 0, "classes": ["a", "b"], "y_true": [0, 0, 1, 1], "y_pred": [1, 1, 1, 1]},
    ])
    from bcc_utils.ablation import per_class_recall

    recall = per_class_recall(runs)
    assert list(recall.columns) == ["full", "classroom"] and list(recall.index) == ["a", "b"]
    assert recall.loc["a", "full"] == pytest.approx(0.75) and recall.loc["b", "full"] == pytest.approx(0.75)
    assert recall.loc["a", "classroom"] == 0 and recall.loc["b", "classroom"] == 1
    per_seed = per_class_recall(runs, by_seed=True)
    assert list(per_seed.columns) == [("full", 0), ("full", 1), ("classroom", 0)]
    assert per_seed[("full", 0)].tolist() == [0.5, 1.0] and per_seed[("full", 1)].tolist() == [1.0, 0.5]
    assert per_seed["full"].mean(axis=1).tolist() == recall["full"].tolist()  # the mean is the default table


def test_per_class_precision_matches_sklearn_and_counts_a_class_never_predicted_as_zero():
    from sklearn.metrics import precision_score

    from bcc_utils.ablation import per_class_precision

    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 200)
    seeds = [np.where(rng.uniform(size=200) < 0.8, y_true, rng.integers(0, 3, 200)) for _ in range(2)]
    never_c = np.where(y_true == 2, 0, y_true)  # class "c" is never predicted
    runs = pd.DataFrame([{"variant": "full", "seed": s, "classes": ["a", "b", "c"], "y_true": y_true.tolist(),
                          "y_pred": p.tolist()} for s, p in enumerate(seeds)]
                        + [{"variant": "no_mixup", "seed": 0, "classes": ["a", "b", "c"], "y_true": y_true.tolist(),
                            "y_pred": never_c.tolist()}])
    prec = per_class_precision(runs)
    expected = np.mean([precision_score(y_true, p, average=None, labels=[0, 1, 2]) for p in seeds], axis=0)
    assert prec["full"].to_numpy() == pytest.approx(expected)
    assert prec.loc["c", "no_mixup"] == 0 and prec.loc["b", "no_mixup"] == 1


EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wbc-external"


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason=f"the external white-cell sets are not at {EXTERNAL}")
def test_a_grid_can_also_measure_each_run_on_external_sets(data_dir, tmp_path, monkeypatch):
    from bcc_utils.external import evaluate_external

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    res, runs = tmp_path / "res", tmp_path / "runs"
    sets = [EXTERNAL / "dataset2-cellavision"]
    run_ablation(data_dir, res, runs, base="smoke", variants=["full"], seeds=[0], progress=False, external=sets,
                 log=lambda *_: None)
    rec = json.loads((res / "full-s0.json").read_text())
    ext = rec["external"]["dataset2-cellavision"]
    report, _ = evaluate_external(runs / "full-s0" / "best.pt", sets[0])
    assert ext["n"] == report["n"] == 100 and ext["balanced_accuracy"] == pytest.approx(report["balanced_accuracy"])
    assert sum(sum(row) for row in ext["confusion"]["counts"]) == 100
    command = json.loads((res / "ablation.json").read_text())["invocations"][0]["command"]
    assert command.endswith("--external …/dataset2-cellavision") and str(EXTERNAL) not in command
    with pytest.raises(ValueError, match="distinct folder names"):
        run_ablation(data_dir, res, runs, base="smoke", variants=["full"], seeds=[0], progress=False,
                     external=[sets[0], tmp_path / "dataset2-cellavision"])


def test_external_summary_is_the_mean_over_seeds_and_its_change_from_full():
    from bcc_utils.ablation import external_summary

    def rec(variant, seed, tecom, cv):
        return {"variant": variant, "seed": seed, "external": {
            "tecom": {"accuracy": tecom, "balanced_accuracy": tecom / 2, "accuracy_ci": [tecom - 0.05, tecom + 0.05]},
            "cv": {"accuracy": cv, "balanced_accuracy": cv / 2, "accuracy_ci": [cv - 0.1, cv + 0.1]}}}

    runs = pd.DataFrame([rec("full", 0, 0.58, 0.4), rec("full", 1, 0.6, 0.4), rec("full", 2, 0.62, 0.4),
                         rec("no_clahe", 0, 0.2, 0.5), rec("no_mixup", 0, 0.14, 0.4), rec("no_mixup", 1, 0.15, 0.4),
                         rec("no_mixup", 2, 0.16, 0.4),
                         {"variant": "no_clahe", "seed": 1, "external": np.nan}])  # measured before --external
    t = external_summary(runs)
    assert list(t.index) == [("full", "cv"), ("full", "tecom"), ("no_clahe", "cv"), ("no_clahe", "tecom"),
                             ("no_mixup", "cv"), ("no_mixup", "tecom")]
    assert t.loc[("full", "tecom"), "mean"] == pytest.approx(0.6) and t.loc[("full", "tecom"), "n_seeds"] == 3
    assert t.loc[("no_clahe", "tecom"), "diff"] == pytest.approx(-0.4) and t.loc[("no_clahe", "cv"), "n_seeds"] == 1
    assert external_summary(runs, "balanced_accuracy").loc[("full", "tecom"), "max"] == pytest.approx(0.31)
    # an interval needs two seeds a side; no_mixup's tecom drop (0.6 -> 0.15) is clear of 0, its cv change is 0
    assert np.isnan(t.loc[("no_clahe", "tecom"), "diff_lo"]) and not t.loc[("no_clahe", "tecom"), "significant"]
    lo, hi = t.loc[("no_mixup", "tecom"), ["diff_lo", "diff_hi"]]
    assert lo < -0.45 < hi < 0 and t.loc[("no_mixup", "tecom"), "significant"]
    assert t.loc[("no_mixup", "cv"), "diff"] == 0 and not t.loc[("no_mixup", "cv"), "significant"]
    # the records' test-set intervals widen it: the same seeds with no test noise give a narrower interval
    bare = external_summary(runs.assign(external=[{k: {**e, "accuracy_ci": [e["accuracy"]] * 2} for k, e in x.items()}
                                                  if isinstance(x, dict) else x for x in runs["external"]]))
    assert bare.loc[("no_mixup", "tecom"), "diff_hi"] - bare.loc[("no_mixup", "tecom"), "diff_lo"] < hi - lo
    with pytest.raises(ValueError, match="measure"):
        external_summary(runs, "f1")
    with pytest.raises(ValueError, match="external set"):
        external_summary(runs.assign(external=np.nan))


def test_grid_figures_draw_what_the_records_hold():
    from bcc_utils.ablation import external_summary, per_class_precision, per_class_recall
    from bcc_utils.viz import plot_grid_curves, plot_per_class_change, plot_shift_ablation

    def rec(variant, seed, val, ext):
        hist = [{"epoch": e + 1, "train_acc": v - 0.1, "val_acc": v} for e, v in enumerate(val)]
        return {"variant": variant, "seed": seed, "classes": ["a", "b"], "y_true": [0, 0, 1, 1],
                "y_pred": [0, 1, 1, 1] if variant == "full" else [0, 0, 0, 1], "history": hist,
                "external": {"tecom": {"accuracy": ext}, "cv": {"accuracy": ext + 0.1}}}

    runs = pd.DataFrame([rec("full", 0, [0.5, 0.8, 0.9, 0.92], 0.6), rec("full", 1, [0.4, 0.7, 0.9, 0.94], 0.5),
                         rec("no_clahe", 0, [0.5, 0.85, 0.9, 0.95], 0.2)])
    fig = plot_grid_curves(runs)
    left, right = fig.axes
    assert len(left.lines) == 4  # train and validation for each of the two full seeds
    assert [line.get_label() for line in right.lines] == ["full (n=2)", "no clahe (n=1)"]
    assert np.allclose(right.lines[0].get_ydata(), [45, 75, 90, 93])  # mean of the two seeds, in %
    p, r = per_class_precision(runs), per_class_recall(runs)
    fig = plot_per_class_change({"precision": p.drop(columns="full").sub(p["full"], axis=0),
                                 "recall": r.drop(columns="full").sub(r["full"], axis=0)})
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert texts == ["+50.0", "-50.0"]  # recall of a: 1/2 -> 1, of b: 1 -> 1/2
    ext = external_summary(runs)
    fig = plot_shift_ablation(pd.Series({"full": 0.0, "no_clahe": 0.01}), ext)
    ax = fig.axes[0]
    xs = {line.get_label(): line.get_xdata()[0] for line in ax.lines if line.get_label() != "_nolegend_"}
    assert xs["PBC test split"] == pytest.approx(1.0)
    assert xs["tecom (line: seed range)"] == pytest.approx(100 * (0.2 - 0.55))


def test_welch_interval_is_scipys_welch_t_interval_and_widens_with_other_variance():
    from scipy.stats import ttest_ind

    from bcc_utils.ablation import welch_interval

    a, b = np.array([0.971, 0.975, 0.969]), np.array([0.962, 0.972])
    lo, hi = welch_interval(a.mean() - b.mean(), a, b)
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    wider = welch_interval(a.mean() - b.mean(), a, b, extra_var=1e-5)
    assert wider[0] < lo and wider[1] > hi
    assert np.isnan(welch_interval(0.01, a[:1], b)).all()  # one seed: its noise cannot be estimated
    # the bootstrap over two or three seeds is narrower than the t interval on the same runs
    rng = np.random.default_rng(0)
    full = [rng.uniform(size=3000) < p for p in (0.95, 0.96)]
    var = [rng.uniform(size=3000) < p for p in (0.955, 0.97)]
    runs = pd.DataFrame([_record("full", s, full[s]) for s in (0, 1)] + [_record("no_mixup", s, var[s]) for s in (0, 1)])
    t = summarize(runs, n_resamples=500)
    assert t.loc["no_mixup", "t_hi"] - t.loc["no_mixup", "t_lo"] > t.loc["no_mixup", "diff_hi"] - t.loc["no_mixup", "diff_lo"]
    assert np.isnan(t.loc["full", "t_lo"]) and not t.loc["full", "t_significant"]


def test_ablation_plot_draws_the_chosen_seed_interval():
    from bcc_utils.viz import plot_ablation

    rng = np.random.default_rng(3)
    full = [rng.uniform(size=2000) < p for p in (0.95, 0.955, 0.96)]
    worse = [rng.uniform(size=2000) < p for p in (0.90, 0.91, 0.905)]
    t = summarize(pd.DataFrame([_record("full", s, full[s]) for s in range(3)]
                               + [_record("no_cutout", s, worse[s]) for s in range(3)]), n_resamples=300)
    for seeds, cols in (("bootstrap", ["diff_lo", "diff_hi"]), ("t", ["t_lo", "t_hi"])):
        thick = plot_ablation(t, seeds=seeds).axes[0].lines[0]
        assert list(thick.get_xdata()) == pytest.approx(list(100 * t.loc["no_cutout", cols]))
        assert thick.get_color() == "tab:red"  # removing it measurably costs accuracy, by either interval
    with pytest.raises(ValueError, match="seeds"):
        plot_ablation(t, seeds="normal")
