"""Command ``robustness`` of ``python -m bcc_utils``: a run's accuracy under five corruptions at five severities.

The command form of :func:`bcc_utils.corruptions.corruption_curves` (notebook 10): it prints one line per
corruption kind and writes the curves, with every prediction, to a JSON file that
:func:`bcc_utils.corruptions.load_curves` reads back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bcc_utils.cli import positive_int, warnings_to_stderr


def cmd_robustness(args: argparse.Namespace) -> int:
    """Measure the corruption curves of one checkpoint; print them and write them with ``--json``."""
    import time

    from bcc_utils.corruptions import corruption_curves, save_curves
    from bcc_utils.device import resolve_device
    from bcc_utils.metrics import hardware_info

    if args.json and Path(args.json).is_dir():
        raise ValueError(f"{args.json} is a folder; give a file name")
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"no checkpoint at {args.checkpoint}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with warnings_to_stderr():
        curves = corruption_curves(args.checkpoint, args.data_dir, kinds=args.kinds, severities=args.severities,
                                   limit=args.limit, split=args.split, seed=args.seed, device=args.device,
                                   progress=not args.quiet)
    t = curves.table
    print(f"{curves.n} of {curves.n_split} {curves.split} images; clean accuracy {curves.clean:.2%}; "
          f"{curves.wall_s:.0f} s")
    for kind in dict.fromkeys(t["kind"]):
        part = t[(t["kind"] == kind) & (t["severity"] > 0)]
        print(f"  {kind:>8}: " + "  ".join(f"s{int(r.severity)} {r.accuracy:.1%}" for r in part.itertuples()))
    if args.json:  # corruption_curves refuses unknown kinds and severities before it loads the model
        command = (f"python -m bcc_utils robustness {Path(args.checkpoint).parent.name}/{Path(args.checkpoint).name}"
                   + (f" --limit {args.limit}" if args.limit else "") + f" --seed {args.seed}"
                   + f" --kinds {' '.join(args.kinds)} --severities {' '.join(map(str, args.severities))}")
        extra = {"command": command, "started": started, "hardware": hardware_info(resolve_device(args.device))}
        print(f"written to {save_curves(curves, args.json, extra)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``robustness`` to the command-line parser."""
    from bcc_utils.corruptions import KINDS, SEVERITIES

    p = sub.add_parser("robustness", help="accuracy under blur, JPEG, colour cast, zoom and noise (5 severities)",
                       description="Corrupt a run's test images (blur, JPEG, colour cast, zoom, noise; severities "
                       "1-5, see bcc_utils.corruptions), classify them with the run's own preprocessing and "
                       "test-time augmentation, and report accuracy per kind and severity.")
    p.add_argument("checkpoint", help="best.pt of a run (its manifest gives the test split)")
    p.add_argument("--data-dir", default=None, help="the PBC copy the run was trained on (default: $BCC_DATA_DIR)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), metavar="KIND",
                   help=f"corruptions to measure (default: {' '.join(KINDS)}; zoom_out also exists)")
    p.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), metavar="S",
                   help="severities 1-5 (default: all)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="a stratified random subset of N test images (default: the whole split)")
    p.add_argument("--split", default="test", help="split of the run's manifest (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the random corruptions (default 0)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the curves and every prediction here")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_robustness)
