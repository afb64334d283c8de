"""Run the whole notebook series headless: ``python -m bcc_utils series``.

Each notebook in ``notebooks/`` is executed top to bottom with nbclient, in
teaching order, in its own kernel; the executed copy is written to
``OUT/notebooks/``. Notebooks read their parameters from the environment
(``BCC_DATA_DIR``, ``BCC_SMOKE``, ``BCC_RUNS_DIR``), so this command only sets
those variables. Training runs and their ``metrics.json`` land in
``OUT/runs/``.

Nothing waits forever: every cell has a time limit (``--cell-timeout``) and so
has every notebook as a whole (``--notebook-timeout``). A notebook that runs
past either is stopped, its kernel killed, the partly executed copy saved, and
the command ends with one line naming the notebook and the cell, exit status 1.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from pathlib import Path

from bcc_utils.paths import DATA_ENV, SMOKE_ENV, find_data_dir

RUNS_ENV = "BCC_RUNS_DIR"
#: Where notebook 10 finds the external sets (``dataset1-jtsc/``, ``dataset2-cellavision/``); unset: it downloads them.
EXTERNAL_ENV = "BCC_EXTERNAL_DIR"

#: Default time limits in seconds, ``(per cell, per notebook)``, by the preset the notebooks pick
#: (:func:`bcc_utils.config.auto_preset`): smoke runs take seconds per cell; the ``cpu`` training cell of
#: notebook 04 about 8 minutes on 2 cores; the ``paper`` protocol on a GPU trains 10 epochs at 300 px in one cell.
DEFAULT_TIMEOUTS: dict[str, tuple[int, int]] = {
    "smoke": (300, 900),
    "cpu": (1800, 7200),
    "paper": (4 * 3600, 8 * 3600),
}

#: Seconds past the notebook's time limit after which the run is stopped whatever it is waiting for
#: (kernel start, shutdown) — the per-cell limits normally end it first.
GRACE_S = 30


def notebook_dir() -> Path:
    """The ``notebooks/`` folder of a source checkout."""
    path = Path(__file__).resolve().parent.parent / "notebooks"
    if not path.is_dir():
        raise FileNotFoundError(
            f"No notebooks/ folder next to the package ({path}); run this from a clone of the repository."
        )
    return path


def list_notebooks(select: list[str] | None = None) -> list[Path]:
    """Numbered notebooks in teaching order, optionally filtered by number or name fragment."""
    books = sorted(p for p in notebook_dir().glob("[0-9][0-9]_*.ipynb"))
    if select:
        books = [p for p in books if any(s in p.name for s in select)]
        if not books:
            raise ValueError(f"No notebook matches {select}.")
    return books


def default_timeouts(smoke: bool) -> tuple[int, int]:
    """``(cell, notebook)`` time limits in seconds for this machine: see :data:`DEFAULT_TIMEOUTS`."""
    if smoke:
        return DEFAULT_TIMEOUTS["smoke"]
    from bcc_utils.config import auto_preset

    return DEFAULT_TIMEOUTS.get(auto_preset(), DEFAULT_TIMEOUTS["cpu"])


def run_series(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    smoke: bool = False,
    select: list[str] | None = None,
    cell_timeout: float | None = None,
    notebook_timeout: float | None = None,
    notebooks: list[str | os.PathLike] | None = None,
    external_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Execute the notebooks and write the executed copies under ``out_dir``.

    Stops at the first notebook that fails or times out.

    Parameters
    ----------
    out_dir
        Output folder; gets ``notebooks/`` (executed copies) and ``runs/``.
    data_dir
        Dataset location (else ``$BCC_DATA_DIR`` or the download cache).
    smoke
        Tiny, fast runs (what CI does).
    select
        Run only notebooks whose file name contains one of these strings (e.g. ``["01", "02"]``).
    cell_timeout, notebook_timeout
        Seconds allowed per cell and per notebook (kernel start included); ``None``: the defaults of
        :func:`default_timeouts`.
    notebooks
        Notebook files to run instead of the series in ``notebooks/``.
    external_dir
        The ``wbc-external`` folder for notebook 10 (else ``$BCC_EXTERNAL_DIR``, else it downloads the sets).

    Returns
    -------
    list of dict
        One ``{"notebook", "seconds", "status"}`` per notebook run; ``status`` is ``"ok"``, ``"failed: …"``
        or ``"timed out: …"``.
    """
    import nbformat

    if cell_timeout is None or notebook_timeout is None:
        default_cell, default_notebook = default_timeouts(smoke)
        cell_timeout = default_cell if cell_timeout is None else cell_timeout
        notebook_timeout = default_notebook if notebook_timeout is None else notebook_timeout

    books = [Path(p) for p in notebooks] if notebooks is not None else list_notebooks(select)  # a typo fails first
    if external_dir is not None:
        if not Path(external_dir).expanduser().is_dir():
            raise FileNotFoundError(f"--external-dir {external_dir}: no such folder (it should hold dataset1-jtsc/ and "
                                    "dataset2-cellavision/, as 'python -m bcc_utils download wbc-external' makes them)")
        os.environ[EXTERNAL_ENV] = str(Path(external_dir).expanduser().resolve())
    out = Path(out_dir).resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    os.environ[DATA_ENV] = str(_data_or_download(data_dir).resolve())
    os.environ[RUNS_ENV] = str(out / "runs")
    os.environ[SMOKE_ENV] = "1" if smoke else "0"

    report = []
    for path in books:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        status = execute_notebook(nb, path, cell_timeout, notebook_timeout)
        seconds = time.perf_counter() - start
        nbformat.write(nb, out / "notebooks" / path.name)
        report.append({"notebook": path.name, "seconds": round(seconds, 1), "status": status})
        print(f"{path.name:45s} {seconds:7.1f} s  {status}", flush=True)
        if status != "ok":
            break
    return report


def execute_notebook(nb, path: Path, cell_timeout: float, notebook_timeout: float) -> str:
    """Execute ``nb`` (read from ``path``) in place in a fresh kernel; return ``"ok"`` or what went wrong.

    A cell gets ``cell_timeout`` seconds, or what is left of ``notebook_timeout`` if that is less. On a
    timeout the kernel is killed at once (a stuck kernel is not asked to shut down politely).
    """
    from jupyter_core.utils import run_sync

    return run_sync(_execute_notebook)(nb, path, cell_timeout, notebook_timeout)


async def _execute_notebook(nb, path: Path, cell_timeout: float, notebook_timeout: float) -> str:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    deadline = time.monotonic() + notebook_timeout
    where = {"index": None, "limit": "cell"}  # the cell running now, and which limit applies to it

    def on_cell_start(cell, cell_index):
        where["index"] = cell_index

    def cell_limit(cell) -> int:
        left = deadline - time.monotonic()
        where["limit"] = "cell" if cell_timeout <= left else "notebook"
        return max(1, math.ceil(min(cell_timeout, left)))

    class Client(NotebookClient):
        async def _async_handle_timeout(self, timeout, cell=None):
            self.shutdown_kernel = "immediate"  # the kernel is killed, not asked to shut down
            if cell is None:  # no answer to kernel_info (nbclient itself would fail an assertion here)
                raise CellTimeoutError(f"no answer from the kernel within {timeout} s")
            return await super()._async_handle_timeout(timeout, cell)

    client = Client(nb, timeout=max(1, math.ceil(cell_timeout)), timeout_func=cell_limit, kernel_name="python3",
                    on_cell_start=on_cell_start, resources={"metadata": {"path": str(path.parent)}})

    def cell_text() -> str:
        i = where["index"]
        if i is None:
            return "before the first cell (kernel start)"
        lines = [line.strip() for line in nb.cells[i].source.splitlines() if line.strip()]
        first = lines[0] if lines else ""
        first = first if len(first) <= 80 else first[:77] + "..."
        return f"cell {i + 1} of {len(nb.cells)} ({first!r})"

    def timed_out(limit: str) -> str:
        seconds, flag = (cell_timeout, "--cell-timeout") if limit == "cell" else (
            notebook_timeout, "--notebook-timeout")
        return (f"timed out: {cell_text()} still running after the {limit} time limit ({seconds:g} s, {flag}); "
                "kernel killed")

    task = asyncio.ensure_future(client.async_execute())
    done, _ = await asyncio.wait({task}, timeout=notebook_timeout + GRACE_S)
    if not done:  # waiting outside a cell (kernel start or shutdown): kill the kernel, then stop waiting
        await _kill(client)
        task.cancel()
        await asyncio.wait({task}, timeout=15)
        return timed_out("notebook")
    try:
        task.result()
    except CellTimeoutError:
        await _kill(client)
        return timed_out(where["limit"])
    except CellExecutionError as exc:
        return f"failed in {cell_text()}: {str(exc).strip().splitlines()[-1][:200]}"
    except RuntimeError as exc:  # DeadKernelError, a kernel that does not start
        return f"failed in {cell_text()}: {type(exc).__name__}: {exc}"
    return "ok"


async def _kill(client) -> None:
    """Kill the kernel of ``client`` if it is still running (after a timeout nbclient normally did it already)."""
    from nbclient.util import ensure_async

    km = client.km
    if km is None:
        return
    try:
        if await ensure_async(km.is_alive()):
            await ensure_async(km.shutdown_kernel(now=True))
    except Exception as exc:  # noqa: BLE001 - best effort: say so and go on
        print(f"warning: could not kill the kernel: {exc}", file=sys.stderr)


def _data_or_download(data_dir) -> Path:
    """The dataset folder; when none is found (no argument, no ``$BCC_DATA_DIR``), download the archive."""
    if data_dir is not None or os.environ.get(DATA_ENV):
        return find_data_dir(data_dir)
    try:
        return find_data_dir()
    except FileNotFoundError:
        from bcc_utils.data import download

        print("No PBC dataset found locally: downloading the original archive (about 300 MB) once.", flush=True)
        return download("pbc")


def register(sub) -> None:
    """Add the ``series`` subcommand."""
    p = sub.add_parser("series", help="execute the notebook series headless and save the executed notebooks")
    p.add_argument("--out", default="outputs", help="output folder (default: outputs/)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $BCC_DATA_DIR or the download cache)")
    p.add_argument("--external-dir", default=None, metavar="DIR",
                   help="the wbc-external sets for notebook 10 (default: $BCC_EXTERNAL_DIR, else downloaded)")
    p.add_argument("--smoke", action="store_true", help="tiny fast runs, as in CI")
    p.add_argument("--only", nargs="*", default=None, help="run only these notebooks (number or name fragment)")
    limits = ", ".join(f"{k} {c:g}/{n:g}" for k, (c, n) in DEFAULT_TIMEOUTS.items())
    p.add_argument("--cell-timeout", type=_seconds, default=None, metavar="S",
                   help=f"seconds one cell may run (default by preset, cell/notebook: {limits})")
    p.add_argument("--notebook-timeout", type=_seconds, default=None, metavar="S",
                   help="seconds one notebook may run, kernel start included (default: see --cell-timeout)")
    p.set_defaults(func=_cmd_series)


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:  # inf or nan would overflow the kernel's timers; 1e7 s is four months
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


def _cmd_series(args) -> int:
    report = run_series(args.out, data_dir=args.data_dir, smoke=args.smoke, select=args.only,
                        cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                        external_dir=args.external_dir)
    failed = [r for r in report if r["status"] != "ok"]
    print(f"\nExecuted notebooks are in {Path(args.out) / 'notebooks'}; runs in {Path(args.out) / 'runs'}.")
    for r in failed:
        print(f"error: {r['notebook']} {r['status']}", file=sys.stderr)
    return 1 if failed else 0
