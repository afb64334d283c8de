"""Class activation maps (Grad-CAM and relatives) and the randomisation sanity check.

The maps come from the ``grad-cam`` package (``pytorch_grad_cam``); this module finds the layer to
explain, feeds it images the way the model was trained (uint8, normalised, channels-last), and
measures how much a map depends on the trained weights (Adebayo et al. 2018, *Sanity Checks for
Saliency Maps*): a map computed with randomly re-initialised weights should look *different*. If it
does not, the map shows the image (edges, the dark nucleus), not what the model learned.

Which layer to explain is measured, not assumed: :func:`localisation_table` gives, per layer and method,
the share of the map's heat on the cell (:func:`center_share`). Figures are in
:mod:`bcc_utils.explain_plots`; the command ``python -m bcc_utils explain`` is in :mod:`bcc_utils.explain_cli`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import islice

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


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None, img_size: int = 224) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer to explain: ``None`` is the last feature map (:func:`find_target_layer`).

    A name is looked up in ``model.named_modules()``; an unknown name raises a ``ValueError`` that lists
    the candidates (:func:`candidate_layers`), so a typo on the command line ends in one useful line.
    """
    if layer is None:
        return find_target_layer(model, img_size)
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise ValueError(f"the target layer {type(layer).__name__} is not a module of this model")
        return name, layer
    named = dict(model.named_modules())
    if not layer or layer not in named:
        raise ValueError(f"no layer {layer!r} in {type(model).__name__}; try one of "
                         f"{', '.join(candidate_layers(model, img_size))}")
    return layer, named[layer]


def candidate_layers(model: nn.Module, img_size: int = 224) -> dict[str, int]:
    """``{layer name: stride}`` of the layers worth explaining, shallow to deep.

    Every stage of the network (the children of ``model.blocks`` for timm EfficientNets and
    MobileNets, else the stage outputs of :func:`stage_layers`) and the last feature map. The
    stride is measured (input side / feature-map side) on a dummy input of ``img_size``.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        names = [f"blocks.{i}" for i in range(len(blocks))]
    else:
        names = [n for _, n in sorted(stage_layers(model).items())]
    names.append(find_target_layer(model, img_size)[0])
    return layer_strides(model, list(dict.fromkeys(names)), img_size)


def layer_strides(model: nn.Module, names: Sequence[str], img_size: int = 224) -> dict[str, int]:
    """``{name: input side / side of the layer's output}``, measured on a dummy input of ``img_size``."""
    named = dict(model.named_modules())
    sides: dict[str, int] = {}
    hooks = [named[n].register_forward_hook(lambda m, i, o, n=n: sides.update({n: o.shape[-1]})) for n in names]
    p = next(model.parameters())
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval().forward_features(torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return {n: round(img_size / sides[n]) for n in names}


def _channels_last(model: nn.Module) -> bool:
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def cam_maps(model: nn.Module, images, mean, std, targets: Sequence[int] | None = None, method: str = "gradcam",
             device=None, batch_size: int = 16, target_layer: str | nn.Module | None = None) -> np.ndarray:
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
        Layer to explain, a module or its name (default: the last feature map, :func:`find_target_layer`).

    Returns
    -------
    numpy.ndarray
        float32 N×H×W: the layer's map (negative part cut off), resized bilinearly to the input
        size and min-max scaled to [0, 1]; all zeros if nothing supports the class.
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
    layer = resolve_layer(model, target_layer, images.shape[1])[1]
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
                 targets: Sequence[int] | None = None, return_maps: bool = False, target_layer: str | None = None):
    """Model-randomisation test (Adebayo et al. 2018): trained vs randomised-weights maps, per image.

    Both models explain the same class (the trained model's prediction unless ``targets`` is given)
    at the same layer, given by name (``target_layer``; default: the last feature map) because the
    randomised copy has modules of its own.

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

    if target_layer is not None and not isinstance(target_layer, str):
        raise ValueError("give the target layer by name: the randomised copy has its own modules")
    images = np.asarray(images)
    if targets is None:
        targets = predict_logits(model, images, mean=mean, std=std, device=next(model.parameters()).device,
                                 channels_last=_channels_last(model))[0].argmax(1)
    targets = np.asarray(targets, dtype=np.int64)
    trained = cam_maps(model, images, mean, std, targets, method, target_layer=target_layer)
    random = cam_maps(randomized_copy(model, seed), images, mean, std, targets, method, target_layer=target_layer)
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


def localisation_table(model: nn.Module, images, mean, std, layers: Mapping[str, int] | Sequence[str] | None = None,
                       methods: Sequence[str] = tuple(METHODS), targets: Sequence[int] | None = None,
                       frac: float = 0.5):
    """Mean :func:`center_share` of the maps of each layer × method: which maps are on the cell.

    Parameters
    ----------
    layers
        Layer names (or ``{name: stride}``); default :func:`candidate_layers`.
    methods
        Keys of :data:`METHODS`.
    targets
        Class per image; ``None``: the predicted class (the same for every layer and method).
    frac
        Side of the central square, as a fraction of the image side (uniform map: ``frac**2``).

    Returns
    -------
    pandas.DataFrame
        One row per layer and method: ``layer``, ``stride``, ``side`` (of its map), ``method``,
        ``share`` (mean over the images with a non-blank map), ``sem`` (its standard error), ``n``
        (images) and ``blank`` (maps that are all zero: no evidence for the class at that layer).
    """
    import pandas as pd

    from bcc_utils.inference import predict_logits

    images = np.asarray(images)
    if layers is None:
        layers = candidate_layers(model, images.shape[1])
    if not isinstance(layers, Mapping):
        layers = layer_strides(model, [resolve_layer(model, n, images.shape[1])[0] for n in layers], images.shape[1])
    if targets is None:
        targets = predict_logits(model, images, mean=mean, std=std, device=next(model.parameters()).device,
                                 channels_last=_channels_last(model))[0].argmax(1)
    rows = []
    for name, stride in layers.items():
        for method in methods:
            share = center_share(cam_maps(model, images, mean, std, targets, method, target_layer=name), frac)
            ok = share[np.isfinite(share)]
            rows.append({"layer": name, "stride": stride, "side": round(images.shape[1] / stride), "method": method,
                         "share": ok.mean() if len(ok) else np.nan,
                         "sem": ok.std(ddof=1) / np.sqrt(len(ok)) if len(ok) > 1 else np.nan,
                         "n": len(share), "blank": int(len(share) - len(ok))})
    return pd.DataFrame(rows)


def overlay(rgb_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """The map in a perceptual colormap (``inferno``: dark = 0, bright = 1) blended over the image; uint8 RGB.

    ``alpha`` is the weight of the map. The map is resized bilinearly if it is not the image's size.
    """
    import cv2
    from matplotlib import colormaps

    cam = np.asarray(cam, np.float32)
    if cam.shape != rgb_uint8.shape[:2]:
        cam = cv2.resize(cam, (rgb_uint8.shape[1], rgb_uint8.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    out = (1 - alpha) * rgb_uint8.astype(np.float32) / 255.0 + alpha * heat
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def explain_images(checkpoint, inputs, target_layer: str | None = None, method: str = "gradcam",
                   temperature: float | None = None, device: str = "cpu", batch_size: int = 32,
                   frac: float = 0.5) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Classify image files and explain each prediction: what ``python -m bcc_utils explain`` writes.

    Parameters
    ----------
    checkpoint
        Path of ``best.pt`` or a ``(model, ckpt)`` pair (:func:`bcc_utils.run.load_model`).
    inputs
        Image files and/or folders (:func:`bcc_utils.data.files.iter_images`).
    target_layer
        Layer name; ``None``: the last feature map.
    temperature
        As in :func:`bcc_utils.inference.predict_images` (``None``: the run's calibration, else 1).

    Yields
    ------
    (dict, numpy.ndarray, numpy.ndarray)
        ``{"file", "class", "confidence", "layer", "method", "center_share"}`` (``None`` for a blank
        map), the image resized to the model's input size, and the map (H×W in [0, 1]). The class is
        the prediction of :func:`bcc_utils.inference.predict_proba` (with the run's test-time
        augmentation); the map explains that class.
    """
    from bcc_utils.data.files import iter_images
    from bcc_utils.inference import predict_proba
    from bcc_utils.run import open_for_inference

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    model, ckpt, cfg, temperature, dev = open_for_inference(checkpoint, device, temperature)
    classes, (mean, std) = list(ckpt["classes"]), (ckpt["norm"]["mean"], ckpt["norm"]["std"])
    layer = resolve_layer(model, target_layer, cfg.img_size)[0]  # a bad name fails before any image is read
    files = iter_images(inputs)
    while batch := [(f, model_views(ckpt, rgb)) for f, rgb in islice(files, batch_size)]:
        originals = np.stack([v[0] for _, v in batch])
        x = np.stack([v[1] for _, v in batch])
        prob = predict_proba(model, x, mean=mean, std=std, device=dev, tta=cfg.tta,
                             channels_last=cfg.channels_last, temperature=temperature)
        pred = prob.argmax(1)
        maps = cam_maps(model, x, mean, std, pred, method, device=dev, target_layer=layer)
        for (f, _), p, k, cam, rgb, share in zip(batch, prob, pred, maps, originals, center_share(maps, frac)):
            yield ({"file": str(f), "class": classes[k], "confidence": float(p[k]), "layer": layer, "method": method,
                    "center_share": float(share) if np.isfinite(share) else None}, rgb, cam)


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
