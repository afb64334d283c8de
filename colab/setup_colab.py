"""Prepare a Google Colab runtime for the bcc notebooks.

The setup cell of every notebook clones the repository and then calls
:func:`setup` from this file (on Colab only; elsewhere nothing here runs):

1. ``pip install -e`` the repository **without touching Colab's torch**: the
   torch, torchvision and torchaudio versions already installed are written to
   a pip constraints file, so pip keeps them (``pyproject.toml`` has lower
   bounds only, which Colab's versions satisfy);
2. optionally mount Google Drive and keep the dataset cache and the training
   runs there, so that they survive the end of the runtime;
3. fetch the dataset into the cache with ``python -m bcc_utils download pbc``
   (skipped when it is already there; verified by file counts);
4. make the freshly installed package importable in the running kernel and
   move to ``notebooks/`` so that relative paths such as ``../runs`` work.

Run as a script (``!python bcc/colab/setup_colab.py``) it installs and fetches
the data only: Google Drive can be mounted, and environment variables set, only
from inside the notebook's own kernel, which is what :func:`setup` does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO_URL = "https://github.com/bcc-series/bcc"
#: Packages that Colab ships built for its CUDA version; pip must not replace them.
KEEP = ("torch", "torchvision", "torchaudio")
#: Google Drive folder (under MyDrive) for the cache and the runs when ``use_drive`` is on.
DRIVE_FOLDER = "bcc"
DRIVE_MOUNT = "/content/drive"


def repo_root() -> Path:
    """The repository this file belongs to (``colab/..``)."""
    return Path(__file__).resolve().parent.parent


def installed_versions(names: tuple[str, ...] = KEEP) -> dict[str, str]:
    """Versions of the packages in ``names`` that are installed (missing ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def constraints_text(versions: dict[str, str]) -> str:
    """Pip constraints that pin each installed package to its exact version (``torch==2.6.0+cu124``)."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def pip_install_command(repo: Path, constraints_file: Path | None, extras: str = "") -> list[str]:
    """The pip command that installs the repository in editable mode under the constraints."""
    target = f"{repo}[{extras}]" if extras else str(repo)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade-strategy", "only-if-needed", "-e", target]
    if constraints_file is not None:
        cmd += ["--constraint", str(constraints_file)]
    return cmd


def install(repo: Path | None = None, extras: str = "") -> dict[str, str]:
    """Install the repository with pip, keeping the installed torch family as it is.

    Returns
    -------
    dict
        The pinned versions (``{"torch": "2.6.0+cu124", ...}``).

    Raises
    ------
    RuntimeError
        If pip fails or a pinned package changed version anyway.
    """
    repo = Path(repo or repo_root())
    before = installed_versions()
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text(before))
        result = subprocess.run(pip_install_command(repo, constraints, extras), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    after = installed_versions()
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    if changed:
        raise RuntimeError(f"pip changed Colab's own packages {changed}; "
                           "restart the runtime (Runtime > Restart session).")
    if str(repo) not in sys.path:  # an editable install is only seen by new processes; make it visible now
        sys.path.insert(0, str(repo))
    return before


def mount_drive(folder: str = DRIVE_FOLDER) -> Path:
    """Mount Google Drive (asks for permission) and return ``MyDrive/<folder>``, created if needed."""
    from google.colab import drive  # only exists on Colab

    drive.mount(DRIVE_MOUNT)
    path = Path(DRIVE_MOUNT) / "MyDrive" / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_data(source: str = "pbc") -> None:
    """Download and verify a dataset source into the cache (``$BCC_CACHE_DIR``), reusing what is there."""
    cmd = [sys.executable, "-m", "bcc_utils", "download", source]
    print(f"fetching the dataset: python -m bcc_utils download {source} (about 300 MB the first time) ...", flush=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # relay into the notebook cell (a child's own output may not reach it)
            print(line, end="", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"'python {' '.join(cmd[1:])}' failed; "
                           "see the message above for how to place the files by hand.")


def setup(use_drive: bool = False, data: bool = True, source: str = "pbc", extras: str = "") -> dict:
    """Everything a notebook needs on Colab; safe to call again (each step is skipped when done).

    Parameters
    ----------
    use_drive
        Keep the dataset cache (``$BCC_CACHE_DIR``) and the training runs (``$BCC_RUNS_DIR``)
        on Google Drive under ``MyDrive/bcc/``.
    data
        Fetch the dataset (notebooks that only read result files can skip it).
    source
        Which dataset source to fetch (``pbc``: the original archive).
    extras
        Optional dependency groups of ``pyproject.toml`` to install as well (e.g. ``"lite0"``).

    Returns
    -------
    dict
        ``kept`` (the torch family versions left untouched), ``cache`` and ``runs`` folders.
    """
    repo = repo_root()
    kept = install(repo, extras)
    if use_drive:
        base = mount_drive()
        os.environ["BCC_CACHE_DIR"] = str(base / "cache")
        os.environ["BCC_RUNS_DIR"] = str(base / "runs")
    if data:
        fetch_data(source)
    os.chdir(repo / "notebooks")
    info = {"kept": kept, "cache": os.environ.get("BCC_CACHE_DIR", "~/.cache/bcc"),
            "runs": os.environ.get("BCC_RUNS_DIR", "../runs")}
    print(f"bcc ready: kept {', '.join(f'{k} {v}' for k, v in kept.items())}; "
          f"cache {info['cache']}; runs {info['runs']}")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-data", action="store_true", help="do not fetch the dataset")
    parser.add_argument("--source", default="pbc", help="dataset source (default: pbc, the original archive)")
    args = parser.parse_args(argv)
    setup(use_drive=False, data=not args.no_data, source=args.source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
