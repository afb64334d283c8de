"""What the training loop consumes: cached images per split, and one epoch's uint8 batches.

Two paths (``cfg.augment``):

* ``"dihedral"``/``"none"`` — the training split is held in memory as one uint8 tensor and batched
  in the main process (:class:`bcc_utils.batches.MemoryBatches`); no worker processes. Fast on a CPU.
* ``"paper"`` — per-image albumentations in DataLoader workers over the memory-mapped cache
  (:class:`bcc_utils.cache.CachedDataset`); the GPU recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bcc_utils.batches import MemoryBatches
from bcc_utils.config import TrainConfig
from bcc_utils.paths import CLASSES


class RunData:
    """Preprocessed images (cache) and per-split rows and labels of one run."""

    def __init__(self, cfg: TrainConfig, root: Path, manifest, cache_dir, progress: bool, rebuild: bool = False):
        from bcc_utils.cache import build_cache

        self.manifest = manifest
        self.images = build_cache(root, manifest, cfg.img_size, cfg.clahe_settings(), cache_dir, progress=progress,
                                  rebuild=rebuild)
        self.rows, self.labels = {}, {}
        for split in ("train", "val", "test"):
            part = manifest[manifest["split"] == split]
            self.rows[split] = np.array([self.images.index_of(p) for p in part["path"]], dtype=np.int64)
            self.labels[split] = np.array([CLASSES.index(c) for c in part["label"]], dtype=np.int64)
        if not len(self.rows["train"]) or not len(self.rows["val"]):
            raise ValueError("the train and val splits must not be empty (dataset too small?)")


def train_batches(cfg: TrainConfig, data: RunData, sampler, epoch_seed: int, g: torch.Generator, memory,
                  rank: int = 0, world: int = 1):
    """An iterable of uint8 (x, y) batches for one epoch (in-memory path or DataLoader path).

    With ``world`` > 1 processes (:mod:`bcc_utils.distributed`) every process draws the same order from
    ``g`` and keeps its shard; ``cfg.batch_size`` is the global batch, split between the processes.
    """
    n = len(data.rows["train"])
    batch = cfg.batch_size // world
    shard, aug_seed = None, epoch_seed
    if world > 1:
        from bcc_utils.distributed import shard as take_shard

        order = torch.randperm(n, generator=g) if sampler is None else list(sampler)
        shard = take_shard(order, rank, world)
        # the order is common to all processes; flips, mixup and augmentations must not be
        aug_seed = (epoch_seed + 1_000_003 * (rank + 1)) % 2**63
        g.manual_seed(aug_seed)
        torch.manual_seed(aug_seed)
    drop_last = (n if shard is None else len(shard)) > batch
    if cfg.augment != "paper":
        if shard is not None:
            order = shard
        else:
            order = torch.randperm(n, generator=g) if sampler is None else torch.as_tensor(list(sampler))
        flips = (cfg.augment in ("dihedral", "robust")
                 or (cfg.augment in ("batch", "batch+robust") and "flip" not in cfg.disabled_components))
        batches = MemoryBatches(*memory, batch, order, flips, g, drop_last, cfg.limit_train_batches)
        if cfg.augment in ("batch", "robust", "batch+robust"):
            return _Augmented(batches, cfg.disabled_components, g, cfg.augment)
        return batches
    from bcc_utils.augment import build_train_transform
    from bcc_utils.cache import CachedDataset
    from bcc_utils.workers import make_loader, reseed_transform

    ds = CachedDataset(data.images, data.manifest, "train", transform=build_train_transform(cfg.img_size, cfg.disabled_components))
    workers = min(os.cpu_count() or 1, 8) if cfg.num_workers < 0 else cfg.num_workers
    if workers == 0:
        reseed_transform(ds.transform, aug_seed)
    # Workers are re-created every epoch (not persistent): their seeds then follow the per-epoch seed.
    loader = make_loader(ds, batch, sampler=shard if shard is not None else sampler,
                         shuffle=sampler is None and shard is None, workers=workers, drop_last=drop_last,
                         pin_memory=torch.cuda.is_available(), persistent=False)
    if cfg.limit_train_batches:
        return _Limited(loader, cfg.limit_train_batches)
    return loader


class _Augmented:
    """Batch augmentations applied to each batch: the paper's (:func:`bcc_utils.batch_augment.augment_batch`),
    the lab-shift ones (:func:`bcc_utils.robust_augment.robust_batch`), or both (``"batch+robust"``, the paper's
    first); each family gets the disabled names that are its own."""

    def __init__(self, batches, disable, generator, kind="batch"):
        self.batches, self.disable, self.generator, self.kind = batches, disable, generator, kind

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        from bcc_utils import augment, robust_augment
        from bcc_utils.batch_augment import augment_batch

        steps = []
        if self.kind in ("batch", "batch+robust"):
            steps.append((augment_batch, [n for n in self.disable if n in augment.COMPONENTS]))
        if self.kind in ("robust", "batch+robust"):
            steps.append((robust_augment.robust_batch, [n for n in self.disable if n in robust_augment.COMPONENTS]))
        for x, y in self.batches:
            for step, disable in steps:
                x = step(x, self.generator, disable=disable)
            yield x, y


class _Limited:
    """The first ``n`` batches of a loader."""

    def __init__(self, it, n):
        self.it, self.n = it, min(n, len(it))

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, b in enumerate(self.it):
            if i >= self.n:
                break
            yield b


def steps_per_epoch(cfg: TrainConfig, n: int, world: int = 1) -> int:
    """Optimizer steps per epoch for ``n`` training images (last partial batch dropped, as in the loaders).

    With ``world`` processes each takes ``n // world`` images in batches of ``batch_size // world``.
    """
    n, batch = n // world, cfg.batch_size // world
    steps = n // batch if n > batch else 1
    return min(steps, cfg.limit_train_batches) if cfg.limit_train_batches else steps
