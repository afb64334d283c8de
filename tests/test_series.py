"""``python -m bcc_utils series``: a stuck notebook ends with a clear message, never a silent wait."""

from __future__ import annotations

import argparse
import os
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bcc_utils import series


def main(argv: list[str]) -> int:
    """``python -m bcc_utils`` with only the series command (the other commands need not import)."""
    parser = argparse.ArgumentParser(prog="python -m bcc_utils")
    series.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _write_notebook(path, *sources):
    nb = new_notebook(cells=[new_markdown_cell("# a tiny notebook")] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(autouse=True)
def keep_environment(monkeypatch):
    """run_series sets these for the kernels it starts; put them back afterwards (nbval's kernels share them)."""
    for name in ("BCC_DATA_DIR", "BCC_RUNS_DIR", "BCC_SMOKE"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


def test_stuck_cell_ends_the_series_with_one_line_naming_notebook_and_cell(tmp_path, data_dir, monkeypatch, capsys):
    stuck = _write_notebook(tmp_path / "99_stuck.ipynb", "x = 1", "import time\ntime.sleep(600)  # stuck", "x = 2")
    monkeypatch.setattr(series, "list_notebooks", lambda select=None: [stuck])
    out = tmp_path / "out"
    start = time.monotonic()
    status = main(["series", "--out", str(out), "--data-dir", str(data_dir), "--smoke",
                   "--cell-timeout", "3", "--notebook-timeout", "60"])
    seconds = time.monotonic() - start
    cap = capsys.readouterr()
    assert status == 1
    assert seconds < 3 + 12, f"took {seconds:.0f} s"
    assert "Traceback" not in cap.out + cap.err
    [error] = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert error.startswith("error: 99_stuck.ipynb timed out: cell 3 of 4 ('import time')")
    assert "cell time limit (3 s, --cell-timeout); kernel killed" in error
    saved = nbformat.read(out / "notebooks" / "99_stuck.ipynb", as_version=4)
    assert saved.cells[1].execution_count == 1 and saved.cells[3].execution_count is None


def test_notebook_time_limit_caps_every_cell(tmp_path, data_dir):
    book = _write_notebook(tmp_path / "98_slow.ipynb", "import time\ntime.sleep(1)", "time.sleep(600)")
    start = time.monotonic()
    [row] = series.run_series(tmp_path / "out", data_dir=data_dir, smoke=True, cell_timeout=600, notebook_timeout=6,
                              notebooks=[book])
    assert time.monotonic() - start < 6 + 12
    assert row["status"].startswith("timed out: cell 3 of 3 ('time.sleep(600)')"), row
    assert "notebook time limit (6 s, --notebook-timeout)" in row["status"]


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan", "1e400"])
def test_time_limits_must_be_positive_seconds(value, capsys):
    with pytest.raises(SystemExit):
        main(["series", "--cell-timeout", value])
    assert "positive, finite number of seconds" in capsys.readouterr().err


def test_a_selection_that_matches_nothing_fails_before_any_download(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BCC_DATA_DIR", raising=False)
    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "empty-cache"))  # no data: a download would be the next step
    from bcc_utils.cli import main as cli_main  # the real command line, which turns errors into one line

    assert cli_main(["series", "--only", "99", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "No notebook matches" in err and "download" not in err.lower()


def test_a_missing_external_folder_fails_in_one_line_before_any_download(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BCC_DATA_DIR", raising=False)
    monkeypatch.delenv("BCC_EXTERNAL_DIR", raising=False)
    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "empty-cache"))
    from bcc_utils.cli import main as cli_main

    code = cli_main(["series", "--only", "10", "--external-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--external-dir" in err and "nowhere" in err and "Traceback" not in err
    assert "BCC_EXTERNAL_DIR" not in os.environ and not (tmp_path / "empty-cache").exists()
