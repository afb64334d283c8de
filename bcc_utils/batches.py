"""Batch-level operations on uint8 image tensors: in-memory batching, dihedral flips, TTA, model input.

The CPU path keeps the whole preprocessed training split in memory as one
``uint8`` N×H×W×3 tensor and augments whole batches in the main process: a
random element of the dihedral group (horizontal flip, vertical flip,
transpose) per image costs three vectorised ``torch.where`` calls instead of a
per-image albumentations pipeline in worker processes. Cells have no
preferred orientation, so these eight views are all valid images of the class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from bcc_utils.preprocess import normalize_batch


def dihedral_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flip, vertical flip and transpose (each p=0.5, per image) of a B×C×S×S batch."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral_augment needs square images, got {tuple(x.shape[-2:])}")
    masks = torch.rand(3, x.shape[0], generator=generator).lt(0.5).to(x.device).view(3, -1, 1, 1, 1)
    x = torch.where(masks[0], x.transpose(-1, -2), x)
    x = torch.where(masks[1], x.flip(-1), x)
    return torch.where(masks[2], x.flip(-2), x)


def tta_views(x: torch.Tensor, tta: str = "none") -> list[torch.Tensor]:
    """Views averaged at test time: ``"none"`` -> [x]; ``"dihedral"`` -> identity, h-flip, v-flip, transpose."""
    if tta == "none":
        return [x]
    if tta == "dihedral":
        return [x, x.flip(-1), x.flip(-2), x.transpose(-1, -2)]
    raise ValueError(f"tta must be 'none' or 'dihedral', got {tta!r}")


def to_input(x: torch.Tensor, mean, std, device, channels_last: bool = True) -> torch.Tensor:
    """uint8 B×3×H×W -> normalised float32 on ``device`` (channels-last if asked)."""
    x = normalize_batch(x.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def nhwc_to_nchw(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8 (numpy or tensor) -> N×3×H×W view (channels-last strides, no copy)."""
    t = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    return t.permute(0, 3, 1, 2)


class MemoryBatches:
    """Iterate over (uint8 B×3×S×S, int64 labels) batches of an in-memory N×S×S×3 array.

    Parameters
    ----------
    images
        uint8 tensor N×S×S×3 (whole split, in memory).
    labels
        int64 tensor (N,).
    batch_size
        Images per batch; the last, smaller batch is dropped when ``drop_last``.
    order
        Index sequence for this pass (a permutation, or sampler draws); ``None``: 0..N-1.
    augment
        Apply :func:`dihedral_augment` with ``generator``.
    limit
        At most this many batches (0 = all).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 order: Sequence[int] | torch.Tensor | None = None, augment: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False, limit: int = 0):
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.order = torch.arange(len(images)) if order is None else torch.as_tensor(order, dtype=torch.int64)
        self.augment, self.generator, self.drop_last, self.limit = augment, generator, drop_last, int(limit)

    def __len__(self) -> int:
        n = len(self.order) // self.batch_size if self.drop_last else -(-len(self.order) // self.batch_size)
        return min(n, self.limit) if self.limit else n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            x = nhwc_to_nchw(self.images[idx])
            if self.augment:
                x = dihedral_augment(x, self.generator)
            yield x, self.labels[idx]
