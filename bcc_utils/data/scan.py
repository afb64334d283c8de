"""Read images robustly and scan a dataset folder into a table.

Decoding choice
---------------
Files are read as bytes, hashed (SHA-256 of the bytes) and decoded with
``cv2.imdecode(..., IMREAD_UNCHANGED)`` (libjpeg-turbo/libpng, fast; OpenCV and
hashlib release the GIL, so :func:`scan` uses a few threads). OpenCV already converts CMYK JPEGs
and palette PNGs; grey, alpha and 16-bit results are converted here. Pillow is
the fallback for formats OpenCV cannot decode. EXIF orientation is ignored
(microscope images carry none), so ``read_image`` returns the stored pixels.

What "decodable" verifies
-------------------------
Every file is *fully* decoded (all pixel data), not just its header. In
addition, a JPEG must end with its end-of-image marker and a PNG with its
``IEND`` chunk: older OpenCV builds silently pad a truncated JPEG with grey,
so this structural check catches truncation with any OpenCV version. Not
detected: damaged bytes in the middle of a complete file, which libjpeg
reports only as a warning and decodes anyway.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bcc_utils.data.locate import class_folders, locate_root, warn
from bcc_utils.paths import CLASSES

RECORD_COLUMNS = ["path", "label", "sha256", "width", "height"]


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason.

    Attributes ``path`` and ``reason`` hold the two parts separately.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # keep it picklable (DataLoader workers send errors across processes)
        return type(self), (self.path, self.reason)


def _structure_problem(data: bytes) -> str | None:
    """Reason why ``data`` cannot be a complete image, from its bytes alone (or None)."""
    if not data:
        return "empty file (0 bytes)"
    if data[:4] == b"\x00\x00\x00\x01" and data[4:8] == b"Bud1":
        return "not an image (a macOS .DS_Store file)"
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _to_rgb8(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """Convert a decoded array (grey/RGB(A)/BGR(A), 8/16-bit or float) to RGB uint8 HxWx3."""
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype.kind == "f":
        scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (2, 4):  # composite over white: transparent background becomes white
        alpha = arr[:, :, -1:].astype(np.float32) / 255.0
        colour = arr[:, :, :-1].astype(np.float32)
        arr = np.clip(colour * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if channels != 3:
        raise ValueError(f"unsupported number of channels: {arr.shape[2]}")
    return np.ascontiguousarray(arr[:, :, ::-1] if bgr else arr)


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image  # fallback only

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # raises OSError on truncated data
        if im.mode.startswith("I;16") or im.mode == "I":
            return _to_rgb8(np.clip(np.asarray(im), 0, 65535).astype(np.uint16), bgr=False)
        if im.mode == "F":
            return _to_rgb8(np.asarray(im, dtype=np.float32), bgr=False)
        has_alpha = "A" in im.getbands() or "transparency" in im.info
        return _to_rgb8(np.asarray(im.convert("RGBA" if has_alpha else "RGB")), bgr=False)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to RGB uint8 HxWx3 (see the module docstring for what is checked).

    Raises
    ------
    ImageReadError
        Naming ``name`` and the reason (empty, truncated, not an image, …).
    """
    import cv2

    problem = _structure_problem(data)
    if problem:
        raise ImageReadError(name, problem)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    try:
        if arr is not None:
            return _to_rgb8(arr, bgr=arr.ndim == 3)
        return _decode_pil(data)
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, report it as unreadable
        if arr is not None:
            raise ImageReadError(name, str(exc)) from None
        detail = "unrecognised format" if "cannot identify" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise ImageReadError(name, f"not a decodable image ({detail})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3.

    Grey, RGBA (composited over white), 16-bit and CMYK inputs are converted.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated or not an image; the message names it.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


@dataclass
class ScanResult:
    """What :func:`scan` found.

    Attributes
    ----------
    root : Path
        The folder holding the class folders.
    records : pandas.DataFrame
        One row per decodable image: ``path`` (posix, relative to ``root``),
        ``label``, ``sha256`` (None when not hashed), ``width``, ``height``; sorted by path.
    skipped : list of dict
        ``{"path", "reason"}`` for every file that is not a decodable image.
    missing_classes, empty_classes, unknown_entries : list of str
        Classes without a folder, class folders without files, non-class entries of ``root``.
    """

    root: Path
    records: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)
    missing_classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    unknown_entries: list[str] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        """All files seen in the class folders (images and skipped files)."""
        return len(self.records) + len(self.skipped)


def _inspect(full: str, rel: str, label: str, hashes: bool) -> tuple:
    """``(rel, label, sha256, width, height, reason)``; ``reason`` is None for a decodable image."""
    try:
        with open(full, "rb") as fh:
            data = fh.read()
        digest = hashlib.sha256(data).hexdigest() if hashes else None
        h, w = decode_image(data, rel).shape[:2]
    except ImageReadError as exc:
        return rel, label, None, 0, 0, exc.reason
    except OSError as exc:
        return rel, label, None, 0, 0, f"cannot read file ({exc.strerror or exc})"
    return rel, label, digest, w, h, None


def _inspect_many(jobs: list[tuple[str, str, str]], hashes: bool) -> list[tuple]:
    return [_inspect(full, rel, label, hashes) for full, rel, label in jobs]


def _list_files(root: Path, folders: dict[str, Path]) -> list[tuple[str, str, str]]:
    """``(full path, posix path relative to root, label)`` for every file in the class folders."""
    files = []
    for label, folder in folders.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            prefix = Path(dirpath).relative_to(root).as_posix()
            files += [(os.path.join(dirpath, f), f"{prefix}/{f}", label) for f in sorted(filenames)]
    return files


def scan(root: str | os.PathLike, *, hashes: bool = True, workers: int | None = None) -> ScanResult:
    """Scan every file in the class folders of a dataset.

    Parameters
    ----------
    root
        Anything :func:`~bcc_utils.data.locate_root` accepts.
    hashes
        Compute the SHA-256 of each file's bytes (needed for duplicates and splits).
    workers
        Threads used to read and decode (default: up to 4, bounded by the CPU count).

    Returns
    -------
    ScanResult
        Decodable images in ``records``; other files in ``skipped``. A
        :class:`~bcc_utils.data.locate.DataWarning` is issued for each skipped file,
        unknown entry, missing class and empty class folder.
    """
    root = locate_root(root)
    folders, unknown = class_folders(root)
    for name in unknown:
        warn(f"{root / name}: not one of the class folders {CLASSES}; ignored")
    missing = [c for c in CLASSES if c not in folders]
    for name in missing:
        warn(f"{root}: no folder for class {name!r}")
    files = _list_files(root, folders)
    present = {label for _, _, label in files}
    empty = [c for c in folders if c not in present]
    for name in empty:
        warn(f"{folders[name]}: class folder is empty")
    n_workers = workers or min(4, os.cpu_count() or 1)
    chunks = [files[i:i + 256] for i in range(0, len(files), 256)]
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = [r for chunk in pool.map(_inspect_many, chunks, [hashes] * len(chunks)) for r in chunk]
    rows, skipped = [], []
    for rel, label, digest, w, h, reason in results:
        if reason is None:
            rows.append((rel, label, digest, w, h))
        else:
            skipped.append({"path": rel, "reason": reason})
            warn(f"{root / rel}: skipped, {reason}")
    records = pd.DataFrame(rows, columns=RECORD_COLUMNS).astype({"width": "int64", "height": "int64"})
    records = records.sort_values("path", kind="stable").reset_index(drop=True)
    skipped.sort(key=lambda s: s["path"])
    return ScanResult(root, records, skipped, missing, empty, unknown)
