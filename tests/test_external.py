"""``evaluate --external``: a smoke run measured on folders of class folders from another source.

Most tests use the real external sets (``wbc-external``, two sets of white cells from other labs) that lie
beside the checkout in ``shared/data`` and are never committed (GPL-3.0 source); without them they are
skipped. The tests on folders made from the PBC fixture images run everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bcc_utils.cli import main
from bcc_utils.external import load_class_map, resolve_class_folders
from bcc_utils.paths import CLASSES

pytestmark = [
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

#: The shared external sets (``python -m bcc_utils download wbc-external`` makes the same layout, as BMP).
EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wbc-external"
#: Images per class in each set, from the labels its authors published.
EXPECTED = {
    "dataset1-jtsc": {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48, "eosinophil": 22, "basophil": 1},
    "dataset2-cellavision": {"lymphocyte": 37, "neutrophil": 33, "monocyte": 15, "eosinophil": 12, "basophil": 3},
}
needs_external = pytest.mark.skipif(
    not EXTERNAL.is_dir(), reason=f"the external white-cell sets are not at {EXTERNAL} (shared/data/wbc-external "
                                  "beside the checkout; python -m bcc_utils download wbc-external fetches them)")


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    """``best.pt`` of a smoke run trained through the command line on the PBC sample."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("ext") / "run"
    assert main(["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
                 "--set", "num_threads=1", "--set", "bootstrap_resamples=100"]) == 0
    yield out / "best.pt"
    mp.undo()


def _evaluate(checkpoint: Path, folder: Path, out: Path, *extra: str) -> dict:
    argv = ["evaluate", str(checkpoint), "--external", str(folder), "--json", str(out), "--quiet", "--device", "cpu"]
    assert main([*argv, *extra]) == 0
    return json.loads(out.read_text())


def _check_consistent(r: dict, counts: dict[str, int]) -> None:
    """The report's counts, confusion and metrics agree with each other and with the folders."""
    assert r["n_per_class"] == {c: counts[c] for c in CLASSES if c in counts}  # training-class order
    assert r["n"] == sum(counts.values()) and r["present"] == list(r["n_per_class"])
    cm = np.array(r["confusion"]["counts"])
    assert r["confusion"]["columns"] == list(CLASSES) and cm.shape == (len(counts), 8)
    assert r["confusion"]["rows"] == r["present"]
    assert cm.sum(1).tolist() == [counts[c] for c in r["present"]]
    recalls = [cm[i, CLASSES.index(c)] / cm[i].sum() for i, c in enumerate(r["present"])]
    assert [r["recall"][c] for c in r["present"]] == pytest.approx(recalls)
    assert r["balanced_accuracy"] == pytest.approx(np.mean(list(r["recall"].values())))
    assert r["accuracy"] == pytest.approx(sum(cm[i, CLASSES.index(c)] for i, c in enumerate(r["present"])) / r["n"])
    for key in ("accuracy", "balanced_accuracy"):
        lo, hi = r[f"{key}_ci"]
        assert 0 <= lo <= r[key] + 1e-9 and r[key] - 1e-9 <= hi <= 1
    assert sum(r["predicted_counts"].values()) == r["n"] == r["n_correct"] + r["n_wrong"]
    for key in ("mean_confidence_correct", "mean_confidence_wrong"):
        assert r[key] is None or 1 / 8 - 1e-6 <= r[key] <= 1


# ------------------------------------------------------------------------------ the real external sets
@needs_external
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_external_sets(checkpoint, name, tmp_path, capsys):
    folder = EXTERNAL / name  # the set, not its images/ folder: found by itself
    counts = {d.name: sum(1 for _ in d.glob("*.png")) for d in (folder / "images").iterdir()}
    assert counts == EXPECTED[name]
    r = _evaluate(checkpoint, folder, tmp_path / "r.json", "--predictions", str(tmp_path / "p.csv"))
    text = capsys.readouterr().out
    assert "balanced accuracy" in text and ("top confusions" in text or r["n_wrong"] == 0)
    assert Path(r["folder"]) == folder / "images" and r["checkpoint"] == "best.pt"
    _check_consistent(r, counts)

    import pandas as pd

    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == r["n"] and df["label"].value_counts().to_dict() == counts
    assert (df["label"] == df["pred"]).sum() == r["n_correct"]
    assert df[[f"prob_{c}" for c in CLASSES]].sum(axis=1).to_numpy() == pytest.approx(1, abs=1e-4)


@needs_external
def test_class_map_renames_folders(checkpoint, tmp_path):
    """Folders named as another lab names them, mapped by a JSON class map (one skipped with null)."""
    theirs = {"basophil": "BAS", "eosinophil": "Eos", "lymphocyte": "Lymphocytes", "monocyte": "mono",
              "neutrophil": "Segmented neutrophil"}
    folder = tmp_path / "set"
    folder.mkdir()
    for ours, name in theirs.items():
        (folder / name).symlink_to(EXTERNAL / "dataset2-cellavision" / "images" / ours, target_is_directory=True)
    (folder / "Smudge cells").mkdir()  # a class the run does not know: skipped by the map
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({**{v: k for k, v in theirs.items()}, "smudge cells": None}))
    r = _evaluate(checkpoint, folder, tmp_path / "r.json", "--class-map", str(cmap))
    assert r["folders"] == {c: [theirs[c]] for c in CLASSES if c in theirs}
    _check_consistent(r, EXPECTED["dataset2-cellavision"])
    without = tmp_path / "missing.json"
    without.write_text(json.dumps({v: k for k, v in theirs.items()}))  # no entry for "Smudge cells"
    assert main(["evaluate", str(checkpoint), "--external", str(folder), "--class-map", str(without)]) == 2


@needs_external
def test_unknown_folder_is_refused_in_one_line(checkpoint, capsys):
    """Both sets at once (the folder above them) is not one set: refused, naming the folders and the classes."""
    assert main(["evaluate", str(checkpoint), "--external", str(EXTERNAL), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "'dataset1-jtsc'" in err and "'dataset2-cellavision'" in err and ", ".join(CLASSES) in err


# -------------------------------------------------------------- folders made from the PBC fixture images
def _copy_classes(sample_root: Path, target: Path, names: dict[str, str], per_class: int = 3) -> dict[str, int]:
    counts = {}
    for ours, theirs in names.items():
        files = sorted(p for p in (sample_root / ours).iterdir() if not p.name.startswith("."))[:per_class]
        (target / theirs).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, target / theirs / f.name)
        counts[ours] = len(files)
    return counts


def test_other_capitalisation_and_images_subfolder(checkpoint, sample_root, tmp_path, capsys):
    names = {"neutrophil": "NEUTROPHIL", "basophil": "Basophil", "ig": "IG", "platelet": " Platelet "}
    folder = tmp_path / "other-lab"
    counts = _copy_classes(sample_root, folder / "Images", names)
    (folder / "masks").mkdir()  # beside images/, as in the wbc-external sets: not read
    (folder / "Images" / "notes.txt").write_text("a file beside the class folders is not a class")
    r = _evaluate(checkpoint, folder, tmp_path / "r.json", "--predictions", str(tmp_path / "p.csv"))
    assert Path(r["folder"]) == folder / "Images"
    assert r["folders"] == {c: [names[c]] for c in CLASSES if c in names}
    _check_consistent(r, counts)
    table = capsys.readouterr().out
    assert "4 of 8 classes" in table and "platelet" in table


def test_external_preprocessing_matches_predict(checkpoint, sample_root, tmp_path, capsys):
    """Each image gets the probabilities ``predict`` gives it (same CLAHE, size, TTA, normalisation)."""
    import pandas as pd

    counts = _copy_classes(sample_root, tmp_path / "set", {"eosinophil": "Eosinophil", "monocyte": "MONOCYTE"}, 2)
    r = _evaluate(checkpoint, tmp_path / "set", tmp_path / "r.json", "--predictions", str(tmp_path / "p.csv"))
    _check_consistent(r, counts)
    capsys.readouterr()
    df = pd.read_csv(tmp_path / "p.csv")
    assert main(["predict", str(checkpoint), str(tmp_path / "set"), "--json", "--top-k", "8"]) == 0
    results = json.loads(capsys.readouterr().out)
    predicted = {Path(p["file"]).relative_to(tmp_path / "set").as_posix(): p for p in results}
    assert sorted(predicted) == sorted(df["path"])
    for _, row in df.iterrows():
        p = predicted[row["path"]]
        assert p["class"] == row["pred"]
        for t in p["top"]:
            assert t["prob"] == pytest.approx(row[f"prob_{t['class']}"], abs=1e-5)


def test_stand_in_set_has_the_layout_and_the_shift(sample_root, tmp_path):
    """``shifted_copy``: class folders ``evaluate_external`` reads, a yellower background, and no overwriting."""
    from bcc_utils.external import shifted_copy
    from bcc_utils.shift import measure_dataset, measure_external

    items = [(f, c) for c in ("lymphocyte", "neutrophil")
             for f in sorted(p for p in (sample_root / c).iterdir() if not p.name.startswith("."))[:3]]
    out = shifted_copy(items, tmp_path / "stand-in")
    root, folders = resolve_class_folders(out)
    assert root == out and sorted(folders) == ["lymphocyte", "neutrophil"]
    shifted = measure_external(out)
    original = measure_dataset([(f, c, None) for f, c in items])
    assert len(shifted) == 6 and shifted["path"].str.endswith(".png").all()
    assert (shifted["bg_b"].median() - original["bg_b"].median()) > 10  # towards +b*: yellow
    assert shifted["stained_fraction"].median() > 1.5 * original["stained_fraction"].median()  # zoomed in
    with pytest.raises(FileExistsError, match="exists"):
        shifted_copy(items[:1], out)


def test_external_sets_given_downloaded_or_stand_in(sample_root, tmp_path, monkeypatch):
    """A given folder is checked; offline, the download's failure becomes a warning and a stand-in, made once."""
    import bcc_utils.data
    from bcc_utils.external import external_sets

    with pytest.raises(FileNotFoundError, match="dataset1-jtsc"):
        external_sets(tmp_path)
    for name in ("dataset1-jtsc", "dataset2-cellavision"):
        (tmp_path / "given" / name).mkdir(parents=True)
    sets, stand_in = external_sets(tmp_path / "given")
    assert not stand_in and sets == {"Tecom": tmp_path / "given" / "dataset1-jtsc",
                                     "CellaVision": tmp_path / "given" / "dataset2-cellavision"}

    def offline(source, *args, **kwargs):
        raise RuntimeError(f"Could not download {source}: no connection (offline?)")

    monkeypatch.setattr(bcc_utils.data, "download", offline)
    items = [(f, "lymphocyte") for f in sorted(p for p in (sample_root / "lymphocyte").iterdir()
                                                if not p.name.startswith("."))[:2]]
    with pytest.warns(UserWarning, match="could not be fetched.*stand-in"):
        sets, stand_in = external_sets(stand_in_items=items, stand_in_dir=tmp_path / "stand-in")
    assert stand_in and sorted(p.name for p in (tmp_path / "stand-in" / "lymphocyte").iterdir()) == \
        sorted(f"{f.stem}.png" for f, _ in items)
    again, _ = external_sets(download_missing=False, stand_in_items=items[:1], stand_in_dir=tmp_path / "stand-in")
    assert again == sets and len(list((tmp_path / "stand-in" / "lymphocyte").iterdir())) == 2  # reused, not remade
    with pytest.raises(ValueError, match="stand-in"):
        external_sets(download_missing=False)


def test_transform_is_applied_to_every_image(checkpoint, sample_root, tmp_path):
    """A test-time transform sees each image once, before preprocessing; the identity changes nothing."""
    from bcc_utils.external import evaluate_external

    _copy_classes(sample_root, tmp_path / "set", {"eosinophil": "Eosinophil", "monocyte": "MONOCYTE"}, 2)
    seen = []

    def identity(rgb):
        seen.append(rgb.shape)
        return rgb

    plain, p0 = evaluate_external(checkpoint, tmp_path / "set", n_resamples=50)
    same, p1 = evaluate_external(checkpoint, tmp_path / "set", n_resamples=50, transform=identity)
    assert len(seen) == plain["n"] == 4 and same["transform"] == "identity" and plain["transform"] is None
    assert np.allclose(p0["confidence"], p1["confidence"])
    dark, p2 = evaluate_external(checkpoint, tmp_path / "set", n_resamples=50, transform=lambda rgb: rgb // 4)
    assert not np.allclose(p0["confidence"], p2["confidence"])


def test_external_confusion_figure_shows_each_rows_shares(checkpoint, sample_root, tmp_path):
    from bcc_utils.external import evaluate_external
    from bcc_utils.viz import plot_external_confusion

    _copy_classes(sample_root, tmp_path / "set", {"eosinophil": "Eosinophil", "monocyte": "MONOCYTE"}, 3)
    report, _ = evaluate_external(checkpoint, tmp_path / "set", n_resamples=50)
    fig = plot_external_confusion({"sample": report, "again": report})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["eosinophil (3)", "monocyte (3)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    counts = np.array(report["confusion"]["counts"])
    shown = sorted(t.get_text() for t in ax.texts)
    assert len(shown) == int((counts > 0).sum())  # one label per non-empty cell
    assert ax.images[0].get_array()[0].sum() == pytest.approx(1.0)  # rows are shares of the true class


def test_folder_errors(checkpoint, sample_root, tmp_path, capsys):
    folder = tmp_path / "set"
    _copy_classes(sample_root, folder, {"neutrophil": "Neutrophil", "lymphocyte": "Lymphozyten"}, 1)
    assert main(["evaluate", str(checkpoint), "--external", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'Lymphozyten'" in err and "--class-map" in err and "basophil" in err
    assert main(["evaluate", str(checkpoint), "--external", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(checkpoint), "--external", str(folder), "--split", "test"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate", str(checkpoint), "--class-map", str(tmp_path / "m.json")]) == 2
    assert "--external" in capsys.readouterr().err


def test_class_map_checks():
    assert load_class_map({"Band Cells": "NEUTROPHIL", "junk": None}) == {"band_cells": "neutrophil", "junk": None}
    with pytest.raises(ValueError, match="'band' maps to 'granulocyte', which is not a class"):
        load_class_map({"band": "granulocyte"})


def test_resolve_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        resolve_class_folders(tmp_path / "empty")
    for name in ("Neutrophil", "neutrophils", ".hidden", "__MACOSX"):
        (tmp_path / "s" / name).mkdir(parents=True)
    root, folders = resolve_class_folders(tmp_path / "s", {"Neutrophils": "neutrophil"})
    assert root == tmp_path / "s" and [d.name for d in folders["neutrophil"]] == ["Neutrophil", "neutrophils"]
    with pytest.raises(ValueError, match="'neutrophils' maps to no class"):
        resolve_class_folders(tmp_path / "s")
