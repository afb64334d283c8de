"""Tests for the notebook helpers (bcc_utils.notebook, bcc_utils.figures) and colab/setup_colab.py."""

from __future__ import annotations

import importlib.util
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
@pytest.fixture(scope="module")
def setup_colab():
    spec = importlib.util.spec_from_file_location("setup_colab", REPO / "colab" / "setup_colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
