"""Two processes on the CPU (gloo) train one run: ``torchrun --nproc_per_node 2 -m bcc_utils train``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bcc_utils.distributed import shard

pytestmark = pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "bcc_utils"]


def test_shards_split_one_epoch_into_disjoint_equal_parts():
    from bcc_utils.sampling import make_sampler

    labels = np.repeat(np.arange(8), [5, 30, 9, 21, 7, 11, 40, 17])
    draw = list(make_sampler(labels, 8, seed=3))  # what one process would see: N draws by 1/frequency
    parts = [shard(draw, r, 3) for r in range(3)]
    assert {len(p) for p in parts} == {len(draw) // 3}  # equal: no process waits for another in an all-reduce
    merged = [parts[i % 3][i // 3] for i in range(3 * len(parts[0]))]
    assert merged == draw[: len(merged)]  # together they are exactly the single-process epoch, in order
    assert shard(list(range(10)), 0, 1) == list(range(10))
    with pytest.raises(ValueError):
        shard(draw, 3, 3)


def torchrun(args, env, **kw):
    return subprocess.run([*TORCHRUN, *args], env=env, capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = os.environ.copy()
    e["BCC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    e["OMP_NUM_THREADS"] = "1"
    return e


SMOKE = ["--preset", "smoke", "--quiet", "--set", "num_threads=1", "--set", "bootstrap_resamples=50"]


def test_two_processes_write_one_run_like_a_single_process(data_dir, tmp_path, env):
    from bcc_utils.cli import main

    single, double = tmp_path / "single", tmp_path / "double"
    r = torchrun(["train", *SMOKE, "--set", "epochs=2", "--data-dir", str(data_dir), "--out", str(double)], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert main(["train", *SMOKE, "--set", "epochs=2", "--data-dir", str(data_dir), "--out", str(single)]) == 0

    def keys(d, prefix=""):
        return {prefix + k for k in d} | {x for k, v in d.items() if isinstance(v, dict) for x in keys(v, k + ".")}

    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert keys(m1) == keys(m2)  # the same structure
    assert m1["hardware"]["processes"] == 1 and m2["hardware"]["processes"] == 2
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (single, double))
    assert [row["epoch"] for row in h2] == [1, 2]
    n_train = m1["dataset"]["n_train"]
    # both see every image of the epoch once (32 per global batch, last partial batch dropped)
    assert round(h2[0]["img_per_s"] * h2[0]["train_s"]) == round(h1[0]["img_per_s"] * h1[0]["train_s"]) \
        == n_train // 32 * 32
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())


def test_a_killed_two_process_run_resumes(data_dir, tmp_path, env):
    out = tmp_path / "killed"
    args = ["train", *SMOKE, "--set", "epochs=3", "--data-dir", str(data_dir), "--out", str(out)]
    proc = subprocess.Popen([*TORCHRUN, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, as a closed session would
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    r = torchrun([*args, "--resume"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2, 3]


def test_rank_0_refusing_the_folder_stops_every_process(data_dir, tmp_path, env):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    r = torchrun(["train", *SMOKE, "--data-dir", str(data_dir), "--out", str(out)], env)
    assert r.returncode != 0 and "already holds a run" in r.stderr
    assert (out / "metrics.json").read_text() == "{}"
    shutil.rmtree(out)


def test_frozen_stages_stay_frozen_under_ddp(data_dir, tmp_path, env):
    """Batch-norm statistics of frozen stages must not move: DDP wraps the model, the frozen list is on the model."""
    import torch

    from bcc_utils.checkpoint import seed_everything
    from bcc_utils.config import TrainConfig
    from bcc_utils.train import build_model

    out = tmp_path / "frozen"
    r = torchrun(["train", *SMOKE, "--set", "freeze_blocks=2", "--data-dir", str(data_dir), "--out", str(out)], env)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    cfg = TrainConfig.from_dict(ckpt["config"])
    seed_everything(cfg.seed)
    fresh = build_model(cfg).state_dict()
    frozen = [k for k in fresh if k.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.")) and "running_mean" in k]
    trained = [k for k in fresh if k.startswith("blocks.5.") and "running_mean" in k]
    assert frozen and trained
    assert all(torch.equal(ckpt["model"][k], fresh[k]) for k in frozen)
    assert not all(torch.equal(ckpt["model"][k], fresh[k]) for k in trained)
