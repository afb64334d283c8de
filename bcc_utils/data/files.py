"""Listing image files given by a user: files and folders, recursively, decoded one by one.

Used by ``predict``, ``export --check``, ``bench latency`` and ``explain``; dataset folders with
class sub-folders are read by :mod:`bcc_utils.data.scan` instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(inputs, warn: bool = True) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only) into a list.

    Files with an image suffix are kept even when hidden (``.DS_169665.jpg``): reading them tells
    whether they are images, and a non-image is then skipped with a warning that says what it is.

    A named file is always kept (it is checked when read); a missing path raises ``FileNotFoundError``.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file())
            for f in found:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                elif warn:
                    warnings.warn(f"skipping {f}: {f.suffix or 'no'} suffix is not an image type", stacklevel=2)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"No such file or folder: {p}")
    return files


def iter_images(inputs, limit: int | None = None) -> Iterator[tuple[Path, np.ndarray]]:
    """``(file, RGB uint8)`` of image files and folders (see :func:`image_files`).

    A named file that cannot be decoded raises :class:`bcc_utils.data.ImageReadError`; inside a
    folder it is skipped with a warning. ``limit`` keeps at most that many files, spread evenly
    over the sorted list (so over the class folders of a dataset).
    """
    from bcc_utils.data.scan import read_image

    named = {Path(i).expanduser() for i in inputs if Path(i).expanduser().is_file()}
    files = image_files(inputs)
    if limit and len(files) > limit:
        files = files[:: len(files) // limit][:limit]
    for f in files:
        try:
            rgb = read_image(f)
        except ValueError as exc:
            if f in named:
                raise
            warnings.warn(f"skipping {exc}", stacklevel=2)
            continue
        yield f, rgb
