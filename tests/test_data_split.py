"""Leak-free split, manifest round trip and the torch Dataset, on the real sample."""

from __future__ import annotations

import hashlib
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from bcc_utils.data import (LeakError, PBCDataset, check_no_leak, load_manifest, make_split, manifest_hash,
                            save_manifest, scan, split_counts)
from bcc_utils.data.sources import SOURCES
from bcc_utils.paths import CLASSES

FRACTIONS = {"train": 0.72, "val": 0.08, "test": 0.20}
pytestmark = pytest.mark.filterwarnings("ignore::bcc_utils.data.locate.DataWarning")  # the .DS_Store file


@pytest.fixture(scope="module")
def sample_scan(sample_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan(sample_root)


@pytest.fixture(scope="module")
def manifest(sample_scan):
    return make_split(sample_scan, seed=42)


def test_no_content_in_two_splits(manifest, sample_scan, sample_root):
    check_no_leak(manifest, sample_scan)
    check_no_leak(manifest, sample_root)  # hashes recomputed from the files
    sha = dict(zip(sample_scan.records["path"], sample_scan.records["sha256"]))
    hashes = manifest["path"].map(sha)
    assert hashes.notna().all() and hashes.is_unique  # one row per content group


def test_per_class_proportions_within_one_image(manifest):
    counts = pd.crosstab(manifest["label"], manifest["split"])
    assert list(counts.index) == sorted(CLASSES)
    for label, row in counts.iterrows():
        n = row.sum()
        for split, fraction in FRACTIONS.items():
            assert abs(row[split] - n * fraction) <= 1, (label, split, row[split], n)


def test_what_is_excluded_and_why(manifest, sample_scan):
    excluded = {e["path"]: e["reason"] for e in manifest.attrs["excluded"]}
    assert len(manifest) + len(excluded) == sample_scan.n_files
    assert "not an image" in excluded["neutrophil/.DS_169665.jpg"]
    kept = {"basophil/BA_20201.jpg", "basophil/BA_809918.jpg"} & set(manifest["path"])
    assert kept == {"basophil/BA_20201.jpg"}
    assert excluded["basophil/BA_809918.jpg"] == "duplicate of basophil/BA_20201.jpg"
    for path in ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"):
        assert path not in set(manifest["path"]) and excluded[path].startswith("label conflict")
    if sample_scan.n_files == SOURCES["pbc"]["n_files"]:
        assert len(manifest) == 17074


def test_same_data_and_seed_give_identical_bytes(manifest, sample_root, tmp_path):
    again = make_split(sample_root, seed=42)  # a fresh scan from disk
    a, b = save_manifest(manifest, tmp_path / "a.csv"), save_manifest(again, tmp_path / "sub" / "b.csv")
    data = a.read_bytes()
    assert data == b.read_bytes()
    assert data.startswith(b"path,label,split\n") and b"\r" not in data and data.endswith(b"\n")
    assert manifest_hash(manifest) == hashlib.sha256(data).hexdigest() == manifest_hash(again)
    other = make_split(sample_root, seed=7)
    assert manifest_hash(other) != manifest_hash(manifest)
    assert set(other["path"]) == set(manifest["path"])  # the seed changes where, not what


def test_manifest_round_trip(manifest, tmp_path):
    path = save_manifest(manifest, tmp_path / "m.csv")
    loaded = load_manifest(path)
    pd.testing.assert_frame_equal(loaded, manifest[["path", "label", "split"]].reset_index(drop=True))
    assert manifest_hash(loaded) == manifest_hash(manifest.sample(frac=1, random_state=0))  # order-free


def test_leaks_are_detected(manifest, sample_scan, sample_root):
    rows = [("basophil/BA_20201.jpg", "basophil", "train"), ("basophil/BA_809918.jpg", "basophil", "test")]
    leaky = pd.concat([manifest, pd.DataFrame(rows, columns=manifest.columns)]).drop_duplicates("path", keep="last")
    with pytest.raises(LeakError, match="BA_809918"):
        check_no_leak(leaky, sample_root)
    with pytest.raises(LeakError, match="more than once"):
        check_no_leak(pd.concat([manifest, manifest.head(1)]), sample_scan)


def test_bad_manifests_and_arguments_are_rejected(manifest, sample_scan, tmp_path):
    bad = manifest.copy()
    bad.loc[0, "split"] = "holdout"
    save_manifest(bad, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="holdout"):
        load_manifest(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("file,class\na.jpg,basophil\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_manifest(tmp_path / "cols.csv")
    with pytest.raises(ValueError, match="fractions"):
        make_split(sample_scan, fractions=(0.8, 0.1, 0.2))


def test_split_counts_table(manifest):
    table = split_counts(manifest)
    assert list(table.columns) == ["train", "val", "test", "total"]
    assert table.loc["total", "total"] == len(manifest)
    assert table.loc["basophil", "train"] == ((manifest["label"] == "basophil") & (manifest["split"] == "train")).sum()


def test_dataset_items(manifest, sample_root, tmp_path):
    path = save_manifest(manifest, tmp_path / "m.csv")
    ds = PBCDataset(sample_root, path, "val")
    assert len(ds) == (manifest["split"] == "val").sum() > 0
    image, label = ds[0]
    row = manifest[manifest["split"] == "val"].iloc[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert label == CLASSES.index(row["label"]) and isinstance(label, int)
    assert list(ds.labels) == [CLASSES.index(c) for c in manifest.loc[manifest["split"] == "val", "label"]]
    plain = PBCDataset(sample_root, manifest, "val", transform=lambda im: im[:10, :20])
    assert plain[0][0].shape == (10, 20, 3)
    with pytest.raises(ValueError, match="split"):
        PBCDataset(sample_root, manifest, "validation")


def test_dataset_with_albumentations_and_dataloader(manifest, sample_root):
    import albumentations as A
    import torch

    ds = PBCDataset(sample_root, manifest, "test", transform=A.Compose([A.Resize(32, 48)], strict=True))
    image, _ = ds[0]
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    batch, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert tuple(batch.shape) == (4, 32, 48, 3) and labels.dtype == torch.int64


@pytest.fixture
def data_with_outside_file(sample_root, tmp_path):
    """A data folder of real images, and a real image beside it (outside it)."""
    root = tmp_path / "data"
    rows = []
    for label in CLASSES:
        src = min(p for p in (sample_root / label).iterdir() if not p.name.startswith("."))
        (root / label).mkdir(parents=True)
        (root / label / src.name).write_bytes(src.read_bytes())
        rows.append((f"{label}/{src.name}", label, "train"))
    outside = tmp_path / "private" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes((root / rows[0][0]).read_bytes())
    return root, pd.DataFrame(rows, columns=["path", "label", "split"]), outside


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "backslashes"])
def test_manifest_paths_outside_the_data_folder_are_refused(data_with_outside_file, tmp_path, kind):
    from bcc_utils.cache import build_cache

    root, good, outside = data_with_outside_file
    bad_path = {"dotdot": "basophil/../../private/secret.jpg", "absolute": str(outside),
                "backslashes": "basophil\\..\\..\\private\\secret.jpg"}[kind]
    bad = pd.concat([good, pd.DataFrame([(bad_path, "basophil", "train")], columns=good.columns)])
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"path,label,split\n" + "".join(f"{p},{l},{s}\n" for p, l, s in bad.values).encode())
    with pytest.raises(ValueError, match=re.escape(repr(bad_path))):
        load_manifest(csv)
    with pytest.raises(ValueError, match="relative to the data folder"):
        PBCDataset(root, bad, "train")  # a manifest embedded in a checkpoint arrives as a DataFrame
    with pytest.raises(ValueError, match=re.escape(repr(bad_path))):
        build_cache(root, bad, 32, None, tmp_path / "cache", workers=0)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    assert len(PBCDataset(root, good, "train")) == len(CLASSES)  # inside paths still work
