"""Small helpers for the first cells of every notebook: Colab, seeds, device, environment, parameters.

Each notebook starts with one setup cell and one parameters cell (see
``notebooks/01_dataset_exploration.ipynb``). The setup cell calls
:func:`seed_everything` and :func:`environment`; the parameters cell reads the
environment variables below, so that CI, ``python -m bcc_utils series`` and a
student on Colab run the same notebook unchanged:

``BCC_DATA_DIR``  dataset folder (else the download cache, see :func:`bcc_utils.find_data_dir`)
``BCC_SMOKE``     ``1`` for a tiny, fast run (what CI does)
``BCC_RUNS_DIR``  where training runs and other outputs go (default ``../runs``)

The training notebooks (04, 05) and ``colab/train_on_colab.ipynb`` also use
:func:`train_or_load` (train, resume, or leave a finished run alone) and
:func:`speed_table` (parameters and measured images/s).

Nothing here prints a path of the machine it runs on in full: notebooks are
committed with their outputs, so :func:`show_path` shortens paths for display.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import warnings
from pathlib import Path

RUNS_ENV = "BCC_RUNS_DIR"

#: The hint printed when no GPU is visible.
NO_GPU_HINT = (
    "no GPU: this runs on the CPU (fine for notebooks 01-03; training is slow). "
    "On Colab: Runtime > Change runtime type > T4 GPU, then run the notebook again."
)


def in_colab() -> bool:
    """True inside a Google Colab kernel (``google.colab`` is imported there at start-up)."""
    return "google.colab" in sys.modules


def seed_everything(seed: int = 42) -> int:
    """Seed Python's, NumPy's and torch's random number generators (as the trainer does).

    Parameters
    ----------
    seed
        The seed; the series uses 42 throughout, as the paper does.

    Returns
    -------
    int
        The seed, so that a notebook can print or store it.
    """
    from bcc_utils.checkpoint import seed_everything as seed_all

    os.environ["PYTHONHASHSEED"] = str(seed)  # affects subprocesses (DataLoader workers), not this one
    seed_all(seed)
    return seed


def device(verbose: bool = True):
    """Pick the best available torch device: CUDA, then Apple's MPS, then the CPU.

    Parameters
    ----------
    verbose
        Print the choice; on the CPU, print :data:`NO_GPU_HINT`.

    Returns
    -------
    torch.device
    """
    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        text = f"device: cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        dev = torch.device("mps")
        text = "device: mps (Apple GPU)"
    else:
        dev = torch.device("cpu")
        text = f"device: cpu - {NO_GPU_HINT}"
    if verbose:
        print(text)
    return dev


def _version(module: str) -> str:
    from importlib import metadata

    dist = {"cv2": "opencv-python-headless", "sklearn": "scikit-learn"}.get(module, module)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        try:
            return str(__import__(module).__version__)
        except Exception:  # noqa: BLE001 - not installed or no version attribute
            return "not installed"


def environment(packages: tuple[str, ...] = ("torch", "torchvision", "albumentations", "cv2", "timm")) -> dict:
    """Describe the machine a notebook runs on (so that measured times can be read in context).

    Parameters
    ----------
    packages
        Import names whose versions are reported.

    Returns
    -------
    dict
        ``python``, ``platform``, ``cpu_cores``, ``colab``, ``gpu`` (name or ``None``) and one key per package.
    """
    info = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "colab": in_colab(),
        "gpu": None,
    }
    for name in packages:
        info[name] = _version(name)
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def print_environment(**kwargs) -> None:
    """Print :func:`environment` on one line per group (what the setup cells show)."""
    info = environment(**kwargs)
    head = ("python", "platform", "cpu_cores", "colab", "gpu")
    print(", ".join(f"{k} {info[k]}" for k in head))
    print(", ".join(f"{k} {v}" for k, v in info.items() if k not in head))


def runs_dir(value: str | os.PathLike | None = None, default: str = "../runs") -> Path:
    """Where a notebook writes its outputs: ``value``, else ``$BCC_RUNS_DIR``, else ``default``.

    The folder is created. ``default`` is relative to the notebook's folder, so a
    clone writes to ``runs/`` at the top of the repository.
    """
    chosen = value if value is not None else os.environ.get(RUNS_ENV) or default
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def show_path(path: str | os.PathLike, keep: int = 2) -> str:
    """A path shortened for display in committed outputs.

    Relative paths are returned as they are. An absolute path is shown relative
    to the working directory when it lies below it, else as ``…/`` followed by its
    last ``keep`` components, so that no machine-specific prefix is printed.

    Examples
    --------
    >>> show_path("../runs")
    '../runs'
    >>> show_path("/data/pbc-sample/PBC_dataset_normal_DIB")
    '…/pbc-sample/PBC_dataset_normal_DIB'
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        pass
    parts = p.parts[1:]
    tail = "/".join(parts[-keep:]) if keep > 0 else ""
    return f"…/{tail}" if len(parts) > keep else "/" + "/".join(parts)


_ABSOLUTE = re.compile(r"(?<![\w.~:/])(/[^\s:'\",;()]+)")


def shorten_paths(text: str, keep: int = 3) -> str:
    """Replace every absolute path inside ``text`` by :func:`show_path` (``keep`` last components).

    URLs are left alone. Used for messages from the library, which name files in full.
    """
    return _ABSOLUTE.sub(lambda m: show_path(m.group(1), keep), text)


def tidy_warnings(keep: int = 3) -> None:
    """Show warnings as ``Category: message`` with shortened paths, once per message.

    Python's default format starts with the full path of the library file that
    warned, and our data warnings name files in full: neither belongs in a
    committed notebook. Called by the setup cells.
    """

    def _format(message, category, filename, lineno, line=None):  # noqa: ARG001 - warnings API
        return f"{category.__name__}: {shorten_paths(str(message), keep)}\n"

    warnings.formatwarning = _format
    warnings.simplefilter("default")


# ---------------------------------------------------------------- training notebooks (04, 05, colab launcher)
def _finished_differences(run_dir: Path, cfg) -> dict | None:
    """Config differences between ``cfg`` and the finished run in ``run_dir`` (``None``: no finished run)."""
    import json

    from bcc_utils.config import TrainConfig

    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    saved = TrainConfig.from_dict(json.loads(metrics.read_text(encoding="utf-8"))["config"])
    return saved.differences(cfg)


def train_or_load(cfg, data_dir, run_dir, callback=None, progress: bool = True, cache_dir=None) -> Path:
    """Train ``cfg`` into ``run_dir``, resume it, or — when that run already finished — leave it as it is.

    A finished run (``metrics.json`` written, same config) is not touched: re-running a notebook or
    the Colab launcher neither retrains nor re-evaluates it. An unfinished one (``last.pt`` only, e.g.
    after a closed Colab tab) is resumed by :func:`bcc_utils.train.train` (``resume="auto"``);
    otherwise training starts. Used by notebooks 04 and 05 and ``colab/train_on_colab.ipynb``.

    Parameters
    ----------
    cfg
        A :class:`bcc_utils.config.TrainConfig`.
    run_dir
        The run folder.
    data_dir, callback, progress, cache_dir
        Passed to :func:`bcc_utils.train.train`.

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    ValueError
        When ``run_dir`` holds a finished run of another config.
    """
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
    from bcc_utils.train import train

    state = "resuming the unfinished run in" if (run_dir / "last.pt").is_file() else "training into"
    print(f"{state} {show_path(run_dir)}")
    return train(cfg, data_dir, run_dir, resume="auto", progress=progress, callback=callback, cache_dir=cache_dir)


def speed_table(specs, batch_size: int = 4, n_batches: int = 2, device="cpu", warmup: int = 1):
    """Parameter counts and measured images/s (inference, training steps) of freshly built models.

    Parameters
    ----------
    specs
        ``(label, timm name, image size)`` triples.
    batch_size, n_batches, warmup
        Passed to :func:`bcc_utils.models.measure_speed`; small, for a rough figure in seconds.
    device
        Where to measure.

    Returns
    -------
    pandas.DataFrame
        Index ``label``; columns ``model``, ``img_size``, ``params_M``, ``infer_img_per_s``, ``train_img_per_s``.
    """
    import pandas as pd

    from bcc_utils.models import create_model, measure_speed, model_info

    rows = []
    kw = {"batch_size": batch_size, "n_batches": n_batches, "device": device, "warmup": warmup, "channels_last": True}
    for label, name, size in specs:
        model = create_model(name, pretrained=False)
        rows.append({"label": label, "model": name, "img_size": size, "params_M": model_info(model)["params"] / 1e6,
                     "infer_img_per_s": measure_speed(model, size, **kw),
                     "train_img_per_s": measure_speed(model, size, train=True, **kw)})
    table = pd.DataFrame(rows).set_index("label")
    return table.round({"params_M": 2, "infer_img_per_s": 1, "train_img_per_s": 1})


def main_run(preset: str | None = None):
    """The run that notebook 04 trains for ``preset``, as ``(config, run name)``; notebooks 07 and 08 reuse it.

    ``paper``: EfficientNet-B0 at 300 px (``efficientnet_b0-paper``); ``cpu``: EfficientNet-Lite0 at
    96 px (``lite0-cpu``); ``smoke``: EfficientNet-B0, smoke preset, one thread (``efficientnet_b0-smoke``).
    ``None``: :func:`bcc_utils.config.auto_preset`. With the same config :func:`train_or_load` finds
    that run finished and loads it instead of training again.
    """
    from bcc_utils.config import auto_preset, config_for
    from bcc_utils.paper import PAPER_RUNS

    preset = preset or auto_preset()
    if preset == "paper":
        return config_for("paper", model="efficientnet_b0"), PAPER_RUNS["efficientnet_b0"]
    if preset == "cpu":
        return config_for("cpu", model="tf_efficientnet_lite0"), "lite0-cpu"
    if preset == "smoke":
        return config_for("smoke", model="efficientnet_b0", num_threads=1), "efficientnet_b0-smoke"
    raise ValueError(f"Unknown preset {preset!r}; choose paper, cpu or smoke")
