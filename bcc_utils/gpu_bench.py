"""Training speed of the paper's models on a GPU, for ``python -m bcc_utils bench gpu`` (in :mod:`bcc_utils.bench`).

A few real training steps of the ``paper`` preset (EfficientNet-B0 and ResNet50 at 300 px, the
config's AMP dtype, channels-last, mixup, weighted loss) on batches already on the device: the
model's own images/s, with the data loader out of the way.
"""

from __future__ import annotations

import time

import torch

DEFAULT_MODELS = ("efficientnet_b0", "resnet50")


def train_speed(model_name: str, img_size: int, device: torch.device, steps: int = 10, warmup: int = 3,
                batch_size: int = 32) -> dict:
    """Training images/s of the ``paper`` config for ``model_name`` (random init, random uint8 batches on device)."""
    from bcc_utils.batches import to_input
    from bcc_utils.config import config_for
    from bcc_utils.device import amp_dtype
    from bcc_utils.models import input_stats
    from bcc_utils.train import build_model, build_optimizer, train_step

    cfg = config_for("paper", model=model_name, img_size=img_size, weights="none", batch_size=batch_size)
    model = build_model(cfg, pretrained=False).to(device).to(memory_format=torch.channels_last)
    mean, std = input_stats(model)
    opt, _ = build_optimizer(cfg, model, steps_per_epoch=steps + warmup)
    amp = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 8, (batch_size,), generator=g).to(device)
    weight = torch.ones(8, device=device)
    x = to_input(x8, mean, std, device, True)
    model.train()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        train_step(model, x, y, opt, cfg, weight, g, scaler, amp)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, opt, cfg, weight, g, scaler, amp)
    sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"model": model_name, "img_size": img_size, "batch_size": batch_size, "amp": "off" if amp is None else str(amp).replace("torch.", ""),
            "channels_last": True, "train_img_per_s": round(batch_size * steps / seconds, 1),
            "peak_gpu_memory_gib": None if peak is None else round(peak, 2)}


__all__ = ["train_speed", "DEFAULT_MODELS"]
