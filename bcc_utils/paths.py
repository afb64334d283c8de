"""Where things live: the class list, the data location, the cache, smoke mode.

Every notebook, test and command finds the data the same way:

1. an explicit argument (``--data-dir``, ``data_dir=``), else
2. the environment variable ``BCC_DATA_DIR``, else
3. the download cache (``BCC_CACHE_DIR``, default ``~/.cache/bcc``), where
   ``python -m bcc_utils download pbc`` puts the original archive.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The eight PBC classes, in the order used for integer labels everywhere.
CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

DATA_ENV = "BCC_DATA_DIR"
CACHE_ENV = "BCC_CACHE_DIR"
SMOKE_ENV = "BCC_SMOKE"


def cache_dir() -> Path:
    """Return the download/preprocessing cache folder (``$BCC_CACHE_DIR`` or ``~/.cache/bcc``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bcc"


def smoke_mode() -> bool:
    """True when ``$BCC_SMOKE`` is set to a true value (``1``, ``true``, ``yes``): tiny, fast runs for CI."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the dataset folder: argument, then ``$BCC_DATA_DIR``, then the download cache.

    Parameters
    ----------
    data_dir
        Explicit location. Any of the archive root, the class-folder parent or a
        wrapper folder is accepted (see :func:`bcc_utils.data.locate_root`).

    Returns
    -------
    Path
        The existing folder (not yet checked for class folders). A download-cache
        folder counts only once its download passed verification (it holds the
        marker file that :func:`bcc_utils.data.download` writes then).

    Raises
    ------
    FileNotFoundError
        With instructions, when nothing is found.
    """
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("argument", Path(data_dir).expanduser()))
    elif os.environ.get(DATA_ENV):
        candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV]).expanduser()))
    else:
        for name in ("pbc", "kaggle"):
            candidates.append(("download cache", cache_dir() / name))
    unverified = []
    for origin, path in candidates:
        if origin == "download cache":
            # the name of bcc_utils.data.sources.VERIFIED_MARKER (not imported: that would load numpy)
            if (path / ".verified").is_file():
                return path
            if path.is_dir():  # a download that failed verification or was interrupted: never used silently
                unverified.append(path)
            continue
        if path.is_dir():
            return path
        raise FileNotFoundError(f"Dataset folder from {origin} does not exist: {path}")
    if unverified:
        raise FileNotFoundError(
            f"No verified PBC dataset found: {unverified[0]} holds a download that was not verified (it failed "
            "verification or was interrupted). Run  python -m bcc_utils download pbc  to fetch and verify it, "
            f"or set {DATA_ENV} to a dataset folder to use one anyway."
        )
    raise FileNotFoundError(
        "No PBC dataset found. Either set the environment variable "
        f"{DATA_ENV} to a folder holding the eight class folders (or the archive that contains them), "
        "or download it with:  python -m bcc_utils download pbc   "
        f"(it is cached under {cache_dir()})."
    )
