"""The shape of the library: no import cycles, one JSON writer, run-file names defined once, every module listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bcc_utils"
README = PACKAGE.parent / "README.md"


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """bcc_utils modules imported anywhere in a module (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            if t in known and t != name and t != "bcc_utils":
                found.add(t)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles():
    mods = modules()
    # a package's __init__ re-exports its submodules; a submodule importing a sibling through the package is
    # an edge to the package, which is a cycle only if the package then imports that submodule back
    graph = {n: imports_of(n, p, set(mods)) for n, p in mods.items()}
    # cli.py registers the command modules by name (importlib) and they import its helpers: not an import edge
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_json_is_written_by_one_function():
    """``json.dump`` to files and hand-made temporary names live in ``atomic.py`` only."""
    offenders = []
    for name, path in modules().items():
        if name == "bcc_utils.atomic":
            continue
        # a pattern that *recognises* old temporary names (to clean them up) writes nothing
        text = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if "re.compile(" not in line)
        patterns = [r"json\.dump\(", r"write_text\(json\.dumps", r"\.tmp[\"'`-]"]
        if name != "bcc_utils.run":  # run.py moves a replaced run aside with os.replace; it writes nothing so
            patterns.append(r"os\.replace\(")
        for pattern in patterns:
            offenders += [f"{name}: {pattern}" for _ in re.finditer(pattern, text)]
    assert offenders == []


RUN_FILE_NAMES = {"best.pt", "last.pt", "metrics.json", "history.csv", "history.json", "predictions.csv",
                  "calibration.json", "config.json", "manifest.csv"}


def test_run_file_names_are_defined_once():
    """Code spells a run file's name only in ``run.py`` (docstrings and help texts may mention them)."""
    offenders = []
    for name, path in modules().items():
        if name == "bcc_utils.run":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        helps = {id(kw.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
                 for kw in n.keywords if kw.arg in ("help", "description")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILE_NAMES
                    and id(node) not in docstrings | helps):
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_readme_layout_lists_every_module():
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 5)] if "\n## " in layout[5:] else layout
    missing = []
    for name in modules():
        short = name.split(".")[-1]
        if short in ("bcc_utils", "__main__"):
            continue
        if not re.search(rf"(?<![\w.]){re.escape(short)}(?![\w])", layout):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("module", ["bcc_utils.run", "bcc_utils.atomic", "bcc_utils.device"])
def test_the_run_folder_modules_are_small_and_single_purpose(module):
    assert len(modules()[module].read_text().splitlines()) < 300
