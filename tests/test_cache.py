"""The preprocessing cache: content, reuse/rebuild by key, atomic writes, errors, dataset and loader."""

from __future__ import annotations

import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from bcc_utils.augment import build_train_transform
from bcc_utils.cache import CacheBuildError, CachedDataset, PreprocessedImages, build_cache
from bcc_utils.data import make_split, read_image
from bcc_utils.paths import CLASSES
from bcc_utils.preprocess import ClaheSettings, preprocess_image
from bcc_utils.workers import make_loader

SIZE = 64  # small images keep the tests fast; the code path is the same at 300 px


@pytest.fixture(scope="module")
def manifest(sample_root):
    """The real sample's leak-free split, cut to 5 images per class (40 rows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = make_split(sample_root)
    return df.groupby("label", group_keys=False).head(5).reset_index(drop=True)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cache_holds_the_preprocessed_pixels(sample_root, manifest, tmp_path):
    images = build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path, workers=2)
    assert images.built and images.build_seconds > 0
    assert images.array.shape == (len(manifest), SIZE, SIZE, 3) and images.array.dtype == np.uint8
    assert images.paths == sorted(manifest["path"])
    for path in list(manifest["path"])[::9]:
        row = images.index_of(path)
        assert np.array_equal(images[row], preprocess_image(read_image(sample_root / path), SIZE, ClaheSettings()))
        assert CLASSES[images.labels[row]] == manifest.set_index("path").loc[path, "label"]
    with pytest.raises(KeyError, match="not in the cache"):
        images.index_of("basophil/missing.jpg")
    assert [n for n in _files(tmp_path) if ".tmp" in n] == []
    assert {p.suffix for p in tmp_path.iterdir()} == {".u8", ".json"}


def test_cache_reused_when_settings_match(sample_root, manifest, tmp_path):
    first = build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path, workers=0)
    mtime = first.file.stat().st_mtime_ns
    again = build_cache(sample_root, manifest.sample(frac=1, random_state=1), SIZE, ClaheSettings(), tmp_path)
    assert first.built and not again.built
    assert again.file == first.file and again.file.stat().st_mtime_ns == mtime
    assert np.array_equal(again.array, first.array)


@pytest.mark.parametrize("change", ["size", "clip", "space", "no-clahe", "manifest"])
def test_cache_rebuilt_when_settings_differ(sample_root, manifest, tmp_path, change):
    base = build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path, workers=0)
    size, clahe, df = SIZE, ClaheSettings(), manifest
    if change == "size":
        size = 48
    elif change == "clip":
        clahe = ClaheSettings(clip_limit=3.0)
    elif change == "space":
        clahe = ClaheSettings(space="rgb")
    elif change == "no-clahe":
        clahe = None
    else:
        df = manifest.iloc[1:]
    other = build_cache(sample_root, df, size, clahe, tmp_path, workers=0)
    assert other.built and other.file != base.file
    assert other.key != base.key
    if change != "manifest":
        assert not np.array_equal(other.array[0][:48, :48], base.array[0][:48, :48])
    # the first cache is still there and still valid
    assert not build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path).built


def test_damaged_or_forced_cache_is_rebuilt(sample_root, manifest, tmp_path):
    first = build_cache(sample_root, manifest, SIZE, None, tmp_path, workers=0)
    assert build_cache(sample_root, manifest, SIZE, None, tmp_path, rebuild=True).built
    with open(first.file, "r+b") as f:  # truncated data file
        f.truncate(100)
    assert build_cache(sample_root, manifest, SIZE, None, tmp_path).built
    meta = first.file.with_suffix(".json")
    meta.write_text("{not json")
    assert build_cache(sample_root, manifest, SIZE, None, tmp_path).built
    assert not build_cache(sample_root, manifest, SIZE, None, tmp_path).built


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_gives_clear_error_and_no_cache(sample_root, manifest, tmp_path, workers):
    root = tmp_path / "data"
    rows = manifest.groupby("label", group_keys=False).head(6 if workers else 1)
    for path in rows["path"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / path, root / path)
    broken = rows["path"].iloc[-1]
    data = (root / broken).read_bytes()
    (root / broken).write_bytes(data[: len(data) // 2])  # truncated JPEG
    with pytest.raises(CacheBuildError, match=broken.split("/")[-1]):
        build_cache(root, rows, SIZE, ClaheSettings(), tmp_path / "cache", workers=workers)
    assert _files(tmp_path / "cache") == []  # nothing half-written left behind


def test_pickling_does_not_copy_pixels(sample_root, manifest, tmp_path):
    images = build_cache(sample_root, manifest, SIZE, None, tmp_path, workers=0)
    _ = images.array  # opened
    blob = pickle.dumps(images)
    assert len(blob) < images.array.nbytes / 4
    restored = pickle.loads(blob)
    assert isinstance(restored, PreprocessedImages) and np.array_equal(restored[3], images[3])


def test_cached_dataset_items(sample_root, manifest, tmp_path):
    images = build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path, workers=0)
    for split in ("train", "val", "test"):
        ds = CachedDataset(images, manifest, split)
        assert len(ds) == int((manifest["split"] == split).sum())
    ds = CachedDataset(images, manifest, "train")
    x, y = ds[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, SIZE, SIZE)
    assert y == CLASSES.index(manifest.loc[manifest["split"] == "train", "label"].iloc[0])
    assert np.array_equal(x.permute(1, 2, 0).numpy(), images[images.index_of(ds.paths[0])])
    flipped = CachedDataset(images, manifest, "train", transform=lambda im: im[:, ::-1])
    assert torch.equal(flipped[0][0], x.flip(2))
    aug = CachedDataset(images, manifest, "train", transform=build_train_transform(SIZE, seed=0))
    xa, ya = aug[0]
    assert xa.dtype == torch.uint8 and tuple(xa.shape) == (3, SIZE, SIZE) and ya == y
    assert not np.shares_memory(x.numpy(), images.array)  # the memmap itself is never handed out


def test_loader_delivers_uint8_channels_last_batches(sample_root, manifest, tmp_path):
    images = build_cache(sample_root, manifest, SIZE, ClaheSettings(), tmp_path, workers=0)
    ds = CachedDataset(images, manifest, None, transform=build_train_transform(SIZE))
    batches = list(make_loader(ds, batch_size=8, workers=2, persistent=False))
    x, y = batches[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (8, 3, SIZE, SIZE)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and sum(len(b[1]) for b in batches) == len(ds)
    plain = list(make_loader(CachedDataset(images, manifest, None), batch_size=8, workers=0))
    assert torch.equal(plain[0][0][3], CachedDataset(images, manifest, None)[3][0])


def test_bench_pipeline_command_writes_its_report(data_dir, tmp_path):
    import json

    from bcc_utils.cli import main

    out = tmp_path / "bench.json"
    status = main(["bench", "pipeline", "--data-dir", str(data_dir), "--img-size", "64", "--workers", "0",
                   "--batches", "3", "--batch-size", "8", "--warmup", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert status == 0
    for key in ("naive_img_per_s", "cached_img_per_s", "speedup", "cache_build_s"):
        assert report[key] > 0
    assert report["speedup"] == pytest.approx(report["cached_img_per_s"] / report["naive_img_per_s"], rel=0.02)
    assert report["settings"]["images_timed"] == 24 and report["machine"]["cpu_count"] >= 1


def _copy_rows(sample_root, rows, root):
    for path in rows["path"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sample_root / path, root / path)


def test_image_replaced_in_place_rebuilds(sample_root, manifest, tmp_path):
    import os

    root = tmp_path / "data"
    rows = manifest.groupby("label", group_keys=False).head(1)
    _copy_rows(sample_root, rows, root)
    first = build_cache(root, rows, SIZE, None, tmp_path / "cache", workers=0)
    victim = rows["path"].iloc[0]
    other = next(p for p in manifest["path"] if p.startswith(victim.split("/")[0]) and p != victim)
    (root / victim).write_bytes((sample_root / other).read_bytes())  # same name, other cell
    st = (root / victim).stat()
    os.utime(root / victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as an edit a second later would
    again = build_cache(root, rows, SIZE, None, tmp_path / "cache", workers=0)
    assert again.built and again.file == first.file  # same settings: the stale file is replaced, not kept beside
    expected = preprocess_image(read_image(sample_root / other), SIZE, None)
    assert np.array_equal(again[again.index_of(victim)], expected)
    assert not build_cache(root, rows, SIZE, None, tmp_path / "cache", workers=0).built
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".u8"]


_BUILD_THEN_HANG = """
import sys, time
from bcc_utils.cache import build_cache
from bcc_utils.data import load_manifest

def hang(done, total):  # the parent stops here, mid-build: the data file is still a temporary file
    print("building", flush=True)
    time.sleep(120)

build_cache(sys.argv[1], load_manifest(sys.argv[2]), 64, None, sys.argv[3], workers=2, progress=hang)
"""


def _running(process) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until init reaps it, holding no memory)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_mid_build_takes_the_workers_along_and_the_next_build_cleans_up(sample_root, manifest, tmp_path):
    import os
    import select
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    import bcc_utils
    from bcc_utils.data import save_manifest

    root, cache = tmp_path / "data", tmp_path / "cache"
    _copy_rows(sample_root, manifest, root)  # 40 images: two tasks, so the pool is used
    csv = save_manifest(manifest, tmp_path / "m.csv")
    proc = subprocess.Popen([sys.executable, "-c", _BUILD_THEN_HANG, str(root), str(csv), str(cache)],
                            cwd=Path(bcc_utils.__file__).parents[1], stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the build did not start within 60 s"
        assert proc.stdout.readline().strip() == "building"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [w.pid for w in workers if _running(w)] == []
    finally:
        proc.kill()
        for w in workers:
            if w.is_running():
                w.kill()
    stale = [p.name for p in cache.iterdir()]
    assert len(stale) == 1 and stale[0].endswith(".bcc-tmp") and f".{proc.pid}." in stale[0]
    (cache / "pbc-64px-none-0123456789abcdef.u8.tmp-999999999").write_bytes(b"\0")  # an older version's, dead
    kept = [cache / f"pbc-64px-none-0123456789abcdef.u8.tmp-{os.getpid()}", cache / "notes.txt"]  # live / not ours
    for f in kept:
        f.write_bytes(b"\0")
    images = build_cache(root, manifest, 64, None, cache, workers=0)
    assert images.built
    assert sorted(p.name for p in cache.iterdir()) == sorted([images.file.name, images.file.stem + ".json",
                                                               *(f.name for f in kept)])
