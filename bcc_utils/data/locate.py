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


def _holds_classes(path: Path) -> bool:
    return any(normalise_class_name(d.name) in CLASSES for d in _subdirs(path))


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
        The shallowest folder below ``path`` with at least one class folder.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or no class folder is found below it.
    NotADirectoryError
        If ``path`` is a file (e.g. a zip that still needs extracting).
    ValueError
        If two different folders at the same depth both hold class folders.
    """
    start = Path(path).expanduser()
    if not start.exists():
        raise FileNotFoundError(f"Dataset folder does not exist: {start}")
    if not start.is_dir():
        raise NotADirectoryError(
            f"{start} is a file, not a folder; extract it first (the folder must contain "
            f"the class folders {', '.join(CLASSES)})."
        )
    level = [start]
    for _ in range(MAX_DEPTH + 1):
        found = [p for p in level if _holds_classes(p)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listing = "\n  ".join(str(p) for p in found)
            raise ValueError(f"Several dataset folders below {start}; pass one of them:\n  {listing}")
        level = [d for p in level for d in _subdirs(p)]
        if not level:
            break
    raise FileNotFoundError(
        f"No class folders ({', '.join(CLASSES)}) found in {start} or up to {MAX_DEPTH} levels below it."
    )


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
