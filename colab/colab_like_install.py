"""Colab-like install test: does ``setup_colab.py`` leave a Colab runtime's own packages alone?

Runs on any Linux machine with Python >= 3.10 and access to PyPI (no GPU, no Colab):

1. copies the repository (the files git tracks or would track, like a clone) and creates a fresh virtual
   environment, both in a temporary folder;
2. fills the environment with Google Colab's versions of the packages that matter here (:data:`COLAB`):
   OpenCV 5 as ``opencv-python`` (no ``-headless``), albumentations installed without its OpenCV dependency,
   ipywidgets 7, Colab's numpy, Pillow, scikit-learn, timm;
3. records every installed version, runs exactly the install step of ``setup_colab.setup``
   (``python colab/setup_colab.py --install-only --extras lite0``), and checks that no pre-installed
   package changed version and that one OpenCV distribution is present, still Colab's;
4. runs the OpenCV 4/5 agreement test, the widget tests and the upload-decoding test there
   (``tests/test_opencv_versions.py``, ``tests/test_widgets.py``, ``tests/test_colab_setup.py``);
5. runs the notebook series in smoke mode on the committed sample
   (``python -m bcc_utils series --smoke --data-dir tests/fixtures/pbc-sample``).

It prints the time of each step and exits with 0 when everything passed. Colab runs Python 3.13 and a CUDA
build of torch 2.11; here the environment uses the Python that runs this script and the torch that pip
installs for it (constraints of the machine apply), so what is tested is the install logic and the library
on Colab's versions of everything else. See colab/README.md ("Testing the install without Colab").

Usage: ``python colab/colab_like_install.py [--keep] [--workdir DIR] [--skip-series]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Colab's versions (2026 runtime) of the packages the install must keep, where pip can install them for this
#: Python; the rest as pip resolves them. Torch: see the module docstring.
COLAB = [
    "torch==2.14.1",  # Colab: 2.11.0+cu128 (Python 3.13); here the torch this machine installs quickly
    "torchvision==0.29.1",  # Colab: 0.26.0
    "numpy==2.1.3",
    "opencv-python==5.0.0.93",
    "scikit-learn==1.6.1",
    "pillow==11.3.0",
    "timm==1.0.28",
    "ipywidgets==7.7.1",  # Colab's 7.x
    "widgetsnbextension==3.6.10",
    "ipykernel<7",  # Colab: 6.x
    # also on Colab (versions left to pip): what the notebooks' kernel and the series runner need
    "pandas", "matplotlib", "nbclient", "nbformat", "tqdm", "pyyaml", "scipy", "pydantic", "stringzilla", "simsimd",
]
#: Installed without dependencies, as on Colab: albumentations and albucore ask for opencv-python-headless,
#: which Colab does not have (its cv2 comes from opencv-python).
COLAB_NO_DEPS = ["albumentations==2.0.8", "albucore==0.0.24"]
#: Tests run inside the Colab-like environment (pytest is added after the install check).
TESTS = ["tests/test_opencv_versions.py", "tests/test_widgets.py", "tests/test_colab_setup.py"]
EXTRAS = "lite0"  # the union of what the notebooks' setup cells ask for


def _load_setup_colab():
    spec = importlib.util.spec_from_file_location("setup_colab", REPO / "colab" / "setup_colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_repo(dest: Path) -> None:
    """Copy what a clone would hold: tracked files and untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "outputs", "*.egg-info"))
        return
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


class Steps:
    """Runs commands, times them, and prints one line per step."""

    def __init__(self, env: dict, cwd: Path):
        self.env, self.cwd, self.times, self.failed = env, cwd, {}, []

    def run(self, name: str, cmd: list[str], check: bool = True, capture: bool = True, env=None, timeout=None):
        print(f"--- {name}: {' '.join(map(str, cmd))}", flush=True)
        t0 = time.perf_counter()
        result = subprocess.run(list(map(str, cmd)), check=False, cwd=self.cwd, env=env or self.env, text=True,
                                capture_output=capture, timeout=timeout)
        self.times[name] = time.perf_counter() - t0
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"    {status} in {self.times[name]:.0f} s", flush=True)
        if result.returncode != 0:
            if capture:
                print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
            self.failed.append(name)
            if check:
                raise SystemExit(f"step '{name}' failed")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder to work in (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (environment, outputs)")
    parser.add_argument("--skip-series", action="store_true", help="do not run the smoke series")
    args = parser.parse_args(argv)
    setup_colab = _load_setup_colab()
    start = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bcc-colab-like-"))
    work.mkdir(parents=True, exist_ok=True)
    repo, venv = work / "bcc", work / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("BCC_")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", BCC_CACHE_DIR=str(work / "cache"),
               PIP_PROGRESS_BAR="off", PYTHONDONTWRITEBYTECODE="1")
    steps = Steps(env, repo)
    finished = False
    print(f"Colab-like install test in {work}", flush=True)
    try:
        t0 = time.perf_counter()
        copy_repo(repo)
        steps.times["copy the repository"] = time.perf_counter() - t0
        steps.run("create the environment", [sys.executable, "-m", "venv", venv])
        steps.run("install Colab's packages", [python, "-m", "pip", "install", "--quiet", *COLAB])
        steps.run("install albumentations as Colab has it", [python, "-m", "pip", "install", "--quiet", "--no-deps",
                                                              *COLAB_NO_DEPS])
        dump = [python, "-c", ("import json, sys; sys.path.insert(0, 'colab'); import setup_colab; "
                               "print(json.dumps(setup_colab.installed_distributions()))")]
        before = json.loads(steps.run("record versions", dump).stdout)
        result = steps.run("setup_colab install step",
                           [python, "colab/setup_colab.py", "--install-only", "--extras", EXTRAS], check=False)
        if result.returncode == 0:
            print("    " + result.stdout.strip().splitlines()[-1])
        after = json.loads(steps.run("record versions again", dump).stdout)
        changed = setup_colab.changed_versions(before, after)
        cv2_before = {d: before[d] for d in setup_colab.CV2_DISTRIBUTIONS if d in before}
        cv2_after = {d: after[d] for d in setup_colab.CV2_DISTRIBUTIONS if d in after}
        print(f"    pre-installed packages: {len(before)}, changed: {changed or 'none'}; "
              f"added: {sorted(set(after) - set(before))}")
        print(f"    OpenCV distributions before {cv2_before}, after {cv2_after}")
        if changed or cv2_after != cv2_before or len(cv2_after) != 1:
            steps.failed.append("versions kept")
        show = "import cv2, ipywidgets; print(cv2.__version__, ipywidgets.__version__)"
        version = steps.run("import cv2", [python, "-c", show], check=False)
        print("    cv2, ipywidgets: " + version.stdout.strip())
        steps.run("install pytest (test tool, after the check)", [python, "-m", "pip", "install", "--quiet", "pytest"])
        steps.run("tests (OpenCV 5, ipywidgets 7)", [python, "-m", "pytest", "-p", "no:nbval", "-q", "-p",
                                                      "no:cacheprovider", "-o", "addopts=", *TESTS],
                  check=False, capture=False)
        if not args.skip_series:
            steps.run("smoke series", [python, "-m", "bcc_utils", "series", "--smoke", "--out", work / "series",
                                       "--data-dir", "tests/fixtures/pbc-sample"],
                      check=False, capture=False, env=dict(env, BCC_SMOKE="1"))
        finished = True
    except SystemExit as exc:
        print(exc)
    finally:
        total = time.perf_counter() - start
        print("\n".join(["", "step times:"] + [f"  {t:6.0f} s  {name}" for name, t in steps.times.items()]
                        + [f"  {total:6.0f} s  total (wall)"]))
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"kept {work}")
    ok = finished and not steps.failed
    print(f"Colab-like install test: {'PASSED' if ok else 'FAILED: ' + ', '.join(steps.failed or ['incomplete'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
