"""Reading, locating, scanning and auditing: the real sample and bad inputs made in tmp_path."""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bcc_utils.data import DataWarning, ImageReadError, audit, locate_root, read_image, scan
from bcc_utils.data.sources import SOURCES
from bcc_utils.paths import CLASSES

DS_STORE = "neutrophil/.DS_169665.jpg"
BA_PAIR = ["basophil/BA_20201.jpg", "basophil/BA_809918.jpg"]
CONFLICT = ["eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"]


@pytest.fixture(scope="module")
def sample_scan(sample_root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scan(sample_root)
    result.caught = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return result


@pytest.fixture(scope="module")
def report(sample_scan):
    return audit(sample_scan)


def _real_jpgs(root: Path, label: str, n: int) -> list[Path]:
    return sorted(p for p in (root / label).iterdir() if not p.name.startswith("."))[:n]


def _one_image_per_class(sample_root: Path, root: Path) -> None:
    """A small dataset folder: the eight class folders, one real image each."""
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for src in _real_jpgs(sample_root, label, 1):
            shutil.copy(src, root / label / src.name)


# --- the real sample -------------------------------------------------------------------------

def test_only_the_ds_store_file_is_skipped_with_a_warning(sample_scan):
    assert [s["path"] for s in sample_scan.skipped] == [DS_STORE]
    assert ".DS_Store" in sample_scan.skipped[0]["reason"]
    assert any(DS_STORE in msg for msg in sample_scan.caught)
    assert sample_scan.n_files == len(sample_scan.records) + 1


def test_records_table(sample_scan, sample_root):
    rec = sample_scan.records
    assert list(rec.columns) == ["path", "label", "sha256", "width", "height"]
    assert list(rec["path"]) == sorted(rec["path"])
    assert set(rec["label"]) == set(CLASSES)
    assert (rec["path"].str.split("/").str[0] == rec["label"]).all()
    for row in rec.iloc[::50].itertuples():
        data = (sample_root / row.path).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert (row.height, row.width) == Image.open(sample_root / row.path).size[::-1]


def test_read_image_matches_pillow(sample_root):
    path = _real_jpgs(sample_root, "monocyte", 1)[0]
    img = read_image(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert img.dtype == np.uint8 and img.shape == ref.shape and img.flags["C_CONTIGUOUS"]
    assert np.abs(img.astype(int) - ref).mean() < 1.0


def test_audit_finds_the_documented_quirks(report, sample_root):
    assert report["skipped"][0]["path"] == DS_STORE and len(report["skipped"]) == 1
    assert report["n_images"] == report["n_files"] - 1 == sum(report["class_counts"].values())
    assert BA_PAIR in report["duplicate_groups"]
    assert report["label_conflicts"] == [CONFLICT]
    for group in report["duplicate_groups"]:
        assert len({(sample_root / p).read_bytes() for p in group}) == 1
    n_copies = sum(len(g) - 1 for g in report["duplicate_groups"])
    assert report["n_unique"] == report["n_images"] - n_copies - 1
    if report["n_files"] == SOURCES["pbc"]["n_files"]:  # the full set (original or 128 px copy)
        assert report["class_counts"] == SOURCES["pbc"]["class_counts"]
        assert len(report["duplicate_groups"]) == 17 and report["n_unique"] == 17074
    else:  # the sample: exactly the two documented pairs
        assert report["duplicate_groups"] == [BA_PAIR, CONFLICT]


def test_audit_sizes_and_prefixes(report, sample_scan):
    sizes = report["size_counts"]
    assert all(re.fullmatch(r"\d+x\d+", k) for k in sizes)
    assert sum(sizes.values()) == report["n_images"] and len(sizes) >= 2  # not "all 360x363"
    assert list(sizes.values()) == sorted(sizes.values(), reverse=True)
    prefixes = report["prefix_counts"]
    assert set(prefixes["neutrophil"]) <= {"SNE", "BNE", "NEUTROPHIL"}
    assert set(prefixes["ig"]) <= {"IG", "MY", "MMY", "PMY"} and len(prefixes["ig"]) >= 2
    assert set(prefixes["basophil"]) == {"BA"}
    assert {c: sum(p.values()) for c, p in prefixes.items()} == report["class_counts"]


# --- bad inputs --------------------------------------------------------------------------------

@pytest.fixture
def source_jpg(sample_root) -> Path:
    return _real_jpgs(sample_root, "lymphocyte", 1)[0]


def test_converted_inputs(tmp_path, source_jpg):
    bgr = cv2.imread(str(source_jpg))
    rgb = bgr[:, :, ::-1]
    alpha = np.full(bgr.shape[:2], 255, np.uint8)
    alpha[:10, :10] = 0
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([bgr, alpha]))
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    wobble = np.random.default_rng(0).integers(-100, 101, bgr.shape)  # 16-bit detail below one 8-bit step
    cv2.imwrite(str(tmp_path / "deep.png"), np.clip(bgr.astype(np.int32) * 257 + wobble, 0, 65535).astype(np.uint16))
    Image.fromarray(np.ascontiguousarray(rgb)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)

    out = read_image(tmp_path / "alpha.png")
    assert (out[:10, :10] == 255).all() and np.array_equal(out[10:, 10:], rgb[10:, 10:])
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == rgb.shape and (grey[..., 0] == grey[..., 2]).all()
    assert np.array_equal(grey[..., 0], cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == rgb.shape and np.abs(cmyk.astype(int) - rgb).mean() < 4


@pytest.mark.parametrize("kind, reason", [("zero", "empty"), ("truncated", "truncated"), ("text", "not"),
                                          ("missing", "cannot read")])
def test_bad_files_raise_naming_the_file(tmp_path, source_jpg, kind, reason):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(source_jpg.read_bytes()[: source_jpg.stat().st_size * 2 // 3])
    elif kind == "text":
        path.write_text("this is not a picture\n")
    with pytest.raises(ImageReadError, match=re.escape(path.name)) as info:
        read_image(path)
    assert isinstance(info.value, ValueError) and reason in info.value.reason


def test_truncation_found_even_if_the_decoder_pads(tmp_path, source_jpg, monkeypatch):
    """Older OpenCV builds return a grey-padded image for a truncated JPEG: the end-marker check still fires."""
    path = tmp_path / "cut.jpg"
    path.write_bytes(source_jpg.read_bytes()[:-200])
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((363, 360, 3), np.uint8))
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_pillow_fallback(tmp_path, source_jpg, monkeypatch):
    rgb = np.asarray(Image.open(source_jpg).convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "img.png")
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: None)  # as if OpenCV lacked the format
    assert np.array_equal(read_image(tmp_path / "img.png"), rgb)


@pytest.fixture
def messy_tree(tmp_path, sample_root, source_jpg) -> Path:
    """A kagglehub-like nested copy with odd folder names and bad files."""
    data = tmp_path / "download" / "versions" / "3" / "bloodcells_dataset"
    names = {"lymphocyte": "Lymphocyte ", "ig": "IG"}
    for label in CLASSES:
        if label == "monocyte":  # a missing class
            continue
        folder = data / names.get(label, label)
        folder.mkdir(parents=True)
        if label == "platelet":  # an empty class folder
            continue
        for src in _real_jpgs(sample_root, label, 2):
            shutil.copy(src, folder / src.name)
    (data / "basophil" / "zero.jpg").write_bytes(b"")
    (data / "basophil" / "cut.jpg").write_bytes(source_jpg.read_bytes()[: source_jpg.stat().st_size // 2])
    (data / "eosinophil" / "notes.jpg").write_text("not an image")
    (data / "junk").mkdir()
    shutil.copy(source_jpg, data / "junk" / "stray.jpg")
    return tmp_path / "download"


def test_scan_messy_tree(messy_tree):
    with pytest.warns(DataWarning) as caught:
        result = scan(messy_tree)
    messages = [str(w.message) for w in caught]
    assert result.root.name == "bloodcells_dataset"
    assert {s["path"]: s["reason"].split()[0] for s in result.skipped} == {
        "basophil/cut.jpg": "truncated", "basophil/zero.jpg": "empty", "eosinophil/notes.jpg": "not"}
    for bad in ("cut.jpg", "zero.jpg", "notes.jpg", "junk", "'monocyte'", "platelet"):
        assert any(bad in m for m in messages), bad
    rec = result.records
    assert len(rec) == 12 and result.n_files == 15
    assert set(rec["label"]) == set(CLASSES) - {"monocyte", "platelet"}
    assert rec.loc[rec["label"] == "lymphocyte", "path"].str.startswith("Lymphocyte /").all()
    assert not rec["path"].str.contains("stray").any()
    assert result.missing_classes == ["monocyte"] and result.empty_classes == ["platelet"]
    assert result.unknown_entries == ["junk"]


def test_locate_root_errors(tmp_path, messy_tree):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        locate_root(tmp_path / "nowhere")
    (tmp_path / "archive.zip").write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match="extract"):
        locate_root(tmp_path / "archive.zip")
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No class folders"):
        locate_root(tmp_path / "empty")
    shutil.copytree(messy_tree / "versions" / "3", messy_tree / "versions" / "4")
    with pytest.raises(ValueError, match="Several dataset folders"):
        locate_root(messy_tree)
    assert locate_root(messy_tree / "versions" / "4").parent.name == "4"


def test_two_folders_for_one_class_is_an_error(tmp_path):
    for name in ("IG", " ig", "basophil"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match="both class 'ig'"):
        scan(tmp_path)


# --- truncated JPEG with an end marker appended (review finding 11) -----------------------------

def _cut_with_end_marker(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) * 6 // 10] + b"\xff\xd9")  # what a cut download "repaired" by a tool looks like
    return target


def test_truncated_jpeg_with_end_marker_is_refused_silently(tmp_path, source_jpg, capfd, monkeypatch):
    from PIL import ImageFile

    path = _cut_with_end_marker(source_jpg, tmp_path / "cut60.jpg")
    with pytest.raises(ImageReadError, match=re.escape(path.name)) as info:
        read_image(path)
    assert info.value.reason.startswith("truncated JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a notebook may have switched Pillow to lenient
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is restored
    assert "Corrupt JPEG" not in capfd.readouterr().err  # libjpeg's anonymous warning never reaches stderr


def test_truncated_jpeg_with_end_marker_is_skipped_by_scan(tmp_path, sample_root):
    root = tmp_path / "data"
    _one_image_per_class(sample_root, root)
    victim = _real_jpgs(sample_root, "eosinophil", 2)[1]
    _cut_with_end_marker(victim, root / "eosinophil" / victim.name)
    with pytest.warns(DataWarning, match=re.escape(victim.name) + ".*truncated"):
        result = scan(root)
    assert [s["path"] for s in result.skipped] == [f"eosinophil/{victim.name}"]
    assert len(result.records) == len(CLASSES)


def test_complete_jpegs_decode_to_opencvs_pixels(tmp_path, sample_root):
    """The strict decoder must not change a single pixel, nor refuse any layout it does not handle itself."""
    files = [p for label in CLASSES for p in _real_jpgs(sample_root, label, 3)]
    for path in files:
        assert np.array_equal(read_image(path), cv2.imread(str(path))[:, :, ::-1]), path.name
    rgb = np.asarray(Image.open(files[0]).convert("RGB"))
    variants = {"progressive": {"progressive": True}, "444": {"subsampling": 0},
                "restart": {"restart_marker_blocks": 4}, "optimised": {"optimize": True}}
    for name, options in variants.items():
        Image.fromarray(rgb).save(tmp_path / f"{name}.jpg", quality=90, **options)
        ref = cv2.imread(str(tmp_path / f"{name}.jpg"))[:, :, ::-1]
        assert np.array_equal(read_image(tmp_path / f"{name}.jpg"), ref), name
        if name != "progressive":  # its scans must all be read: only the missing end marker is detected there
            with pytest.raises(ImageReadError, match="truncated"):
                read_image(_cut_with_end_marker(tmp_path / f"{name}.jpg", tmp_path / f"{name}-cut.jpg"))


# --- decoy folders and missing classes (review finding 10) --------------------------------------

def test_decoy_class_folder_is_not_taken_for_the_dataset(tmp_path, sample_root):
    top = tmp_path / "download"
    decoy = top / "neutrophil"  # e.g. a few examples saved beside the extracted archive
    decoy.mkdir(parents=True)
    for src in _real_jpgs(sample_root, "neutrophil", 2):
        shutil.copy(src, decoy / src.name)
    real = top / "PBC_dataset_normal_DIB"
    _one_image_per_class(sample_root, real)
    assert locate_root(top) == real
    assert set(scan(top).records["label"]) == set(CLASSES)


def test_require_classes(tmp_path, sample_root):
    from bcc_utils.data import require_classes

    root = tmp_path / "data"
    _one_image_per_class(sample_root, root)
    assert require_classes(tmp_path) == []
    shutil.rmtree(root / "basophil")
    shutil.rmtree(root / "ig")
    message = f"{root} has no folder for: basophil, ig; pass --allow-missing-classes to train anyway"
    with pytest.raises(ValueError, match=re.escape(message)):
        require_classes(root)
    for f in (root / "platelet").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no folder for: basophil, ig and an empty folder for: platelet"):
        require_classes(root)
    with pytest.warns(DataWarning, match="basophil, ig"):
        assert require_classes(root, allow_missing=True) == ["basophil", "ig", "platelet"]
