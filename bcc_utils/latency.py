"""``python -m bcc_utils bench latency``: CPU milliseconds per image, PyTorch (eager) vs onnxruntime.

Both run the same model on the same preprocessed real images (the checkpoint's test split, or a
folder), normalised beforehand, with the same number of threads. Only the forward pass is timed:
one call per batch, ``warmup`` untimed calls first, and the two runtimes alternate call by call
(which one goes first alternates too), so other jobs on the cores slow both alike. Single view:
the run's test-time augmentation would multiply both times by the number of views. PyTorch gets
the memory format the run trained with (channels-last by default), onnxruntime its plain NCHW
input; the largest logit difference seen is reported as a check that both computed the same thing.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _test_images(ckpt: dict, data_dir, count: int) -> list:
    """Decoded RGB images of the first ``count`` test-split rows of the checkpoint's manifest."""
    from bcc_utils.data import locate_root, read_image
    from bcc_utils.paths import find_data_dir

    root = locate_root(find_data_dir(data_dir))
    paths = [p for p, s in zip(ckpt["manifest"]["path"], ckpt["manifest"]["split"]) if s == "test"][:count]
    return [read_image(root / p) for p in paths]


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3)}


def measure_latency(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike | None = None, inputs=None,
                    data_dir=None, n: int = 50, batch: int = 1, threads: int = 1, warmup: int = 5,
                    max_images: int = 64) -> dict[str, Any]:
    """Milliseconds per image of PyTorch eager and onnxruntime on the CPU (see the module docstring).

    Parameters
    ----------
    checkpoint
        ``best.pt``/``last.pt`` of a run.
    onnx_path
        Its export (default: exported now with :func:`bcc_utils.export.export_onnx` to a temporary folder).
    inputs
        Image files/folders to use; default: the test split of the checkpoint's manifest, read from
        ``data_dir`` (default ``$BCC_DATA_DIR``).
    n, batch, warmup
        Timed calls, images per call, untimed calls first.
    threads
        Threads of both runtimes (torch intra-op threads; onnxruntime intra-op threads).
    max_images
        Distinct images used (cycled through).

    Returns
    -------
    dict
        ``{"pytorch_ms", "onnxruntime_ms"}`` (per image: median, p90, mean, min), ``speedup_median``
        (PyTorch / onnxruntime), ``max_abs_diff``, ``settings`` and ``machine``.
    """
    import torch

    from bcc_utils.data.files import iter_images
    from bcc_utils.export import export_onnx
    from bcc_utils.metrics import hardware_info
    from bcc_utils.onnx_predict import OnnxClassifier, require
    from bcc_utils.run import load_model

    if min(n, batch, threads) < 1 or warmup < 0:
        raise ValueError("n, batch and threads must be >= 1, warmup >= 0")
    # None, not NaN, where there is no load average: the results are written as JSON, which has no NaN
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="bcc-latency-") as tmp:
        onnx_file = onnx_path or export_onnx(checkpoint, Path(tmp) / "model.onnx")[0]
        clf = OnnxClassifier(onnx_file, threads=threads)
        model, ckpt = load_model(checkpoint, "cpu")
        raw = ([rgb for _, rgb in iter_images(inputs, max_images)] if inputs
               else _test_images(ckpt, data_dir, max_images))
        if not raw:
            raise ValueError("no images to time")
        x = np.stack([clf.preprocess(rgb) for rgb in raw])
        layout = torch.channels_last if ckpt["config"]["channels_last"] else torch.contiguous_format
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        diff = 0.0
        try:
            with torch.inference_mode():
                for i in range(warmup + n):
                    xin = clf.to_input(x[(i * batch + np.arange(batch)) % len(x)])
                    feeds = {"pytorch": xin.contiguous(memory_format=layout), "onnxruntime": xin.numpy()}
                    out = {}
                    for name in (("pytorch", "onnxruntime") if i % 2 == 0 else ("onnxruntime", "pytorch")):
                        t0 = time.perf_counter()
                        out[name] = model(feeds[name]) if name == "pytorch" else clf.run(feeds[name])
                        dt = time.perf_counter() - t0
                        if i >= warmup:
                            times[name].append(dt / batch * 1e3)
                    diff = max(diff, float(np.abs(out["pytorch"].numpy() - out["onnxruntime"]).max()))
        finally:
            torch.set_num_threads(old)
        pt, ort = _stats(times["pytorch"]), _stats(times["onnxruntime"])
        return {
            "pytorch_ms": pt, "onnxruntime_ms": ort, "speedup_median": round(pt["median"] / ort["median"], 2),
            "max_abs_diff": diff,
            "settings": {"model": ckpt["config"]["model"], "img_size": int(ckpt["config"]["img_size"]),
                         "batch": batch, "timed_calls": n, "warmup_calls": warmup, "threads": threads,
                         "distinct_images": len(x), "images": "folder" if inputs else "test split",
                         "pytorch_memory_format": str(layout).replace("torch.", ""),
                         "onnx": Path(onnx_file).name if onnx_path else "exported for this benchmark",
                         "opset": clf.sidecar["provenance"]["opset"]},
            "machine": {"cpu": hardware_info("cpu")["cpu_model"], "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "load_avg_1min_at_start": load, "python": platform.python_version(),
                        "torch": torch.__version__, "onnxruntime": require("onnxruntime").__version__},
        }


def _handler(args: argparse.Namespace) -> int:
    from bcc_utils.cli import warnings_to_stderr

    with warnings_to_stderr():
        r = measure_latency(args.checkpoint, args.onnx, args.images, args.data_dir, args.n, args.batch,
                            args.threads, args.warmup)
    s, m = r["settings"], r["machine"]
    print(f"latency of {s['model']} at {s['img_size']} px on the CPU: batch {s['batch']}, {s['threads']} thread(s), "
          f"{s['timed_calls']} timed calls after {s['warmup_calls']} warm-up, {s['distinct_images']} real images "
          f"({s['images']}); {m['cpu']}, load average {m['load_avg_1min_at_start']} at start")
    for name, key in (("PyTorch eager", "pytorch_ms"), ("onnxruntime", "onnxruntime_ms")):
        t = r[key]
        print(f"  {name:14s} median {t['median']:8.3f} ms/img   p90 {t['p90']:8.3f}   mean {t['mean']:8.3f}")
    print(f"  onnxruntime is {r['speedup_median']:.2f}x PyTorch (median); max |logit difference| "
          f"{r['max_abs_diff']:.1e}")
    if args.json:
        from bcc_utils.atomic import write_json

        print(f"  written to {write_json(r, args.json)}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``latency`` to the ``bench`` subcommands."""
    p = sub.add_parser("latency", help="CPU ms per image, PyTorch eager vs onnxruntime",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--onnx", metavar="FILE", help="its exported model (default: export to a temporary folder)")
    p.add_argument("--images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="images to use (default: the checkpoint's test split, from --data-dir)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $BCC_DATA_DIR)")
    p.add_argument("--n", type=int, default=50, help="timed calls (default 50)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads of both runtimes (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_handler)
