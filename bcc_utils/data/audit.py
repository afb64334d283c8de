"""Audit a dataset: counts, image sizes, exact duplicates, label conflicts, sub-type prefixes."""

from __future__ import annotations

import os
import re
from collections import Counter

import pandas as pd

from bcc_utils.data.scan import ScanResult, scan
from bcc_utils.paths import CLASSES

_PREFIX = re.compile(r"^([A-Za-z]+)_")


def as_scan(root_or_scan: str | os.PathLike | ScanResult) -> ScanResult:
    """Return ``root_or_scan`` if it is a hashed :class:`ScanResult`, else scan it (with hashes)."""
    if isinstance(root_or_scan, ScanResult):
        if root_or_scan.records["sha256"].isna().any():
            raise ValueError("This ScanResult has no hashes; scan again with hashes=True.")
        return root_or_scan
    return scan(root_or_scan, hashes=True)


def file_prefix(path: str) -> str:
    """Sub-type prefix of a file name (``"ig/MMY_123.jpg"`` -> ``"MMY"``), ``"(none)"`` without one."""
    match = _PREFIX.match(path.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else "(none)"


def duplicate_groups(records: pd.DataFrame) -> list[list[str]]:
    """Groups (>= 2 files) of byte-identical images, each sorted, ordered by first path."""
    groups = records.groupby("sha256", sort=False)["path"].apply(sorted)
    return sorted((g for g in groups if len(g) > 1), key=lambda g: g[0])


def audit(root: str | os.PathLike | ScanResult) -> dict:
    """Audit a dataset folder (or an existing hashed scan).

    Returns
    -------
    dict
        ``n_files`` (all files in the class folders), ``n_images`` (decodable),
        ``skipped`` (``[{path, reason}]``), ``class_counts`` (class -> n, all
        classes), ``size_counts`` (``"WxH"`` -> n, most common first),
        ``duplicate_groups`` (lists of relative paths of identical files),
        ``label_conflicts`` (the groups whose files carry more than one class),
        ``prefix_counts`` (class -> {prefix: n}), ``n_unique`` (images left after
        keeping one file per duplicate group and dropping conflicts), and
        ``missing_classes``, ``empty_classes``, ``unknown_entries``.
    """
    result = as_scan(root)
    rec = result.records
    label_of = dict(zip(rec["path"], rec["label"]))
    groups = duplicate_groups(rec)
    conflicts = [g for g in groups if len({label_of[p] for p in g}) > 1]
    sizes = Counter(f"{w}x{h}" for w, h in zip(rec["width"], rec["height"]))
    prefixes: dict[str, dict[str, int]] = {}
    for label, path in zip(rec["label"], rec["path"]):
        counter = prefixes.setdefault(label, {})
        counter[file_prefix(path)] = counter.get(file_prefix(path), 0) + 1
    n_unique = rec["sha256"].nunique() - len(conflicts)
    return {
        "n_files": result.n_files,
        "n_images": len(rec),
        "skipped": [dict(s) for s in result.skipped],
        "class_counts": {c: int((rec["label"] == c).sum()) for c in CLASSES},
        "size_counts": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "duplicate_groups": groups,
        "label_conflicts": conflicts,
        "prefix_counts": {c: dict(sorted(prefixes[c].items())) for c in CLASSES if c in prefixes},
        "n_unique": int(n_unique),
        "missing_classes": list(result.missing_classes),
        "empty_classes": list(result.empty_classes),
        "unknown_entries": list(result.unknown_entries),
    }


def format_audit(report: dict) -> str:
    """Readable multi-line text of an :func:`audit` report."""
    lines = [f"files: {report['n_files']}   decodable images: {report['n_images']}   "
             f"skipped: {len(report['skipped'])}"]
    lines += [f"  skipped {s['path']}: {s['reason']}" for s in report["skipped"]]
    counts = report["class_counts"]
    present = [n for n in counts.values() if n]
    lines.append("images per class:")
    for c, n in counts.items():
        subtypes = ", ".join(f"{p} {k}" for p, k in report["prefix_counts"].get(c, {}).items())
        lines.append(f"  {c:<13}{n:>6}   ({subtypes})")
    if present:
        lines.append(f"  largest/smallest class: {max(present) / min(present):.2f}")
    lines.append("image sizes (width x height):")
    lines += [f"  {size:<10}{n:>6}" for size, n in report["size_counts"].items()]
    groups = report["duplicate_groups"]
    lines.append(f"groups of byte-identical files: {len(groups)} ({sum(map(len, groups))} files)")
    lines += [f"  {' == '.join(g)}" for g in groups]
    lines.append(f"label conflicts (identical files, different classes): {len(report['label_conflicts'])}")
    lines += [f"  {' == '.join(g)}" for g in report["label_conflicts"]]
    lines.append(f"unique images after removing duplicates and conflicts: {report['n_unique']}")
    for key, text in (("missing_classes", "missing classes"), ("empty_classes", "empty class folders"),
                      ("unknown_entries", "not class folders (ignored)")):
        if report.get(key):
            lines.append(f"{text}: {', '.join(report[key])}")
    return "\n".join(lines)
