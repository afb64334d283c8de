"""A run folder keeps finished work: refused, restored, never half-written, never stale (real sample images)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bcc_utils import run as runfiles
from bcc_utils.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SMOKE = ["--preset", "smoke", "--quiet", "--set", "num_threads=1", "--set", "bootstrap_resamples=50"]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished smoke run (cache in a temporary folder shared by this module)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(["train", *SMOKE, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    yield out
    mp.undo()


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run, to be attacked."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a folder, hidden ones included."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def train_cmd(data_dir, out, *extra) -> list[str]:
    return ["train", *SMOKE, "--data-dir", str(data_dir), "--out", str(out), *extra]


# ------------------------------------------------------------------------------- finding 1: data lost
def test_a_typo_in_weights_leaves_a_finished_run_without_last_pt_intact(run_copy, data_dir, capsys):
    (run_copy / "last.pt").unlink()  # e.g. a run whose last.pt was deleted to save space
    before = digest(run_copy)
    assert main(train_cmd(data_dir, run_copy, "--weights", "typo.pth")) == 2
    assert "typo.pth" in capsys.readouterr().err
    assert digest(run_copy) == before


def test_a_folder_holding_run_files_is_refused_without_overwrite(run_copy, data_dir, capsys):
    (run_copy / "last.pt").unlink()
    before = digest(run_copy)
    assert main(train_cmd(data_dir, run_copy)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "best.pt" in err
    assert digest(run_copy) == before


def test_overwrite_with_a_misspelt_data_dir_changes_nothing(run_copy, tmp_path, capsys):
    before = digest(run_copy)
    assert main(train_cmd(tmp_path / "no-such-data", run_copy, "--overwrite")) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert digest(run_copy) == before


def test_overwrite_with_bad_clahe_or_seed_changes_nothing(run_copy, data_dir, capsys):
    before = digest(run_copy)
    for bad in ("clahe_clip_limit=-1", "clahe_space=hsl", "split_seed=-3", "lr=inf", "lr=nan"):
        assert main(train_cmd(data_dir, run_copy, "--overwrite", "--set", bad)) == 2, bad
        assert "error:" in capsys.readouterr().err
    assert digest(run_copy) == before


def test_a_failed_overwrite_puts_the_old_run_back(run_copy, data_dir, monkeypatch):
    """The new run dies before its first epoch is saved: the old run is back, byte for byte."""
    import bcc_utils.train as tr

    before = digest(run_copy)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "train_one_epoch", interrupted)
    cfg = tr.config_for("smoke", num_threads=1, bootstrap_resamples=50, seed=5)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, data_dir, run_copy, overwrite=True, progress=False)
    assert digest(run_copy) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(runfiles.ASIDE_PREFIX)]


def test_overwrite_replaces_the_run_once_the_new_one_has_started(run_copy, data_dir):
    old = json.loads((run_copy / "metrics.json").read_text())
    assert main(train_cmd(data_dir, run_copy, "--overwrite", "--set", "seed=7")) == 0
    new = json.loads((run_copy / "metrics.json").read_text())
    assert old["config"]["seed"] == 42 and new["config"]["seed"] == 7
    assert not [p for p in run_copy.iterdir() if p.name.startswith(runfiles.ASIDE_PREFIX)]


def test_a_new_run_that_fails_early_leaves_no_half_run(data_dir, tmp_path, monkeypatch):
    """…so that the same command can simply be run again, without --overwrite."""
    import bcc_utils.train as tr

    monkeypatch.setattr(tr, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        tr.train(tr.config_for("smoke", num_threads=1), data_dir, out, progress=False)
    assert runfiles.run_files(out) == []


# ------------------------------------------------------------------------- finding 3: other tools' files
def test_train_removes_only_its_own_dead_temporaries(finished, data_dir, tmp_path):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    from bcc_utils.atomic import _host

    ours_dead = run / f".last.pt.{_host()}.{dead}.0123abcd.bcc-tmp"
    ours_alive = run / f".best.pt.{_host()}.{__import__('os').getpid()}.0123abcd.bcc-tmp"
    foreign = [run / ".notes.tmp", run / ".last.pt.123.tmp", run / "editor.swp.tmp"]
    for f in (ours_dead, ours_alive, *foreign):
        f.write_text("x")
    assert main(train_cmd(data_dir, run, "--resume")) == 0  # finished: re-evaluated only
    assert not ours_dead.exists()
    assert ours_alive.exists() and all(f.exists() for f in foreign)


# -------------------------------------------------------------------------- finding 4: stale calibration
def test_calibration_is_applied_only_to_the_checkpoint_it_was_fitted_on(run_copy, data_dir):
    from bcc_utils.calibration import calibrate_run, load_temperature

    cal = calibrate_run(run_copy / "last.pt", data_dir)  # fitted for last.pt ...
    t = cal["temperature"]
    assert t != 1.0
    assert load_temperature(run_copy / "last.pt") == t
    assert load_temperature(run_copy) == t  # the run folder: the checkpoint named in the file
    with pytest.warns(UserWarning, match="fitted for other weights than best.pt"):
        assert load_temperature(run_copy / "best.pt") == 1.0  # ... so predict best.pt ignores it
    (run_copy / "last.pt").write_bytes((run_copy / "best.pt").read_bytes())  # e.g. train --overwrite
    with pytest.warns(UserWarning, match="ignored"):
        assert load_temperature(run_copy / "last.pt") == 1.0


def test_a_calibration_file_without_checkpoint_hash_is_ignored(run_copy):
    from bcc_utils.calibration import load_temperature

    (run_copy / "calibration.json").write_text(json.dumps({"temperature": 1.7}))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert load_temperature(run_copy / "best.pt") == 1.0


@pytest.mark.parametrize("bad", [0, -1.5, "nan", "inf"])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(run_copy, bad):
    from bcc_utils.calibration import load_temperature

    (run_copy / "calibration.json").write_text(json.dumps({"temperature": bad}))
    with pytest.raises(ValueError, match="finite number > 0"):
        load_temperature(run_copy / "best.pt")


def test_a_temperature_on_the_search_bound_warns():
    from bcc_utils.calibration import TEMPERATURE_BOUNDS, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 200)
    logits = rng.normal(size=(200, 8))
    logits[np.arange(200), y] += 6.0  # always right with a wide margin: the NLL falls as T shrinks, to the bound
    with pytest.warns(UserWarning, match="search bound"):
        t = fit_temperature(logits, y)
    assert t == pytest.approx(TEMPERATURE_BOUNDS[0], rel=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_temperature(logits / 8 + rng.normal(size=logits.shape), y)  # a real optimum inside: no warning


# ---------------------------------------------------------------------------- finding 8: lr=inf, NaN
def test_non_finite_settings_are_refused_before_anything_is_written(data_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(train_cmd(data_dir, out, "--set", "lr=inf")) == 2
    assert "lr must be a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_result(data_dir, tmp_path, capsys):
    out = tmp_path / "diverged"
    # finite but absurd: the first step throws the weights to ~1e30, the next loss is NaN
    assert main(train_cmd(data_dir, out, "--set", "lr=1e30", "--set", "epochs=2")) == 2
    err = capsys.readouterr().err
    assert "training stopped in epoch 1" in err and "loss is nan" in err.lower() and "Traceback" not in err
    assert not (out / "metrics.json").exists() and runfiles.run_files(out) == []


# ------------------------------------------------------------------------ finding 14: clear CLI errors
def test_predict_top_k_must_be_positive(finished, sample_root, capsys):
    image = sorted((sample_root / "basophil").glob("*.jpg"))[0]
    for k in ("0", "-2"):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(finished / "best.pt"), str(image), "--top-k", k])
        assert e.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_predict_on_a_folder_without_images_fails_alike_in_both_modes(finished, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(finished / "best.pt"), str(empty)]) == 1
    assert "no images found" in capsys.readouterr().err
    assert main(["predict", str(finished / "best.pt"), str(empty), "--json"]) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out) == [] and "no images found" in cap.err


def test_evaluate_creates_the_folder_of_its_predictions_file(finished, data_dir, tmp_path):
    target = tmp_path / "new" / "deeper" / "p.csv"
    assert main(["evaluate", str(finished / "best.pt"), "--data-dir", str(data_dir), "--predictions", str(target),
                 "--quiet"]) == 0
    assert target.read_text().splitlines()[0].startswith("path,label,pred,confidence")


def test_evaluate_refuses_a_folder_as_output_before_inference(finished, data_dir, tmp_path, capsys):
    assert main(["evaluate", str(finished / "best.pt"), "--data-dir", str(data_dir), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


class Payload:  # pickled by reference: weights_only refuses it
    pass


@pytest.mark.parametrize("kind, says", [
    ("empty", "empty (0 bytes)"),
    ("text", "text file, not a PyTorch checkpoint"),
    ("objects", "refused: the file holds Python objects, not only tensors"),
    ("zip-junk", "not a PyTorch checkpoint"),
])
def test_a_checkpoint_that_is_not_one_says_why_in_one_line(kind, says, tmp_path, capsys):
    f = tmp_path / "best.pt"
    if kind == "empty":
        f.write_bytes(b"")
    elif kind == "text":
        f.write_text("model weights will go here\n")
    elif kind == "objects":
        torch.save({"format": "bcc-checkpoint-1", "payload": Payload()}, f)
    else:
        f.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert main(["predict", str(f), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "weights_only=False" not in err


# --------------------------------------------------------------------- finding 7: checkpoint fields checked
@pytest.mark.parametrize("damage, says", [
    (lambda c: c.update(classes=[c["classes"][1], c["classes"][0], *c["classes"][2:]]), "label order"),
    (lambda c: c.pop("norm"), "lacks norm"),
    (lambda c: c.update(norm={"mean": [0.5] * 3}), "'norm' must hold"),
    (lambda c: c.update(norm={"mean": [0.5] * 3, "std": [0.0] * 3}), "stds > 0"),
    (lambda c: c["config"].update(clahe_clip_limit=-2.0), "config is not valid"),
    (lambda c: c["config"].pop("clahe_space") and c["config"].update(clahe_spaces="lab"), "config is not valid"),
])
def test_damaged_checkpoint_fields_give_one_line_naming_the_file(finished, tmp_path, damage, says, capsys):
    ckpt = torch.load(finished / "best.pt", weights_only=True)
    damage(ckpt)
    f = tmp_path / "damaged.pt"
    torch.save(ckpt, f)
    assert main(["predict", str(f), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert says in err and "damaged.pt" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ device: one answer
def test_the_notebook_reports_the_device_training_uses(monkeypatch):
    """On a Mac the notebook said "mps" while training ran on the CPU; now both ask the same function."""
    from bcc_utils.device import resolve_device
    from bcc_utils.notebook import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device(verbose=False).type == resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device(verbose=False).type == resolve_device("auto").type == "cpu"


# ------------------------------------------------------------- a fresh runtime never starts a long job unasked
def test_a_missing_paper_run_is_replaced_by_the_classroom_model_unless_asked(tmp_path, monkeypatch, capsys):
    import bcc_utils.train as tr

    asked = []
    monkeypatch.setattr(tr, "train_or_load", lambda cfg, data_dir, run_dir, **kw: asked.append((cfg, run_dir)) or
                        run_dir)
    cfg, run = tr.reuse_main_run("paper", None, tmp_path)
    assert (cfg.preset, run.name) == ("cpu", "lite0-cpu") and asked[-1][0].epochs == cfg.epochs
    out = capsys.readouterr().out
    assert "not started here unasked" in out and "training it now (about 8 minutes" in out
    cfg, run = tr.reuse_main_run("paper", None, tmp_path, train_long=True)
    assert (cfg.preset, run.name) == ("paper", "efficientnet_b0-paper")


def test_a_finished_main_run_is_reused_as_it_is(finished, tmp_path, capsys):
    import bcc_utils.train as tr
    from bcc_utils.run import main_run

    cfg, name = main_run("smoke")
    shutil.copytree(finished, tmp_path / name)
    m = json.loads((tmp_path / name / "metrics.json").read_text())
    m["config"] = cfg.to_dict()  # as if notebook 04 had trained exactly this config
    (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    before = digest(tmp_path / name)
    assert tr.reuse_main_run("smoke", None, tmp_path)[1] == tmp_path / name
    assert "loaded, not trained again" in capsys.readouterr().out and digest(tmp_path / name) == before


# ------------------------------------------------------------------ finding 10: a dataset missing classes
def test_train_refuses_a_dataset_missing_classes_unless_asked(sample_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    shutil.rmtree(data / "basophil")
    out = tmp_path / "run"
    assert main(train_cmd(data, out)) == 2
    err = capsys.readouterr().err
    assert "basophil" in err and "--allow-missing-classes" in err and not out.exists()
    assert main(train_cmd(data, out, "--allow-missing-classes")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["per_class"]["basophil"]["support"] == 0


def test_a_run_killed_before_its_first_epoch_can_simply_be_started_again(finished, data_dir, tmp_path):
    """Only manifest.csv and config.json were written (a hard kill during preprocessing): that is not a run."""
    out = tmp_path / "killed-early"
    out.mkdir()
    for name in ("manifest.csv", "config.json"):
        shutil.copy(finished / name, out / name)
    assert main(train_cmd(data_dir, out)) == 0
    assert (out / "metrics.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(runfiles.ASIDE_PREFIX)]
