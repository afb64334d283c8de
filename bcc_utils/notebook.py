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
import sys
import warnings
from pathlib import Path

from bcc_utils.display import shorten_paths, show_path  # noqa: F401 - notebooks import show_path from here
from bcc_utils.run import main_run  # noqa: F401 - notebooks 07 and 08 import it from here

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
    """The device training and evaluation will use (:func:`bcc_utils.device.resolve_device`, ``"auto"``).

    Parameters
    ----------
    verbose
        Print the choice; on the CPU, print :data:`NO_GPU_HINT`.

    Returns
    -------
    torch.device
    """
    from bcc_utils.device import describe, resolve_device

    dev = resolve_device("auto")
    if verbose:
        print(f"device: {describe(dev)}" + (f" - {NO_GPU_HINT}" if dev.type == "cpu" else ""))
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
def train_or_load(cfg, data_dir, run_dir, callback=None, progress: bool = True, cache_dir=None) -> Path:
    """Train, resume, or load a finished run: :func:`bcc_utils.train.train_or_load` (imported when first used)."""
    from bcc_utils.train import train_or_load as _train_or_load

    return _train_or_load(cfg, data_dir, run_dir, callback=callback, progress=progress, cache_dir=cache_dir)


def reuse_main_run(preset: str, data_dir, runs_dir, train_long: bool = False):
    """Notebook 04's run, found or (if short) trained: :func:`bcc_utils.train.reuse_main_run`."""
    from bcc_utils.train import reuse_main_run as _reuse

    return _reuse(preset, data_dir, runs_dir, train_long)


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


