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
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "bcc-checkpoint-1"


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a unique temporary file beside ``path``, fsync, then ``os.replace`` (atomic)."""
    from bcc_utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    return Path(path)


def _read_error(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in one line (torch's advice is to unpickle anyway)."""
    text = str(exc)
    if "Weights only load failed" in text or "Unsupported global" in text or "UnpicklingError" in type(exc).__name__:
        if path.stat().st_size and not zipfile.is_zipfile(path) and _looks_like_text(path):
            return "it is a text file, not a PyTorch checkpoint"
        return "refused: the file holds Python objects, not only tensors (only plain checkpoints are loaded)"
    if "zip archive" in text or "central directory" in text or "invalid load key" in text or "EOF" in text:
        return "it is not a PyTorch checkpoint, or it is truncated"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    return b"\0" not in head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:64])


def _check_fields(path: Path, ckpt: dict) -> None:
    """Fields a loader trusts, checked once here so that a damaged file gives one line naming it."""
    import math

    from bcc_utils.config import TrainConfig
    from bcc_utils.paths import CLASSES

    missing = [k for k in ("model", "config", "classes", "norm", "manifest", "manifest_hash", "epoch") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if list(ckpt["classes"]) != list(CLASSES):
        raise ValueError(f"{path}: classes {list(ckpt['classes'])} are not the library's label order "
                         f"{list(CLASSES)}; the file was not written by 'bcc_utils train' or was altered")
    norm = ckpt["norm"]
    try:
        mean, std = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: 'norm' must hold 'mean' and 'std', three numbers each") from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"{path}: 'norm' must hold three finite means and three stds > 0, got {norm}")
    try:
        TrainConfig.from_dict(ckpt["config"])  # covers CLAHE settings, sizes, TTA
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: its config is not valid: {exc}") from None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` and check the fields other code relies on.

    Raises
    ------
    FileNotFoundError, ValueError
        One line naming the file: missing, empty, not a checkpoint, holding Python objects, damaged fields.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"Cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files; all mean "not ours"
        raise ValueError(f"Cannot read checkpoint {path}: {_read_error(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bcc training checkpoint (expected format {FORMAT})")
    _check_fields(path, ckpt)
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
