"""The PBC data layer: locate, read, scan, audit, split, load and download.

Typical use::

    from bcc_utils.data import scan, audit, make_split, check_no_leak, PBCDataset
    result = scan(data_dir)                 # warns for every skipped file
    report = audit(result)                  # counts, sizes, duplicates, conflicts
    manifest = make_split(result, seed=42)  # leak-free 72/8/20
    check_no_leak(manifest, result)
    train = PBCDataset(data_dir, manifest, "train", transform)

``PBCDataset`` is imported on first use, so that importing this package (and
``python -m bcc_utils --help``) does not load torch. The functions ``scan`` and
``audit`` share their names with their modules; import the modules themselves as
``importlib.import_module("bcc_utils.data.scan")`` if you ever need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bcc_utils.data.audit import audit, format_audit
from bcc_utils.data.locate import DataWarning, locate_root, require_classes
from bcc_utils.data.scan import ImageReadError, ScanResult, read_image, scan
from bcc_utils.data.sources import SOURCES, download, read_bloodmnist
from bcc_utils.data.split import (LeakError, check_manifest_paths, check_no_leak, load_manifest, make_split,
                                  manifest_hash, save_manifest, split_counts)

if TYPE_CHECKING:  # pragma: no cover
    from bcc_utils.data.dataset import PBCDataset

__all__ = [
    "locate_root", "require_classes", "check_manifest_paths", "read_image", "ImageReadError", "scan", "ScanResult", "audit", "format_audit",
    "make_split", "save_manifest", "load_manifest", "manifest_hash", "check_no_leak", "split_counts",
    "LeakError", "DataWarning", "PBCDataset", "SOURCES", "download", "read_bloodmnist",
]


def __getattr__(name: str):
    if name == "PBCDataset":  # needs torch: import on first use
        from bcc_utils.data.dataset import PBCDataset

        return PBCDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
