"""Interactive panels for the notebooks (ipywidgets): move a slider, see the cell change.

Each panel is an ``ipywidgets.interactive`` — the object behind ``interact`` —
laid out in a grid; like ``interact`` (and unlike ``interact_manual``) it runs
once with its default values when created (with ipywidgets 8 and with Colab's 7),
so a notebook executed headless (CI, ``python -m bcc_utils series``) still runs
the code. Neither GitHub nor
nbval shows widgets: the notebooks follow every panel with a static figure.

All computing is done by the library (:mod:`bcc_utils.preprocess`,
:mod:`bcc_utils.augment`, :mod:`bcc_utils.explain`); the panels only wire controls to it and draw with
:mod:`bcc_utils.figures` and :mod:`bcc_utils.explain_plots`. Introduced in notebook 02.
"""

from __future__ import annotations

import html
import os
from typing import Mapping

import numpy as np

from bcc_utils import figures
from bcc_utils.explain_plots import prediction_figure  # the static figure shown after the prediction panel

#: Dropdown entry of the prediction panel that shows the uploaded file.
UPLOADED = "uploaded file"

#: One strength slider per augmentation component: (label, AugmentParams field(s), min, max, step, default).
#: ``flip`` has no strength (a toggle only). Tuple-valued fields get ``(value / 2, value)``.
STRENGTH_SLIDERS: dict[str, tuple] = {
    "rotate": ("rotate ±°", ("rotate_limit",), 0.0, 90.0, 5.0, 25.0),
    "scale": ("scale ±", ("scale_limit",), 0.0, 0.5, 0.05, 0.15),
    "shift_scale_rotate": ("shift ±", ("shift_limit",), 0.0, 0.25, 0.0125, 0.0625),
    "brightness_contrast": ("bright./contr. ±", ("brightness_limit", "contrast_limit"), 0.0, 0.6, 0.05, 0.2),
    "hue_saturation": ("hue ±", ("hue_shift_limit",), 0.0, 90.0, 5.0, 20.0),
    "noise": ("noise σ max", ("noise_std_range",), 0.0, 0.2, 0.005, 0.0277),
    "motion_blur": ("blur kernel max", ("motion_blur_limit",), 3, 31, 2, 7),
    "cutout": ("hole size max", ("cutout_size",), 0.02, 0.3, 0.01, 0.08),
}
_TUPLE_FIELDS = {"noise_std_range", "cutout_size"}


def _display(obj) -> None:
    from IPython.display import display

    display(obj)


def _interactive(f, **controls):
    """``ipywidgets.interactive(f, **controls)`` that has run ``f`` once with the defaults, on ipywidgets 7 and 8.

    ipywidgets 8 runs it when the panel is created; ipywidgets 7 (Google Colab's) only when the
    ``interactive`` object itself is displayed, which never happens here (:func:`_layout` shows its
    controls and output instead) nor in headless runs, so there it is run now, once.
    """
    import ipywidgets as W

    panel = W.interactive(f, **controls)
    if int(W.__version__.split(".")[0]) < 8:
        panel.on_displayed(panel.update, remove=True)  # not a second time when shown
        panel.update()
    return panel


def _layout(panel, rows: list[list[str]]):
    """Arrange the controls of an ``interactive`` in rows (by keyword name), output below."""
    import ipywidgets as W

    by_name = {getattr(c, "_kwarg", None): c for c in panel.kwargs_widgets}
    boxes = [W.HBox([by_name[n] for n in row if n in by_name]) for row in rows]
    return W.VBox([*boxes, panel.children[-1]])


def strength_overrides(component: str, value: float) -> dict:
    """``AugmentParams`` overrides that set one component's strength slider to ``value``."""
    _, names, *_ = STRENGTH_SLIDERS[component]
    out = {}
    for name in names:
        if name in _TUPLE_FIELDS:
            out[name] = (float(value) / 2, float(value))
        elif name == "motion_blur_limit":
            out[name] = max(3, int(value) | 1)  # an odd kernel size >= 3
        else:
            out[name] = float(value)
    return out


def clahe_explorer(images: Mapping[str, np.ndarray], display: bool = True):
    """Panel: pick a cell, move the clip limit and the tile grid, choose the colour space.

    Parameters
    ----------
    images
        ``{name: RGB uint8 image}``, e.g. one cell per class.
    display
        Show the panel (``False`` in tests).

    Returns
    -------
    ipywidgets.interactive
        Its ``result`` is the figure of the current settings.
    """
    import ipywidgets as W

    from bcc_utils.preprocess import CLAHE_SPACES, ClaheSettings, apply_clahe

    names = list(images)
    style = {"description_width": "initial"}

    def show(cell, clip_limit, tiles, space):
        settings = ClaheSettings(clip_limit=clip_limit, tile_grid_size=tiles, space=space)
        image = images[cell]
        title = f"{cell}: clip {clip_limit:g}, {tiles}×{tiles} tiles, {space}"
        fig = figures.before_after({title: (image, apply_clahe(image, settings))}, size=2.6)
        _display(fig)
        return fig

    panel = _interactive(
        show,
        cell=W.Dropdown(options=names, value=names[0], description="cell", style=style),
        clip_limit=W.FloatSlider(value=2.0, min=0.5, max=10.0, step=0.5, description="clip limit",
                                 continuous_update=False, style=style),
        tiles=W.IntSlider(value=8, min=1, max=32, step=1, description="tiles per side", continuous_update=False,
                          style=style),
        space=W.Dropdown(options=list(CLAHE_SPACES), value="lab", description="equalise in", style=style),
    )
    if display:
        _display(_layout(panel, [["cell", "space"], ["clip_limit", "tiles"]]))
    return panel


def augmentation_explorer(image: np.ndarray, n: int = 4, display: bool = True):
    """Panel: a toggle per augmentation, a strength slider per augmentation, and a draw number.

    Every enabled component is applied with probability 1 (so its effect is
    always visible); ``n`` draws with consecutive seeds are shown next to the original.

    Parameters
    ----------
    image
        A preprocessed RGB uint8 square image (e.g. 300 × 300 after CLAHE).
    n
        Augmented versions shown per setting.
    display
        Show the panel (``False`` in tests).

    Returns
    -------
    ipywidgets.interactive
        Its ``result`` is the figure of the current settings.
    """
    import ipywidgets as W

    from bcc_utils.augment import COMPONENTS, augment_once

    short = {"width": "auto"}
    toggles = {f"use_{c}": W.Checkbox(value=True, description=c, indent=False, layout=short) for c in COMPONENTS}
    sliders = {}
    for comp, (label, _, lo, hi, step, default) in STRENGTH_SLIDERS.items():
        cls = W.IntSlider if isinstance(default, int) else W.FloatSlider
        sliders[f"strength_{comp}"] = cls(value=default, min=lo, max=hi, step=step, description=label,
                                          continuous_update=False, style={"description_width": "110px"})

    def show(draw, **controls):
        enabled = [c for c in COMPONENTS if controls[f"use_{c}"]]
        overrides = {}
        for comp in STRENGTH_SLIDERS:
            overrides.update(strength_overrides(comp, controls[f"strength_{comp}"]))
        views = [augment_once(image, enabled, seed=draw * n + i, always=True, **overrides) for i in range(n)]
        titles = ["original"] + [f"draw {draw * n + i}" for i in range(n)]
        off = [c for c in COMPONENTS if c not in enabled]
        subtitle = "every component" if not off else "nothing" if not enabled else "all but " + ", ".join(off)
        fig = figures.image_grid([image, *views], titles=titles, ncols=n + 1, size=1.7,
                                 suptitle=f"applied with p = 1: {subtitle}")
        _display(fig)
        return fig

    panel = _interactive(show, draw=W.IntSlider(value=0, min=0, max=50, description="draw",
                                                continuous_update=False), **toggles, **sliders)
    names = list(toggles)
    slider_names = list(sliders)
    rows = [names[:5], names[5:], slider_names[:3], slider_names[3:6], slider_names[6:] + ["draw"]]
    if display:
        _display(_layout(panel, rows))
    return panel


def _uploaded(value) -> tuple[str, bytes] | None:
    """``(name, bytes)`` of the last file in a ``FileUpload`` value, or ``None`` when it holds none.

    ipywidgets 8 gives a tuple of ``{"name", "type", "size", "content": memoryview, "last_modified"}``;
    ipywidgets 7 (Google Colab's) a dict ``{file name: {"metadata": {"name", "type", "size", ...},
    "content": bytes}}``.
    """
    if isinstance(value, Mapping):
        files = [(key, f) for key, f in value.items()]
    else:
        files = [(None, f) for f in value or ()]
    if not files:
        return None
    key, f = files[-1]
    name = f.get("name") or (f.get("metadata") or {}).get("name") or key or "upload"
    return str(name), bytes(f["content"])


def prediction_panel(checkpoint, examples: Mapping[str, str | os.PathLike], temperature: float | None = None,
                     display: bool = True, target_layer: str | None = None, method: str = "gradcam"):
    """Panel: pick a test image or upload one; see the prediction, top-3 probabilities and its Grad-CAM.

    Parameters
    ----------
    checkpoint
        Path of ``best.pt`` or a ``(model, ckpt)`` pair from :func:`bcc_utils.run.load_model`.
    examples
        ``{label: image file}`` offered in the dropdown.
    temperature
        Divides the logits; ``None`` reads the run's calibration
        (:func:`bcc_utils.calibration.load_temperature`) for a checkpoint path, 1 for a pair.
    display
        Show the panel (``False`` in tests).
    target_layer, method
        Which map (see :func:`bcc_utils.explain_plots.prediction_figure`; default: Grad-CAM of the last
        feature map).

    Returns
    -------
    ipywidgets.interactive
        Its ``result`` is the figure of :func:`bcc_utils.explain_plots.prediction_figure`, or a message
        string when an uploaded file is not an image; ``temperature`` holds the temperature used.
    """
    import ipywidgets as W

    from bcc_utils.data import ImageReadError, read_image
    from bcc_utils.data.scan import decode_image
    from bcc_utils.run import load_model, load_temperature

    model, ckpt = checkpoint if isinstance(checkpoint, tuple) else load_model(checkpoint)
    if temperature is None and not isinstance(checkpoint, tuple):
        temperature = load_temperature(checkpoint)
    temperature = 1.0 if temperature is None else float(temperature)
    names = list(examples)
    image = W.Dropdown(options=names, value=names[0], description="image")
    upload = W.FileUpload(accept="image/*", multiple=False, description="upload")
    last: dict = {}

    def pick_upload(change):  # registered before the panel's own observers: the dropdown switches first
        if _uploaded(change["new"]):
            image.options = [*names, UPLOADED]
            image.value = UPLOADED

    upload.observe(pick_upload, names="value")

    def show(image, file):
        got = _uploaded(file) if image == UPLOADED else None
        key = (image, got[0], hash(got[1])) if got else (image,)
        if last.get("key") != key:  # the dropdown and the upload may both report one upload
            try:
                if image != UPLOADED:
                    result = prediction_figure(model, ckpt, read_image(examples[image]), temperature, name=image,
                                               target_layer=target_layer, method=method)
                elif got is None:
                    result = "Upload an image file (JPEG, PNG, TIFF, …)."
                else:
                    result = prediction_figure(model, ckpt, decode_image(got[1], got[0]), temperature, name=got[0],
                                               target_layer=target_layer, method=method)
            except ImageReadError as exc:
                result = f"Cannot show this file: {exc}"
            last.update(key=key, result=result)
        result = last["result"]
        _display(W.HTML(f"<b>{html.escape(result)}</b>") if isinstance(result, str) else result)
        return result

    panel = _interactive(show, image=image, file=upload)
    panel.temperature = temperature
    if display:
        _display(_layout(panel, [["image", "file"]]))
    return panel
