"""Class activation maps (Grad-CAM and relatives) and the randomisation sanity check.

The maps come from the ``grad-cam`` package (``pytorch_grad_cam``); this module finds the layer to
explain, feeds it images the way the model was trained (uint8, normalised, channels-last), and
measures how much a map depends on the trained weights (Adebayo et al. 2018, *Sanity Checks for
Saliency Maps*): a map computed with randomly re-initialised weights should look *different*. If it
does not, the map shows the image (edges, the dark nucleus), not what the model learned.

Figures are in :mod:`bcc_utils.explain_plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: CAM methods by name (classes of ``pytorch_grad_cam``).
METHODS: dict[str, str] = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
                           "layercam": "LayerCAM"}


def find_target_layer(model: nn.Module, img_size: int = 224) -> tuple[str, nn.Module]:
    """The layer whose output is the model's last spatial feature map: what Grad-CAM explains.

    ``model.forward_features`` runs on a dummy input with a forward hook on every module. The target is
    the module that *finishes last* among those whose output has exactly the shape of the
    ``forward_features`` output and is not changed in place afterwards (an in-place activation would
    change the saved activations behind the hook's back). Gives ``bn2`` for timm EfficientNet(-Lite)
    (batch norm + activation after ``conv_head``), ``layer4`` for ResNet, and ``blocks`` for
    MobileNetV3, whose ``forward_features`` stops before the pooled 1×1 ``conv_head``.

    Parameters
    ----------
    model
        A timm CNN (anything with ``forward_features`` returning B×C×h×w).
    img_size
        Side of the dummy input.

    Returns
    -------
    (str, torch.nn.Module)
        Qualified name of the layer and the layer.
    """
    if not hasattr(model, "forward_features"):
        raise ValueError(f"{type(model).__name__} has no forward_features(): cannot find the feature map")
    fired: list[tuple[str, nn.Module, torch.Tensor, int]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: fired.append((n, m, o, o._version))
                                     if torch.is_tensor(o) else None)
             for n, m in model.named_modules() if n]
    p = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            features = model.eval().forward_features(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    if features.ndim != 4:
        raise ValueError(f"forward_features gives shape {tuple(features.shape)}, not B×C×h×w: "
                         "transformers need a reshape_transform (not supported here)")
    for name, module, out, version in reversed(fired):
        if out.shape == features.shape and out._version == version:
            return name, module
    raise ValueError(f"no module of {type(model).__name__} outputs the feature map {tuple(features.shape)}")


def _channels_last(model: nn.Module) -> bool:
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def cam_maps(model: nn.Module, images, mean, std, targets: Sequence[int] | None = None, method: str = "gradcam",
             device=None, batch_size: int = 16, target_layer: nn.Module | None = None) -> np.ndarray:
    """Class activation maps of uint8 N×H×W×3 images (already preprocessed as for the model).

    Gradients are taken with respect to the input, with every parameter's ``requires_grad`` switched
    off for the call: frozen stages cannot stop the gradient, no weight gradient is computed, and the
    model comes back as it was (train/eval mode of every module, ``requires_grad``, ``.grad``).

    Parameters
    ----------
    model
        Classifier (channels-last or not).
    images
        uint8 array N×H×W×3.
    mean, std
        Normalisation of the model's input (``ckpt["norm"]``).
    targets
        Class index per image; ``None`` explains the predicted class.
    method
        A key of :data:`METHODS`.
    device
        Where the model is (default: the device of its parameters).
    target_layer
        Layer to explain (default: :func:`find_target_layer`).

    Returns
    -------
    numpy.ndarray
        float32 N×H×W, each map scaled to [0, 1] (all zeros if nothing supports the class).
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from bcc_utils.batches import nhwc_to_nchw, to_input

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 N×H×W×3 images, got {images.dtype} {images.shape}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layer = target_layer if target_layer is not None else find_target_layer(model, images.shape[1])[1]
    modes = {m: m.training for m in model.modules()}
    state = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for p, *_ in state:
        p.requires_grad_(False)
    cam = getattr(pytorch_grad_cam, METHODS[method])(model=model, target_layers=[layer])
    out = []
    try:
        with torch.enable_grad():
            for a in range(0, len(images), batch_size):
                x = to_input(nhwc_to_nchw(images[a:a + batch_size]), mean, std, device, _channels_last(model))
                t = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets[a:a + batch_size]]
                out.append(cam(input_tensor=x.requires_grad_(True), targets=t))
    finally:
        cam.activations_and_grads.release()
        for p, flag, grad in state:
            p.requires_grad_(flag)
            p.grad = grad
        for m, training in modes.items():
            m.train(training)
    maps = np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.float32)
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)


def randomized_copy(model: nn.Module, seed: int = 0, prefixes: Sequence[str] | None = None) -> nn.Module:
    """The same architecture with re-initialised weights (timm's own initialisation, seeded).

    Parameters
    ----------
    model
        A timm model (its ``pretrained_cfg["architecture"]`` names the architecture).
    seed
        Seed of the new weights (the global random state is left untouched).
    prefixes
        ``None``: randomise everything (Adebayo's full randomisation). Otherwise only parameters and
        buffers whose names start with one of these (e.g. ``["classifier", "bn2", "conv_head"]``); adding
        layers from the top down gives the cascading randomisation.
    """
    from bcc_utils.models import create_model

    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise ValueError(f"{type(model).__name__} does not say which timm architecture it is")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = create_model(name, num_classes=model.num_classes, pretrained=False)
    if prefixes is not None:
        prefixes = tuple(prefixes)
        trained = model.state_dict()
        fresh.load_state_dict({k: v if k.startswith(prefixes) else trained[k] for k, v in fresh.state_dict().items()})
    p = next(model.parameters())
    fresh.to(p.device)
    if _channels_last(model):
        fresh.to(memory_format=torch.channels_last)
    return fresh.train(model.training)


def map_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (N×H×W each); NaN where a map is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def edge_maps(images: np.ndarray) -> np.ndarray:
    """Blurred Sobel gradient magnitude of each uint8 N×H×W×3 image: an "edge detector" map in [0, 1]."""
    import cv2

    out = []
    for rgb in np.asarray(images):
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        mag = cv2.GaussianBlur(mag, (0, 0), sigmaX=max(1.0, rgb.shape[0] / 16))
        out.append(mag / mag.max() if mag.max() > 0 else mag)
    return np.asarray(out, dtype=np.float32).reshape(len(out), *np.shape(images)[1:3])


def sanity_check(model: nn.Module, images, mean, std, seed: int = 0, method: str = "gradcam",
                 targets: Sequence[int] | None = None, return_maps: bool = False):
    """Model-randomisation test (Adebayo et al. 2018): trained vs randomised-weights maps, per image.

    Both models explain the same class (the trained model's prediction unless ``targets`` is given).

    Returns
    -------
    pandas.DataFrame
        One row per image: ``target``, ``spearman_random`` (trained map vs randomised-weights map: near 1
        means the map does not depend on what the model learned) and two references for reading it:
        ``spearman_other_image`` (the trained map vs the trained map of the next image: how alike two
        maps of different cells are anyway, e.g. both centred) and ``spearman_edges`` (the trained map vs
        :func:`edge_maps` of the image). ``random_blank`` marks randomised maps that are all zero (no
        evidence for the class anywhere; their Spearman value is NaN). With ``return_maps``:
        ``(table, trained_maps, random_maps)``.
    """
    import pandas as pd

    from bcc_utils.inference import predict_logits

    images = np.asarray(images)
    if targets is None:
        targets = predict_logits(model, images, mean=mean, std=std, device=next(model.parameters()).device,
                                 channels_last=_channels_last(model))[0].argmax(1)
    targets = np.asarray(targets, dtype=np.int64)
    trained = cam_maps(model, images, mean, std, targets, method)
    random = cam_maps(randomized_copy(model, seed), images, mean, std, targets, method)
    table = pd.DataFrame({
        "target": targets,
        "spearman_random": map_similarity(trained, random),
        "spearman_other_image": map_similarity(trained, np.roll(trained, -1, axis=0)) if len(images) > 1 else np.nan,
        "spearman_edges": map_similarity(trained, edge_maps(images)),
        "random_blank": random.reshape(len(random), -1).max(1, initial=0.0) == 0,
    })
    return (table, trained, random) if return_maps else table


def center_share(maps: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """Share of each map's heat inside the central square of side ``frac`` (uniform map: ``frac**2``).

    PBC images are crops centred on the white cell, so this is a simple, measurable "is the heat on
    the cell" number: well above ``frac**2`` means centred on the cell, below it means on the margins.
    """
    maps = np.asarray(maps, dtype=np.float64)
    h, w = maps.shape[1:3]
    a, b = round(h * (1 - frac) / 2), round(w * (1 - frac) / 2)
    total = maps.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return maps[:, a:h - a, b:w - b].sum((1, 2)) / total


def stage_layers(model: nn.Module) -> dict[int, str]:
    """``{reduction: module name}`` of the stage outputs timm lists in ``model.feature_info`` (e.g. 8: ``blocks.2``).

    For maps with more resolution than the last layer (reduction 32) gives: pass
    ``dict(model.named_modules())[name]`` as ``target_layer`` to :func:`cam_maps`.
    """
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__} has no feature_info (not a timm CNN?)")
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return {int(e["reduction"]): e["module"] for e in entries}


def overlay(rgb_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map as a jet-coloured heatmap over the image (``alpha`` = weight of the heatmap); uint8 RGB."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    cam = np.asarray(cam, np.float32)
    if cam.shape != rgb_uint8.shape[:2]:
        cam = cv2.resize(cam, (rgb_uint8.shape[1], rgb_uint8.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb_uint8.astype(np.float32) / 255.0, np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=1.0 - alpha)


def model_views(ckpt: dict, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(original resized, model input)`` of a decoded RGB image: the run's size, the input with its CLAHE."""
    from bcc_utils.config import TrainConfig
    from bcc_utils.preprocess import preprocess_image, resize_square

    cfg = TrainConfig.from_dict(ckpt["config"])
    return resize_square(rgb, cfg.img_size), preprocess_image(rgb, cfg.img_size, cfg.clahe_settings())


def pick_examples(predictions, per_class: int = 1, pair: tuple[str, str] = ("ig", "neutrophil")):
    """Test images to explain: per class the most confident correct ones and most confident mistakes.

    Parameters
    ----------
    predictions
        DataFrame with ``path``, ``label``, ``pred``, ``confidence`` (``predictions.csv``).
    per_class
        Correct images and (at most) misclassified images per class.
    pair
        Two classes often confused; their confusions in both directions are added (one each, if any).

    Returns
    -------
    pandas.DataFrame
        The chosen rows in class order, with a ``kind`` column (``correct``, ``misclassified``,
        ``"ig → neutrophil"`` …).
    """
    import pandas as pd

    df = predictions.sort_values(["confidence", "path"], ascending=[False, True])
    ok = df["label"] == df["pred"]
    parts = []
    for label in dict.fromkeys(sorted(df["label"])):
        mine = df["label"] == label
        parts.append(df[mine & ok].head(per_class).assign(kind="correct"))
        parts.append(df[mine & ~ok].head(per_class).assign(kind="misclassified"))
    chosen = pd.concat(parts)
    for a, b in (pair, pair[::-1]):
        conf = df[(df["label"] == a) & (df["pred"] == b) & ~df["path"].isin(chosen["path"])]
        chosen = pd.concat([chosen, conf.head(1).assign(kind=f"{a} → {b}")])
    rank = chosen["kind"].map({"correct": 0, "misclassified": 1}).fillna(2)
    chosen = chosen.assign(_rank=rank).sort_values(["label", "_rank"], kind="stable")
    return chosen.drop(columns="_rank").reset_index(drop=True)
