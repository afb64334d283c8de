"""Mixup (Zhang et al., 2018) on whole batches, with a class-weight-aware loss.

With probability ``p`` a batch is replaced by ``λ·x + (1-λ)·x[perm]`` with
``λ ~ Beta(α, α)``; the loss becomes ``λ·CE(y_a) + (1-λ)·CE(y_b)``.

Choice of α: the paper gives none. We use **α = 0.4**, the largest value
Zhang et al. used on ImageNet (they found 0.1–0.4 helps and larger α
underfits). Beta(0.4, 0.4) is U-shaped: most λ are near 0 or 1, so a mixed
image is usually one cell with a faint ghost of another; λ≈0.5 blends are rare.
Mixing is linear, so mixing normalised batches equals normalising mixed ones:
call it after :func:`bcc_utils.preprocess.normalize_batch`, on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Default Beta(α, α) parameter and per-batch probability.
DEFAULT_ALPHA = 0.4
DEFAULT_P = 0.5


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float = DEFAULT_ALPHA, p: float = DEFAULT_P,
                generator: torch.Generator | None = None):
    """Mix a batch with a shuffled copy of itself, with probability ``p``.

    Parameters
    ----------
    x
        Batch B×… (floating; integer input is converted to float32).
    y
        Integer labels, length B.
    alpha
        Beta(α, α) parameter (> 0).
    p
        Probability of mixing this batch; otherwise ``x`` is returned with ``λ = 1`` and ``y_b = y``.
    generator
        CPU ``torch.Generator`` for reproducibility (default: torch's global RNG).

    Returns
    -------
    (x_mixed, y_a, y_b, lam)
        ``lam`` is a Python float; ``y_a`` is ``y``, ``y_b`` the partner labels.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not x.is_floating_point():
        x = x.float()
    if torch.rand((), generator=generator).item() >= p:
        return x, y, y, 1.0
    seed = int(torch.randint(0, 2**62, (), generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))  # torch's Beta takes no generator
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    mixed = x.mul(lam).add_(x[perm], alpha=1.0 - lam)
    return mixed, y, y[perm.to(y.device)], lam


def mixup_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
               weight: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """``λ·CE(logits, y_a) + (1-λ)·CE(logits, y_b)``, optionally class-weighted and label-smoothed.

    This is the training loss of :mod:`bcc_utils.train` (``smoothing`` is ``cfg.label_smoothing``).

    Definition with weights: each CE is PyTorch's weighted mean,
    ``CE_w(y) = Σ_i w[y_i]·ℓ_i / Σ_i w[y_i]`` (``F.cross_entropy(weight=w)``),
    so the two terms are normalised separately. With ``lam = 1`` the loss is
    exactly ``F.cross_entropy(logits, y_a, weight=weight)``: unmixed batches
    and a plain weighted-CE training use the same scale. Note the consequence
    of this normalisation: weights change the balance *within* a batch, not
    its overall size (a batch of one class is unaffected by its weight).
    """
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    loss = F.cross_entropy(logits, y_a, weight=weight, label_smoothing=smoothing)
    if lam >= 1.0:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, y_b, weight=weight, label_smoothing=smoothing)


def soft_labels(y_a: torch.Tensor, y_b: torch.Tensor, lam: float, n_classes: int) -> torch.Tensor:
    """The mixed targets as probabilities: ``λ·onehot(y_a) + (1-λ)·onehot(y_b)`` (rows sum to 1)."""
    a = F.one_hot(torch.as_tensor(y_a), n_classes).float()
    b = F.one_hot(torch.as_tensor(y_b), n_classes).float()
    return lam * a + (1.0 - lam) * b


def mix_images(image_a: np.ndarray, image_b: np.ndarray, lam: float) -> np.ndarray:
    """Blend two ``uint8`` images as mixup does (for showing mixup pairs), rounded to ``uint8``."""
    mixed = lam * image_a.astype(np.float32) + (1.0 - lam) * image_b.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
