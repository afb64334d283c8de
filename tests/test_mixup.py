"""Mixup: batch mixing, λ distribution, soft labels and the (weighted) mixed loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bcc_utils.mixup import mix_images, mixup_batch, mixup_loss, soft_labels


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 4, 4, generator=g), torch.arange(n) % 4


def test_mixed_batch_is_the_convex_combination():
    x, y = _batch()
    g = torch.Generator().manual_seed(1)
    xm, ya, yb, lam = mixup_batch(x, y, alpha=0.4, p=1.0, generator=g)
    assert 0.0 <= lam <= 1.0 and xm.shape == x.shape
    assert torch.equal(ya, y)
    # recover the partner of every sample from the labels and check the blend
    partners = [int(torch.nonzero((x - (xm[i] - lam * x[i]) / (1 - lam)).flatten(1).abs().amax(1) < 1e-4)[0])
                for i in range(len(x))]
    assert sorted(partners) == list(range(len(x)))  # a permutation
    assert torch.equal(yb, y[partners])
    assert torch.allclose(xm, lam * x + (1 - lam) * x[partners], atol=1e-6)


def test_soft_labels_sum_to_one():
    x, y = _batch()
    _, ya, yb, lam = mixup_batch(x, y, p=1.0, generator=torch.Generator().manual_seed(2))
    s = soft_labels(ya, yb, lam, n_classes=4)
    assert s.shape == (8, 4)
    assert torch.allclose(s.sum(1), torch.ones(8))
    assert torch.all(s >= 0)
    same = ya == yb
    assert torch.allclose(s[same].max(1).values, torch.ones(int(same.sum())))


def test_p_zero_leaves_batch_untouched_and_int_input_becomes_float():
    x, y = _batch()
    xm, ya, yb, lam = mixup_batch(x, y, p=0.0)
    assert lam == 1.0 and torch.equal(xm, x) and torch.equal(yb, y)
    xi = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    assert mixup_batch(xi, y[:4], p=1.0)[0].is_floating_point()
    with pytest.raises(ValueError):
        mixup_batch(x, y, alpha=0)


def test_probability_and_beta_distribution_of_lambda():
    x, y = _batch(4)
    g = torch.Generator().manual_seed(3)
    lams = np.array([mixup_batch(x, y, alpha=0.4, p=0.5, generator=g)[3] for _ in range(4000)])
    mixed = lams[lams < 1.0]
    n, k = len(lams), len(mixed)
    assert abs(k - n / 2) < 5 * math.sqrt(n / 4)  # ~half the batches are mixed
    # the mixed λ follow Beta(0.4, 0.4): two-sample Kolmogorov–Smirnov against torch's own Beta sampler
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = torch.distributions.Beta(0.4, 0.4).sample((20000,)).numpy()
    grid = np.sort(np.concatenate([mixed, ref]))
    cdf_mixed = np.searchsorted(np.sort(mixed), grid, "right") / k
    cdf_ref = np.searchsorted(np.sort(ref), grid, "right") / len(ref)
    d = np.abs(cdf_mixed - cdf_ref)
    assert d.max() < 1.95 * math.sqrt((k + len(ref)) / (k * len(ref)))  # alpha = 0.001
    assert ((mixed < 0.1) | (mixed > 0.9)).mean() > 0.4  # U-shaped: mostly one dominant cell
    assert abs(mixed.mean() - 0.5) < 0.05


def test_generator_makes_it_reproducible():
    x, y = _batch()
    a = mixup_batch(x, y, p=1.0, generator=torch.Generator().manual_seed(5))
    b = mixup_batch(x, y, p=1.0, generator=torch.Generator().manual_seed(5))
    assert a[3] == b[3] and torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_weighted_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y_a, y_b = torch.tensor([0, 2]), torch.tensor([1, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    lam = 0.7

    def nll(row, cls):
        z = logits[row].tolist()
        return -(z[cls] - math.log(sum(math.exp(v) for v in z)))

    # each CE is the weighted mean: sum_i w[y_i] * nll_i / sum_i w[y_i]
    ce_a = (1.0 * nll(0, 0) + 0.5 * nll(1, 2)) / (1.0 + 0.5)
    ce_b = (2.0 * nll(0, 1) + 1.0 * nll(1, 0)) / (2.0 + 1.0)
    expected = lam * ce_a + (1 - lam) * ce_b
    assert mixup_loss(logits, y_a, y_b, lam, weight=w).item() == pytest.approx(expected, rel=1e-6)
    unweighted = lam * (nll(0, 0) + nll(1, 2)) / 2 + (1 - lam) * (nll(0, 1) + nll(1, 0)) / 2
    assert mixup_loss(logits, y_a, y_b, lam).item() == pytest.approx(unweighted, rel=1e-6)


def test_loss_reduces_to_cross_entropy_and_soft_targets():
    g = torch.Generator().manual_seed(6)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    w = torch.rand(5, generator=g) + 0.1
    assert torch.allclose(mixup_loss(logits, y, y, 1.0, weight=w), F.cross_entropy(logits, y, weight=w))
    yb = y.roll(1)
    soft = soft_labels(y, yb, 0.3, 5)
    assert torch.allclose(mixup_loss(logits, y, yb, 0.3), F.cross_entropy(logits, soft), atol=1e-6)


def test_loss_backpropagates():
    logits = torch.randn(4, 3, requires_grad=True)
    mixup_loss(logits, torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2]), 0.4,
               weight=torch.tensor([1.0, 2.0, 3.0])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mix_images_for_display():
    a = np.full((4, 4, 3), 200, np.uint8)
    b = np.full((4, 4, 3), 100, np.uint8)
    out = mix_images(a, b, 0.25)
    assert out.dtype == np.uint8 and np.all(out == 125)
