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

``wbc-external`` is not PBC: two small sets of white cells from other labs, for
testing a trained run under domain shift (``python -m bcc_utils evaluate best.pt
--external FOLDER``). It is fetched as the zip of its GitHub repository, and its
images are sorted into class folders by the repository's label files
(:func:`sort_wbc_external`); the cache is never searched for it as training data.
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
from bcc_utils.atomic import pid_alive

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

WBC_EXTERNAL_CITATION = (
    "X. Zheng, Y. Wang, G. Wang, J. Liu, \"Fast and robust segmentation of white blood cell images by "
    "self-supervised learning\", Micron 107 (2018) 55-71, doi:10.1016/j.micron.2018.01.010; dataset 1 by "
    "Jiangxi Tecom Science Corporation, dataset 2 from the CellaVision blog"
)
#: The two sets of ``zxaoyou/segmentation_WBC``: our folder name -> its image folder, label file and counts.
WBC_EXTERNAL_SETS: dict[str, dict] = {
    "dataset1-jtsc": {
        "upstream": "Dataset 1", "labels": "Class Labels of Dataset 1.csv", "n": 300,
        "class_counts": {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48, "eosinophil": 22, "basophil": 1},
    },
    "dataset2-cellavision": {
        "upstream": "Dataset 2", "labels": "Class Labels of Dataset 2.csv", "n": 100,
        "class_counts": {"lymphocyte": 37, "neutrophil": 33, "monocyte": 15, "eosinophil": 12, "basophil": 3},
    },
}
#: Class codes of the label files (``image ID,class``); checked by the per-class counts above.
WBC_LABEL_CODES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}

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
    "wbc-external": {
        "description": "Not PBC: 400 white cells from other labs for domain-shift tests (300 Jiangxi Tecom, "
                       "100 CellaVision blog; 5 of the 8 classes), from github.com/zxaoyou/segmentation_WBC "
                       "(GPL-3.0; Zheng et al., Micron 107 (2018) 55-71, doi:10.1016/j.micron.2018.01.010), "
                       "sorted into class folders by its label files.",
        "url": "https://github.com/zxaoyou/segmentation_WBC/archive/refs/heads/master.zip",
        "url_env": "BCC_WBC_EXTERNAL_URL",
        "homepage": "https://github.com/zxaoyou/segmentation_WBC",
        "filename": "segmentation_WBC-master.zip",
        "sha256": None,  # a branch archive made on demand by GitHub: verified by counts instead
        "layout": "<set>/images/<class>/NNN.bmp (masks in <set>/masks/NNN.png)",
        "sets": WBC_EXTERNAL_SETS,
        "label_codes": WBC_LABEL_CODES,
        "license": "GPL-3.0",
        "citation": WBC_EXTERNAL_CITATION,
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
    if source == "wbc-external":
        return (f"Place the file by hand: download {info['url']} in a browser (on {info['homepage']}: Code, "
                f"Download ZIP), save it as {dest / info['filename']} and run this again; it is then sorted "
                f"and verified here.")
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


# ------------------------------------------------------------------------------------- wbc-external
def _image_names(folder: Path) -> list[str]:
    from bcc_utils.data.files import IMAGE_SUFFIXES

    if not folder.is_dir():
        return []
    return sorted(f.name for f in folder.iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES)


def verify_wbc_external(root: str | os.PathLike) -> list[str]:
    """Compare a ``wbc-external`` folder (``<set>/images/<class>/``) with the published counts; return the problems."""
    root = Path(root)
    problems = []
    for name, spec in SOURCES["wbc-external"]["sets"].items():
        images = root / name / "images"
        if not images.is_dir():
            problems.append(f"{name}: no images folder")
            continue
        found = {d.name: len(_image_names(d)) for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")}
        problems += [f"{name}/{c}: {found.get(c, 0)} images, expected {n}"
                     for c, n in spec["class_counts"].items() if found.get(c, 0) != n]
        problems += [f"{name}: unexpected folder {c}" for c in sorted(set(found) - set(spec["class_counts"]))]
    return problems


def _read_wbc_labels(path: Path, codes: dict[int, str]) -> dict[int, str]:
    """``image ID -> class`` of a label file of ``segmentation_WBC`` (a header line, then ``id,code`` rows)."""
    import csv

    labels = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or not cells[0].isdigit():
                continue  # the header (its wording differs between the two files) or a blank line
            if len(cells) != 2 or not cells[1].isdigit() or int(cells[1]) not in codes:
                raise ValueError(f"{path.name}: unexpected row {','.join(row)!r} (expected image ID,class code "
                                 f"{min(codes)}-{max(codes)})")
            labels[int(cells[0])] = codes[int(cells[1])]
    return labels


def _find_upstream(staging: Path) -> Path:
    """The folder of the extracted archive that holds ``Dataset 1`` (the archive wraps it in ``<repo>-<branch>/``)."""
    wanted = [spec["upstream"] for spec in SOURCES["wbc-external"]["sets"].values()]
    for folder in [staging, *sorted(p for p in staging.iterdir() if p.is_dir())]:
        if all((folder / w).is_dir() for w in wanted):
            return folder
    raise ValueError(f"the archive holds no folders {' and '.join(repr(w) for w in wanted)}: not segmentation_WBC?")


def sort_wbc_external(upstream: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Sort the files of ``segmentation_WBC`` into ``out/<set>/images/<class>/`` by its label files.

    Parameters
    ----------
    upstream
        The repository's files (``Dataset 1/NNN.bmp`` images, ``Dataset 1/NNN.png`` masks, ``Class Labels of
        Dataset 1.csv``; the same for dataset 2). Images and masks are moved, not copied.
    out
        Where ``<set>/images/<class>/NNN.bmp``, ``<set>/masks/NNN.png`` and ``<set>/labels.csv`` (the
        label file as published) are made, with a copy of the repository's licence in each set.

    Returns
    -------
    list of str
        Problems found (an image without a label, a label without an image); empty when all matched.
    """
    info = SOURCES["wbc-external"]
    upstream, out = Path(upstream), Path(out)
    problems = []
    for name, spec in info["sets"].items():
        src = upstream / spec["upstream"]
        labels = _read_wbc_labels(upstream / spec["labels"], info["label_codes"])
        images = {int(f.stem): src / f.name for f in map(Path, _image_names(src))
                  if f.suffix.lower() == ".bmp" and f.stem.isdigit()}
        masks = {int(f.stem): src / f.name for f in map(Path, _image_names(src))
                 if f.suffix.lower() == ".png" and f.stem.isdigit()}
        problems += [f"{name}: image {images[i].name} has no label" for i in sorted(set(images) - set(labels))]
        problems += [f"{name}: label of image {i} but no {i:03d}.bmp" for i in sorted(set(labels) - set(images))]
        for i in sorted(set(images) & set(labels)):
            target = out / name / "images" / labels[i] / images[i].name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(images[i], target)
            if i in masks:
                (out / name / "masks").mkdir(parents=True, exist_ok=True)
                shutil.move(masks[i], out / name / "masks" / masks[i].name)
        (out / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upstream / spec["labels"], out / name / "labels.csv")
        for licence in sorted(upstream.glob("LICEN[CS]E*")):
            shutil.copyfile(licence, out / name / licence.name)
    return problems


def _download_wbc_external(dest: Path, url: str, retries: int, progress: bool, keep_archive: bool) -> Path:
    info = SOURCES["wbc-external"]
    present = [n for n in info["sets"] if (dest / n).exists()]
    if present:  # an earlier download, or placed by hand: verify it again
        problems = verify_wbc_external(dest)
        if problems:
            (dest / VERIFIED_MARKER).unlink(missing_ok=True)
            raise RuntimeError(f"{dest} does not match the published wbc-external sets ({'; '.join(problems)}). "
                               f"Delete {dest} to download it again.")
        _mark_wbc_external(dest)
        return dest
    (dest / VERIFIED_MARKER).unlink(missing_ok=True)
    archive = dest / info["filename"]
    try:
        archive = _fetch(url, info["filename"], None, dest, retries, progress)
        staging = _extract(archive, dest)
        try:
            sorted_dir = staging / ".sorted"
            problems = sort_wbc_external(_find_upstream(staging), sorted_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except Exception as exc:  # noqa: BLE001 - offline, HTTP errors, bad zip, unknown layout: one clear message
        if isinstance(exc, (zipfile.BadZipFile, ValueError)):
            archive.unlink(missing_ok=True)  # never reuse a broken or foreign archive
        raise RuntimeError(f"Could not download wbc-external from {url}: {_why(exc)}.\n"
                           f"{manual_instructions('wbc-external', dest)}") from exc
    problems += verify_wbc_external(sorted_dir)
    if problems:  # keep the files for a look, where nothing finds them by accident
        unverified = dest / UNVERIFIED_DIR
        shutil.rmtree(unverified, ignore_errors=True)
        staging.rename(unverified)
        archive.unlink(missing_ok=True)
        raise RuntimeError(f"The downloaded archive does not match the published wbc-external sets "
                           f"({'; '.join(problems)}), so it was not installed; its files are in {unverified}.")
    _publish(sorted_dir, dest)
    shutil.rmtree(staging, ignore_errors=True)
    _mark_wbc_external(dest)
    shutil.rmtree(dest / UNVERIFIED_DIR, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest


def _mark_wbc_external(dest: Path) -> None:
    sets = SOURCES["wbc-external"]["sets"]
    write_json({"source": "wbc-external", "sets": {n: s["n"] for n, s in sets.items()},
                "verified": datetime.now(timezone.utc).isoformat(timespec="seconds")}, dest / VERIFIED_MARKER)


def download(source: str, dest: str | os.PathLike | None = None, *, url: str | None = None, size: int = 28,
             retries: int = 2, progress: bool | None = None, keep_archive: bool = False) -> Path:
    """Fetch a dataset source into the cache (or ``dest``) and verify it.

    Parameters
    ----------
    source
        A key of :data:`SOURCES`: ``"pbc"``, ``"kaggle"``, ``"bloodmnist"`` or ``"wbc-external"``.
    dest
        Target folder; default ``cache_dir() / source``. Data already there is verified and reused.
    url
        Override the download URL (else ``$BCC_PBC_URL`` / ``$BCC_BLOODMNIST_URL`` /
        ``$BCC_WBC_EXTERNAL_URL``, else the registry's).
    size
        BloodMNIST image size: 28, 64, 128 or 224.
    retries
        Extra attempts after a failed transfer or checksum (not after a 4xx answer).
    progress
        Show a progress bar (default: when stderr is a terminal).
    keep_archive
        Keep the PBC (or wbc-external) zip after a verified extraction.

    Returns
    -------
    Path
        The folder holding the class folders, the ``.npz`` file for BloodMNIST, or for
        ``wbc-external`` the folder holding its two sets (``<set>/images/<class>/``). A folder
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
    if source == "wbc-external":
        return _download_wbc_external(dest, url or info["url"], retries, progress, keep_archive)
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
