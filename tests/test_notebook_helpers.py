"""Tests for the notebook helpers (bcc_utils.notebook, bcc_utils.figures) and colab/setup_colab.py."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bcc_utils import figures, notebook

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- bcc_utils.notebook
def test_in_colab_is_false_here():
    assert notebook.in_colab() is ("google.colab" in sys.modules)
    assert notebook.in_colab() is False


def test_seed_everything_makes_draws_repeat():
    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    assert notebook.seed_everything(7) == 7
    first = draws()
    notebook.seed_everything(7)
    assert draws() == first
    notebook.seed_everything(8)
    assert draws() != first


def test_device_on_cpu_prints_the_hint(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    dev = notebook.device()
    assert dev.type == "cpu"
    out = capsys.readouterr().out
    assert "no GPU" in out and "Change runtime type" in out
    notebook.device(verbose=False)
    assert capsys.readouterr().out == ""


def test_environment_reports_versions(capsys):
    info = notebook.environment(packages=("torch", "cv2", "surely_not_a_package"))
    assert torch.__version__.startswith(info["torch"])
    assert info["cpu_cores"] >= 1 and info["colab"] is False
    assert info["surely_not_a_package"] == "not installed"
    assert info["cv2"] != "not installed"
    notebook.print_environment(packages=("torch",))
    out = capsys.readouterr().out
    assert "python" in out and "torch" in out


def test_runs_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(notebook.RUNS_ENV, raising=False)
    assert notebook.runs_dir(default="out") == Path("out") and (tmp_path / "out").is_dir()
    monkeypatch.setenv(notebook.RUNS_ENV, str(tmp_path / "from_env"))
    assert notebook.runs_dir(default="out") == tmp_path / "from_env" and (tmp_path / "from_env").is_dir()
    assert notebook.runs_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_show_path_hides_the_machine_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert notebook.show_path("../runs") == "../runs"
    assert notebook.show_path(tmp_path / "a" / "b") == "a/b"
    deep = Path("/srv/data/someone/pbc-sample/PBC_dataset_normal_DIB")
    shown = notebook.show_path(deep)
    assert shown == "…/pbc-sample/PBC_dataset_normal_DIB" and "someone" not in shown
    assert notebook.show_path("/x") == "/x"


def test_shorten_paths_in_messages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "/srv/x/pbc/PBC/neutrophil/.DS_1.jpg: skipped; see https://example.org/a/b/c/d and ../runs"
    assert notebook.shorten_paths(text) == (
        "…/PBC/neutrophil/.DS_1.jpg: skipped; see https://example.org/a/b/c/d and ../runs"
    )


def test_tidy_warnings_drops_the_source_file(monkeypatch):
    import warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    notebook.tidy_warnings()
    text = warnings.formatwarning("/srv/a/b/c/d.jpg: bad", UserWarning, "/srv/lib/module.py", 3)
    assert text == "UserWarning: …/b/c/d.jpg: bad\n"


# ---------------------------------------------------------------- bcc_utils.figures
@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)


def test_figures_are_not_left_open_in_pyplot(rgb):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures.image_grid([rgb]), figures.count_bars({"a": 1}), figures.size_bars({"1x1": 1})
    assert plt.get_fignums() == before


def test_image_grid_layout(rgb):
    fig = figures.image_grid([rgb] * 5 + [None], titles=list("abcdef"), ncols=4, row_labels=["r1", "r2"])
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 8
    assert sum(1 for ax in axes if ax.images) == 5
    assert [ax.get_title() for ax in axes[:5]] == list("abcde")
    assert axes[0].get_ylabel() == "r1" and axes[4].get_ylabel() == "r2"
    assert any(figures.PBC_CREDIT == t.get_text() for t in fig.texts)


def test_image_grid_keeps_the_suptitle_clear_of_two_line_titles(rgb):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures.image_grid([rgb] * 4, titles=["true a\npred b"] * 4, ncols=4, suptitle="most confident mistakes")
    renderer = FigureCanvasAgg(fig).get_renderer()
    sup = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        assert ax.title.get_window_extent(renderer).y1 <= sup.y0 + 1, "image titles must not run into the suptitle"


def test_count_bars_names_the_ratio():
    fig = figures.count_bars({"a": 10, "b": 40, "c": 0, "d": 20})
    title = fig.axes[0].get_title()
    assert "largest/smallest = 4.00" in title  # zero counts are ignored
    assert len(fig.axes[0].patches) == 4


def test_size_bars_uses_a_log_axis():
    fig = figures.size_bars({"360x363": 1000, "366x369": 10, "360x360": 1})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.patches) == 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["360 × 363", "366 × 369", "360 × 360"]


def test_grouped_bars_one_bar_per_cell():
    import pandas as pd

    table = pd.DataFrame({"none": [5, 1], "sampler": [3, 3]}, index=["big", "small"])
    fig = figures.grouped_bars(table, title="t")
    assert len(fig.axes[0].patches) == 4
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [1, 3, 3, 5]


def test_before_after_with_histograms(rgb):
    darker = (rgb // 2).astype(np.uint8)
    fig = figures.before_after({"x": (rgb, darker), "y": (darker, rgb)})
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title() == "x"
    assert figures.lightness(rgb).shape == rgb.shape[:2]


# ---------------------------------------------------------------- colab/setup_colab.py
def test_colab_install_pins_the_installed_torch(setup_colab):
    versions = setup_colab.installed_versions()
    assert torch.__version__.startswith(versions["torch"])  # the distribution's version (a local label may differ)
    text = setup_colab.constraints_text({"torchvision": "0.21.0+cu124", "torch": "2.6.0+cu124"})
    assert text == "torch==2.6.0+cu124\ntorchvision==0.21.0+cu124\n"
    cmd = setup_colab.pip_install_command(REPO, Path("c.txt"))
    assert cmd[cmd.index("-e") + 1] == str(REPO)
    assert cmd[cmd.index("--constraint") + 1] == "c.txt"
    assert not any(part.startswith("torch") for part in cmd), "never ask pip for torch itself"
    assert setup_colab.pip_install_command(REPO, None, extras="lite0")[-1] == f"{REPO}[lite0]"


def test_colab_setup_points_at_the_repository(setup_colab):
    assert setup_colab.repo_root() == REPO
    assert (setup_colab.repo_root() / "notebooks").is_dir()
    assert setup_colab.REPO_URL == "https://github.com/bcc-series/bcc"


def test_colab_fetch_reports_a_failed_download(setup_colab, capsys):
    with pytest.raises(RuntimeError, match="python -m bcc_utils download no-such-source' failed"):
        setup_colab.fetch_data("no-such-source")
    assert "invalid choice" in capsys.readouterr().out  # the command's own message is relayed to the cell


# ---------------------------------------------------------------- training helpers (notebooks 04-06, colab launcher)
def _fake_metrics(run: str, model: str, preset: str, seed: int = 0, n: int = 200, **config) -> dict:
    """A metrics.json dict built by the library's own report function from random predictions."""
    from bcc_utils import CLASSES
    from bcc_utils.config import config_for
    from bcc_utils.metrics import classification_report_dict

    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    prob = rng.random((n, len(CLASSES)))
    prob[np.arange(n), y] += rng.random(n) * 3  # mostly right
    cfg = config_for(preset, model=model, **config)
    return {"schema_version": 1, "run": run, "model": model, "preset": preset, "config": cfg.to_dict(),
            "dataset": {"data_dir_name": "pbc-test", "manifest_hash": "0" * 64, "n_train": 10, "n_val": 5, "n_test": n},
            "hardware": {"device": "cpu", "torch": torch.__version__, "cpu_count": 2, "cpu_model": "x"},
            "timing": {"train_s": 12.0, "total_s": 20.0, "train_img_per_s": 100.0, "infer_img_per_s": 400.0},
            "params": 4_000_000, "trainable_params": 4_000_000, "best_epoch": 1, "classes": list(CLASSES),
            "test": classification_report_dict(y, prob, CLASSES, n_resamples=100)}


def _write_run(folder: Path, metrics: dict) -> Path:
    import json

    run = folder / metrics["run"]
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_train_or_load_leaves_a_finished_run_alone(tmp_path, monkeypatch, capsys):
    import bcc_utils.train
    from bcc_utils.config import config_for

    calls = []
    monkeypatch.setattr(bcc_utils.train, "train", lambda *a, **k: calls.append((a, k)) or Path(a[2]))
    run = _write_run(tmp_path, _fake_metrics("done", "efficientnet_b0", "smoke"))
    cfg = config_for("smoke", model="efficientnet_b0")
    assert notebook.train_or_load(cfg, "data", run) == run and not calls, "a finished run is not trained again"
    assert "loaded, not trained again" in capsys.readouterr().out
    assert notebook.train_or_load(config_for("smoke", model="efficientnet_b0", num_threads=1), "data", run) == run
    assert not calls, "runtime fields (threads) do not make another config"
    with pytest.raises(ValueError, match="finished run of another config.*lr"):
        notebook.train_or_load(config_for("smoke", model="efficientnet_b0", lr=0.5), "data", run)
    fresh = tmp_path / "fresh"
    notebook.train_or_load(cfg, "data", fresh, cache_dir="c")
    (args, kwargs), = calls
    assert args[:3] == (cfg, "data", fresh) and kwargs["resume"] == "auto" and kwargs["cache_dir"] == "c"
    assert "training into" in capsys.readouterr().out


def test_speed_table_measures_every_spec():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster on a busy shared machine
    try:
        table = notebook.speed_table([("tiny", "mobilenetv3_small_050", 32), ("tinier", "mobilenetv3_small_050", 16)],
                                     batch_size=2, n_batches=1)
    finally:
        torch.set_num_threads(threads)
    assert list(table.index) == ["tiny", "tinier"]
    assert list(table.columns) == ["model", "img_size", "params_M", "infer_img_per_s", "train_img_per_s"]
    assert (table["infer_img_per_s"] > 0).all() and (table["train_img_per_s"] > 0).all()
    assert table.loc["tiny", "params_M"] == table.loc["tinier", "params_M"] > 0.1


# ---------------------------------------------------------------- bcc_utils.paper
def test_paper_tables_are_checked_against_the_headline_numbers():
    from bcc_utils import CLASSES
    from bcc_utils.paper import PAPER_RESULTS, paper_as_metrics, paper_consistency, paper_table

    for model in PAPER_RESULTS:
        t = paper_table(model)
        assert list(t.index) == list(CLASSES) and t["support"].sum() == 3424
        assert paper_as_metrics(model)["test"]["per_class"]["ig"]["f1"] == t.loc["ig", "f1"]
    c = paper_consistency()
    b0, r50 = c.loc["EfficientNet-B0"], c.loc["ResNet50"]
    assert abs(b0["implied accuracy %"] - b0["reported accuracy %"]) < 0.05  # Table 2: 3368 of 3424 right
    assert r50["reported accuracy %"] - r50["implied accuracy %"] > 0.5  # Table 3 implies about 98.0 %
    assert b0["basophil support"] == 244 and r50["basophil support"] == 410


def test_find_pick_and_compare_runs(tmp_path):
    from bcc_utils.paper import comparison_table, find_results, per_class_table, pick_runs, run_summary

    runs, committed = tmp_path / "runs", tmp_path / "results"
    _write_run(runs, _fake_metrics("b0-smoke", "efficientnet_b0", "smoke", seed=1))
    _write_run(runs, _fake_metrics("lite0-cpu", "tf_efficientnet_lite0", "cpu", seed=2))
    _write_run(committed, _fake_metrics("lite0-cpu", "tf_efficientnet_lite0", "cpu", seed=3))  # shadowed by runs/
    _write_run(committed, _fake_metrics("b0-paper", "efficientnet_b0", "paper", seed=4))
    _write_run(committed, _fake_metrics("other", "mobilenetv3_small_050", "cpu", seed=5))
    _write_run(runs, _fake_metrics("resnet18-cpu", "resnet18", "resnet18-cpu", seed=6))  # notebook 05 on a CPU

    found, notes = find_results(runs, committed, tmp_path / "missing")
    assert sorted(found) == ["b0-paper", "b0-smoke", "lite0-cpu", "other", "resnet18-cpu"]
    assert found["lite0-cpu"]["test"] == _fake_metrics("lite0-cpu", "tf_efficientnet_lite0", "cpu", seed=2)["test"]
    assert found["b0-paper"]["source"].endswith("results") and any("no such folder" in n for n in notes)
    assert any("lite0-cpu left out" in n for n in notes)
    no_smoke, notes = find_results(runs, committed, include_smoke=False)
    assert "b0-smoke" not in no_smoke and any("b0-smoke left out: a smoke run" in n for n in notes)

    assert pick_runs(found) == {"efficientnet_b0": "b0-paper", "resnet50": "resnet18-cpu"}
    assert pick_runs({k: v for k, v in found.items() if k != "b0-paper"})["efficientnet_b0"] == "lite0-cpu"
    assert pick_runs({}) == {"efficientnet_b0": None, "resnet50": None}

    table = comparison_table(found)
    assert len(table) == 2 + 3 + 1, "two paper rows, three runs standing for B0, ResNet-18 for ResNet50 (mobilenet: nothing)"
    assert list(table["run"]) == ["—", "b0-paper", "b0-smoke", "lite0-cpu", "—", "resnet18-cpu"]
    for _, row in table[table["run"] != "—"].iterrows():
        m = found[row["run"]]["test"]
        inside = m["accuracy_ci"][0] <= 0.9836 <= m["accuracy_ci"][1]
        assert row["paper acc in CI"] == ("yes" if inside else "no")
        assert row["test acc %"] == round(100 * m["accuracy"], 2)
    assert len(comparison_table({})) == 2

    text = run_summary(found["lite0-cpu"])
    assert "lite0-cpu" in text and f"{found['lite0-cpu']['test']['accuracy']:.2%}" in text
    pc = per_class_table(found["lite0-cpu"], "efficientnet_b0")
    assert list(pc.columns) == ["precision", "recall", "f1", "support", "paper f1", "f1 − paper"]
    assert pc["support"].sum() == 200 and pc.loc["ig", "paper f1"] == 0.96


# ---------------------------------------------------------------- colab/train_on_colab.ipynb
def _launcher_code() -> list[str]:
    import json

    nb = json.loads((REPO / "colab" / "train_on_colab.ipynb").read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_colab_launcher_only_calls_the_library():
    import ast
    import importlib

    names = {}
    for src in _launcher_code():
        tree = ast.parse(src)  # every cell is valid Python
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("bcc_utils"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name} does not exist"
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                try:
                    names[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef)), "the launcher defines nothing of its own"
    from bcc_utils.config import PRESETS, config_for
    from bcc_utils.paper import PAPER_RUNS

    assert names["PRESET"] == "paper" and names["MODELS"] == list(PAPER_RUNS)
    for model in names["MODELS"]:
        assert set(PRESETS["paper"].differences(config_for(names["PRESET"], model=model))) <= {"model"}
    code = "\n".join(_launcher_code())
    assert "setup_colab.setup(use_drive=True)" in code, "checkpoints and results go to Drive"
    assert "train_or_load(" in code and "run_series(" in code


def _parameters(notebook: str, preset: str, **names) -> dict:
    """The variables a notebook's parameters cell sets when ``auto_preset()`` returns ``preset``."""
    import json
    import os
    import types
    from pathlib import Path

    nb = json.loads((Path(__file__).parent.parent / "notebooks" / notebook).read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    ns = {"os": os, "auto_preset": lambda: preset, **names,
          "bcc_utils": types.SimpleNamespace(smoke_mode=lambda: preset == "smoke")}
    exec("".join(cell["source"]), ns)
    return ns


@pytest.mark.parametrize("preset", ["paper", "cpu", "smoke"])
def test_main_run_is_the_run_notebook_04_trains(preset):
    """Notebooks 07 and 08 reuse notebook 04's run: same config and name, read from 04's parameters cell."""
    from bcc_utils.config import config_for
    from bcc_utils.notebook import main_run
    from bcc_utils.paper import PAPER_RUNS

    ns = _parameters("04_train_efficientnet_b0.ipynb", preset, PAPER_RUNS=PAPER_RUNS)
    cfg, name = main_run(preset)
    assert name == ns["RUN_NAME"]
    assert cfg == config_for(ns["PRESET"], model=ns["MODEL"], **ns["OVERRIDES"])


@pytest.mark.parametrize("preset", ["paper", "cpu", "smoke"])
def test_resnet_run_is_the_run_notebook_05_trains(preset):
    """Notebook 07 looks for notebook 05's runs by name (RESNET_RUNS): same config and name as 05's parameters cell."""
    from bcc_utils.config import config_for
    from bcc_utils.run import RESNET_RUNS, resnet_run

    ns = _parameters("05_train_resnet.ipynb", preset, RESNET_RUNS=RESNET_RUNS)
    cfg, name = resnet_run(preset)
    assert name == ns["RUN_NAME"] == RESNET_RUNS[preset]
    assert cfg == config_for(ns["TRAIN_PRESET"], model=ns["MODEL"], **ns["OVERRIDES"])
    assert cfg.model == ("resnet50" if preset == "paper" else "resnet18")
    if preset == "paper":
        assert set(config_for("paper").differences(cfg)) == {"model"}, "on a GPU: the paper's protocol for ResNet50"


def test_count_bars_label_the_coloured_bars():
    fig = figures.count_bars({"a": 10, "b": 40, "d": 20})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert " 40 (largest)" in texts and " 10 (smallest)" in texts and " 20" in texts


def test_size_bars_linear_with_a_legend_when_counts_are_close():
    fig = figures.size_bars({"360x363": 236, "366x369": 10, "360x360": 5})
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["the stated size (360 × 363)", "other sizes"]
    assert [p.get_facecolor() for p in ax.patches][0] != ax.patches[1].get_facecolor()


def test_pipeline_diagram_draws_every_stage_as_text():
    stages = ["image", "CLAHE\n(L of LAB)", "resize", "model"]
    fig = figures.pipeline_diagram(stages, kinds=["once", "once", "once", "device"], title="pipeline")
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts if t.get_text()]  # the arrows are empty annotations
    assert texts == stages
    assert len(fig.axes[0].patches) == len(stages)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["once", "device"]


def test_training_diagram_names_where_two_presets_differ():
    from bcc_utils.config import config_for

    paper, _ = figures.training_stages(config_for("paper"))
    cpu, kinds = figures.training_stages(config_for("cpu"))
    assert len(paper) == len(cpu) == len(kinds)
    differ = {i for i, (a, b) in enumerate(zip(paper, cpu)) if a != b}
    # size, sampler, augmentation, mixup, model, loss and schedule differ; CLAHE and "keep best" do not
    assert differ == {0, 1, 2, 3, 4, 5, 6}
    assert "class-balanced" in paper[1] and "shuffled" in cpu[1] and "smoothing 0.1" in cpu[5]
    fig = figures.training_diagram(config_for("cpu"), title="cpu")
    assert [t.get_text() for t in fig.axes[0].texts if t.get_text()] == cpu
