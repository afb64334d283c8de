"""Class weights, the weighted sampler, balancing modes and the double-correction numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bcc_utils.data import make_split
from bcc_utils.paths import CLASSES
from bcc_utils.sampling import (
    BALANCE_MODES,
    balancing,
    balancing_table,
    class_counts,
    class_weights,
    effective_class_weights,
    epoch_class_counts,
    make_sampler,
)

#: The PBC class sizes of the full archive (README facts): an imbalanced, realistic label vector.
PBC_COUNTS = [1218, 3117, 1551, 2895, 1214, 1420, 3329, 2348]


@pytest.fixture(scope="module")
def pbc_labels():
    return np.repeat(np.arange(8), PBC_COUNTS)


@pytest.fixture(scope="module")
def train_labels(sample_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = make_split(sample_root)
    return np.array([CLASSES.index(c) for c in df.loc[df["split"] == "train", "label"]])


def test_class_weights_inverse_frequency(pbc_labels):
    raw = class_weights(pbc_labels, 8, normalise=False)
    assert raw.dtype == torch.float32
    assert np.allclose(raw.numpy(), 1.0 / np.array(PBC_COUNTS))
    norm = class_weights(pbc_labels, 8).numpy()
    assert norm[pbc_labels].mean() == pytest.approx(1.0, rel=1e-6)  # mean weight over samples is 1
    assert np.allclose(norm / norm[0], raw.numpy() / raw.numpy()[0], rtol=1e-5)  # same ratios


def test_absent_class_gets_zero_weight_and_bad_labels_raise():
    w = class_weights([0, 0, 2], 3).numpy()
    assert w[1] == 0 and w[0] > 0 and w[2] > w[0]
    with pytest.raises(ValueError):
        class_counts([0, 5], 3)


def test_sampler_draws_classes_equally_often(pbc_labels):
    n = 80_000
    sampler = make_sampler(pbc_labels, 8, num_samples=n, seed=1)
    counts = np.bincount(pbc_labels[list(sampler)], minlength=8)
    freq, expected = counts / n, 1 / 8
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) < 5 * sigma), freq


def test_sampler_on_the_real_train_split(train_labels):
    sampler = make_sampler(train_labels, 8, num_samples=40_000, seed=0)
    counts = np.bincount(train_labels[list(sampler)], minlength=8)
    assert np.all(np.abs(counts / 40_000 - 1 / 8) < 5 * np.sqrt(1 / 8 * 7 / 8 / 40_000))
    assert len(make_sampler(train_labels, 8)) == len(train_labels)


def test_sampler_is_seeded_and_changes_between_epochs(pbc_labels):
    a = list(make_sampler(pbc_labels, 8, num_samples=100, seed=3))
    b_sampler = make_sampler(pbc_labels, 8, num_samples=100, seed=3)
    assert list(b_sampler) == a
    assert list(b_sampler) != a  # next epoch: a new draw


def test_balancing_modes(pbc_labels):
    for mode in BALANCE_MODES:
        sampler, weight = balancing(pbc_labels, 8, mode)
        assert (sampler is not None) == (mode in ("sampler", "both"))
        assert (weight is not None) == (mode in ("loss", "both"))
    with pytest.raises(ValueError, match="sampler"):
        balancing(pbc_labels, 8, "oversample")


def test_effective_weights_show_the_double_correction(pbc_labels):
    counts = np.array(PBC_COUNTS, float)
    none = effective_class_weights(pbc_labels, 8, "none")
    assert np.allclose(none, counts / counts.sum())
    for mode in ("sampler", "loss"):
        assert np.allclose(effective_class_weights(pbc_labels, 8, mode), 1 / 8)
    both = effective_class_weights(pbc_labels, 8, "both")
    assert np.allclose(both, (1 / counts) / (1 / counts).sum())
    rarest, commonest = int(np.argmin(counts)), int(np.argmax(counts))
    assert both[rarest] > 1 / 8 > both[commonest]
    assert both[rarest] / both[commonest] == pytest.approx(counts[commonest] / counts[rarest])


def test_effective_weights_match_a_simulation_of_both(pbc_labels):
    """Draw with the sampler and weight each draw's loss: the class shares are the predicted ones."""
    sampler, weight = balancing(pbc_labels, 8, "both", seed=2)
    sampler.num_samples = 80_000
    drawn = pbc_labels[list(sampler)]
    share = np.bincount(drawn, weights=weight.numpy()[drawn], minlength=8)
    share /= share.sum()
    assert np.allclose(share, effective_class_weights(pbc_labels, 8, "both"), rtol=0.05)


def test_balancing_table_and_epoch_counts(pbc_labels):
    table = balancing_table(pbc_labels, 8, CLASSES)
    assert list(table.index[:8]) == list(CLASSES)
    assert {"count", "frequency", *[f"share_{m}" for m in BALANCE_MODES]} <= set(table.columns)
    assert np.allclose(table.iloc[:8][[f"share_{m}" for m in BALANCE_MODES]].sum(), 1.0)
    ratio = table.loc["max/min share"]
    assert ratio["share_sampler"] == pytest.approx(1.0) and ratio["share_both"] > 2.5
    assert np.array_equal(epoch_class_counts(pbc_labels, 8), PBC_COUNTS)
    balanced = epoch_class_counts(pbc_labels, 8, make_sampler(pbc_labels, 8, seed=0))
    assert balanced.sum() == len(pbc_labels) and balanced.max() / balanced.min() < 1.2
