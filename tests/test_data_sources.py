"""Dataset registry and downloads, against a local HTTP server and a fake kagglehub (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import sys
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bcc_utils.data import SOURCES, DataWarning, download, read_bloodmnist
from bcc_utils.paths import CLASSES

PER_CLASS = 2  # real images per class in the small archives built here


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/fail500"):
            self.send_error(500, "Server on fire")
        else:
            super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields (base URL, folder, list of requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **kw: _Handler(*a, directory=str(www), **kw))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, httpd.requests
    httpd.shutdown()
    httpd.server_close()


def _images(sample_root: Path) -> list[tuple[str, Path]]:
    out = []
    for label in CLASSES:
        files = sorted(p for p in (sample_root / label).iterdir() if not p.name.startswith("."))
        out += [(label, p) for p in files[:PER_CLASS]]
    return out


@pytest.fixture
def pbc_zip(server, sample_root) -> str:
    """A small archive in the Mendeley layout (plus macOS debris); returns its URL."""
    _, www, _ = server
    with zipfile.ZipFile(www / "pbc.zip", "w") as zf:
        for label, path in _images(sample_root):
            zf.write(path, f"PBC_dataset_normal_DIB/{label}/{path.name}")
            zf.writestr(f"__MACOSX/PBC_dataset_normal_DIB/{label}/._{path.name}", b"\x00\x05\x16\x07")
    return f"{server[0]}/pbc.zip"


@pytest.fixture
def small_counts(monkeypatch):
    """Make the registry expect the small archives built here."""
    counts = {c: PER_CLASS for c in CLASSES}
    monkeypatch.setitem(SOURCES["pbc"], "class_counts", counts)
    monkeypatch.setitem(SOURCES["pbc"], "n_files", PER_CLASS * len(CLASSES))
    monkeypatch.setitem(SOURCES["kaggle"], "class_counts", counts)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pbc.zip"


def test_registry_entries():
    for name, info in SOURCES.items():
        if name != "wbc-external":  # not PBC: another lab's cells, for domain-shift tests
            assert info["license"] == "CC BY 4.0" and "Acevedo" in info["citation"], name
    wbc = SOURCES["wbc-external"]
    assert wbc["license"] == "GPL-3.0" and "GPL-3.0" in wbc["description"]
    for credit in ("Zheng", "Micron 107 (2018) 55", "10.1016/j.micron.2018.01.010", "Jiangxi Tecom", "CellaVision"):
        assert credit in wbc["citation"], credit
    assert "10.1016/j.micron.2018.01.010" in wbc["description"]
    assert [s["n"] for s in wbc["sets"].values()] == [300, 100]
    assert all(sum(s["class_counts"].values()) == s["n"] for s in wbc["sets"].values())
    assert set(wbc["label_codes"].values()) == set(wbc["sets"]["dataset1-jtsc"]["class_counts"]) < set(CLASSES)
    assert sum(SOURCES["pbc"]["class_counts"].values()) == SOURCES["pbc"]["n_files"] - 1 == 17092
    blood = SOURCES["bloodmnist"]
    assert sum(blood["n_samples"].values()) == 17092
    assert set(blood["urls"]) == set(blood["md5"]) == {28, 64, 128, 224}
    assert all(len(m) == 32 for m in blood["md5"].values())
    assert list(blood["label"].values()) == list(CLASSES)


def test_pbc_download_extract_verify_and_reuse(pbc_zip, small_counts, tmp_path, server):
    dest = tmp_path / "cache" / "pbc"
    root = download("pbc", dest, url=pbc_zip, retries=0)
    assert root == dest / "PBC_dataset_normal_DIB"
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES)
    assert sum(1 for _ in root.rglob("*.jpg")) == PER_CLASS * len(CLASSES)
    assert not (dest / "__MACOSX").exists() and not (dest / SOURCES["pbc"]["filename"]).exists()
    # a second call finds the verified folder and does not touch the network
    assert download("pbc", dest, url=_closed_port_url(), retries=0) == root
    assert server[2] == ["/pbc.zip"]


def test_pbc_url_from_environment(pbc_zip, small_counts, tmp_path, monkeypatch):
    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BCC_PBC_URL", pbc_zip)
    assert download("pbc", retries=0) == tmp_path / "cache" / "pbc" / "PBC_dataset_normal_DIB"


def test_pbc_wrong_file_counts_are_refused(pbc_zip, tmp_path):
    with pytest.raises(RuntimeError, match="does not match the original PBC archive"):
        download("pbc", tmp_path / "d", url=pbc_zip, retries=0)


def test_pbc_wrong_checksum(pbc_zip, small_counts, tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCES["pbc"], "sha256", "0" * 64)
    with pytest.raises(RuntimeError, match="checksum") as info:
        download("pbc", tmp_path / "d", url=pbc_zip, retries=0)
    assert "BCC_DATA_DIR" in str(info.value)
    assert not list((tmp_path / "d").glob("*.zip"))  # nothing half-verified is kept


def test_http_404_gives_one_clear_error_without_retrying(server, tmp_path):
    base, _, requests = server
    dest = tmp_path / "d"
    with pytest.raises(RuntimeError) as info:
        download("pbc", dest, url=f"{base}/missing.zip", retries=3)
    message = str(info.value)
    assert "HTTP 404" in message and "PBC_dataset_normal_DIB" in message
    assert f"BCC_DATA_DIR={dest}" in message and SOURCES["pbc"]["homepage"] in message
    assert requests == ["/missing.zip"]  # a 4xx is final


def test_http_500_is_retried_then_reported(server, tmp_path):
    base, _, requests = server
    with pytest.raises(RuntimeError, match="500"):
        download("pbc", tmp_path / "d", url=f"{base}/fail500.zip", retries=1)
    assert requests == ["/fail500.zip", "/fail500.zip"]


def test_offline(tmp_path):
    with pytest.raises(RuntimeError, match="no connection"):
        download("pbc", tmp_path / "d", url=_closed_port_url(), retries=0)


def test_broken_zip_is_deleted(server, small_counts, tmp_path):
    base, www, _ = server
    (www / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(RuntimeError, match="not a valid zip"):
        download("pbc", tmp_path / "d", url=f"{base}/broken.zip", retries=0)
    assert not list((tmp_path / "d").glob("*.zip"))


@pytest.fixture
def fake_npz(server, sample_root) -> tuple[str, str]:
    """A tiny file in MedMNIST's npz layout made from real cells; returns (URL, md5)."""
    import cv2

    arrays = {}
    for split, step in (("train", 0), ("val", 1), ("test", 2)):
        picks = _images(sample_root)[step::3]
        arrays[f"{split}_images"] = np.stack(
            [cv2.resize(cv2.imread(str(p))[:, :, ::-1], (28, 28), interpolation=cv2.INTER_AREA) for _, p in picks])
        arrays[f"{split}_labels"] = np.array([[CLASSES.index(c)] for c, _ in picks], dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (server[1] / "blood.npz").write_bytes(buf.getvalue())
    return f"{server[0]}/blood.npz", hashlib.md5(buf.getvalue()).hexdigest()


def test_bloodmnist_download_and_read(fake_npz, tmp_path, monkeypatch):
    url, md5 = fake_npz
    monkeypatch.setitem(SOURCES["bloodmnist"], "md5", {**SOURCES["bloodmnist"]["md5"], 64: md5})
    monkeypatch.setenv("BCC_BLOODMNIST_URL", url)
    path = download("bloodmnist", tmp_path / "b", size=64, retries=0)
    assert path == tmp_path / "b" / "bloodmnist_64.npz"
    images, labels = read_bloodmnist(path, "val")
    assert images.shape[1:] == (28, 28, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and len(labels) == len(images) and set(labels) <= set(range(8))
    with pytest.raises(ValueError, match="split"):
        read_bloodmnist(path, "validation")


def test_bloodmnist_wrong_checksum(fake_npz, tmp_path):
    with pytest.raises(RuntimeError, match="checksum") as info:
        download("bloodmnist", tmp_path / "b", url=fake_npz[0], size=28, retries=0)
    assert "bloodmnist.npz" in str(info.value) and SOURCES["bloodmnist"]["md5"][28] in str(info.value)
    assert not (tmp_path / "b" / "bloodmnist.npz").exists()


def _kaggle_tree(tmp_path: Path, sample_root: Path) -> Path:
    version = tmp_path / "kh" / "datasets" / "unclesamulus" / "blood-cells-image-dataset" / "versions" / "1"
    for label, path in _images(sample_root):
        target = version / "bloodcells_dataset" / label
        target.mkdir(parents=True, exist_ok=True)
        (target / path.name).write_bytes(path.read_bytes())
    return version


def _fake_kagglehub(monkeypatch, result=None, error=None) -> list:
    calls = []

    def dataset_download(handle, *args, **kwargs):
        import os

        calls.append((handle, os.environ.get("KAGGLEHUB_CACHE")))
        if error:
            raise error
        return str(result)

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download))
    return calls


def test_kaggle_with_fake_kagglehub(tmp_path, sample_root, monkeypatch, small_counts):
    monkeypatch.delenv("KAGGLEHUB_CACHE", raising=False)
    calls = _fake_kagglehub(monkeypatch, result=_kaggle_tree(tmp_path, sample_root))
    root = download("kaggle", tmp_path / "kc")
    assert root.name == "bloodcells_dataset" and root.parent.name == "1"
    assert calls == [(SOURCES["kaggle"]["handle"], str(tmp_path / "kc"))]


def test_kaggle_count_mismatch_warns(tmp_path, sample_root, monkeypatch):
    _fake_kagglehub(monkeypatch, result=_kaggle_tree(tmp_path, sample_root))
    with pytest.warns(DataWarning, match="differs"):
        download("kaggle", tmp_path / "kc")


def test_kaggle_failures(tmp_path, monkeypatch):
    _fake_kagglehub(monkeypatch, error=ConnectionError("Name or service not known"))
    with pytest.raises(RuntimeError, match="bloodcells_dataset") as info:
        download("kaggle", tmp_path / "kc")
    assert "Name or service not known" in str(info.value)
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # not installed
    with pytest.raises(RuntimeError, match="pip install kagglehub"):
        download("kaggle", tmp_path / "kc")


def test_unknown_source_and_size(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        download("imagenet", tmp_path)
    with pytest.raises(ValueError, match="size"):
        download("bloodmnist", tmp_path, size=32)


# --- only verified downloads are used without being named (review finding 6) ----------------------

def test_failed_verification_is_neither_installed_nor_found(pbc_zip, tmp_path, monkeypatch):
    from bcc_utils.data import locate_root
    from bcc_utils.paths import find_data_dir

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BCC_DATA_DIR", raising=False)
    dest = tmp_path / "cache" / "pbc"
    with pytest.raises(RuntimeError, match="does not match the original PBC archive") as info:
        download("pbc", url=pbc_zip, retries=0)  # the real counts: the small archive fails them
    kept = dest / ".unverified" / "PBC_dataset_normal_DIB"
    assert f"BCC_DATA_DIR={kept}" in str(info.value) and sorted(p.name for p in kept.iterdir()) == sorted(CLASSES)
    with pytest.raises(FileNotFoundError, match="No class folders"):
        locate_root(dest)  # nothing was published where audit/train look
    assert not (dest / ".verified").exists() and not list(dest.glob(".extracting*"))
    with pytest.raises(FileNotFoundError, match="not verified") as info:
        find_data_dir()
    assert "download pbc" in str(info.value)


def test_verified_download_is_marked_and_found(pbc_zip, small_counts, tmp_path, monkeypatch):
    import json

    from bcc_utils.paths import find_data_dir

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BCC_DATA_DIR", raising=False)
    dest = tmp_path / "cache" / "pbc"
    (dest / ".extracting.999999999.0123abcd" / "junk").mkdir(parents=True)  # left by a run that was killed
    (dest / ".unverified").mkdir()  # an earlier failed attempt
    root = download("pbc", url=pbc_zip, retries=0)
    marker = json.loads((dest / ".verified").read_text())
    assert marker["source"] == "pbc" and marker["root"] == "PBC_dataset_normal_DIB"
    assert marker["files"] == PER_CLASS * len(CLASSES)
    assert sorted(p.name for p in dest.iterdir()) == [".verified", "PBC_dataset_normal_DIB"]
    assert find_data_dir() == dest and root.parent == dest
    # files removed by hand afterwards: the next check refuses the folder and takes the mark away
    next(root.glob("basophil/*.jpg")).unlink()
    with pytest.raises(RuntimeError, match="does not match"):
        download("pbc", url=pbc_zip, retries=0)
    assert not (dest / ".verified").exists()
    with pytest.raises(FileNotFoundError, match="not verified"):
        find_data_dir()


def test_kaggle_download_marked_only_when_counts_match(tmp_path, sample_root, monkeypatch, small_counts):
    from bcc_utils.paths import find_data_dir

    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BCC_DATA_DIR", raising=False)
    monkeypatch.delenv("KAGGLEHUB_CACHE", raising=False)
    dest = tmp_path / "cache" / "kaggle"
    tree = _kaggle_tree(dest, sample_root)  # kagglehub writes into KAGGLEHUB_CACHE, i.e. dest
    _fake_kagglehub(monkeypatch, result=tree)
    download("kaggle")
    assert (dest / ".verified").is_file() and find_data_dir() == dest
    monkeypatch.setitem(SOURCES["kaggle"], "class_counts", {c: PER_CLASS + 1 for c in CLASSES})
    with pytest.warns(DataWarning, match="not marked as verified"):
        download("kaggle")
    with pytest.raises(FileNotFoundError, match="not verified"):
        find_data_dir()


# --- wbc-external: the GitHub archive of zxaoyou/segmentation_WBC, sorted into class folders ----------------

#: A tiny archive in the repository's layout: per set, (image ID, class code) rows of its label file.
WBC_TINY = {"dataset1-jtsc": ("Dataset 1", "image ID,class label", [(1, 2), (2, 1), (3, 1), (4, 5)]),
            "dataset2-cellavision": ("Dataset 2", "image ID,class", [(1, 4), (2, 3)])}
WBC_CODES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def _bmp(path: Path) -> bytes:
    import cv2

    ok, data = cv2.imencode(".bmp", cv2.resize(cv2.imread(str(path)), (60, 60), interpolation=cv2.INTER_AREA))
    assert ok
    return data.tobytes()


def _wbc_zip(www: Path, sample_root: Path, rows=WBC_TINY, name: str = "wbc.zip") -> dict[str, bytes]:
    """Write the archive GitHub serves (``segmentation_WBC-master/...``); return its image bytes by our path."""
    cells = [p for label in ("neutrophil", "lymphocyte") for p in sorted((sample_root / label).glob("[!.]*.jpg"))[:3]]
    images = {}
    with zipfile.ZipFile(www / name, "w") as zf:
        top = "segmentation_WBC-master"
        zf.writestr(f"{top}/LICENSE", "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n")
        zf.writestr(f"{top}/README.md", "segmentation of WBC images")
        zf.writestr(f"{top}/Dataset 1.png", b"\x89PNG a figure of the README, not a cell")
        for ours, (folder, header, labels) in rows.items():
            lines = [header] + [f"{i},{code}" for i, code in labels]
            zf.writestr(f"{top}/Class Labels of {folder}.csv", "\r\n".join(lines) + "\r\n")
            for k, (i, code) in enumerate(labels):
                data = _bmp(cells[k % len(cells)])
                zf.writestr(f"{top}/{folder}/{i:03d}.bmp", data)
                zf.writestr(f"{top}/{folder}/{i:03d}.png", b"mask")  # the expert segmentation
                images[f"{ours}/images/{WBC_CODES.get(code)}/{i:03d}.bmp"] = data
    return images


@pytest.fixture
def wbc_counts(monkeypatch):
    """Make the registry expect the tiny archive built here."""
    from collections import Counter

    sets = {ours: {**SOURCES["wbc-external"]["sets"][ours], "n": len(labels),
                   "class_counts": dict(Counter(WBC_CODES[c] for _, c in labels))}
            for ours, (_, _, labels) in WBC_TINY.items()}
    monkeypatch.setitem(SOURCES["wbc-external"], "sets", sets)


def test_wbc_external_download_sorts_verifies_and_reuses(server, sample_root, wbc_counts, tmp_path):
    base, www, requests = server
    images = _wbc_zip(www, sample_root)
    dest = tmp_path / "cache" / "wbc-external"
    assert download("wbc-external", dest, url=f"{base}/wbc.zip", retries=0) == dest
    found = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*.bmp")}
    assert found == images  # every image, byte for byte, in the folder of its published class
    assert sorted(p.name for p in dest.iterdir()) == [".verified", "dataset1-jtsc", "dataset2-cellavision"]
    assert sorted(p.name for p in (dest / "dataset1-jtsc" / "masks").iterdir()) == ["001.png", "002.png",
                                                                                      "003.png", "004.png"]
    assert (dest / "dataset1-jtsc" / "labels.csv").read_text().startswith("image ID,class label")
    assert "GENERAL PUBLIC LICENSE" in (dest / "dataset2-cellavision" / "LICENSE").read_text()
    marker = json.loads((dest / ".verified").read_text())
    assert marker["source"] == "wbc-external" and marker["sets"] == {"dataset1-jtsc": 4, "dataset2-cellavision": 2}
    # the sorted sets are what evaluate --external reads
    from bcc_utils.external import resolve_class_folders

    root, folders = resolve_class_folders(dest / "dataset1-jtsc")
    assert root == dest / "dataset1-jtsc" / "images" and list(folders) == ["basophil", "lymphocyte", "neutrophil"]
    # a second call verifies the folder and does not touch the network
    assert download("wbc-external", dest, url=_closed_port_url(), retries=0) == dest
    assert requests == ["/wbc.zip"]
    # an image removed by hand: refused, no longer marked
    next((dest / "dataset1-jtsc" / "images" / "neutrophil").iterdir()).unlink()
    with pytest.raises(RuntimeError, match="dataset1-jtsc/neutrophil: 1 images, expected 2"):
        download("wbc-external", dest, url=_closed_port_url(), retries=0)
    assert not (dest / ".verified").exists()


def test_wbc_external_url_from_environment_and_cli(server, sample_root, wbc_counts, tmp_path, monkeypatch, capsys):
    from bcc_utils.cli import main

    base, www, _ = server
    _wbc_zip(www, sample_root)
    monkeypatch.setenv("BCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BCC_WBC_EXTERNAL_URL", f"{base}/wbc.zip")
    assert main(["download", "wbc-external", "--retries", "0"]) == 0
    out = capsys.readouterr().out
    assert "--external" in out and "BCC_DATA_DIR" not in out  # not training data
    assert (tmp_path / "cache" / "wbc-external" / "dataset2-cellavision" / "images" / "eosinophil").is_dir()


def test_wbc_external_counts_that_differ_are_not_installed(server, sample_root, tmp_path):
    base, www, _ = server
    _wbc_zip(www, sample_root)  # the registry expects 300 and 100 images
    dest = tmp_path / "w"
    with pytest.raises(RuntimeError, match="does not match the published wbc-external sets") as info:
        download("wbc-external", dest, url=f"{base}/wbc.zip", retries=0)
    assert "dataset1-jtsc/neutrophil: 2 images, expected 176" in str(info.value)
    assert sorted(p.name for p in dest.iterdir()) == [".unverified"]  # no set, no mark, no archive


def test_wbc_external_labels_and_images_must_match(server, sample_root, wbc_counts, tmp_path):
    base, www, _ = server
    rows = {**WBC_TINY, "dataset2-cellavision": ("Dataset 2", "image ID,class", [(1, 4), (2, 3), (3, 9)])}
    _wbc_zip(www, sample_root, rows, "badcode.zip")
    with pytest.raises(RuntimeError, match="unexpected row '3,9'"):
        download("wbc-external", tmp_path / "a", url=f"{base}/badcode.zip", retries=0)
    assert not list((tmp_path / "a").glob("*.zip"))  # a foreign archive is not reused
    _wbc_zip(www, sample_root, name="nolabel.zip")
    with zipfile.ZipFile(www / "nolabel.zip", "a") as zf:
        zf.writestr("segmentation_WBC-master/Dataset 2/007.bmp", _bmp(next(sample_root.glob("basophil/[!.]*.jpg"))))
    with pytest.raises(RuntimeError, match="dataset2-cellavision: image 007.bmp has no label"):
        download("wbc-external", tmp_path / "b", url=f"{base}/nolabel.zip", retries=0)


def test_wbc_external_failures_say_how_to_place_the_zip(server, tmp_path):
    base, www, requests = server
    dest = tmp_path / "w"
    with pytest.raises(RuntimeError) as info:
        download("wbc-external", dest, url=f"{base}/missing.zip", retries=2)
    message = str(info.value)
    assert "HTTP 404" in message and SOURCES["wbc-external"]["homepage"] in message
    assert str(dest / "segmentation_WBC-master.zip") in message and requests == ["/missing.zip"]
    zipfile.ZipFile(www / "other.zip", "w").writestr("something/else.txt", "not the repository")
    with pytest.raises(RuntimeError, match="not segmentation_WBC"):
        download("wbc-external", dest, url=f"{base}/other.zip", retries=0)
