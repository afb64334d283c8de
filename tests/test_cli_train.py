"""``python -m bcc_utils train / evaluate / predict`` on the real sample."""

from __future__ import annotations

import json

import pytest

from bcc_utils.cli import main
from bcc_utils.paths import CLASSES

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A smoke run made through the command line (cache in a temporary folder)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
            "--set", "num_threads=1", "--set", "bootstrap_resamples=100"]
    assert main(argv) == 0
    yield out
    mp.undo()


def test_train_command_writes_a_run(run_dir, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["preset"] == "smoke" and m["config"]["num_threads"] == 1
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()


def test_evaluate_command_reproduces_metrics(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir / "best.pt"), "--data-dir", str(data_dir), "--json", str(out),
                 "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads(out.read_text())["test"] == json.loads((run_dir / "metrics.json").read_text())["test"]


def test_predict_command_text_and_json(run_dir, sample_root, capsys):
    image = sorted((sample_root / "platelet").glob("*.jpg"))[0]
    assert main(["predict", str(run_dir / "best.pt"), str(image), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 1 and res[0]["class"] in CLASSES and len(res[0]["top"]) == 3
    probs = [t["prob"] for t in res[0]["top"]]
    assert probs == sorted(probs, reverse=True) and res[0]["confidence"] == probs[0] and sum(probs) <= 1 + 1e-6
    assert main(["predict", str(run_dir / "best.pt"), str(image)]) == 0
    assert image.name in capsys.readouterr().out


def test_predict_rejects_a_non_image_and_skips_it_in_folders(run_dir, sample_root, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(run_dir / "best.pt"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "notes.jpg" in err
    ds_store = sample_root / "neutrophil" / ".DS_169665.jpg"
    assert main(["predict", str(run_dir / "best.pt"), str(ds_store)]) == 2
    assert ".DS_169665.jpg" in capsys.readouterr().err
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"\x00" * 10)
    (folder / "good.jpg").write_bytes(sorted((sample_root / "basophil").glob("*.jpg"))[0].read_bytes())
    (folder / ds_store.name).write_bytes(ds_store.read_bytes())  # hidden, but named like an image
    assert main(["predict", str(run_dir / "best.pt"), str(folder)]) == 0
    cap = capsys.readouterr()
    assert "good.jpg" in cap.out and "bad.png" not in cap.out and "warning: skipping" in cap.err
    assert ".DS_Store" in cap.err and ".DS_169665.jpg" not in cap.out  # skipped, and said what it is


def test_train_command_errors_are_clear(run_dir, data_dir, capsys):
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(run_dir),
                 "--set", "learning_rate=1"]) == 2
    assert "valid fields" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(run_dir), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(run_dir), "--resume",
                 "--set", "epochs=5"]) == 2
    assert "config differs" in capsys.readouterr().err


def test_predict_applies_the_training_preprocessing(run_dir, sample_root, capsys):
    """A test image predicted from its file gets the probabilities the evaluation gave it (from the cache)."""
    import pandas as pd

    row = pd.read_csv(run_dir / "predictions.csv").iloc[0]
    assert main(["predict", str(run_dir / "best.pt"), str(sample_root / row["path"]), "--json", "--top-k", "8"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["class"] == row["pred"]
    for t in res["top"]:
        assert t["prob"] == pytest.approx(row[f"prob_{t['class']}"], abs=1e-5)  # images differ by ~1e-3


def test_run_killed_mid_epoch_resumes_and_completes(data_dir, tmp_path, monkeypatch):
    """SIGKILL during the second epoch; ``--resume`` loses at most that epoch and finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "killed"
    argv = ["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
            "--set", "epochs=3", "--set", "num_threads=1", "--set", "bootstrap_resamples=50"]
    proc = subprocess.Popen([sys.executable, "-m", "bcc_utils", *argv], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    assert main([*argv, "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] > 0
    assert not list(out.glob(".*tmp*"))
