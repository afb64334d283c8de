"""A training run on disk: its files, the rules for (re)using its folder, loading it back.

One folder per run::

    manifest.csv   config.json    the split and the config it was trained with
    last.pt        best.pt        every epoch's state (resume), the best validation epoch's weights
    history.csv    history.json   one row per epoch
    metrics.json   predictions.csv   the best checkpoint on the test split
    calibration.json              a temperature fitted on validation, tied to one checkpoint's SHA-256

Rules that keep finished work safe:

* :func:`claim` refuses a folder that holds run files unless ``overwrite`` is asked for; then the old
  files are moved aside and come back if the new run fails before its first epoch is saved
  (:class:`Claim`). Nothing is touched before the caller has validated its inputs.
* :func:`load_temperature` applies a ``calibration.json`` only to the checkpoint it was fitted on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from pathlib import Path

MANIFEST = "manifest.csv"
CONFIG = "config.json"
LAST = "last.pt"
BEST = "best.pt"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
CALIBRATION = "calibration.json"
#: Every file a run writes.
RUN_FILES = (MANIFEST, CONFIG, LAST, BEST, HISTORY_CSV, HISTORY_JSON, METRICS, PREDICTIONS, CALIBRATION)
#: The files that make a folder hold a run: anything trained or measured. ``manifest.csv`` and ``config.json``
#: alone (a run killed before its first epoch) are rewritten identically by the next start.
RESULT_FILES = tuple(n for n in RUN_FILES if n not in (MANIFEST, CONFIG))
#: Prefix of the hidden folder that keeps a replaced run until the new one has started.
ASIDE_PREFIX = ".replaced-"

#: Run names (folders under the runs directory) of the paper's two models on the ``paper`` preset.
PAPER_RUNS = {"efficientnet_b0": "efficientnet_b0-paper", "resnet50": "resnet50-paper"}
#: Run names of notebook 05's residual network per preset, best first (notebook 07 looks for them in this order):
#: ResNet50 with the paper's protocol on a GPU, ResNet-18 from scratch on a CPU, the smoke check.
RESNET_RUNS = {"paper": PAPER_RUNS["resnet50"], "cpu": "resnet18-cpu", "smoke": "resnet18-smoke"}


def default_out_dir(cfg) -> Path:
    """``runs/<model>-<preset>`` under the current folder."""
    return Path("runs") / f"{cfg.model}-{cfg.preset}"


def main_run(preset: str | None = None):
    """The run that notebook 04 trains for ``preset``, as ``(config, run name)``; notebooks 07 and 08 reuse it.

    ``paper``: EfficientNet-B0 at 300 px (``efficientnet_b0-paper``); ``cpu``: EfficientNet-Lite0 at
    96 px (``lite0-cpu``); ``smoke``: EfficientNet-B0, smoke preset, one thread (``efficientnet_b0-smoke``).
    ``None``: :func:`bcc_utils.config.auto_preset`.
    """
    from bcc_utils.config import auto_preset, config_for

    preset = preset or auto_preset()
    if preset == "paper":
        return config_for("paper", model="efficientnet_b0"), PAPER_RUNS["efficientnet_b0"]
    if preset == "cpu":
        return config_for("cpu", model="tf_efficientnet_lite0"), "lite0-cpu"
    if preset == "smoke":
        return config_for("smoke", model="efficientnet_b0", num_threads=1), "efficientnet_b0-smoke"
    raise ValueError(f"Unknown preset {preset!r}; choose paper, cpu or smoke")


def resnet_run(preset: str | None = None):
    """The run that notebook 05 trains for ``preset``, as ``(config, run name)`` (names: :data:`RESNET_RUNS`).

    ``paper``: ResNet50 with the paper's protocol (``resnet50-paper``); ``cpu``: ResNet-18 from random
    weights at 64 px, the ``resnet18-cpu`` preset (``resnet18-cpu``); ``smoke``: ResNet-18, smoke preset, one
    thread (``resnet18-smoke``). ``None``: :func:`bcc_utils.config.auto_preset`.
    """
    from bcc_utils.config import auto_preset, config_for

    preset = preset or auto_preset()
    if preset == "paper":
        return config_for("paper", model="resnet50"), RESNET_RUNS["paper"]
    if preset == "cpu":
        return config_for("resnet18-cpu", model="resnet18"), RESNET_RUNS["cpu"]
    if preset == "smoke":
        return config_for("smoke", model="resnet18", num_threads=1), RESNET_RUNS["smoke"]
    raise ValueError(f"Unknown preset {preset!r}; choose paper, cpu or smoke")


def run_files(folder: str | os.PathLike, names=RUN_FILES) -> list[str]:
    """Names of the run files (of ``names``) present in ``folder`` (empty if none or no folder)."""
    folder = Path(folder)
    return [n for n in names if (folder / n).is_file()]


class Claim:
    """A run folder taken for a new run; the replaced run (if any) waits aside until :meth:`started`.

    Use as a context manager around training: leaving it by an exception before :meth:`started`
    removes what the new run wrote and puts the old files back, so the same command can simply be
    run again; :meth:`started` (called once the new run's first ``last.pt`` exists) deletes the old
    files.
    """

    def __init__(self, folder: Path, aside: Path | None):
        self.folder, self.aside, self.done = folder, aside, False

    def started(self) -> None:
        """The new run has saved an epoch: the replaced run is no longer needed."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.aside, self.done = None, True

    def restore(self) -> None:
        """Undo the claim: remove what the new run wrote and put the replaced run back."""
        if self.done:
            return
        for name in RUN_FILES:  # everything here now was written by the new run: the old files are aside
            (self.folder / name).unlink(missing_ok=True)
        if self.aside is not None:
            for f in self.aside.iterdir():
                os.replace(f, self.folder / f.name)
            self.aside.rmdir()
        self.aside, self.done = None, True

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.restore()


def claim(folder: str | os.PathLike, *, overwrite: bool = False) -> Claim:
    """Take ``folder`` for a new run (call only after every input has been validated).

    Raises
    ------
    RuntimeError
        When the folder holds run files and ``overwrite`` is false (nothing is changed).
    """
    folder = Path(folder)
    present = run_files(folder)
    if run_files(folder, RESULT_FILES) and not overwrite:
        hint = "resume it with --resume, " if LAST in present else ""
        kept = sorted(p.name for p in folder.glob(ASIDE_PREFIX + "*"))
        note = f" (a run replaced earlier but not yet superseded is kept in {folder / kept[-1]})" if kept else ""
        raise RuntimeError(f"{folder} already holds a run ({', '.join(present)}): {hint}choose another output "
                           f"folder, or pass --overwrite to replace it{note}")
    folder.mkdir(parents=True, exist_ok=True)
    aside = None
    if present:
        aside = folder / f"{ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir()
        for name in present:
            os.replace(folder / name, aside / name)
    return Claim(folder, aside)


# ------------------------------------------------------------------------------------------- loading
def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(checkpoint: str | os.PathLike | dict, device="cpu"):
    """Rebuild the model of a checkpoint (no download) and load its weights; returns ``(model, ckpt)``."""
    import torch

    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.config import TrainConfig
    from bcc_utils.models import create_model

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = create_model(cfg.model, num_classes=len(ckpt["classes"]), pretrained=False, drop_rate=cfg.drop_rate)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"the checkpoint's weights do not fit a {cfg.model} with {len(ckpt['classes'])} "
                         f"classes: {first}") from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model.eval(), ckpt


def open_for_inference(checkpoint, device="cpu", temperature: float | None = None):
    """What inference on image files needs: ``(model, ckpt, config, temperature, device)``.

    ``checkpoint`` is a path (its ``calibration.json`` gives the temperature when ``temperature`` is ``None``)
    or a ``(model, ckpt)`` pair from :func:`load_model` (temperature 1 unless given).
    """
    from bcc_utils.config import TrainConfig
    from bcc_utils.device import resolve_device

    if temperature is None:
        temperature = 1.0 if isinstance(checkpoint, tuple) else load_temperature(checkpoint)
    dev = resolve_device(device)
    model, ckpt = checkpoint if isinstance(checkpoint, tuple) else load_model(checkpoint, dev)
    return model, ckpt, TrainConfig.from_dict(ckpt["config"]), temperature, dev


def load_with_images(checkpoint, data_dir=None, cache_dir=None, device="cpu", progress: bool = False,
                     rebuild_cache: bool = False):
    """A checkpoint's model and its manifest's images, preprocessed as in training (cached).

    Returns
    -------
    (model, ckpt, images, manifest)
        ``images`` is the :func:`bcc_utils.cache.build_cache` result (``.array``, ``.index_of(path)``);
        ``manifest`` the DataFrame stored in the checkpoint (its hash checked).
    """
    import pandas as pd

    from bcc_utils.cache import build_cache
    from bcc_utils.config import TrainConfig
    from bcc_utils.data import locate_root, manifest_hash
    from bcc_utils.paths import find_data_dir

    model, ckpt = load_model(checkpoint, device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    manifest = pd.DataFrame(ckpt["manifest"])
    if manifest_hash(manifest) != ckpt["manifest_hash"]:
        raise ValueError("the manifest stored in the checkpoint does not match its hash (corrupted file?)")
    root = locate_root(find_data_dir(data_dir))
    images = build_cache(root, manifest, cfg.img_size, cfg.clahe_settings(), cache_dir, progress=progress,
                         rebuild=rebuild_cache)
    return model, ckpt, images, manifest


# --------------------------------------------------------------------------------------- calibration
def calibration_file(checkpoint_or_run_dir: str | os.PathLike) -> Path:
    """``calibration.json`` of the run folder (or of the folder holding a checkpoint)."""
    p = Path(checkpoint_or_run_dir)
    return (p if p.is_dir() else p.parent) / CALIBRATION


def write_calibration(report: dict, checkpoint: str | os.PathLike) -> Path:
    """Write ``report`` (which holds ``temperature``) as ``calibration.json``, tied to ``checkpoint``'s SHA-256."""
    from bcc_utils.atomic import write_json

    checkpoint = Path(checkpoint)
    return write_json({**report, "checkpoint": checkpoint.name, "checkpoint_sha256": sha256(checkpoint)},
                      calibration_file(checkpoint))


def load_temperature(checkpoint_or_run_dir: str | os.PathLike) -> float:
    """The temperature fitted for this checkpoint, or 1.0 (no calibration, or one fitted on another model).

    Given a run folder, the checkpoint named in its ``calibration.json`` is checked. A file fitted on
    different weights (after ``train --overwrite``, or ``calibrate last.pt`` then ``predict best.pt``) is
    ignored with a warning, never applied.

    Raises
    ------
    ValueError
        When ``calibration.json`` is unreadable or its temperature is not a finite number > 0.
    """
    import json
    import math

    p = Path(checkpoint_or_run_dir)
    f = calibration_file(p)
    if not f.is_file():
        return 1.0
    try:
        cal = json.loads(f.read_text(encoding="utf-8"))
        t = float(cal["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{f} is not a calibration file of this library ({type(exc).__name__}: {exc})") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{f}: temperature must be a finite number > 0, got {t}")
    ckpt = p if p.is_file() else p / str(cal.get("checkpoint", BEST))
    if not ckpt.is_file() or cal.get("checkpoint_sha256") != sha256(ckpt):
        warnings.warn(f"{f} was fitted for other weights than {ckpt.name} (SHA-256 differs or is missing): "
                      "ignored, temperature 1; run 'python -m bcc_utils calibrate' on this checkpoint",
                      stacklevel=2)
        return 1.0
    return t


__all__ = ["RUN_FILES", "MANIFEST", "CONFIG", "LAST", "BEST", "HISTORY_CSV", "HISTORY_JSON", "METRICS",
           "PREDICTIONS", "CALIBRATION", "PAPER_RUNS", "RESNET_RUNS", "default_out_dir", "main_run", "resnet_run",
           "run_files", "claim", "Claim",
           "sha256", "load_model", "load_with_images", "calibration_file", "write_calibration", "load_temperature"]
