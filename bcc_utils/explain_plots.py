"""Figures of class activation maps: a gallery per class, the randomisation check, one prediction.

The maps are computed by :mod:`bcc_utils.explain`; images are preprocessed as the model saw them
(:func:`bcc_utils.explain.model_views`). Every function returns a figure made without pyplot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from bcc_utils.figures import PBC_CREDIT, PhotoFigure, add_credit, image_grid

#: Names of the CAM methods in figure titles.
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


#: The colormap of every map: perceptual (lightness grows with the value), readable in grey, unlike jet.
CMAP = "inferno"


def _norm(ckpt: dict) -> tuple[list, list]:
    return ckpt["norm"]["mean"], ckpt["norm"]["std"]


def add_colorbar(fig: Figure, cmap: str = CMAP, label: str = "map value (1 = the map's maximum)",
                 width: float = 0.12) -> Figure:
    """A vertical colour bar for maps scaled to [0, 1], in a strip of ``width`` inches on the right."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    right = 1 - (width + 0.55) / fig.get_figwidth()  # room for the bar, its ticks and its label
    fig.subplots_adjust(right=right)
    top, bottom = fig.subplotpars.top, fig.subplotpars.bottom
    cax = fig.add_axes((right + 0.1 / fig.get_figwidth(), bottom + 0.1 * (top - bottom), width / fig.get_figwidth(),
                        0.8 * (top - bottom)))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return fig


def _layer_title(model, ckpt: dict, target_layer: str | None) -> str:
    from bcc_utils.explain import layer_strides, resolve_layer

    size = ckpt["config"]["img_size"]
    name = resolve_layer(model, target_layer, size)[0]
    side = -(-size // layer_strides(model, [name], size)[name])
    return f"{name}, {side} × {side}"


def plot_cam_gallery(model, ckpt: dict, examples, data_dir, methods: Sequence[str] = ("gradcam",),
                     target_layer: str | None = None, alpha: float = 0.5, cmap: str = CMAP,
                     credit: str | None = PBC_CREDIT) -> Figure:
    """One row per image: the original, the model's input (CLAHE), then one map per method on the original.

    The maps explain the *predicted* class (column ``pred``), so a misclassified cell shows what made
    the model choose the wrong class.

    Parameters
    ----------
    model, ckpt
        From :func:`bcc_utils.run.load_model`.
    examples
        Rows of ``predictions.csv`` (``path``, ``label``, ``pred``, ``confidence``; an optional ``kind``),
        e.g. from :func:`bcc_utils.explain.pick_examples`.
    data_dir
        The dataset folder the paths are relative to.
    methods
        Keys of :data:`bcc_utils.explain.METHODS`.
    target_layer
        Name of the layer to explain (default: the last feature map); its name and map size are in
        the column titles.
    """
    from bcc_utils.data import locate_root, read_image
    from bcc_utils.explain import cam_maps, model_views, overlay

    root = locate_root(data_dir)
    views = [model_views(ckpt, read_image(root / p)) for p in examples["path"]]
    originals = np.stack([v[0] for v in views])
    inputs = np.stack([v[1] for v in views])
    targets = [list(ckpt["classes"]).index(c) for c in examples["pred"]]
    maps = {m: cam_maps(model, inputs, *_norm(ckpt), targets, method=m, target_layer=target_layer) for m in methods}
    where = _layer_title(model, ckpt, target_layer)
    images, titles = [], []
    for i, row in enumerate(examples.itertuples(index=False)):
        kind = f" ({row.kind})" if getattr(row, "kind", "") not in ("", None, "correct") else ""
        images += [originals[i], inputs[i]]
        titles += [f"true {row.label}{kind}\npred {row.pred} {row.confidence:.0%}", "model input\n(CLAHE)"]
        for m in methods:
            images.append(overlay(originals[i], maps[m][i], alpha, cmap))
            titles.append(f"{METHOD_TITLES[m]}\n{where}")
    fig = image_grid(images, titles, ncols=2 + len(methods), size=1.6, credit=credit,
                     suptitle=f"What the model looks at for its prediction ({len(examples)} test images)")
    return add_colorbar(fig, cmap)


def plot_sanity_check(model, images, mean, std, labels: Sequence[str] | None = None, seed: int = 0,
                      method: str = "gradcam", target_layer: str | None = None, alpha: float = 0.5,
                      cmap: str = CMAP, credit: str | None = PBC_CREDIT) -> Figure:
    """Columns of images: the input, the trained model's map, the map with randomised weights.

    The randomised map's title gives its Spearman correlation with the trained map (see
    :func:`bcc_utils.explain.sanity_check`; "blank": the random network found no evidence for the
    class); the figure title gives the means, the reference and the number of blank maps.
    """
    from bcc_utils.explain import overlay, sanity_check

    images = np.asarray(images)
    table, trained, random = sanity_check(model, images, mean, std, seed=seed, method=method, return_maps=True,
                                          target_layer=target_layer)
    n = len(images)
    rho = [("blank" if blank else f"ρ = {r:.2f}") for r, blank in zip(table["spearman_random"], table["random_blank"])]
    shown = [*images, *(overlay(x, c, alpha, cmap) for x, c in zip(images, trained)),
             *(overlay(x, c, alpha, cmap) for x, c in zip(images, random))]
    titles = [*(labels or [""] * n), *[""] * n, *rho]
    mean_rho, mean_other = table["spearman_random"].mean(), table["spearman_other_image"].mean()
    suptitle = (f"{METHOD_TITLES[method]} ({target_layer or 'last layer'}) with trained vs random weights: "
                f"mean ρ = {mean_rho:.2f} (two different cells: {mean_other:.2f}); "
                f"blank random maps: {int(table['random_blank'].sum())} of {n}")
    fig = image_grid(shown, titles, ncols=n, size=1.4, row_labels=["input", "trained", "random\nweights"],
                     suptitle=suptitle, credit=credit)
    return add_colorbar(fig, cmap, label="map value")


def prediction_figure(model, ckpt: dict, image: str | os.PathLike | np.ndarray, temperature: float = 1.0,
                      name: str | None = None, top_k: int = 3, target_layer: str | None = None,
                      method: str = "gradcam", cmap: str = CMAP, credit: str | None = PBC_CREDIT) -> Figure:
    """One image: the model's input, the map of its prediction (with a colour bar), and the top-k probabilities.

    The probabilities are those of :func:`bcc_utils.inference.predict_proba` (the run's test-time
    augmentation, logits divided by ``temperature``); the map explains the top class.

    Parameters
    ----------
    image
        An image file or a decoded RGB uint8 array.
    name
        Shown in the title (default: the file name).
    target_layer, method
        Which map: a layer name (default: the last feature map) and a key of
        :data:`bcc_utils.explain.METHODS`.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from bcc_utils.config import TrainConfig
    from bcc_utils.data import read_image
    from bcc_utils.explain import cam_maps, model_views, overlay
    from bcc_utils.inference import predict_proba

    if isinstance(image, np.ndarray):
        rgb, name = image, name or "image"
    else:
        rgb, name = read_image(image), name or os.path.basename(image)
    cfg = TrainConfig.from_dict(ckpt["config"])
    classes = list(ckpt["classes"])
    original, x = model_views(ckpt, rgb)
    prob = predict_proba(model, x[None], mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"],
                         device=next(model.parameters()).device, tta=cfg.tta, channels_last=cfg.channels_last,
                         temperature=temperature)[0]
    order = np.argsort(-prob)[:top_k]
    cam = cam_maps(model, x[None], *_norm(ckpt), targets=[order[0]], method=method, target_layer=target_layer)[0]
    fig = PhotoFigure(figsize=(7.8, 2.5))
    grid = fig.add_gridspec(1, 5, width_ratios=[1, 1, 0.06, 0.5, 1.3], wspace=0.12)  # column 3: room for class names
    panels = [(x, "model input" + (" (CLAHE)" if cfg.clahe else "")),
              (overlay(original, cam, cmap=cmap),
               f"{METHOD_TITLES[method]} ({_layer_title(model, ckpt, target_layer)}):\n{classes[order[0]]}")]
    for k, (img, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 4])  # the bars are axes[2], the colour bar axes[3]
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=fig.add_subplot(grid[0, 2]))
    bar.ax.tick_params(labelsize=6)
    ax.barh([classes[i] for i in order][::-1], prob[order][::-1], color="tab:blue")
    for y, p in enumerate(prob[order][::-1]):
        inside = p > 0.75
        ax.text(p - 0.02 if inside else p + 0.02, y, f"{p:.1%}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.set_xlim(0, 1)
    ax.set_title(f"top-{len(order)} probabilities (T = {temperature:.2f})", fontsize=8)
    fig.suptitle(f"{name}: predicted {classes[order[0]]} ({prob[order[0]]:.0%})", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.97, top=0.74, bottom=0.17)
    return add_credit(fig, credit)
