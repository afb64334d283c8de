"""Commands ``audit``, ``split`` and ``download`` of ``python -m bcc_utils``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bcc_utils.cli import warnings_to_stderr


def _data_dir(value: str | None) -> Path:
    from bcc_utils.paths import find_data_dir

    return find_data_dir(value)


def cmd_audit(args: argparse.Namespace) -> int:
    """Scan a dataset and print (and optionally save as JSON) its audit."""
    from bcc_utils.data import audit, format_audit

    with warnings_to_stderr():
        report = audit(_data_dir(args.data_dir))
    print(format_audit(report))
    if args.json:
        from bcc_utils.atomic import write_json

        path = write_json(report, args.json)
        print(f"audit written to {path}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Make the leak-free split, check it, save the manifest and print the counts."""
    from bcc_utils.data import check_no_leak, make_split, manifest_hash, save_manifest, scan, split_counts

    with warnings_to_stderr():
        result = scan(_data_dir(args.data_dir))
    df = make_split(result, seed=args.seed)
    check_no_leak(df, result)
    path = save_manifest(df, args.out)
    print(f"images per class and split (seed {args.seed}, fractions {df.attrs['fractions']}):")
    print(split_counts(df).to_string())
    excluded = df.attrs["excluded"]
    print(f"excluded ({len(excluded)} files):")
    for item in excluded:
        print(f"  {item['path']}: {item['reason']}")
    print("no image content occurs in two splits")
    print(f"manifest written to {path}  (sha256 {manifest_hash(df)})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a dataset source into the cache (or ``--dest``) and say how to use it."""
    from bcc_utils.data import download
    from bcc_utils.paths import DATA_ENV

    with warnings_to_stderr():
        path = download(args.source, args.dest, url=args.url, size=args.size, retries=args.retries)
    print(f"{args.source} ready at {path}")
    if args.source == "wbc-external":  # not training data: a test set for trained runs
        print(f"use it with: python -m bcc_utils evaluate RUN/best.pt --external {path / 'dataset1-jtsc'}")
    elif path.is_dir():
        print(f"use it with: export {DATA_ENV}={path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit``, ``split`` and ``download`` to the ``python -m bcc_utils`` parser."""
    from bcc_utils.data.sources import SOURCES

    data_help = "dataset folder (default: $BCC_DATA_DIR, then the download cache)"
    p = subparsers.add_parser("audit", help="count images, sizes, duplicates and label conflicts",
                              description="Scan a PBC dataset folder and report what is in it.")
    p.add_argument("data_dir", nargs="?", help=data_help)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("split", help="write a leak-free stratified train/val/test manifest",
                              description="Stratified 72/8/20 split over unique images (identical files kept "
                                          "once, label conflicts excluded), saved as CSV path,label,split.")
    p.add_argument("data_dir", nargs="?", help=data_help)
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the manifest")
    p.set_defaults(func=cmd_split)

    p = subparsers.add_parser("download", help="download a dataset source into the cache",
                              description="Download and verify a dataset source: "
                                          + "; ".join(f"{k}: {v['description']}" for k, v in SOURCES.items()))
    p.add_argument("source", choices=sorted(SOURCES), help="which source")
    p.add_argument("--dest", metavar="DIR", help="target folder (default: the cache, $BCC_CACHE_DIR)")
    p.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="BloodMNIST image size")
    p.add_argument("--url", help="download from this URL instead of the registry's")
    p.add_argument("--retries", type=int, default=2, help="extra attempts after a failed transfer (default 2)")
    p.set_defaults(func=cmd_download)
