"""Training on several processes (GPUs or machines) with ``torch.distributed`` — the same command, scaled.

::

    torchrun --nproc_per_node 4 -m bcc_utils train --preset paper --model resnet50 --data-dir DATA --out runs/r50

``torchrun`` starts one process per GPU and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` joins them into one process group (NCCL on CUDA, gloo on CPUs). The training loop then
differs from a single process in four places only:

* ``cfg.batch_size`` is the *global* batch: each of N processes takes ``batch_size / N`` images per
  step, so the optimiser sees the same batches and learning rate as on one GPU;
* every process draws the epoch's full order (or the class-balanced sample: N draws by 1/frequency
  weights) from the same seed and keeps every N-th index (:func:`shard`), so together they see
  exactly what one process would, each a disjoint part;
* gradients are averaged by ``DistributedDataParallel``;
* only rank 0 builds the cache, claims the run folder and writes files; the others wait for it.

We chose plain ``torch.distributed`` over Hugging Face Accelerate: the loop already owns devices,
autocast and checkpoints, and DDP adds a few lines, not a dependency.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def requested() -> bool:
    """True when launched by ``torchrun`` (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group; returns ``(rank, world_size, device)`` (``(0, 1, …)`` without a launcher).

    On CUDA each process takes GPU ``LOCAL_RANK``; on CPUs the gloo backend is used.
    """
    import torch.distributed as dist

    from bcc_utils.device import resolve_device

    if not requested():
        return 0, 1, resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0  # before joining, or after leaving, the group


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every process (picklable objects; identity in a single process)."""
    import torch.distributed as dist

    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first():
    """Run the block on rank 0 first, then on the others (e.g. building a shared cache once).

    An error on rank 0 is passed to the others as a one-line ``RuntimeError`` so that no process
    waits forever for a partner that has stopped.
    """
    error = None
    if is_main():
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
        msg = broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
    else:
        msg = broadcast(None)
        if msg is not None:
            raise RuntimeError(f"rank 0 stopped: {msg}")
        yield


def sum_all(*values: float) -> list[float]:
    """Sum numbers over all processes (for epoch losses and counts)."""
    import torch.distributed as dist

    if world_size() == 1:
        return list(values)
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(order, rank: int, world: int) -> list[int]:
    """Every ``world``-th index of the epoch's ``order``, starting at ``rank``; all shards equally long.

    The last ``len(order) % world`` indices are dropped so that every process takes the same
    number of steps (an uneven count would leave one process waiting in an all-reduce forever).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    order = [int(i) for i in order]
    n = len(order) - len(order) % world
    return order[rank:n:world]


def cleanup() -> None:
    """Leave the process group (if joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
