"""Where the PBC images can come from, and how to fetch and verify them.

:data:`SOURCES` is a registry in the spirit of MedMNIST's ``INFO`` dict. Downloads
go to one cache folder (:func:`bcc_utils.paths.cache_dir`, overridable with
``$BCC_CACHE_DIR``), are verified (checksum where one is published, file
counts otherwise) and are restartable: `pooch <https://www.fatiando.org/pooch>`_
streams to a temporary file, retries failed transfers and only keeps a file
that passed its checksum (no partial resume). The PBC archive is extracted into
a hidden staging folder and moved into place only once its file counts match;
a folder that passed is marked with a :data:`VERIFIED_MARKER` file, which
:func:`bcc_utils.paths.find_data_dir` requires before it uses a download on its
own. A download that cannot happen ends in one :class:`RuntimeError` that
explains how to place the files by hand.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bcc_utils.atomic import write_json
from bcc_utils.data.locate import class_folders, locate_root, warn
from bcc_utils.paths import CLASSES, DATA_ENV, cache_dir
from bcc_utils.workers import pid_alive

#: File in a download folder (``cache_dir() / source``) saying that its contents passed verification.
VERIFIED_MARKER = ".verified"
#: Where the files of an archive that failed verification are left (hidden: never found by accident).
UNVERIFIED_DIR = ".unverified"
_STAGING_RE = re.compile(r"^\.extracting(?:\.(\d+)\.[0-9a-f]{8})?$")

PBC_CITATION = (
    "A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar, \"A dataset of microscopic "
    "peripheral blood cell images for development of automatic recognition systems\", Data in Brief 30 "
    "(2020) 105474, doi:10.1016/j.dib.2020.105474; Mendeley Data, doi:10.17632/snkd93bnjr.1"
)
MEDMNIST_CITATION = (
    "J. Yang, R. Shi, D. Wei, Z. Liu, L. Zhao, B. Ke, H. Pfister, B. Ni, \"MedMNIST v2 - A large-scale "
    "lightweight benchmark for 2D and 3D biomedical image classification\", Scientific Data 10 (2023) 41, "
    "doi:10.1038/s41597-022-01721-8"
)
#: Images per class in the original archive (the dataset paper / measured); 17,092 in all.
PBC_CLASS_COUNTS = {"basophil": 1218, "eosinophil": 3117, "erythroblast": 1551, "ig": 2895,
                    "lymphocyte": 1214, "monocyte": 1420, "neutrophil": 3329, "platelet": 2348}
_ZENODO = "https://zenodo.org/records/10519652/files/bloodmnist{}.npz?download=1"

SOURCES: dict[str, dict] = {
    "pbc": {
        "description": "Original PBC archive (Mendeley Data): 17,092 JPEG images, 8 classes, mostly 360x363 px.",
        "url": "https://data.mendeley.com/public-files/datasets/snkd93bnjr/files/"
               "2fc38728-2ae7-4a62-a857-032af82334c3/file_downloaded",
        "url_env": "BCC_PBC_URL",
        "homepage": "https://data.mendeley.com/datasets/snkd93bnjr/1",
        "filename": "PBC_dataset_normal_DIB.zip",
        # Mendeley publishes no checksum and we could not fetch the archive to record one:
        # the download is verified by file counts after extraction instead.
        "sha256": None,
        "layout": "PBC_dataset_normal_DIB/<class>/<file>.jpg",
        "n_files": 17093,  # 17,092 images + neutrophil/.DS_169665.jpg (a macOS .DS_Store file)
        "class_counts": PBC_CLASS_COUNTS,
        "license": "CC BY 4.0",
        "citation": PBC_CITATION,
    },
    "kaggle": {
        "description": "Kaggle mirror of the PBC images, fetched with kagglehub (pip install kagglehub).",
        "handle": "unclesamulus/blood-cells-image-dataset",
        "homepage": "https://www.kaggle.com/datasets/unclesamulus/blood-cells-image-dataset",
        "layout": "bloodcells_dataset/<class>/<file>.jpg",
        "class_counts": PBC_CLASS_COUNTS,
        "license": "CC BY 4.0",
        "citation": PBC_CITATION,
    },
    "bloodmnist": {
        "description": "MedMNIST BloodMNIST: the PBC images centre-cropped and resized, with MedMNIST's own "
                       "7:1:2 split, as one .npz per size (read with read_bloodmnist).",
        "url_env": "BCC_BLOODMNIST_URL",
        "homepage": "https://medmnist.com/",
        "sizes": (28, 64, 128, 224),
        "urls": {s: _ZENODO.format("" if s == 28 else f"_{s}") for s in (28, 64, 128, 224)},
        "md5": {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
                128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"},
        "n_samples": {"train": 11959, "val": 1712, "test": 3421},
        "label": dict(enumerate(CLASSES)),
        "license": "CC BY 4.0",
        "citation": f"{MEDMNIST_CITATION}; source images: {PBC_CITATION}",
    },
}


def bloodmnist_filename(size: int) -> str:
    """File name MedMNIST uses for a size (``bloodmnist.npz`` for 28 px)."""
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def manual_instructions(source: str, dest: Path, size: int = 28) -> str:
    """How to put a source's files in place without this downloader."""
    info = SOURCES[source]
    if source == "bloodmnist":
        return (f"Place the file by hand: download {info['urls'][size]} in a browser and save it as "
                f"{dest / bloodmnist_filename(size)} (MD5 {info['md5'][size]}), then run this again.")
    zip_hint = f" (or put the zip itself at {dest / info['filename']} and run this again)" if source == "pbc" else ""
    return (f"Place the files by hand: download the dataset from {info['homepage']} in a browser and "
            f"extract it into {dest}, so that you get {dest / info['layout']} with the eight class "
            f"folders {', '.join(CLASSES)}{zip_hint}. Then set {DATA_ENV}={dest} "
            f"(or pass that folder to the command or notebook).")


def count_files(root: str | os.PathLike) -> tuple[int, dict[str, int]]:
    """All files in the class folders, and per class the files whose name does not start with ``.``."""
    folders, _ = class_folders(root)
    total, per_class = 0, {}
    for label, folder in folders.items():
        names = [f for _, _, files in os.walk(folder) for f in files]
        total += len(names)
        per_class[label] = sum(not f.startswith(".") for f in names)
    return total, per_class


def verify_folder(source: str, root: str | os.PathLike) -> list[str]:
    """Compare a folder with the counts a source should have; return the problems found (empty = OK)."""
    info = SOURCES[source]
    total, per_class = count_files(root)
    problems = [f"{c}: {per_class.get(c, 0)} files, expected {n}"
                for c, n in info["class_counts"].items() if per_class.get(c, 0) != n]
    if "n_files" in info and total != info["n_files"]:
        problems.append(f"{total} files in all, expected {info['n_files']}")
    return problems


class _PermanentHTTPError(RuntimeError):
    """A 4xx answer: retrying cannot help (pooch only retries ValueError/RequestException)."""


def _downloader(progress: bool):
    import pooch
    import requests

    http = pooch.HTTPDownloader(progressbar=progress, timeout=60)

    def download(url, output_file, pooch_obj, check_only=False):
        try:
            return http(url, output_file, pooch_obj, check_only=check_only)
        except requests.HTTPError as exc:
            status = getattr(exc.response, "status_code", 0) or 0
            if 400 <= status < 500:
                raise _PermanentHTTPError(f"HTTP {status} {getattr(exc.response, 'reason', '')}".strip()) from exc
            raise

    return download


def _fetch(url: str, fname: str, known_hash: str | None, dest: Path, retries: int, progress: bool) -> Path:
    """Download ``url`` to ``dest/fname`` unless a file with the right hash is already there."""
    import pooch

    fetcher = pooch.create(path=dest, base_url="", registry={fname: known_hash}, urls={fname: url},
                           retry_if_failed=retries)
    return Path(fetcher.fetch(fname, downloader=_downloader(progress)))


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "hash" in text.lower() and "match" in text.lower():
        return f"the downloaded file failed its checksum ({text})"
    if isinstance(exc, _PermanentHTTPError):
        return text
    if type(exc).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout"):
        return f"no connection (offline?): {text}"
    if isinstance(exc, zipfile.BadZipFile):
        return f"the downloaded file is not a valid zip ({text}); it was deleted, try again"
    return f"{type(exc).__name__}: {text}"


def _extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into a new hidden staging folder in ``dest`` (refusing paths that escape it); return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():  # staging folders of runs that died (ours by name; a live run's is kept)
        m = _STAGING_RE.match(old.name)
        if m and old.is_dir() and (m.group(1) is None or not pid_alive(int(m.group(1)))):
            shutil.rmtree(old, ignore_errors=True)
    staging = dest / f".extracting.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (staging / member).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise RuntimeError(f"{archive}: unsafe path in archive: {member}")
            zf.extractall(staging)
        shutil.rmtree(staging / "__MACOSX", ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _publish(staging: Path, dest: Path) -> None:
    """Move the verified top-level entries of ``staging`` into ``dest`` (renames, same file system).

    Raises
    ------
    RuntimeError
        If ``dest`` already has an entry of that name (never overwritten: it is not ours to delete).
    """
    entries = sorted(staging.iterdir())
    taken = [dest / e.name for e in entries if (dest / e.name).exists()]
    if taken:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"Cannot install the verified PBC archive: {taken[0]} is already there (and does not "
                           "hold the class folders); move it away and run the download again.")
    for entry in entries:
        entry.rename(dest / entry.name)
    shutil.rmtree(staging, ignore_errors=True)


def _mark_verified(source: str, dest: Path, root: Path) -> None:
    total, _ = count_files(root)
    write_json({"source": source, "root": root.relative_to(dest).as_posix(), "files": total,
                "verified": datetime.now(timezone.utc).isoformat(timespec="seconds")}, dest / VERIFIED_MARKER)


def _existing_root(dest: Path) -> Path | None:
    try:
        return locate_root(dest)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _download_pbc(dest: Path, url: str, retries: int, progress: bool, keep_archive: bool) -> Path:
    info = SOURCES["pbc"]
    root = _existing_root(dest)
    if root is not None:  # already there (an earlier download, or placed by hand): verify it again
        problems = verify_folder("pbc", root)
        if problems:
            (dest / VERIFIED_MARKER).unlink(missing_ok=True)
            raise RuntimeError(f"{root} does not match the original PBC archive ({'; '.join(problems)}). "
                               f"Delete {dest} to download it again, or use the folder anyway by setting "
                               f"{DATA_ENV}={root}.")
        _mark_verified("pbc", dest, root)
        return root
    (dest / VERIFIED_MARKER).unlink(missing_ok=True)
    archive = dest / info["filename"]
    known = f"sha256:{info['sha256']}" if info["sha256"] else None
    try:
        archive = _fetch(url, info["filename"], known, dest, retries, progress)
        staging = _extract(archive, dest)
        try:
            staged_root = locate_root(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except Exception as exc:  # noqa: BLE001 - offline, HTTP errors, bad zip: one clear message
        if isinstance(exc, zipfile.BadZipFile):
            archive.unlink(missing_ok=True)  # never reuse a broken archive
        raise RuntimeError(f"Could not download the PBC archive from {url}: {_why(exc)}.\n"
                           f"{manual_instructions('pbc', dest)}") from exc
    problems = verify_folder("pbc", staged_root)
    if problems:  # keep the files for a look, where no lookup finds them
        unverified = dest / UNVERIFIED_DIR
        shutil.rmtree(unverified, ignore_errors=True)
        staging.rename(unverified)
        kept = unverified / staged_root.relative_to(staging)
        raise RuntimeError(f"The downloaded archive does not match the original PBC archive "
                           f"({'; '.join(problems)}), so it was not installed. Its files are in {kept}: "
                           f"use them anyway by setting {DATA_ENV}={kept}, or delete {dest} to download again.")
    _publish(staging, dest)
    root = dest / staged_root.relative_to(staging)
    _mark_verified("pbc", dest, root)
    shutil.rmtree(dest / UNVERIFIED_DIR, ignore_errors=True)  # an older failed attempt
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return root


def _download_kaggle(dest: Path) -> Path:
    info = SOURCES["kaggle"]
    root = _existing_root(dest)
    if root is None:
        try:
            import kagglehub
        except ImportError as exc:
            raise RuntimeError("The Kaggle source needs kagglehub: pip install kagglehub.\n"
                               f"{manual_instructions('kaggle', dest)}") from exc
        saved = os.environ.get("KAGGLEHUB_CACHE")
        os.environ["KAGGLEHUB_CACHE"] = saved or str(dest)  # keep kagglehub's copy in our cache
        try:
            root = locate_root(kagglehub.dataset_download(info["handle"]))
        except Exception as exc:  # noqa: BLE001 - offline, no credentials, 4xx/5xx: one clear message
            raise RuntimeError(f"Could not download {info['handle']} with kagglehub: {_why(exc)}.\n"
                               f"{manual_instructions('kaggle', dest)}") from exc
        finally:
            if saved is None:
                del os.environ["KAGGLEHUB_CACHE"]
    problems = verify_folder("kaggle", root)
    inside = root.resolve().is_relative_to(dest.resolve())  # else kagglehub kept it in the user's own cache
    if problems:  # we could not inspect the mirror ourselves: report, do not refuse, but do not mark it
        if inside:
            (dest / VERIFIED_MARKER).unlink(missing_ok=True)
        warn(f"{root}: the Kaggle copy differs from the original archive's counts: {'; '.join(problems)}; "
             f"it is not marked as verified, so pass it explicitly (--data-dir or {DATA_ENV}={root})")
    elif inside:
        _mark_verified("kaggle", dest, root)
    return root


def download(source: str, dest: str | os.PathLike | None = None, *, url: str | None = None, size: int = 28,
             retries: int = 2, progress: bool | None = None, keep_archive: bool = False) -> Path:
    """Fetch a dataset source into the cache (or ``dest``) and verify it.

    Parameters
    ----------
    source
        A key of :data:`SOURCES`: ``"pbc"``, ``"kaggle"`` or ``"bloodmnist"``.
    dest
        Target folder; default ``cache_dir() / source``. Data already there is verified and reused.
    url
        Override the download URL (else ``$BCC_PBC_URL`` / ``$BCC_BLOODMNIST_URL``, else the registry's).
    size
        BloodMNIST image size: 28, 64, 128 or 224.
    retries
        Extra attempts after a failed transfer or checksum (not after a 4xx answer).
    progress
        Show a progress bar (default: when stderr is a terminal).
    keep_archive
        Keep the PBC zip after a verified extraction.

    Returns
    -------
    Path
        The folder holding the class folders, or the ``.npz`` file for BloodMNIST. A folder
        that passed verification is marked (:data:`VERIFIED_MARKER` in ``dest``), which
        :func:`bcc_utils.paths.find_data_dir` requires; a PBC archive that fails it is not
        installed (its files stay in ``dest/.unverified`` for a look).

    Raises
    ------
    RuntimeError
        If the data cannot be fetched or verified; the message says how to place it by hand.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    info = SOURCES[source]
    dest = Path(dest).expanduser() if dest else cache_dir() / source
    progress = sys.stderr.isatty() if progress is None else progress
    url = url or os.environ.get(info.get("url_env", ""), "") or None
    if source == "pbc":
        return _download_pbc(dest, url or info["url"], retries, progress, keep_archive)
    if source == "kaggle":
        return _download_kaggle(dest)
    if size not in info["sizes"]:
        raise ValueError(f"BloodMNIST size must be one of {info['sizes']}, got {size}")
    url = url or info["urls"][size]
    try:
        return _fetch(url, bloodmnist_filename(size), f"md5:{info['md5'][size]}", dest, retries, progress)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"Could not download BloodMNIST ({size} px) from {url}: {_why(exc)}.\n"
                           f"{manual_instructions('bloodmnist', dest, size)}") from exc


def read_bloodmnist(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read one split of a BloodMNIST ``.npz``.

    Returns
    -------
    images : numpy.ndarray
        uint8, N x S x S x 3 (RGB).
    labels : numpy.ndarray
        int64, N, indices into :data:`~bcc_utils.paths.CLASSES` (same order as MedMNIST).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    with np.load(path) as npz:
        if f"{split}_images" not in npz.files:
            raise ValueError(f"{path}: not a MedMNIST file (keys {npz.files})")
        images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise ValueError(f"{path}: unexpected shapes {images.shape} / {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() < len(CLASSES):
        raise ValueError(f"{path}: labels outside 0..{len(CLASSES) - 1}")
    return images, labels
