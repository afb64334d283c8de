"""DataLoader worker set-up shared by the benchmark and the trainer.

Two things go wrong silently in ``DataLoader`` workers without this:

* OpenCV starts its own thread pool in every worker; with 2 workers on 2 cores
  that oversubscribes the CPU. ``cv2.setNumThreads(0)`` keeps each worker
  single-threaded (parallelism comes from the workers).
* albumentations 2.x transforms carry their own random generators. Forked
  workers inherit *identical* copies, and every epoch re-forks from the same
  untouched parent state, so without reseeding the workers repeat each other's
  augmentations and every epoch repeats the previous one.
  :func:`worker_init_fn` reseeds from ``torch``'s per-worker, per-epoch seed.

Process-pool workers (the preprocessing cache build) call :func:`die_with_parent`:
a pool worker blocked on its task queue never notices that its parent was
killed, and would otherwise keep its memory (hundreds of MB) forever.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

from bcc_utils.atomic import pid_alive

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None, poll_seconds: float = 1.0) -> None:
    """End this (worker) process soon after its parent process ends, however the parent ended.

    On Linux the kernel sends ``SIGTERM`` the moment the parent dies
    (``prctl(PR_SET_PDEATHSIG)``; it fires when the *thread* that started the
    worker ends, so start pools from a thread that outlives them); everywhere, a
    daemon thread also checks every ``poll_seconds`` whether the process has been
    handed to a new parent. Call it first thing in a pool's ``initializer``.

    Parameters
    ----------
    parent_pid
        The process that started the pool (``os.getpid()`` there, passed in ``initargs``):
        if it is already gone, this worker exits at once.
    poll_seconds
        Interval of the fallback check.
    """
    import signal

    parent = os.getppid()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a handler inherited from the parent must not keep us alive
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the polling below still works
            pass
    if parent_pid is not None and not pid_alive(parent_pid):  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)  # no cleanup: the parent, who would collect results, is gone

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def reseed_transform(transform: Any, seed: int | None) -> None:
    """Give every transform inside an albumentations pipeline its own independent generator.

    ``albumentations.Compose(seed=s)`` hands the *same* seed to every child transform, which
    makes their random draws identical (correlated). Here each child gets a
    separate stream spawned from one :class:`numpy.random.SeedSequence`.

    Parameters
    ----------
    transform
        An albumentations transform or Compose; anything else is ignored.
    seed
        Integer seed, or ``None`` for fresh OS entropy.
    """
    import random

    if not hasattr(transform, "set_random_state"):
        return
    nodes: list[Any] = []

    def walk(t: Any) -> None:
        nodes.append(t)
        for child in getattr(t, "transforms", ()) or ():
            walk(child)

    walk(transform)
    for node, child_seq in zip(nodes, np.random.SeedSequence(seed).spawn(len(nodes))):
        # set_random_state on a Compose would push *its* generator to the children: set the attributes directly.
        node.random_generator = np.random.default_rng(child_seq)
        node.py_random = random.Random(int(child_seq.generate_state(1)[0]))


def _find_transforms(dataset: Any, depth: int = 0) -> list[Any]:
    """albumentations pipelines reachable from a dataset.

    Looks at ``dataset.transform``, inside it when it is a plain callable
    wrapping a pipeline (attributes ``transform``/``augment``), and through
    wrappers' ``.dataset`` (``Subset``).
    """
    if dataset is None or depth > 5:
        return []
    found = []
    t = getattr(dataset, "transform", None)
    for candidate in (t, getattr(t, "transform", None), getattr(t, "augment", None)):
        if hasattr(candidate, "set_random_state") and all(candidate is not f for f in found):
            found.append(candidate)
    return found + _find_transforms(getattr(dataset, "dataset", None), depth + 1)


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: single-threaded OpenCV and fresh augmentation seeds.

    Safe to use with any dataset; with ``num_workers=0`` it is simply not called.
    """
    import cv2
    import torch

    cv2.setNumThreads(0)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for transform in _find_transforms(info.dataset):
        reseed_transform(transform, info.seed % 2**63)


def to_chw_tensor(image: np.ndarray):
    """``uint8`` HWC array → 3×H×W ``uint8`` tensor sharing its memory (no transpose copy)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def collate_uint8(batch: list[tuple[Any, int]]):
    """Batch ``(uint8 CHW tensor, label)`` items into ``(uint8 B×3×H×W, int64 B)``.

    The images are stacked in HWC order (a plain memory copy, straight into
    shared memory inside a worker) and the batch is returned as a BCHW *view*,
    i.e. in ``torch.channels_last`` memory format. ``default_collate`` would
    transpose every image instead (about 4× slower for 300 px batches).
    """
    import torch

    images, labels = zip(*batch)
    hwc = [im.permute(1, 2, 0) for im in images]
    out = None
    if torch.utils.data.get_worker_info() is not None:  # as default_collate: write into shared memory directly
        numel = sum(x.numel() for x in hwc)
        storage = hwc[0]._typed_storage()._new_shared(numel, device=hwc[0].device)
        out = hwc[0].new(storage).resize_(len(hwc), *hwc[0].shape)
    x = torch.stack(hwc, 0, out=out).permute(0, 3, 1, 2)
    return x, torch.as_tensor(labels, dtype=torch.int64)


def make_loader(dataset, batch_size: int = 32, *, sampler=None, shuffle: bool = False, workers: int = 2,
                drop_last: bool = False, pin_memory: bool = False, persistent: bool = True, collate_fn=None):
    """A ``DataLoader`` with this module's worker set-up and ``uint8`` collate.

    Parameters
    ----------
    dataset
        Yields ``(uint8 CHW tensor, label)`` (e.g. :class:`bcc_utils.cache.CachedDataset`).
    sampler
        E.g. from :func:`bcc_utils.sampling.make_sampler`; excludes ``shuffle``.
    workers
        Worker processes (Colab: 2). ``persistent`` keeps them alive between epochs.
    collate_fn
        Default :func:`collate_uint8` (for ``uint8`` CHW items).
    """
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        collate_fn=collate_fn or collate_uint8,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
