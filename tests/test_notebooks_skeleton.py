"""Every notebook of the series follows the same skeleton (read without executing anything).

Badge and title; "What you will learn"; "Time and hardware"; one setup cell that
detects Colab; one cell tagged ``parameters``; the lesson; "Summary";
"Exercises"; a last code cell that asserts. Committed outputs carry no errors
and no path of the machine that produced them; every widget is followed by a
static figure (GitHub and nbval do not show widgets).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
BADGE = "https://colab.research.google.com/github/bcc-series/bcc/blob/main/notebooks/{name}"
HEADINGS = ("What you will learn", "Time and hardware", "Summary", "Exercises")
SETUP_MARK = 'IN_COLAB = "google.colab" in sys.modules'
MAX_BYTES = 1_500_000

# Absolute paths of a build machine: the usual roots, plus where this checkout and the home folder live.
_ROOTS = ["/tmp/", "/home/", "/Users/", "/private/var/", "/var/folders/", "C:\\Users\\"]
_LOCAL = {str(Path(__file__).resolve().parents[2]) + "/", str(Path.home()) + "/"}
MACHINE_PATH = re.compile("|".join(re.escape(p) for p in sorted(set(_ROOTS) | {p for p in _LOCAL if len(p) > 2})))
WIDGET_CALL = re.compile(r"\binteract\w*\s*\(|\bwidgets\.\w+\s*\(")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _texts(cell: dict):
    """Every text in a cell's outputs (stream text, text/* data, tracebacks), images left out."""
    for out in cell.get("outputs", []):
        if "text" in out:
            yield _src({"source": out["text"]})
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                yield value if isinstance(value, str) else json.dumps(value)
        if "traceback" in out:
            yield "\n".join(out["traceback"])


def _heading_index(cells: list[dict], heading: str) -> int:
    pattern = re.compile(rf"^#+\s*{re.escape(heading)}\b", re.MULTILINE | re.IGNORECASE)
    hits = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and pattern.search(_src(c))]
    assert hits, f"no markdown heading '{heading}'"
    return hits[0]


def _is_widget_cell(cell: dict) -> bool:
    if cell["cell_type"] != "code":
        return False
    shows_widget = any(WIDGET_MIME in out.get("data", {}) for out in cell.get("outputs", []))
    return shows_widget or bool(WIDGET_CALL.search(_src(cell)))


def _has_image(cell: dict) -> bool:
    return any(k.startswith("image/") for out in cell.get("outputs", []) for k in out.get("data", {}))


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks named NN_*.ipynb in {NOTEBOOK_DIR.name}/"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, _load(request.param)


def test_header_badge_and_title(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown", "the first cell must be markdown (badge + title)"
    text = _src(first)
    assert BADGE.format(name=path.name) in text, f"the Colab badge must link to notebooks/{path.name}"
    assert "colab-badge.svg" in text
    assert re.search(r"^# \S", text, re.MULTILINE), "the first cell must hold the title (a '# ' heading)"


def test_kernelspec_is_python3(notebook):
    _, nb = notebook
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


def test_sections_in_order(notebook):
    _, nb = notebook
    cells = nb["cells"]
    learn, time_hw, summary, exercises = (_heading_index(cells, h) for h in HEADINGS)
    setup = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and SETUP_MARK in _src(c)]
    assert len(setup) == 1, f"exactly one setup cell containing {SETUP_MARK!r}, found {len(setup)}"
    params = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"exactly one cell tagged 'parameters', found {len(params)}"
    (setup,), (params,) = setup, params
    assert cells[params]["cell_type"] == "code"
    assert 0 < learn < time_hw < setup < params < summary < exercises < len(cells) - 1, (
        "order must be: badge/title, What you will learn, Time and hardware, setup cell, parameters cell, "
        f"lesson, Summary, Exercises, asserting cell (found {learn=}, {time_hw=}, {setup=}, {params=}, "
        f"{summary=}, {exercises=}, last={len(cells) - 1})"
    )
    code_between = [c for c in cells[setup + 1 : params] if c["cell_type"] == "code"]
    assert not code_between, "no code between the setup cell and the parameters cell"


def test_parameters_cell_reads_the_environment(notebook):
    _, nb = notebook
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    src = _src(cell)
    assert "smoke_mode()" in src or "BCC_SMOKE" in src, "SMOKE must come from $BCC_SMOKE (bcc_utils.smoke_mode())"
    assert "BCC_RUNS_DIR" in src or "runs_dir(" in src, "the output folder must come from $BCC_RUNS_DIR"
    assert "DATA_DIR" in src, "the data location must be a parameter (DATA_DIR)"


def test_last_cell_asserts(notebook):
    _, nb = notebook
    last = nb["cells"][-1]
    assert last["cell_type"] == "code", "the last cell must be code"
    assert re.search(r"^\s*assert\b", _src(last), re.MULTILINE), "the last cell must assert what the notebook promised"


def test_no_error_output(notebook):
    _, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"cell {i} has an error output: {out.get('ename')}"
            if out.get("output_type") == "stream":
                assert "Traceback (most recent call last)" not in _src({"source": out["text"]}), f"cell {i}"


def test_no_machine_paths(notebook):
    _, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        for where, text in [("source", _src(cell)), *(("output", t) for t in _texts(cell))]:
            hit = MACHINE_PATH.search(text)
            context = text[max(0, hit.start() - 30) : hit.end() + 30] if hit else ""
            assert not hit, f"cell {i} {where} contains a path of this machine: ...{context!r}"


def test_widgets_are_followed_by_a_static_figure(notebook):
    _, nb = notebook
    cells = nb["cells"]
    executed = any(c.get("outputs") for c in cells if c["cell_type"] == "code")
    for i, cell in enumerate(cells):
        assert "interact_manual" not in _src(cell), f"cell {i}: use interact (runs once headless), not interact_manual"
        if not _is_widget_cell(cell):
            continue
        nxt = next((c for c in cells[i + 1 :] if c["cell_type"] == "code"), None)
        assert nxt is not None and not _is_widget_cell(nxt), f"cell {i} (a widget) must be followed by a static figure"
        if executed:
            assert _has_image(nxt), f"the cell after widget cell {i} must show a static figure (no image output)"


def test_committed_notebooks_are_light(notebook):
    path, _ = notebook
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB; keep it under 1.5 MB"


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")  # ESC (\x1b) is allowed: colour codes in tracebacks


@pytest.mark.parametrize("path", NOTEBOOKS + [NOTEBOOK_DIR.parent / "colab" / "train_on_colab.ipynb"],
                         ids=lambda p: p.name)
def test_no_control_characters(path):
    """A "\\a" in a Python string (e.g. ``"$p \\approx$"`` without r"") becomes a BEL and renders as "pprox"."""
    nb = _load(path)
    found = []
    for i, cell in enumerate(nb["cells"]):
        texts = [_src(cell)] + [json.dumps(o, ensure_ascii=False) for o in cell.get("outputs", [])]
        found += [f"cell {i}: {m.group()!r} near {t[max(0, m.start() - 20):m.end() + 10]!r}"
                  for t in texts for m in CONTROL.finditer(t)]
    assert found == []
