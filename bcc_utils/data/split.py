"""Leak-free stratified train/val/test split, saved as a canonical CSV manifest.

Choices
-------
* Byte-identical files form one *content group*. A group whose files share a
  class is kept once (its first path in sorted order); the other copies are
  listed in ``df.attrs["excluded"]`` as ``"duplicate of <kept path>"``. So no
  content can sit in two splits, and no image is counted twice.
* A group whose files carry different classes is a label conflict: all its
  files are excluded (we cannot know the right label).
* Stratification is exact per class: with ``n`` kept images of a class, the
  test split gets ``round(n * f_test)``, val ``round(n * f_val)`` and train the
  rest, so each count is within one image of its target. Which images go where
  is a permutation drawn with ``numpy.random.default_rng([seed, class_index])``
  over the paths in sorted order: the same files and seed give the same split on
  any machine, and a class's split does not depend on the other classes.
* The manifest CSV is canonical: columns ``path,label,split``, rows sorted by
  path, UTF-8, ``\\n`` line endings, no index and no floats, so the same data
  and seed give byte-identical files (and the same :func:`manifest_hash`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from bcc_utils.atomic import write_bytes
from bcc_utils.data.audit import as_scan
from bcc_utils.data.locate import locate_root, normalise_class_name
from bcc_utils.data.scan import ScanResult
from bcc_utils.paths import CLASSES

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "split"]


class LeakError(ValueError):
    """The same image content occurs in more than one split."""


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def make_split(root_or_scan: str | os.PathLike | ScanResult, seed: int = 42,
               fractions: tuple[float, float, float] = (0.72, 0.08, 0.20)) -> pd.DataFrame:
    """Split a dataset into train/val/test without leaking identical images across splits.

    Parameters
    ----------
    root_or_scan
        A dataset folder (scanned here) or a hashed :class:`ScanResult`.
    seed
        Non-negative integer seed.
    fractions
        Train, val and test fractions (summing to 1).

    Returns
    -------
    pandas.DataFrame
        Columns ``path, label, split`` sorted by path. ``df.attrs["excluded"]``
        lists ``{path, label, reason}`` for every file left out (non-images,
        duplicate copies, label conflicts); ``attrs["seed"]``, ``attrs["fractions"]`` too.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    result = as_scan(root_or_scan)
    rec = result.records
    excluded = [{"path": s["path"], "label": normalise_class_name(s["path"].split("/", 1)[0]),
                 "reason": f"skipped by scan: {s['reason']}"} for s in result.skipped]
    keep: list[tuple[str, str]] = []
    for _, group in rec.groupby("sha256", sort=False):
        paths, labels = list(group["path"]), list(group["label"])
        first = min(paths)
        if len(set(labels)) > 1:
            others = {p: ", ".join(f"{q} ({lab})" for q, lab in zip(paths, labels) if q != p) for p in paths}
            excluded += [{"path": p, "label": lab, "reason": f"label conflict: identical to {others[p]}"}
                         for p, lab in zip(paths, labels)]
            continue
        keep.append((first, labels[0]))
        excluded += [{"path": p, "label": labels[0], "reason": f"duplicate of {first}"} for p in paths if p != first]
    rows = []
    _, f_val, f_test = fractions
    for index, label in enumerate(CLASSES):
        paths = sorted(p for p, lab in keep if lab == label)
        n = len(paths)
        n_test, n_val = _round_half_up(n * f_test), _round_half_up(n * f_val)
        if n_test + n_val > n:
            n_val = n - n_test
        names = np.array(["train"] * n, dtype=object)
        order = np.random.default_rng([int(seed), index]).permutation(n)
        names[order[:n_test]] = "test"
        names[order[n_test:n_test + n_val]] = "val"
        rows += list(zip(paths, [label] * n, names))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    df.attrs["excluded"] = sorted(excluded, key=lambda e: e["path"])
    df.attrs["seed"] = int(seed)
    df.attrs["fractions"] = tuple(float(f) for f in fractions)
    return df


def split_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows, plus ``total``) and split (columns, plus ``total``)."""
    table = pd.crosstab(df["label"], df["split"]).reindex(
        index=[c for c in CLASSES if c in set(df["label"])], columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name, table.columns.name = "class", None
    return table


def manifest_bytes(df: pd.DataFrame) -> bytes:
    """The canonical CSV bytes of a manifest (see the module docstring)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    rows = sorted(zip(df["path"].astype(str), df["label"].astype(str), df["split"].astype(str)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 (hex) of the canonical CSV bytes of ``df``."""
    return hashlib.sha256(manifest_bytes(df)).hexdigest()


def save_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the canonical CSV of ``df`` to ``path`` (folders created); return the path."""
    return write_bytes(manifest_bytes(df), path)


def _outside_reason(path: str) -> str | None:
    """Why ``path`` could point outside the data folder (None when it cannot)."""
    if not path.strip():
        return "is empty"
    win = PureWindowsPath(path)  # reads both separators, drives and UNC shares
    if win.drive:
        return "names a drive or share"
    if win.root or PurePosixPath(path).is_absolute():
        return "is absolute"
    if ".." in win.parts:
        return "has a '..' part"
    return None


def check_manifest_paths(df: pd.DataFrame, source: str | os.PathLike | None = None) -> None:
    """Refuse manifest paths that could read files outside the data folder.

    Every ``path`` must be relative to the data folder: not absolute, no drive or
    share (``C:``, ``\\\\server``), no ``..`` part. A manifest is data (a CSV, or
    the copy inside a checkpoint someone sent you), so it is checked before any file is read.

    Parameters
    ----------
    df
        A manifest with a ``path`` column.
    source
        Where the manifest came from, for the message.

    Raises
    ------
    ValueError
        Naming the first bad path (and how many there are).
    """
    bad = [(p, why) for p in df["path"].astype(str) if (why := _outside_reason(p))]
    if bad:
        where = f"{source}: " if source is not None else ""
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"{where}manifest path {bad[0][0]!r} {bad[0][1]}{more}; manifest paths must be "
                         "relative to the data folder, without '..'")


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV written by :func:`save_manifest`, checking its columns, values and paths."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: expected columns {MANIFEST_COLUMNS}, found {list(df.columns)}")
    check_manifest_paths(df, path)
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    bad_label = sorted(set(df["label"]) - set(CLASSES))
    if bad_split or bad_label:
        raise ValueError(f"{path}: unknown split values {bad_split} / class names {bad_label}")
    if df["path"].duplicated().any():
        raise ValueError(f"{path}: repeated paths, e.g. {df['path'][df['path'].duplicated()].iloc[0]}")
    return df


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_no_leak(df: pd.DataFrame, root: str | os.PathLike | ScanResult) -> None:
    """Raise :class:`LeakError` if any image content occurs in more than one split.

    Parameters
    ----------
    df
        A manifest (``path``, ``split``).
    root
        The dataset folder (files are hashed again) or a hashed :class:`ScanResult`
        (its hashes are used; paths it lacks are hashed from disk).
    """
    if df["path"].duplicated().any():
        raise LeakError(f"the manifest lists {df['path'][df['path'].duplicated()].iloc[0]} more than once")
    known: dict[str, str] = {}
    if isinstance(root, ScanResult):
        known = dict(zip(root.records["path"], root.records["sha256"]))
        root = root.root
    base = locate_root(root)
    todo = [p for p in df["path"] if not known.get(p)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        known.update(zip(todo, pool.map(lambda p: _file_hash(base / p), todo)))
    splits_of: dict[str, dict[str, str]] = {}
    for path, split in zip(df["path"], df["split"]):
        splits_of.setdefault(known[path], {}).setdefault(split, path)
    leaks = {h: s for h, s in splits_of.items() if len(s) > 1}
    if leaks:
        examples = "; ".join(" == ".join(f"{p} ({s})" for s, p in v.items()) for v in list(leaks.values())[:5])
        raise LeakError(f"{len(leaks)} image contents occur in more than one split, e.g. {examples}")
