"""Run the whole notebook series headless: ``python -m bcc_utils series``.

Each notebook in ``notebooks/`` is executed top to bottom with nbclient, in
teaching order, in its own kernel; the executed copy is written to
``OUT/notebooks/``. Notebooks read their parameters from the environment
(``BCC_DATA_DIR``, ``BCC_SMOKE``, ``BCC_RUNS_DIR``), so this command only sets
those variables. Training runs and their ``metrics.json`` land in
``OUT/runs/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bcc_utils.paths import DATA_ENV, SMOKE_ENV, find_data_dir

RUNS_ENV = "BCC_RUNS_DIR"


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


def run_series(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    smoke: bool = False,
    select: list[str] | None = None,
    timeout: int = 3600,
) -> list[dict]:
    """Execute the notebooks and write the executed copies under ``out_dir``.

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
    timeout
        Seconds allowed per cell.

    Returns
    -------
    list of dict
        One ``{"notebook", "seconds", "status"}`` per notebook.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out = Path(out_dir).resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    os.environ[DATA_ENV] = str(_data_or_download(data_dir).resolve())
    os.environ[RUNS_ENV] = str(out / "runs")
    os.environ[SMOKE_ENV] = "1" if smoke else "0"

    report = []
    for path in list_notebooks(select):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        status = "ok"
        try:
            client.execute()
        except CellExecutionError as exc:
            status = f"failed: {str(exc).strip().splitlines()[-1][:200]}"
        seconds = time.perf_counter() - start
        nbformat.write(nb, out / "notebooks" / path.name)
        report.append({"notebook": path.name, "seconds": round(seconds, 1), "status": status})
        print(f"{path.name:45s} {seconds:7.1f} s  {status}", flush=True)
        if status != "ok":
            break
    return report


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
    p.add_argument("--smoke", action="store_true", help="tiny fast runs, as in CI")
    p.add_argument("--only", nargs="*", default=None, help="run only these notebooks (number or name fragment)")
    p.set_defaults(func=_cmd_series)


def _cmd_series(args) -> int:
    report = run_series(args.out, data_dir=args.data_dir, smoke=args.smoke, select=args.only)
    failed = [r for r in report if r["status"] != "ok"]
    print(f"\nExecuted notebooks are in {Path(args.out) / 'notebooks'}; runs in {Path(args.out) / 'runs'}.")
    return 1 if failed else 0
