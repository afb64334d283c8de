"""Preprocess once, train many epochs: a memory-mapped ``uint8`` cache of decode → CLAHE → resize.

The cache is one raw file of N × S × S × 3 bytes (rows in the manifest's
canonical, path-sorted order) plus a small JSON sidecar holding its key: the
manifest hash, the image size, the CLAHE settings, the data folder's absolute
path (moving the data rebuilds) and a stamp of every image's size and
modification time (an image replaced in place under the same name rebuilds;
that costs one ``stat`` per image, about 0.3 s for 17,000). A matching key means
reuse. Different settings get different files (an ablation does not thrash);
changed images rebuild the same file. Files are written under a temporary
name (:func:`bcc_utils.atomic.temp_name`) and renamed when complete, so an
interrupted build never leaves a cache that looks valid, and the next build
deletes the temporary files of builds whose process has died.
Size on disk: 270 kB per image at 300 px, i.e. ≈ 4.6 GB for the full
17,074-image PBC set; delete ``bcc_utils.cache_dir() / "preprocessed"`` to reclaim it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from bcc_utils.atomic import atomic_path, pid_alive, remove_stale_temps, write_json
from bcc_utils.paths import CLASSES, cache_dir as default_cache_dir
from bcc_utils.preprocess import ClaheSettings, preprocess_image
from bcc_utils.workers import die_with_parent, to_chw_tensor

CACHE_FORMAT = "bcc-preprocessed-v2"  # v2: the key stamps every image's size and mtime
#: Temporary files of versions before bcc_utils.atomic, removed like its own once their process is gone.
_LEGACY_TEMP = re.compile(r"^pbc-.+\.(u8|json)\.tmp-(\d+)$")
_CHUNK = 32  # images per task in the parallel build


class CacheBuildError(RuntimeError):
    """The cache could not be built; the message names the offending file."""


class PreprocessedImages:
    """The cached images: a read-only ``np.memmap`` of shape N × S × S × 3 (``uint8``, RGB).

    Attributes
    ----------
    array : numpy.memmap
        The pixels (opened lazily, reopened after pickling: workers never copy it).
    paths : list of str
        Relative image paths, row order of ``array``.
    labels : numpy.ndarray
        Integer labels (index into :data:`~bcc_utils.paths.CLASSES`), row order.
    key : dict
        What the cache was built from.
    built : bool
        True when this call built the file, False when it reused it.
    build_seconds : float
        Time the build took (0 when reused).
    """

    def __init__(self, file: Path, paths: list[str], labels: np.ndarray, size: int, key: dict,
                 built: bool = False, build_seconds: float = 0.0):
        self.file, self.paths, self.labels, self.size, self.key = Path(file), list(paths), labels, int(size), key
        self.built, self.build_seconds = built, build_seconds
        self._row = {p: i for i, p in enumerate(self.paths)}
        self._array: np.memmap | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.file, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def index_of(self, path: str) -> int:
        """Row of ``path`` (as written in the manifest); ``KeyError`` naming it if absent."""
        try:
            return self._row[str(path)]
        except KeyError:
            raise KeyError(f"{path} is not in the cache {self.file.name}") from None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # pickle the file name, not 4 GB of pixels
        return state

    def __repr__(self) -> str:
        return f"PreprocessedImages(n={len(self)}, size={self.size}, file={self.file.name!r}, built={self.built})"


def _canonical_rows(manifest_df: pd.DataFrame) -> pd.DataFrame:
    rows = manifest_df[["path", "label"]].astype(str).drop_duplicates("path").sort_values("path", kind="stable")
    unknown = sorted(set(rows["label"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"manifest has unknown class names {unknown}")
    return rows.reset_index(drop=True)


def cache_key(root: Path, manifest_df: pd.DataFrame, size: int, clahe: ClaheSettings | None) -> dict:
    """The settings that identify a cache file (its name derives from them; see :func:`files_stamp` for content)."""
    from bcc_utils.data import manifest_hash

    return {
        "format": CACHE_FORMAT,
        "root": str(Path(root).resolve()),
        "manifest_sha256": manifest_hash(manifest_df),
        "n_images": int(manifest_df["path"].nunique()),
        "size": int(size),
        "clahe": clahe.key() if clahe is not None else "none",
        "resize": "area-shrink/cubic-enlarge",
    }


def files_stamp(root: Path, paths: list[str]) -> str:
    """SHA-256 over each image's path, size and ``st_mtime_ns``: changes when a file is replaced in place.

    Raises
    ------
    CacheBuildError
        Naming the first image that is missing or cannot be examined.
    """
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(root / path)
        except OSError as exc:
            raise CacheBuildError(f"cannot build the preprocessing cache: {root / path}: "
                                  f"{exc.strerror or exc}") from None
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _init_worker(parent_pid: int | None = None) -> None:
    if parent_pid is not None:  # a pool worker, not the building process itself
        die_with_parent(parent_pid)
    import cv2

    cv2.setNumThreads(0)


def _fill_rows(file: str, shape: tuple, rows: list[tuple[int, str]], size: int, clahe: ClaheSettings | None) -> int:
    """Worker task: preprocess ``rows`` (row index, absolute path) straight into the memmap file."""
    from bcc_utils.data import read_image

    out = np.memmap(file, dtype=np.uint8, mode="r+", shape=shape)
    for row, path in rows:
        out[row] = preprocess_image(read_image(path), size, clahe)
    out.flush()
    del out
    return len(rows)


def _remove_dead_temps(folder: Path) -> list[Path]:
    """Temporary files of builds whose process died (SIGKILL, power cut), this version's and older ones."""
    removed = remove_stale_temps(folder)
    for f in folder.iterdir():
        m = _LEGACY_TEMP.match(f.name)
        if m and f.is_file() and not pid_alive(int(m.group(2))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def build_cache(
    root: str | os.PathLike,
    manifest_df: pd.DataFrame,
    size: int,
    clahe: ClaheSettings | None = ClaheSettings(),
    cache_dir: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    rebuild: bool = False,
    progress: bool | Callable[[int, int], Any] = False,
) -> PreprocessedImages:
    """Return the preprocessed images of every manifest row, building the cache only if needed.

    Parameters
    ----------
    root
        Dataset folder (anything :func:`bcc_utils.data.locate_root` accepts).
    manifest_df
        Manifest (``path, label, split``); all splits are cached together.
    size
        Side of the square images (300 in the paper's protocol).
    clahe
        CLAHE settings, or ``None`` for no CLAHE.
    cache_dir
        Where the files go (default: ``bcc_utils.cache_dir() / "preprocessed"``).
    workers
        Processes for the build (default: up to 2, the CPU count); 0 or 1 builds in this process.
    rebuild
        Build even when a matching cache exists (images replaced in place are noticed
        without it, unless their size and modification time were both kept).
    progress
        ``True`` for a tqdm bar, or a callable ``f(done, total)``.

    Raises
    ------
    CacheBuildError
        When an image is missing or cannot be read (the message names it) or the disk is too small.
    ValueError
        When a manifest path is absolute or has a ``..`` part (it would read outside ``root``).
    """
    from bcc_utils.data import check_manifest_paths, locate_root

    check_manifest_paths(manifest_df)
    root = locate_root(root)
    rows = _canonical_rows(manifest_df)
    settings = cache_key(root, manifest_df, size, clahe)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    key = {**settings, "files_sha256": files_stamp(root, list(rows["path"]))}
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "preprocessed"
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(folder)
    stem = f"pbc-{int(size)}px-{key['clahe']}-{digest}"
    data_file, meta_file = folder / f"{stem}.u8", folder / f"{stem}.json"
    labels = np.array([CLASSES.index(c) for c in rows["label"]], dtype=np.int64)
    shape = (len(rows), int(size), int(size), 3)
    nbytes = int(np.prod(shape))

    if not rebuild and meta_file.is_file() and data_file.is_file() and data_file.stat().st_size == nbytes:
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("key") == key:
            return PreprocessedImages(data_file, list(rows["path"]), labels, size, key, built=False)

    meta_file.unlink(missing_ok=True)
    # the old file stays until the new one replaces it: another run may be reading it right now
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.05:
        raise CacheBuildError(f"not enough disk space in {folder}: the cache needs {nbytes / 1e9:.2f} GB, "
                              f"{free / 1e9:.2f} GB free (use a smaller --img-size or another cache_dir).")
    start = time.perf_counter()
    tasks = [[(i, str(root / p)) for i, p in zip(range(a, a + _CHUNK), rows["path"][a:a + _CHUNK])]
             for a in range(0, len(rows), _CHUNK)]
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    report = _progress(progress, len(rows))
    try:
        with atomic_path(data_file) as tmp:  # published (fsync + rename) only once every row is written
            np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape).flush()
            if workers <= 1 or len(tasks) <= 1:
                _init_worker()
                for task in tasks:
                    report(_fill_rows(str(tmp), shape, task, size, clahe))
            else:
                with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                         initargs=(os.getpid(),)) as pool:
                    futures = [pool.submit(_fill_rows, str(tmp), shape, t, size, clahe) for t in tasks]
                    try:
                        for f in futures:
                            report(f.result())
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
    except ValueError as exc:  # ImageReadError is a ValueError naming the file
        raise CacheBuildError(f"cannot build the preprocessing cache: {exc}. Fix or remove that file and "
                              "make a new manifest (python -m bcc_utils split skips unreadable files).") from exc
    finally:
        report(None)
    seconds = time.perf_counter() - start
    write_json({"key": key, "shape": list(shape), "dtype": "uint8",
                "build_seconds": round(seconds, 3), "workers": workers}, meta_file)
    return PreprocessedImages(data_file, list(rows["path"]), labels, size, key, built=True, build_seconds=seconds)


def _progress(progress: bool | Callable, total: int) -> Callable[[int | None], None]:
    """Adapter: ``report(n)`` adds n done images, ``report(None)`` closes."""
    if callable(progress):
        done = [0]

        def report(n: int | None) -> None:
            if n is not None:
                done[0] += n
                progress(done[0], total)

        return report
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="preprocessing", unit="img")
        return lambda n: bar.close() if n is None else bar.update(n)
    return lambda n: None


class CachedDataset(Dataset):
    """One split of the manifest, served from a :class:`PreprocessedImages` cache.

    Items are ``(image, label)``: ``image`` a ``uint8`` 3×S×S torch tensor (a
    CHW view of the augmented HWC array; :func:`bcc_utils.workers.collate_uint8`
    batches such views without a transpose), ``label`` an int. The transform
    (albumentations, called as ``transform(image=...)``, or any callable) sees
    the ``uint8`` HWC array.
    """

    def __init__(self, images: PreprocessedImages, manifest_df: pd.DataFrame, split: str | None,
                 transform: Callable | None = None):
        df = manifest_df if split is None else manifest_df[manifest_df["split"] == split]
        self.images, self.split, self.transform = images, split, transform
        self.paths = list(df["path"].astype(str))
        self.rows = np.array([images.index_of(p) for p in self.paths], dtype=np.int64)
        self.labels = np.array([CLASSES.index(c) for c in df["label"]], dtype=np.int64)
        self._albu = type(transform).__module__.split(".", 1)[0] == "albumentations" or hasattr(transform, "processors")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        image = np.array(self.images.array[self.rows[index]])  # copy out of the read-only memmap
        if self.transform is not None:
            image = self.transform(image=image)["image"] if self._albu else self.transform(image)
        return to_chw_tensor(image), int(self.labels[index])

    def __repr__(self) -> str:
        return f"CachedDataset(split={self.split!r}, n={len(self)}, size={self.images.size})"
