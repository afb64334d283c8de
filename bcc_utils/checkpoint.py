"""Checkpoints: atomic writes, ``weights_only`` loads, RNG state as tensors.

A checkpoint is a plain dict of tensors and primitive containers, so
``torch.load(..., weights_only=True)`` can read it without unpickling code:

``format``          ``"bcc-checkpoint-1"``
``model``           state_dict
``optimizer``, ``scheduler``, ``scaler``   state_dicts (``last.pt`` only; ``None`` in ``best.pt``)
``rng``             ``{"torch", "numpy", "python", "cuda"}`` states as tensors (``last.pt`` only)
``config``          :meth:`bcc_utils.config.TrainConfig.to_dict`
``classes``         class names in label order
``epoch``           completed epochs (1-based epoch of these weights)
``metrics``         that epoch's history row; ``history``: all rows so far
``best``            ``{"epoch", "val_acc"}`` best so far
``manifest``        ``{"path": [...], "label": [...], "split": [...]}`` and ``manifest_hash``
``norm``            ``{"mean": [...], "std": [...]}`` input normalisation of the model
``elapsed_s``       wall time spent in training so far; ``data_dir_name``: dataset folder name
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "bcc-checkpoint-1"


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"Cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bcc training checkpoint (expected format {FORMAT})")
    return ckpt


def rng_state() -> dict:
    """Global RNG states of torch, numpy, Python (and CUDA) as tensors."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(pystate, dtype=torch.int64),
                   "gauss": None if pygauss is None else float(pygauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and Python; return a fresh CPU ``torch.Generator`` seeded the same way."""
    seed = int(seed) % 2**63
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)
