"""``python -m bcc_utils bench pipeline``: images per second the training DataLoader delivers.

Two modes on the same images, the same sampler draw and the same augmentation
(the paper's full set, batch 32, :func:`bcc_utils.workers.make_loader`):

* ``naive``  — every sample: read + decode → CLAHE → resize → augment;
* ``cached`` — decode → CLAHE → resize done once (:func:`bcc_utils.cache.build_cache`,
  its time reported separately as ``cache_build_s``); every sample: memmap read → augment.

The first batches (worker start-up) are not timed. Wall-clock rates depend on
whatever else runs on the cores (the 1-minute load average at start is
recorded); ``*_cpu_ms_per_img`` — CPU time of all processes per image, worker
start-up included — does not. ``--profile`` adds a single-process breakdown of
the per-image cost of every step. The cache removes only the deterministic
part, so ``speedup`` ≤ 1 + (read + CLAHE + resize) / (augmentation + loader
overhead): large for the original 360 px JPEGs, small for the 128 px copy,
whose decode + CLAHE is cheap.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


class NaiveTransform:
    """Per-sample preprocessing + augmentation + CHW tensor (what the cache saves us from).

    With ``float_output`` it also normalises in the worker and returns float32
    (``A.Normalize`` + ``ToTensorV2``, the usual albumentations recipe): the
    ``naive-float`` reference, 4 bytes per value through the DataLoader.
    """

    def __init__(self, size: int, clahe, augment, float_output: bool = False):
        self.size, self.clahe, self.augment, self.float_output = size, clahe, augment, float_output
        if float_output:
            import albumentations as A
            from albumentations.pytorch import ToTensorV2

            # ToTensorV2 has no parameters to misspell (and accepts no strict)
            self.to_float = A.Compose([A.Normalize(strict=True), ToTensorV2()], strict=True)

    def __call__(self, image: np.ndarray):
        from bcc_utils.preprocess import preprocess_image
        from bcc_utils.workers import to_chw_tensor

        out = self.augment(image=preprocess_image(image, self.size, self.clahe))["image"]
        return self.to_float(image=out)["image"] if self.float_output else to_chw_tensor(out)


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished (joined) children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time_loader(loader, warmup: int) -> tuple[float, int, float]:
    """Images/s after ``warmup`` batches, images timed, and CPU ms per image over the whole run.

    The rate is the slope of a straight line through (images delivered, arrival
    time) of the timed batches: workers finish their batches at about the same
    moments, so batches arrive in groups, and "images / (last - first arrival)"
    would count a group produced before the clock started. The CPU figure (all
    processes, worker start-up and warm-up included) is robust to other jobs
    sharing the cores; the wall-clock rate is what training sees.
    """
    done, total, arrivals = 0, 0, []
    cpu0 = _cpu_seconds()
    for i, (x, _) in enumerate(loader):
        total += x.shape[0]
        if i >= warmup:
            done += x.shape[0]
            arrivals.append((done, time.perf_counter()))
    if len(arrivals) < 3:
        raise ValueError("not enough batches to time: use --batches 3 or more")
    n, t = np.array(arrivals, dtype=float).T
    slope = np.polyfit(n, t, 1)[0]  # seconds per image
    rate = 1.0 / slope if slope > 0 else (n[-1] - n[0]) / (t[-1] - t[0])
    del loader  # non-persistent workers are joined at the end of the epoch: their CPU time is now counted
    return rate, done, (_cpu_seconds() - cpu0) / total * 1e3


def _ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def profile_steps(paths: list[Path], size: int = 300, clahe=None, repeats: int = 100) -> dict[str, float]:
    """Mean milliseconds per image of each step, in this process, OpenCV single-threaded.

    Keys: ``read_decode``, ``clahe``, ``resize``, each augmentation component
    when applied (p = 1), ``augment_expected`` (the whole pipeline at its usual
    probabilities) and ``memmap_copy`` (reading one cached image).
    """
    import albumentations as A
    import cv2

    from bcc_utils.augment import COMPONENTS, AugmentParams, build_component, build_train_transform
    from bcc_utils.data import read_image
    from bcc_utils.preprocess import ClaheSettings, apply_clahe, resize_square
    from bcc_utils.workers import reseed_transform

    cv2.setNumThreads(0)
    clahe = clahe or ClaheSettings()
    raws = [read_image(p) for p in paths]
    k = [0]

    def cycle(items):
        k[0] = (k[0] + 1) % len(items)
        return items[k[0]]

    out = {
        "read_decode": _ms(lambda: read_image(cycle(paths)), repeats),
        "clahe": _ms(lambda: apply_clahe(cycle(raws), clahe), repeats),
    }
    equalised = [apply_clahe(r, clahe) for r in raws]
    out["resize"] = _ms(lambda: resize_square(cycle(equalised), size), repeats)
    ready = [resize_square(e, size) for e in equalised]
    params = AugmentParams()
    for name in COMPONENTS:
        t = A.Compose(build_component(name, params, always=True), strict=True)
        reseed_transform(t, 0)
        out[f"aug_{name}"] = _ms(lambda: t(image=cycle(ready)), repeats)
    full = build_train_transform(size, seed=0)
    out["augment_expected"] = _ms(lambda: full(image=cycle(ready)), repeats * 3)
    stack = np.stack(ready)
    out["memmap_copy"] = _ms(lambda: np.array(cycle(stack)), repeats)
    return {key: round(v, 4) for key, v in out.items()}


def run_pipeline_bench(data_dir, img_size: int = 300, workers: int = 2, batches: int = 10, batch_size: int = 32,
                       warmup: int = 2, cache_dir=None, seed: int = 0, profile: bool = False,
                       float_baseline: bool = False) -> dict[str, Any]:
    """Measure both modes and return the result dictionary (see the module docstring).

    ``float_baseline`` adds the ``naive-float`` mode (see :class:`NaiveTransform`).
    """
    import cv2
    import torch

    from bcc_utils.augment import build_train_transform
    from bcc_utils.cache import CachedDataset, build_cache
    from bcc_utils.data import PBCDataset, locate_root, make_split
    from bcc_utils.paths import CLASSES
    from bcc_utils.preprocess import ClaheSettings
    from bcc_utils.sampling import make_sampler
    from bcc_utils.workers import make_loader
    from torch.utils.data import default_collate

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs on the cores?
    root = locate_root(data_dir)
    with warnings.catch_warnings():  # the sample's non-image file is reported by `audit`, not here
        warnings.simplefilter("ignore")
        manifest = make_split(root)
    train = manifest[manifest["split"] == "train"]
    total = (warmup + batches) * batch_size
    n_images = min(len(train), total)
    subset = train.sample(n=n_images, random_state=seed).sort_values("path").reset_index(drop=True)
    labels = np.array([CLASSES.index(c) for c in subset["label"]])
    clahe = ClaheSettings()

    with tempfile.TemporaryDirectory(prefix="bcc-bench-") as tmp:
        images = build_cache(root, subset, img_size, clahe, cache_dir or tmp, workers=workers)
        datasets = {
            "naive": PBCDataset(root, subset, "train", transform=NaiveTransform(img_size, clahe,
                                                                                 build_train_transform(img_size))),
            "cached": CachedDataset(images, subset, "train", transform=build_train_transform(img_size)),
        }
        if float_baseline:
            datasets["naive-float"] = PBCDataset(root, subset, "train", transform=NaiveTransform(
                img_size, clahe, build_train_transform(img_size), float_output=True))
        rates, cpu = {}, {}
        for mode, ds in datasets.items():
            sampler = make_sampler(labels, len(CLASSES), num_samples=total, seed=seed)
            loader = make_loader(ds, batch_size, sampler=sampler, workers=workers, persistent=False,
                                 collate_fn=default_collate if mode == "naive-float" else None)
            rates[mode], timed, cpu[mode] = _time_loader(loader, warmup)
        result = {
            "naive_img_per_s": round(rates["naive"], 1),
            "cached_img_per_s": round(rates["cached"], 1),
            "speedup": round(rates["cached"] / rates["naive"], 2),
            "cache_build_s": round(images.build_seconds, 2),
            "cache_reused": not images.built,
            "naive_cpu_ms_per_img": round(cpu["naive"], 3),
            "cached_cpu_ms_per_img": round(cpu["cached"], 3),
            "cpu_speedup": round(cpu["naive"] / cpu["cached"], 2),
            "settings": {
                "data": Path(data_dir).name, "img_size": img_size, "workers": workers,
                "batch_size": batch_size, "timed_batches": batches, "warmup_batches": warmup,
                "images_timed": timed, "distinct_images": n_images, "clahe": clahe.key(),
                "augmentation": "paper (all components)", "sampler": "WeightedRandomSampler 1/frequency",
            },
            "machine": {
                "cpu_count": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                "load_avg_1min_at_start": None if load is None else round(load, 2),
                "python": platform.python_version(), "torch": torch.__version__, "opencv": cv2.__version__,
            },
        }
        if float_baseline:
            result["naive_float_img_per_s"] = round(rates["naive-float"], 1)
            result["naive_float_cpu_ms_per_img"] = round(cpu["naive-float"], 3)
            result["speedup_vs_naive_float"] = round(rates["cached"] / rates["naive-float"], 2)
        if profile:
            result["profile_ms"] = profile_steps([root / p for p in subset["path"][:16]], img_size, clahe)
    return result


def _handler(args: argparse.Namespace) -> int:
    from bcc_utils.paths import find_data_dir

    result = run_pipeline_bench(find_data_dir(args.data_dir), args.img_size, args.workers, args.batches,
                                args.batch_size, args.warmup, args.cache_dir, profile=args.profile,
                                float_baseline=args.float_baseline)
    s = result["settings"]
    m = result["machine"]
    print(f"pipeline benchmark on {s['data']}: {s['img_size']} px, batch {s['batch_size']}, {s['workers']} workers, "
          f"{s['images_timed']} images timed after {s['warmup_batches']} warm-up batches "
          f"({m['cpus_usable']} CPUs usable, load average {m['load_avg_1min_at_start']} at start)")
    print(f"  naive   {result['naive_img_per_s']:8.1f} img/s   (decode + CLAHE + resize + augment per sample)")
    print(f"  cached  {result['cached_img_per_s']:8.1f} img/s   (memmap + augment; "
          f"cache built once in {result['cache_build_s']:.2f} s)")
    print(f"  speedup {result['speedup']:8.2f} x")
    print(f"  CPU per image (all processes): naive {result['naive_cpu_ms_per_img']:.2f} ms, "
          f"cached {result['cached_cpu_ms_per_img']:.2f} ms -> {result['cpu_speedup']:.2f} x")
    if "naive_float_img_per_s" in result:
        print(f"  naive-float {result['naive_float_img_per_s']:6.1f} img/s   (naive + normalise to float32 in the "
              f"workers) -> cached is {result['speedup_vs_naive_float']:.2f} x faster")
    for key, value in result.get("profile_ms", {}).items():
        print(f"    {key:28s} {value:7.3f} ms/img")
    if args.json:
        from bcc_utils.atomic import write_json

        write_json(result, args.json)
        print(f"  written to {args.json}")
    return 0


def run_gpu_bench(data_dir, device: str = "cuda", models=("efficientnet_b0", "resnet50"), img_size: int = 300, steps: int = 10,
                  batch_size: int = 32, loader_batches: int = 10, workers=None) -> dict:
    """Model training speed per model, then DataLoader speed per worker count (see the module docstring)."""
    import torch

    from bcc_utils.device import describe, resolve_device
    from bcc_utils.gpu_bench import train_speed
    from bcc_utils.metrics import hardware_info

    dev = resolve_device(device)
    workers = sorted({2, os.cpu_count() or 1}) if workers is None else list(workers)
    result = {"device": describe(dev), "hardware": hardware_info(dev), "models": [], "loader": []}
    for name in models:
        result["models"].append(train_speed(name, img_size, dev, steps, batch_size=batch_size))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
    for w in workers:
        r = run_pipeline_bench(data_dir, img_size, w, loader_batches, batch_size)
        result["loader"].append({"workers": w, "cached_img_per_s": r["cached_img_per_s"],
                                 "naive_img_per_s": r["naive_img_per_s"]})
    fastest_loader = max(x["cached_img_per_s"] for x in result["loader"])
    result["limits"] = {m["model"]: "model" if m["train_img_per_s"] < fastest_loader else "data loader"
                        for m in result["models"]}
    return result


def _gpu_handler(args: argparse.Namespace) -> int:
    from bcc_utils.atomic import write_json
    from bcc_utils.paths import find_data_dir

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device here: 'bench gpu' measures a GPU runtime (on Colab: Runtime > Change "
                           "runtime type > GPU); --device cpu runs the same steps on the CPU, to test the command")
    r = run_gpu_bench(find_data_dir(args.data_dir), args.device, args.models, args.img_size, args.steps,
                      args.batch_size, args.batches, args.workers)
    print(f"device: {r['device']}, {r['hardware']['cpu_count']} CPU cores")
    for m in r["models"]:
        mem = f", peak {m['peak_gpu_memory_gib']} GiB" if m["peak_gpu_memory_gib"] is not None else ""
        print(f"  train {m['model']:<16} {m['img_size']} px, batch {m['batch_size']}, amp {m['amp']}, channels-last: "
              f"{m['train_img_per_s']:8.1f} img/s{mem}")
    for x in r["loader"]:
        print(f"  data loader, {x['workers']:>2} workers: cached {x['cached_img_per_s']:8.1f} img/s "
              f"(naive {x['naive_img_per_s']:.1f})")
    for model, limit in r["limits"].items():
        print(f"  {model}: an epoch is limited by the {limit}")
    if args.json:
        print(f"  written to {write_json(r, args.json)}")
    return 0


def _add_gpu_parser(sub) -> None:
    p = sub.add_parser("gpu", help="GPU self-check: training img/s of the paper's models, data-loader img/s",
                       description="A few training steps of the paper preset per model (AMP, channels-last) on "
                                   "batches already on the GPU, then the cached DataLoader alone with 2 workers "
                                   "(Colab) and with all cores: which of the two limits an epoch.")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $BCC_DATA_DIR); the sample is enough")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu only to test the command")
    p.add_argument("--models", nargs="+", default=["efficientnet_b0", "resnet50"], help="timm names (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=300, help="input size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--batches", type=int, default=10, help="timed loader batches (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", help="loader worker counts (default: 2 and all cores)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.set_defaults(func=_gpu_handler)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench pipeline`` and ``bench latency`` (:mod:`bcc_utils.latency`) to the command line."""
    from bcc_utils.latency import add_parser as add_latency_parser

    bench = subparsers.add_parser("bench", help="benchmarks (data pipeline throughput, inference latency, GPU self-check)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    sub.required = True
    p = sub.add_parser("pipeline", help="images/s of the training DataLoader, naive vs cached",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--img-size", type=int, default=300, help="model input size (default 300)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per mode, at least 3 (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    p.add_argument("--cache-dir", default=None, help="keep the cache here (default: a temporary folder)")
    p.add_argument("--profile", action="store_true", help="also time each step per image")
    p.add_argument("--float-baseline", action="store_true",
                   help="also time naive + float32 normalisation in the workers (A.Normalize + ToTensorV2)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_handler)
    add_latency_parser(sub)
    _add_gpu_parser(sub)
