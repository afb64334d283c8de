"""Metrics agree with scikit-learn; bootstrap intervals behave; results load back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from bcc_utils.atomic import write_json
from bcc_utils.metrics import _acc_macro_f1, bootstrap_ci, classification_report_dict, load_results, results_table

CLASSES = ["a", "b", "c"]

ROOT = Path(__file__).resolve().parent.parent


def _probs(pred, k=3, conf=0.8):
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_hand_built_example_matches_sklearn_and_hand_counts():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    r = classification_report_dict(y_true, _probs(y_pred), CLASSES, n_resamples=200)
    # by hand: 7 of 10 correct; class a: P=3/4 R=3/4; b: P=1/2 R=1/2; c: P=3/4 R=3/4
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["per_class"]["a"]["precision"] == pytest.approx(0.75)
    assert r["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert r["per_class"]["c"]["support"] == 4
    assert r["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert r["confusion_matrix_normalized"][1] == pytest.approx([0, 0.5, 0.5])
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert r["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    p, rec, f, s = skm.precision_recall_fscore_support(y_true, y_pred)
    for i, c in enumerate(CLASSES):
        assert r["per_class"][c] == pytest.approx({"precision": p[i], "recall": rec[i], "f1": f[i], "support": s[i]})
    json.dumps(r)  # JSON-serialisable as is


def test_missing_class_and_shape_errors():
    y_true = np.array([0, 0, 1, 1])
    r = classification_report_dict(y_true, _probs(np.array([0, 1, 1, 1])), CLASSES, n_resamples=50)
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y_true, [0, 1, 1, 1], labels=[0, 1, 2], average="macro",
                                                       zero_division=0))
    with pytest.raises(ValueError, match="shape"):
        classification_report_dict(y_true, np.zeros((4, 2)), CLASSES)


def test_vectorised_bootstrap_statistics_equal_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
        y_pred[:5] = 0  # some classes may be absent from one side
        cm = skm.confusion_matrix(y_true, y_pred, labels=range(5))[None]
        acc, f1 = _acc_macro_f1(cm)
        assert acc[0] == pytest.approx(skm.accuracy_score(y_true, y_pred))
        assert f1[0] == pytest.approx(skm.f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0))


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 400)
    y_pred = np.where(rng.random(400) < 0.85, y_true, rng.integers(0, 8, 400))
    r = classification_report_dict(y_true, _probs(y_pred, 8), list("abcdefgh"), n_resamples=500, seed=3)
    for key in ("accuracy", "macro_f1"):
        lo, hi = r[f"{key}_ci"]
        assert lo < r[key] < hi
        assert hi - lo < 0.15
    assert bootstrap_ci(y_true, y_pred, 8, 300, seed=5) == bootstrap_ci(y_true, y_pred, 8, 300, seed=5)
    assert bootstrap_ci(y_true, y_pred, 8, 300, seed=5) != bootstrap_ci(y_true, y_pred, 8, 300, seed=6)
    wide = bootstrap_ci(y_true[:40], y_pred[:40], 8, 300)["accuracy"]
    narrow = bootstrap_ci(y_true, y_pred, 8, 300)["accuracy"]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_load_results_and_table(tmp_path):
    y = np.array([0, 1, 2, 2])
    for run, pred in (("run-a", [0, 1, 2, 2]), ("run-b", [0, 1, 1, 2])):
        m = {"run": run, "model": "m", "preset": "smoke", "config": {"img_size": 48},
             "timing": {"train_img_per_s": 10.0, "infer_img_per_s": 20.0, "train_s": 1.0},
             "test": classification_report_dict(y, _probs(np.array(pred)), CLASSES, n_resamples=20)}
        write_json(m, tmp_path / run / "metrics.json")
    res = load_results(tmp_path)
    assert list(res) == ["run-a", "run-b"]
    assert list(load_results(tmp_path / "run-b")) == ["run-b"]
    assert list(load_results(str(tmp_path / "run-*"))) == ["run-a", "run-b"]
    table = results_table(res)
    assert table.loc["run-a", "accuracy"] == 1.0 and table.loc["run-b", "accuracy"] == 0.75
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "nothing-here")


def test_per_class_f1_intervals_equal_a_bootstrap_with_sklearn():
    """Each class's interval is the percentile interval of sklearn's F1 over the same resamples of a real run."""
    import pandas as pd

    from bcc_utils.metrics import per_class_f1_ci
    from bcc_utils.paths import CLASSES

    pred = pd.read_csv(ROOT / "results" / "lite0-cpu" / "predictions.csv").sample(400, random_state=0)
    got = per_class_f1_ci(pred["label"], pred["pred"], CLASSES, n_resamples=60, seed=3)
    y_true = pred["label"].map(CLASSES.index).to_numpy()
    y_pred = pred["pred"].map(CLASSES.index).to_numpy()
    rng = np.random.default_rng(3)
    f1 = []
    for _ in range(60):
        idx = rng.integers(0, len(y_true), len(y_true))
        f1.append(skm.f1_score(y_true[idx], y_pred[idx], labels=range(8), average=None, zero_division=0))
    lo, hi = np.percentile(np.array(f1), [2.5, 97.5], axis=0)
    assert list(got) == list(CLASSES)
    assert np.allclose([got[c][0] for c in CLASSES], lo) and np.allclose([got[c][1] for c in CLASSES], hi)
    # a class the model confuses often has a wider interval than a class it never misses
    widths = {c: hi_ - lo_ for c, (lo_, hi_) in got.items()}
    assert widths["ig"] > widths["eosinophil"]


def test_per_class_f1_intervals_of_perfect_and_empty_predictions():
    from bcc_utils.metrics import per_class_f1_ci

    labels = ["a", "b", "b", "a", "b"]
    assert per_class_f1_ci(labels, labels, ["a", "b"], n_resamples=20) == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    with pytest.raises(ValueError, match="non-empty"):
        per_class_f1_ci([], [], ["a", "b"])
