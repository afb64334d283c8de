"""Find the folder that holds the eight class folders, whatever wrapper it sits in.

The same data arrives in several shapes: the Mendeley zip extracts to
``PBC_dataset_normal_DIB/<class>/``, kagglehub to
``…/datasets/<owner>/<name>/versions/N/bloodcells_dataset/<class>/``, and people
copy folders around. :func:`locate_root` accepts any of these and returns the
folder that *directly* holds the class folders.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from bcc_utils.paths import CLASSES

#: How many folder levels below the given path are searched for class folders.
MAX_DEPTH = 6

#: Folder names never descended into (macOS zip debris, version control).
_IGNORED_DIRS = {"__MACOSX", ".git", ".ipynb_checkpoints"}


class DataWarning(UserWarning):
    """Something in the dataset folder was skipped or looks wrong (the message names it)."""


def normalise_class_name(name: str) -> str:
    """Canonical form of a class folder name: lower case, surrounding spaces removed.

    Inner runs of spaces, ``-`` and ``_`` collapse to a single ``_`` so that
    ``" Basophil "`` and ``"IG"`` map to ``basophil`` and ``ig``.
    """
    cleaned = name.strip().lower().replace("-", " ").replace("_", " ")
    return "_".join(cleaned.split())


def _subdirs(path: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []
    return [
        Path(e.path)
        for e in entries
        if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED_DIRS
    ]


def _class_count(path: Path) -> int:
    return len({normalise_class_name(d.name) for d in _subdirs(path)} & set(CLASSES))


def locate_root(path: str | os.PathLike) -> Path:
    """Return the folder that directly holds the class folders.

    Parameters
    ----------
    path
        The class-folder parent itself, or any folder above it (archive root,
        kagglehub download folder, ``PBC_dataset_normal_DIB``), up to
        :data:`MAX_DEPTH` levels. Hidden folders and ``__MACOSX`` are ignored.

    Returns
    -------
    Path
        Of the folders below ``path`` holding class folders, the one with the most
        of them; among equals, the shallowest. A stray ``neutrophil/`` folder beside
        the real dataset is therefore not mistaken for it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or no class folder is found below it.
    NotADirectoryError
        If ``path`` is a file (e.g. a zip that still needs extracting).
    ValueError
        If two different folders at the same depth hold that many class folders.
    """
    start = Path(path).expanduser()
    if not start.exists():
        raise FileNotFoundError(f"Dataset folder does not exist: {start}")
    if not start.is_dir():
        raise NotADirectoryError(
            f"{start} is a file, not a folder; extract it first (the folder must contain "
            f"the class folders {', '.join(CLASSES)})."
        )
    best, best_count = [], 0
    level = [start]
    for _ in range(MAX_DEPTH + 1):
        for folder in level:
            count = _class_count(folder)
            if count > best_count:
                best, best_count = [folder], count
            elif count and count == best_count and best and len(best[0].parts) == len(folder.parts):
                best.append(folder)
        if best_count == len(CLASSES):
            break  # nothing deeper can hold more, and the shallower one wins a tie
        # class folders hold images, not datasets: do not descend into them
        level = [d for p in level for d in _subdirs(p) if normalise_class_name(d.name) not in CLASSES]
        if not level:
            break
    if len(best) > 1:
        listing = "\n  ".join(str(p) for p in best)
        raise ValueError(f"Several dataset folders below {start}; pass one of them:\n  {listing}")
    if best:
        return best[0]
    raise FileNotFoundError(
        f"No class folders ({', '.join(CLASSES)}) found in {start} or up to {MAX_DEPTH} levels below it."
    )


def require_classes(root: str | os.PathLike, allow_missing: bool = False) -> list[str]:
    """Check that the dataset has a non-empty folder for every class.

    A model trained without a class never predicts it, and nothing in training
    says so; so a missing class is an error unless asked for.

    Parameters
    ----------
    root
        Anything :func:`locate_root` accepts.
    allow_missing
        Only warn (:class:`DataWarning`) instead of raising.

    Returns
    -------
    list of str
        The classes without images (missing or empty folder); empty when all are there.

    Raises
    ------
    ValueError
        Naming the missing classes, unless ``allow_missing``.
    """
    root = locate_root(root)
    folders, _ = class_folders(root)
    missing = [c for c in CLASSES if c not in folders]
    empty = [c for c, folder in folders.items() if not _has_files(folder)]
    if not missing and not empty:
        return []
    parts = ([f"no folder for: {', '.join(missing)}"] if missing else []) + (
        [f"an empty folder for: {', '.join(empty)}"] if empty else [])
    message = f"{root} has {' and '.join(parts)}"
    if not allow_missing:
        raise ValueError(f"{message}; pass --allow-missing-classes to train anyway")
    warn(f"{message}; the model will not learn {'these classes' if len(missing + empty) > 1 else 'it'}")
    return [c for c in CLASSES if c in missing or c in empty]


def _has_files(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(not f.startswith(".") for f in files):
            return True
    return False


def class_folders(root: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Map each class found in ``root`` to its folder; list everything else.

    Parameters
    ----------
    root
        The folder returned by :func:`locate_root`.

    Returns
    -------
    folders
        ``{class name: folder}`` in :data:`~bcc_utils.paths.CLASSES` order (present classes only).
    unknown
        Names of non-hidden entries of ``root`` that are not class folders (folders and files).

    Raises
    ------
    ValueError
        If two folders normalise to the same class (e.g. ``IG`` and ``ig``).
    """
    root = Path(root)
    found: dict[str, Path] = {}
    unknown: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in _IGNORED_DIRS:
            continue
        name = normalise_class_name(entry.name)
        if entry.is_dir() and name in CLASSES:
            if name in found:
                raise ValueError(f"Two folders in {root} are both class {name!r}: {found[name].name!r}, {entry.name!r}")
            found[name] = Path(entry.path)
        else:
            unknown.append(entry.name)
    ordered = {c: found[c] for c in CLASSES if c in found}
    return ordered, unknown


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` pointing at the caller's caller."""
    warnings.warn(message, DataWarning, stacklevel=3)
