"""Command ``explain`` of ``python -m bcc_utils``: a class activation map per image, and how much of it is on the cell.

Reproduces notebook 07's measure outside the notebook: per image the predicted class, the layer and
method of the map, and the map's share of heat in the central square (where PBC crops put the cell).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcc_utils.cli import warnings_to_stderr


def _overlay_name(file: str, layer: str, method: str, taken: set[str]) -> str:
    stem = f"{Path(file).stem}_{layer}_{method}".replace("+", "p")
    name, k = f"{stem}.png", 1
    while name in taken:  # two inputs with the same name (in different folders) keep one overlay each
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain each image's prediction; print one line per image and the mean central share."""
    import cv2
    import numpy as np

    from bcc_utils.atomic import write_bytes, write_json
    from bcc_utils.explain import METHODS, explain_images, overlay

    if args.method not in METHODS:
        raise ValueError(f"unknown CAM method {args.method!r}; choose one of {', '.join(METHODS)}")
    if args.json and Path(args.json).is_dir():  # a bad output path fails before any map is computed
        raise ValueError(f"{args.json} is a folder; give a file name")
    save = Path(args.save_dir) if args.save_dir else None
    if save is not None:
        if save.exists() and not save.is_dir():
            raise ValueError(f"--save-dir {save} is a file, not a folder")
        save.mkdir(parents=True, exist_ok=True)
    records, taken = [], set()
    with warnings_to_stderr():
        for record, rgb, cam in explain_images(args.checkpoint, args.inputs, args.layer, args.method,
                                               device=args.device, frac=args.frac):
            if save is not None:
                ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(rgb, cam), cv2.COLOR_RGB2BGR))
                if not ok:
                    raise RuntimeError(f"could not encode the overlay of {record['file']}")
                record["overlay"] = str(write_bytes(png.tobytes(), save / _overlay_name(record["file"], record["layer"],
                                                                                       record["method"], taken)))
            share = "blank map" if record["center_share"] is None else f"central share {record['center_share']:.3f}"
            print(f"{record['file']}: {record['class']} ({record['confidence']:.1%})  {record['method']} at "
                  f"{record['layer']}: {share}")
            records.append(record)
    if not records:
        print("no images found", file=sys.stderr)
        return 1
    shares = [r["center_share"] for r in records if r["center_share"] is not None]
    mean = float(np.mean(shares)) if shares else None
    layer, method = records[0]["layer"], records[0]["method"]
    print(f"{len(records)} images, {method} at {layer}: mean central share "
          + (f"{mean:.3f}" if mean is not None else "n/a (every map blank)")
          + f" (uniform map: {args.frac ** 2:.3f}); {len(records) - len(shares)} blank maps")
    if args.json:
        out = {"checkpoint": str(args.checkpoint), "layer": layer, "method": method, "frac": args.frac,
               "n": len(records), "blank": len(records) - len(shares), "mean_center_share": mean, "images": records}
        print(f"written to {write_json(out, args.json)}")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``explain`` to the command-line parser."""
    p = sub.add_parser("explain", help="a class activation map per image and its share of heat on the cell",
                       description="Classify images with a checkpoint and explain each prediction with a class "
                       "activation map; print (and write with --json) the predicted class, the layer, the method "
                       "and the share of the map's heat in the central square (PBC crops are centred on the cell; "
                       "a uniform map gives frac**2).")
    p.add_argument("checkpoint", help="best.pt of a run")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (recursive)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="module to explain, e.g. blocks.4 (default: the last feature map; a wrong name lists the "
                   "candidates)")
    p.add_argument("--method", default="gradcam", metavar="NAME",
                   help="gradcam (default), gradcam++, hirescam or layercam")
    p.add_argument("--json", default=None, metavar="FILE", help="write the per-image results to this JSON file")
    p.add_argument("--save-dir", default=None, metavar="DIR", help="write each map over its image as a PNG here")
    p.add_argument("--frac", type=_fraction, default=0.5,
                   help="side of the central square as a fraction of the image side (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.set_defaults(func=cmd_explain)
