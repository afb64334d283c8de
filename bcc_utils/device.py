"""Which device and which autocast precision: one answer for notebooks, training, evaluation and ablation.

``"auto"`` means CUDA if present, else Apple's MPS, else the CPU; the notebook's
``device()`` reports exactly what training will then use.
"""

from __future__ import annotations

import torch


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA, else MPS, else CPU; any other name is checked and passed to ``torch.device``.

    Raises
    ------
    RuntimeError
        When the named device is not available on this machine (one line, no traceback in the CLI).
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise RuntimeError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "mps" and not _mps_available():
        raise RuntimeError(f"device {name!r} requested but Apple MPS is not available")
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a config's ``amp`` on ``device`` (``None``: full precision; always on CPU and MPS)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":  # bf16 needs Ampere or newer (a T4 reports bf16 "support" but only emulates it)
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def describe(device: torch.device) -> str:
    """One line naming the device, e.g. ``cuda (NVIDIA T4)``, ``mps (Apple GPU)`` or ``cpu``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return device.type
