"""The training loop on the real sample: files, checkpoints, resume, evaluation, figures."""

from __future__ import annotations

import io
import json

import matplotlib
import numpy as np
import pytest
import torch

from bcc_utils.batches import MemoryBatches, dihedral_augment, tta_views
from bcc_utils.checkpoint import load_checkpoint, save_checkpoint
from bcc_utils.config import PRESETS, TrainConfig, config_for
from bcc_utils.inference import evaluate_checkpoint
from bcc_utils.train import read_history, train

matplotlib.use("Agg")
pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),  # the sample's .DS_ file
    pytest.mark.usefixtures("one_torch_thread"),
]

SMOKE = dict(epochs=2, num_threads=1, bootstrap_resamples=100)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smoke_run(data_dir, cache, tmp_path_factory):
    """One uninterrupted 2-epoch smoke run (shared by the tests below)."""
    out = tmp_path_factory.mktemp("runs") / "smoke"
    rows = []
    train(config_for("smoke", **SMOKE), data_dir, out, progress=False, callback=rows.append, cache_dir=cache)
    return out, rows


def test_paper_preset_is_the_papers_protocol():
    p = PRESETS["paper"]
    assert (p.model, p.img_size, p.epochs, p.batch_size) == ("efficientnet_b0", 300, 10, 32)
    assert (p.clahe, p.clahe_clip_limit, p.clahe_tile_grid_size) == (True, 2.0, 8)
    assert (p.augment, p.mixup_p, p.mixup_alpha, p.balance) == ("paper", 0.5, 0.4, "both")
    assert (p.optimizer, p.lr, p.weight_decay, p.scheduler, p.cosine_t_max) == ("adamw", 1e-4, 1e-4, "cosine", 10)
    assert (p.weights, p.split_seed, p.split_fractions) == ("imagenet", 42, (0.72, 0.08, 0.20))
    assert config_for("paper", model="resnet50").model == "resnet50"


def test_auto_preset_follows_smoke_mode(monkeypatch):
    from bcc_utils.config import auto_preset

    monkeypatch.setenv("BCC_SMOKE", "1")
    assert auto_preset() == "smoke"
    monkeypatch.setenv("BCC_SMOKE", "0")
    assert auto_preset() == ("paper" if torch.cuda.is_available() else "cpu")


def test_config_overrides_are_type_checked():
    cfg = config_for("cpu", epochs="3", lr="1e-3", clahe="false", split_fractions="0.7,0.1,0.2")
    assert (cfg.epochs, cfg.lr, cfg.clahe, cfg.split_fractions) == (3, 1e-3, False, (0.7, 0.1, 0.2))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="valid fields: preset, model"):
        config_for("cpu", epoch=3)
    with pytest.raises(ValueError, match="epochs expects int"):
        config_for("cpu", epochs="many")
    with pytest.raises(ValueError, match="augment must be one of"):
        config_for("cpu", augment="strong")
    with pytest.raises(ValueError, match="Unknown preset"):
        config_for("gpu")


def test_dihedral_augment_and_tta_views():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    group = lambda im: [im, im.flip(-1), im.flip(-2), im.flip(-1).flip(-2), im.transpose(-1, -2),  # noqa: E731
                        im.transpose(-1, -2).flip(-1), im.transpose(-1, -2).flip(-2),
                        im.transpose(-1, -2).flip(-1).flip(-2)]
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        y = dihedral_augment(x, g)
        for i in range(2):
            k = [j for j, v in enumerate(group(x[i])) if torch.equal(v, y[i])]
            assert k, "output must be a flip/transpose of the input"
            seen.add(k[0])
    assert len(seen) == 8
    assert [v.shape for v in tta_views(x, "dihedral")] == [x.shape] * 4 and len(tta_views(x)) == 1
    mb = MemoryBatches(torch.zeros(10, 4, 4, 3, dtype=torch.uint8), torch.arange(10), 4, drop_last=True)
    assert len(mb) == 2 and [b[0].shape for b in mb] == [(4, 3, 4, 4)] * 2
    assert len(MemoryBatches(torch.zeros(10, 4, 4, 3), torch.arange(10), 4, limit=1)) == 1


def test_smoke_run_writes_everything(smoke_run):
    out, rows = smoke_run
    for name in ("best.pt", "last.pt", "history.csv", "history.json", "metrics.json", "predictions.csv",
                 "manifest.csv", "config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    h = read_history(out)
    assert list(h["epoch"]) == [1, 2] and len(rows) == 2 and rows[1]["epoch"] == 2
    assert {"train_loss", "val_acc", "lr", "epoch_s", "img_per_s"} <= set(h.columns)
    m = json.loads((out / "metrics.json").read_text())
    assert {"schema_version", "run", "model", "preset", "config", "dataset", "hardware", "timing", "test",
            "best_epoch", "classes"} <= set(m)
    assert m["dataset"]["data_dir_name"] and m["dataset"]["n_test"] == m["test"]["n"] > 0
    assert m["best_epoch"] == 1 + int(np.argmax(h["val_acc"]))
    t = m["test"]
    assert t["accuracy_ci"][0] <= t["accuracy"] <= t["accuracy_ci"][1]
    assert sum(map(sum, t["confusion_matrix"])) == t["n"] == len((out / "predictions.csv").read_text().splitlines()) - 1
    raw = torch.load(out / "last.pt", weights_only=True)  # plain tensors and containers only
    assert raw["epoch"] == 2 and raw["optimizer"] is not None and len(raw["classes"]) == 8
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == m["best_epoch"] and best["manifest_hash"] == m["dataset"]["manifest_hash"]


def test_evaluate_reproduces_metrics_json(smoke_run, data_dir, cache):
    out, _ = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    r = evaluate_checkpoint(out / "best.pt", data_dir, cache_dir=cache, progress=False)
    assert json.loads(json.dumps(r["test"])) == m["test"]


def test_interrupted_run_resumes_to_the_same_result(smoke_run, data_dir, cache, tmp_path):
    ref, _ = smoke_run
    out = tmp_path / "interrupted"
    cfg = config_for("smoke", **SMOKE)

    def crash(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt("simulated crash after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data_dir, out, progress=False, callback=crash, cache_dir=cache)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "metrics.json").exists()
    with pytest.raises(RuntimeError, match="--resume"):
        train(cfg, data_dir, out, progress=False, cache_dir=cache)
    with pytest.raises(ValueError, match="lr"):
        train(config_for("smoke", **SMOKE, lr=0.5), data_dir, out, resume=True, progress=False, cache_dir=cache)
    train(cfg, data_dir, out, resume="auto", progress=False, cache_dir=cache)
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(out / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]


def test_paper_path_runs(data_dir, cache, tmp_path):
    """The GPU recipe's code path (albumentations in a DataLoader, mixup, sampler + weighted CE, cosine)."""
    cfg = config_for("smoke", augment="paper", mixup_p=1.0, balance="both", scheduler="cosine", num_workers=0,
                     limit_train_batches=2, limit_eval_batches=1, num_threads=1, bootstrap_resamples=50)
    rows = []
    train(cfg, data_dir, tmp_path / "paper", progress=False, callback=rows.append, cache_dir=cache)
    assert rows[0]["train_loss"] > 0 and (tmp_path / "paper" / "metrics.json").is_file()
    assert rows[0]["lr"] == cfg.lr  # cosine is stepped per epoch: the first epoch runs at the peak


def test_atomic_checkpoint_write_keeps_the_old_file(tmp_path):
    path = save_checkpoint({"format": "bcc-checkpoint-1", "x": torch.ones(2)}, tmp_path / "last.pt")
    with pytest.raises(Exception):
        save_checkpoint({"bad": lambda: 0}, path)  # cannot be pickled: fails mid-write
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(ValueError, match="not a bcc training checkpoint"):
        torch.save({"a": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def _f1_ci(run_dir):
    import pandas as pd

    from bcc_utils.metrics import per_class_f1_ci
    from bcc_utils.paths import CLASSES

    pred = pd.read_csv(run_dir / "predictions.csv")
    return per_class_f1_ci(pred["label"], pred["pred"], CLASSES, n_resamples=50)


def test_figures(smoke_run, data_dir):
    from matplotlib.figure import Figure

    from bcc_utils import viz
    from bcc_utils.metrics import load_results

    out, rows = smoke_run
    res = load_results(out)
    figs = [viz.plot_history(out), viz.plot_confusion_matrix(res["smoke"]),
            viz.plot_per_class_f1({"a": res["smoke"], "b": res["smoke"]}, intervals={"a": _f1_ci(out)}),
            viz.misclassified_gallery(out, data_dir, n=4), viz.plot_speed_accuracy(res, {"B0": 0.9836})]
    assert all(isinstance(f, Figure) for f in figs)
    live = viz.LiveCurves()
    for r in rows:
        live(r)
    assert len(live.rows) == 2
    for f in figs:
        f.savefig(io.BytesIO(), format="png")  # renders without pyplot


@pytest.mark.parametrize("epochs, steps", [(1, 1), (1, 2), (2, 2), (1, 4), (3, 3)])
def test_one_cycle_schedule_survives_tiny_runs(epochs, steps):
    """A warm-up of exactly one step (pct_start x total = 1) divides by zero inside OneCycleLR: it must not."""
    from bcc_utils.train import build_optimizer

    cfg = config_for("smoke", epochs=epochs, onecycle_pct_start=0.25)
    opt, sched = build_optimizer(cfg, torch.nn.Linear(3, 2), steps)
    lrs = []
    for _ in range(epochs * steps):
        opt.step()
        sched.step() if len(lrs) < epochs * steps - 1 else None
        lrs.append(opt.param_groups[0]["lr"])
    assert all(np.isfinite(lrs)) and max(lrs) <= cfg.lr * (1 + 1e-9)


def test_sharpen_run_fine_tunes_the_run_at_a_larger_size_once(smoke_run, data_dir, cache):
    from bcc_utils.run import load_model
    from bcc_utils.train import sharpen_run

    out, _ = smoke_run
    parent, _ = load_model(out / "best.pt")
    cfg = config_for("smoke", **SMOKE)
    sharp_cfg, sharp_dir = sharpen_run(cfg, out, data_dir, 64, cache_dir=cache)
    assert sharp_dir == out.with_name("smoke-64px") and sharp_cfg.img_size == 64 and sharp_cfg.epochs == 1
    assert sharp_cfg.lr == pytest.approx(cfg.lr / 4)
    assert json.loads((sharp_dir / "metrics.json").read_text())["config"]["img_size"] == 64
    sharp, _ = load_model(sharp_dir / "best.pt")
    p = torch.cat([t.detach().reshape(-1) for t in parent.parameters()])
    s = torch.cat([t.detach().reshape(-1) for t in sharp.parameters()])
    # a short phase at a small learning rate: the weights stay near the parent's, far nearer than the scale of the
    # weights themselves (a fresh start would differ by about that scale)
    assert (s - p).abs().mean() < 0.2 * p.abs().mean()
    stamp = (sharp_dir / "best.pt").stat().st_mtime_ns
    assert sharpen_run(cfg, out, data_dir, 64, cache_dir=cache)[1] == sharp_dir  # found, not trained again
    assert (sharp_dir / "best.pt").stat().st_mtime_ns == stamp
