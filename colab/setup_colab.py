"""Prepare a Google Colab runtime for the bcc notebooks.

The setup cell of every notebook clones the repository and then calls
:func:`setup` from this file (on Colab only; elsewhere nothing here runs):

1. print one line about the runtime (GPU, RAM, free disk);
2. install ``bcc_utils`` **without changing any package Colab already has**
   (:func:`install`): every installed distribution is pinned to its version in
   a pip constraints file; only the requirements of ``pyproject.toml`` that are
   missing (or too old) are installed, and a requirement on ``cv2`` counts as met
   by whichever OpenCV distribution is there (``opencv-python``, ``-headless``,
   ``-contrib``): pip never puts a second distribution of the ``cv2`` package
   beside Colab's. Afterwards it checks that no pre-installed package changed;
3. mount Google Drive (``use_drive``, on by default; refused or impossible: one
   printed line, and local folders are used) and keep the downloaded dataset and
   the training runs there, so the dataset is fetched once per Drive, not once
   per runtime;
4. fetch the dataset with ``python -m bcc_utils download pbc`` (skipped when it is
   already there; verified by file counts);
5. make the freshly installed package importable in the running kernel and
   move to ``notebooks/`` so that relative paths such as ``../runs`` work.

Run as a script (``!python bcc/colab/setup_colab.py``) it installs and fetches
the data only: Google Drive can be mounted, and environment variables set, only
from inside the notebook's own kernel, which is what :func:`setup` does.
``--install-only`` runs step 2 alone (``colab/colab_like_install.py`` tests it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

try:  # Colab has packaging; a bare virtual environment may only have pip's own copy
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - depends on the environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

REPO_URL = "https://github.com/bcc-series/bcc"
#: Packages that Colab ships built for its CUDA version (reported as "kept"; every installed package is pinned).
KEEP = ("torch", "torchvision", "torchaudio")
#: Distributions that all install the same ``cv2`` package: any one of them meets a requirement on another.
CV2_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
#: This project's distribution name (never pinned: it is what gets installed).
PROJECT = "bcc-utils"
#: Google Drive folder (under MyDrive) for the dataset and the runs when ``use_drive`` is on.
DRIVE_FOLDER = "bcc"
DRIVE_MOUNT = "/content/drive"


def repo_root() -> Path:
    """The repository this file belongs to (``colab/..``)."""
    return Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Pillow`` → ``pillow``, ``jupyterlab_widgets`` → ``jupyterlab-widgets``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions(names: tuple[str, ...] = KEEP) -> dict[str, str]:
    """Versions of the packages in ``names`` that are installed (missing ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def installed_distributions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution Python sees (the first one on ``sys.path`` wins)."""
    importlib.invalidate_caches()  # pip just changed site-packages
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def constraints_text(versions: dict[str, str], exclude=()) -> str:
    """Pip constraints that pin each package to its exact version (``torch==2.6.0+cu124``), sorted by name.

    Names in ``exclude`` are left free; a version that is not PEP 440 is pinned with ``===``.
    """
    skip = {canonical(n) for n in exclude}
    return "".join(f"{name}{'==' if _is_version(version) else '==='}{version}\n"
                   for name, version in sorted(versions.items()) if canonical(name) not in skip)


def project_requirements(repo: Path | None = None, extras: str = "") -> list[str]:
    """The ``dependencies`` of ``pyproject.toml`` plus those of the comma-separated ``extras``.

    Self-references such as ``bcc_utils[export]`` are expanded into that extra's requirements.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((Path(repo or repo_root()) / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    groups = [e.strip() for e in extras.split(",") if e.strip()]
    pending, seen, out = list(project.get("dependencies", [])), set(), []
    while True:
        for text in pending:
            req = Requirement(text)
            if canonical(req.name) == PROJECT:
                groups += sorted(req.extras)
            elif text not in out:
                out.append(text)
        groups = [g for g in groups if g not in seen]
        if not groups:
            return out
        extra = groups.pop(0)
        seen.add(extra)
        if extra not in optional:
            raise ValueError(f"pyproject.toml has no optional dependency group {extra!r}; "
                             f"choose from {', '.join(sorted(optional))}.")
        pending = optional[extra]


def _satisfied(req: Requirement, version: str) -> bool:
    if not req.specifier:
        return True
    try:
        return req.specifier.contains(version, prereleases=True)
    except InvalidVersion:  # a non-PEP 440 version: leave it as it is
        return True


def missing_requirements(requirements: list[str], installed: dict[str, str]) -> list[str]:
    """The requirements that ``installed`` (``{name: version}``) does not meet, as requirement strings for pip.

    A requirement on an OpenCV distribution is met by *any* installed OpenCV distribution of a fitting version
    (``opencv-python 5.0`` meets ``opencv-python-headless>=4.9``): all of them write the same ``cv2`` package,
    so installing a second one beside the first would mix their files. When the installed one is too old, the
    same distribution is upgraded. Extras of an installed requirement (``pkg[extra]``) are not checked.
    """
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        if name in CV2_DISTRIBUTIONS:
            present = [d for d in CV2_DISTRIBUTIONS if d in installed]
            if present:
                if not any(_satisfied(req, installed[d]) for d in present):
                    missing.append(f"{present[0]}{req.specifier}")  # upgrade that one, add none
                continue
        elif name in installed and _satisfied(req, installed[name]):
            continue
        missing.append(text)
    return missing


def choose_installs(planned: list[tuple[str, str]], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """Split pip's plan (``[(name, version)]`` of a dry run) into what to install and which OpenCV ones to skip.

    Returns ``(["name==version", ...], ["skipped name==version", ...])``: an OpenCV distribution is skipped when
    one is installed already (e.g. ``grad-cam`` asks for ``opencv-python-headless`` but Colab has
    ``opencv-python``), and only the first of several planned ones is kept.
    """
    have_cv2 = any(d in installed for d in CV2_DISTRIBUTIONS)
    chosen, skipped = [], []
    for name, version in planned:
        pin = f"{canonical(name)}=={version}"
        if canonical(name) in CV2_DISTRIBUTIONS and canonical(name) not in installed:
            if have_cv2:
                skipped.append(pin)
                continue
            have_cv2 = True
        chosen.append(pin)
    return chosen, skipped


def changed_versions(before: dict[str, str], after: dict[str, str], allowed=()) -> dict[str, tuple[str, str | None]]:
    """``{name: (before, after)}`` for every pre-installed distribution whose version changed (or that vanished)."""
    free = {canonical(n) for n in allowed}
    return {n: (v, after.get(n)) for n, v in sorted(before.items()) if n not in free and after.get(n) != v}


def added_cv2(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """OpenCV distributions that appeared beside another one (two writers of the one ``cv2`` package)."""
    new = [d for d in CV2_DISTRIBUTIONS if d in after and d not in before]
    return new if new and sum(d in after for d in CV2_DISTRIBUTIONS) > 1 else []


def check_unchanged(before: dict[str, str], after: dict[str, str], allowed=()) -> None:
    """Raise ``RuntimeError`` naming every pre-installed package that changed and every added second OpenCV."""
    problems = [f"{n} {old} -> {new or 'removed'}" for n, (old, new) in changed_versions(before, after, allowed).items()]
    problems += [f"{d} {after[d]} added beside "
                 + ", ".join(f"{o} {after[o]}" for o in CV2_DISTRIBUTIONS if o in before) for d in added_cv2(before, after)]
    if problems:
        raise RuntimeError("Installing bcc_utils changed packages of this runtime: " + "; ".join(problems)
                           + ". Restart the runtime (Runtime > Disconnect and delete runtime) and report this as a bug.")


def pip_install_command(repo: Path, constraints_file: Path | None, extras: str = "") -> list[str]:
    """The pip command that installs the repository itself in editable mode, without its dependencies."""
    target = f"{repo}[{extras}]" if extras else str(repo)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", target]
    if constraints_file is not None:
        cmd += ["--constraint", str(constraints_file)]
    return cmd


def _pip(args: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def plan(requirements: list[str], constraints_file: Path) -> list[tuple[str, str]]:
    """What pip would install for ``requirements`` under the constraints: ``[(name, version)]`` (a dry run)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip(["install", "--quiet", "--dry-run", "--report", str(report), "--constraint", str(constraints_file),
              *requirements], "pip's dry run (resolving the missing requirements)")
        items = json.loads(report.read_text()).get("install", [])
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in items]


def _editable_here(repo: Path) -> bool:
    """True when ``bcc_utils`` is already installed in editable mode from ``repo`` (a second setup call)."""
    for dist in metadata.distributions(name="bcc_utils"):  # also skips the repository's own bcc_utils.egg-info
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if url.get("dir_info", {}).get("editable") and url.get("url", "").rstrip("/").endswith(str(repo)):
            return True
    return False


def install(repo: Path | None = None, extras: str = "", quiet: bool = False) -> dict:
    """Install the repository with pip and only its missing requirements, changing nothing already installed.

    Steps: pin every installed distribution in a constraints file; compute the requirements of
    ``pyproject.toml`` (and ``extras``) that are missing or too old (:func:`missing_requirements`); let pip plan
    them in a dry run and drop any second OpenCV distribution from the plan (:func:`choose_installs`); install
    the plan with ``--no-deps``; install the repository in editable mode with ``--no-deps``; check that no
    pre-installed package changed (:func:`check_unchanged`).

    Returns
    -------
    dict
        ``kept`` (torch family versions), ``installed`` (``name==version`` added or upgraded), ``skipped``
        (OpenCV distributions not installed because ``cv2`` is there), ``cv2`` (the OpenCV distributions present).

    Raises
    ------
    RuntimeError
        If pip fails, or a pre-installed package changed version anyway, or a second OpenCV appeared.
    """
    repo = Path(repo or repo_root())
    before = installed_distributions()
    missing = missing_requirements(project_requirements(repo, extras), before)
    upgrade = {canonical(Requirement(m).name) for m in missing} & set(before)  # too old: upgraded on purpose
    chosen: list[str] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text(before, exclude={PROJECT, *upgrade}))
        if missing:
            if not quiet:
                print(f"installing what is missing: {' '.join(missing)}", flush=True)
            chosen, skipped = choose_installs(plan(missing, constraints), before)
            if chosen:  # the plan already holds the dependencies: install exactly it
                _pip(["install", "--quiet", "--no-deps", "--no-warn-conflicts", "--constraint", str(constraints),
                      *chosen], "pip install")
        if not _editable_here(repo):
            result = subprocess.run(pip_install_command(repo, None, extras), check=False, capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"pip install failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    after = installed_distributions()
    check_unchanged(before, after, allowed=upgrade)
    if str(repo) not in sys.path:  # an editable install is only seen by new processes; make it visible now
        sys.path.insert(0, str(repo))
    return {"kept": {n: before[n] for n in KEEP if n in before}, "installed": chosen, "skipped": skipped,
            "cv2": {d: after[d] for d in CV2_DISTRIBUTIONS if d in after}}


def runtime_summary(gpus: list[tuple[str, float]], ram_total_gib: float, ram_free_gib: float,
                    disk_free_gib: float) -> str:
    """One line about the runtime: ``runtime: Tesla T4 (15 GiB); RAM 12.7 GiB (11.9 available); disk 78 GiB free``."""
    if not gpus:
        gpu = "no GPU"
    else:
        groups: dict[tuple[str, float], int] = {}
        for name, mem in gpus:
            groups[(name, round(mem))] = groups.get((name, round(mem)), 0) + 1
        gpu = ", ".join(f"{f'{n} × ' if n > 1 else ''}{name} ({mem:g} GiB{' each' if n > 1 else ''})"
                        for (name, mem), n in groups.items())
    return (f"runtime: {gpu}; RAM {ram_total_gib:.1f} GiB ({ram_free_gib:.1f} GiB available); "
            f"disk {disk_free_gib:.0f} GiB free")


def describe_runtime(path: str | os.PathLike = "/") -> str:
    """:func:`runtime_summary` of this machine (GPUs from ``nvidia-smi``; torch is not imported)."""
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 check=False, capture_output=True, text=True, timeout=30).stdout
            for line in out.strip().splitlines():
                name, _, mib = line.rpartition(",")
                gpus.append((name.strip(), float(mib) / 1024))
        except (OSError, ValueError, subprocess.SubprocessError):
            gpus = []
    mem = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            mem[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = mem.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = mem.get("MemAvailable", total)
    gib = 1024 ** 3
    return runtime_summary(gpus, total / gib, free / gib, shutil.disk_usage(path).free / gib)


def mount_drive(folder: str = DRIVE_FOLDER) -> Path:
    """Mount Google Drive (asks for permission) and return ``MyDrive/<folder>``, created if needed."""
    from google.colab import drive  # only exists on Colab

    drive.mount(DRIVE_MOUNT)
    path = Path(DRIVE_MOUNT) / "MyDrive" / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def drive_or_local(folder: str = DRIVE_FOLDER) -> Path | None:
    """:func:`mount_drive`, or ``None`` with one printed line when Drive cannot be mounted or permission is refused."""
    try:
        return mount_drive(folder)
    except Exception as exc:  # noqa: BLE001 - not on Colab, refused, timed out: carry on with local folders
        reason = "not on Google Colab" if isinstance(exc, ImportError) else (
            str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        print(f"Google Drive not mounted ({reason}): the dataset and the runs stay on this runtime's disk, "
              "which forgets them when the runtime ends.", flush=True)
        return None


def fetch_data(source: str = "pbc", cache: Path | None = None) -> None:
    """Download and verify a dataset source into the cache (``cache``, else ``$BCC_CACHE_DIR``), reusing what is there."""
    cmd = [sys.executable, "-m", "bcc_utils", "download", source]
    env = dict(os.environ, BCC_CACHE_DIR=str(cache)) if cache is not None else None
    print(f"fetching the dataset: python -m bcc_utils download {source} (about 300 MB the first time) ...", flush=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:  # relay into the notebook cell (a child's own output may not reach it)
            print(line, end="", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"'python {' '.join(cmd[1:])}' failed; "
                           "see the message above for how to place the files by hand.")


def setup(use_drive: bool = True, data: bool = True, source: str = "pbc", extras: str = "") -> dict:
    """Everything a notebook needs on Colab; safe to call again (each step is skipped when done).

    Parameters
    ----------
    use_drive
        Mount Google Drive (Colab asks for permission) and keep the downloaded dataset
        (``MyDrive/bcc/cache``, used as ``$BCC_DATA_DIR``) and the training runs (``MyDrive/bcc/runs``,
        ``$BCC_RUNS_DIR``) there. The preprocessing cache (``$BCC_CACHE_DIR``) stays on the runtime's fast
        local disk. If Drive cannot be mounted, one line says so and local folders are used.
    data
        Fetch the dataset (notebooks that only read result files can skip it).
    source
        Which dataset source to fetch (``pbc``: the original archive).
    extras
        Optional dependency groups of ``pyproject.toml`` to install as well (e.g. ``"lite0"``).

    Returns
    -------
    dict
        ``kept`` (the torch family versions left untouched), ``installed`` (what was added), ``drive``
        (the Drive folder or ``None``), ``data``, ``cache`` and ``runs`` folders.
    """
    repo = repo_root()
    print(describe_runtime(repo), flush=True)
    done = install(repo, extras)
    base = drive_or_local() if use_drive else None
    download_cache = None
    if base is not None:
        download_cache = base / "cache"
        os.environ.setdefault("BCC_RUNS_DIR", str(base / "runs"))
    if data:
        fetch_data(source, download_cache)
    if download_cache is not None and (download_cache / source / ".verified").is_file():
        os.environ.setdefault("BCC_DATA_DIR", str(download_cache / source))
    os.chdir(repo / "notebooks")
    info = {**done, "drive": base, "data": os.environ.get("BCC_DATA_DIR", "the download cache"),
            "cache": os.environ.get("BCC_CACHE_DIR", "~/.cache/bcc"), "runs": os.environ.get("BCC_RUNS_DIR", "../runs")}
    added = f"; added {', '.join(done['installed'])}" if done["installed"] else ""
    print(f"bcc ready: kept {', '.join(f'{k} {v}' for k, v in done['kept'].items())}{added}; "
          f"data {info['data']}; runs {info['runs']}", flush=True)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-data", action="store_true", help="do not fetch the dataset")
    parser.add_argument("--source", default="pbc", help="dataset source (default: pbc, the original archive)")
    parser.add_argument("--extras", default="", help="optional dependency groups to install too (e.g. lite0)")
    parser.add_argument("--install-only", action="store_true",
                        help="only the install step (no runtime line, no Drive, no data); prints its result as JSON")
    args = parser.parse_args(argv)
    if args.install_only:
        print(json.dumps(install(extras=args.extras, quiet=True)))
        return 0
    setup(use_drive=False, data=not args.no_data, source=args.source, extras=args.extras)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
