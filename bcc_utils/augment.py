"""The paper's training augmentations as one albumentations 2.0.8 pipeline.

Every transform is built with ``strict=True``: albumentations 2.x otherwise
only *warns* about arguments it does not know and carries on with defaults
(``GaussNoise(var_limit=...)``, a 1.x argument, would silently give 2.x's much
stronger default noise). Each component has a name (:data:`COMPONENTS`), can be
switched off by name and has its probability and strength in
:class:`AugmentParams`. Images stay ``uint8`` HWC from start to end;
normalisation happens on the training device (:func:`bcc_utils.preprocess.normalize_batch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable

import albumentations as A
import cv2
import numpy as np

from bcc_utils.transforms import AffineChain, GaussNoiseU8
from bcc_utils.workers import reseed_transform

#: Component names, in the paper's order (the pipeline runs them in :data:`PIPELINE_ORDER`).
COMPONENTS: tuple[str, ...] = (
    "rotate",
    "scale",
    "flip",
    "shift_scale_rotate",
    "brightness_contrast",
    "hue_saturation",
    "noise",
    "motion_blur",
    "cutout",
)
#: Execution order: geometry first, then colour, blur (optics) before noise (sensor), occlusion last.
PIPELINE_ORDER: tuple[str, ...] = (
    "flip",
    "rotate",
    "scale",
    "shift_scale_rotate",
    "brightness_contrast",
    "hue_saturation",
    "motion_blur",
    "noise",
    "cutout",
)
#: Components that move pixels (merged into one warp by default).
GEOMETRIC: tuple[str, ...] = ("flip", "rotate", "scale", "shift_scale_rotate")
#: Components that change colour and contrast.
PHOTOMETRIC: tuple[str, ...] = ("brightness_contrast", "hue_saturation")
#: Components that imitate the optics and the sensor.
NOISE_BLUR: tuple[str, ...] = ("motion_blur", "noise")
#: Border handling for every geometric transform: mirror the image, never paint black corners.
BORDER = cv2.BORDER_REFLECT_101
_TAG = "bcc_component"


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities (``<component>_p``) and strengths of the training augmentations.

    The paper names its transforms without values. Where it gives numbers
    (rotation ±25°, scale ±15 %) they are used; elsewhere the defaults are the
    classic albumentations 1.x defaults such a paper would have run with:
    ``ShiftScaleRotate`` (shift ±6.25 %, scale ±10 %, rotate ±45°), brightness and
    contrast ±20 %, hue/sat/value ±20/30/20, motion blur kernel 3–7, all at p=0.5.
    Noise: 1.x's ``var_limit=(10, 50)`` on the 0–255 scale is a standard
    deviation of 3.2–7.1 grey levels, i.e. ``std_range=(0.0124, 0.0277)`` in 2.x
    units (2.x's own default, 0.2–0.44, is ~15× stronger). Cutout: 1–8 holes of
    4–8 % of the side (12–24 px at 300 px), filled with black.
    A hue shift of 20 (OpenCV units, ≈ 40°) is large for stained cells, where
    colour is diagnostic: a value the ablation may want to lower.
    """

    rotate_limit: float = 25.0
    rotate_p: float = 0.5
    scale_limit: float = 0.15
    scale_p: float = 0.5
    flip_p: float = 0.5
    shift_limit: float = 0.0625
    ssr_scale_limit: float = 0.10
    ssr_rotate_limit: float = 45.0
    shift_scale_rotate_p: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    brightness_contrast_p: float = 0.5
    hue_shift_limit: float = 20.0
    sat_shift_limit: float = 30.0
    val_shift_limit: float = 20.0
    hue_saturation_p: float = 0.5
    noise_std_range: tuple[float, float] = (0.0124, 0.0277)
    noise_per_channel: bool = True
    noise_p: float = 0.5
    motion_blur_limit: int = 7
    motion_blur_p: float = 0.5
    cutout_holes: tuple[int, int] = (1, 8)
    cutout_size: tuple[float, float] = (0.04, 0.08)
    cutout_p: float = 0.5

    def with_overrides(self, **overrides: Any) -> "AugmentParams":
        """Copy with some fields changed; an unknown name raises ``ValueError`` listing the valid ones."""
        valid = [f.name for f in fields(self)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"Unknown augmentation parameter(s) {unknown}; valid: {', '.join(valid)}.")
        return replace(self, **overrides)


def build_component(name: str, params: AugmentParams | None = None, always: bool = False) -> list[Any]:
    """The albumentations transform(s) of one component, tagged with its name.

    Parameters
    ----------
    name
        One of :data:`COMPONENTS`.
    params
        Strengths and probabilities (defaults: :class:`AugmentParams`).
    always
        Use probability 1 (for previews and widgets).
    """
    check_component_names([name])
    p = params or AugmentParams()
    kw = {"p": 1.0 if always else getattr(p, f"{name}_p"), "strict": True}
    geo = {"border_mode": BORDER, "keep_ratio": True}
    if name == "rotate":
        made = [A.Rotate(limit=p.rotate_limit, border_mode=BORDER, **kw)]
    elif name == "scale":
        made = [A.Affine(scale=(1 - p.scale_limit, 1 + p.scale_limit), **geo, **kw)]
    elif name == "flip":
        made = [A.HorizontalFlip(**kw), A.VerticalFlip(**kw)]
    elif name == "shift_scale_rotate":
        made = [A.Affine(translate_percent=(-p.shift_limit, p.shift_limit),
                         scale=(1 - p.ssr_scale_limit, 1 + p.ssr_scale_limit),
                         rotate=(-p.ssr_rotate_limit, p.ssr_rotate_limit), **geo, **kw)]
    elif name == "brightness_contrast":
        made = [A.RandomBrightnessContrast(brightness_limit=p.brightness_limit, contrast_limit=p.contrast_limit, **kw)]
    elif name == "hue_saturation":
        made = [A.HueSaturationValue(hue_shift_limit=p.hue_shift_limit, sat_shift_limit=p.sat_shift_limit,
                                     val_shift_limit=p.val_shift_limit, **kw)]
    elif name == "noise":
        made = [GaussNoiseU8(std_range=tuple(p.noise_std_range), per_channel=p.noise_per_channel, **kw)]
    elif name == "motion_blur":
        made = [A.MotionBlur(blur_limit=(3, int(p.motion_blur_limit)), **kw)]
    else:  # cutout
        made = [A.CoarseDropout(num_holes_range=tuple(p.cutout_holes), hole_height_range=tuple(p.cutout_size),
                                hole_width_range=tuple(p.cutout_size), fill=0, **kw)]
    for t in made:
        setattr(t, _TAG, name)
    return made


def check_names(names: Iterable[str], valid: Iterable[str], what: str = "augmentation component") -> None:
    """Raise ``ValueError`` listing the ``valid`` names if any of ``names`` is not one of them."""
    valid = tuple(valid)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"Unknown {what}(s) {unknown}; valid names: {', '.join(valid)}.")


def check_component_names(names: Iterable[str]) -> None:
    """Raise ``ValueError`` listing the valid names if any of ``names`` is not in :data:`COMPONENTS`."""
    check_names(names, COMPONENTS)


def build_train_transform(
    size: int,
    disable: Iterable[str] = (),
    *,
    seed: int | None = None,
    always: bool = False,
    merge_geometry: bool = True,
    **strength_overrides: Any,
) -> A.Compose:
    """The full training pipeline: ``uint8`` HWC in, ``uint8`` HWC (``size`` × ``size``) out.

    Parameters
    ----------
    size
        Side of the (already preprocessed) input; other sizes are resized first.
    disable
        Component names to leave out (ablations, widgets); unknown names raise ``ValueError``.
    seed
        Seed for reproducible previews (each transform gets its own stream).
    always
        Apply every enabled component with probability 1 (previews).
    merge_geometry
        Run the geometric components (flip, rotate, scale, shift_scale_rotate)
        as one :class:`~bcc_utils.transforms.AffineChain`: same random
        parameters, one warp instead of up to three (faster, less blur).
        ``False`` chains the stock transforms one after the other.
    **strength_overrides
        Fields of :class:`AugmentParams`, e.g. ``rotate_limit=10, noise_p=0``.
    """
    disable = [disable] if isinstance(disable, str) else list(disable)
    check_component_names(disable)
    params = AugmentParams().with_overrides(**strength_overrides)
    steps: list[Any] = [A.Resize(size, size, interpolation=cv2.INTER_AREA, p=1.0, strict=True)]
    geometric: list[Any] = []
    for name in PIPELINE_ORDER:
        if name in disable:
            continue
        if merge_geometry and name in GEOMETRIC:
            geometric += build_component(name, params, always=always)
            continue
        if geometric:
            steps.append(AffineChain(geometric, border_mode=BORDER, p=1.0, strict=True))
            geometric = []
        steps += build_component(name, params, always=always)
    if geometric:
        steps.append(AffineChain(geometric, border_mode=BORDER, p=1.0, strict=True))
    compose = A.Compose(steps, strict=True)
    if seed is not None:
        reseed_transform(compose, seed)
    return compose


def build_eval_transform(size: int) -> A.Compose:
    """Validation/test transform: no randomness, only a size guard (no-op on cached images)."""
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA, p=1.0, strict=True)], strict=True)


def iter_transforms(transform: Any):
    """Every transform inside a pipeline, depth first (Compose and AffineChain children included)."""
    yield transform
    for child in getattr(transform, "transforms", ()) or ():
        yield from iter_transforms(child)


def component_names(transform: A.Compose) -> list[str]:
    """Names of the components present in a pipeline, in execution order (each once)."""
    names: list[str] = []
    for t in iter_transforms(transform):
        name = getattr(t, _TAG, None)
        if name is not None and name not in names:
            names.append(name)
    return names


def find_component(transform: A.Compose, name: str) -> list[Any]:
    """The albumentations transform(s) of component ``name`` inside a pipeline (empty if disabled)."""
    check_component_names([name])
    return [t for t in iter_transforms(transform) if getattr(t, _TAG, None) == name]


def preview_components(image: np.ndarray, seed: int = 0, **strength_overrides: Any) -> dict[str, np.ndarray]:
    """``{"original": image, name: image with only that component applied (p=1)}`` for a figure or widget."""
    params = AugmentParams().with_overrides(**strength_overrides)
    out = {"original": image}
    for name in COMPONENTS:
        compose = A.Compose(build_component(name, params, always=True), strict=True)
        reseed_transform(compose, seed)
        out[name] = compose(image=image)["image"]
    return out


def augment_once(
    image: np.ndarray, enabled: Iterable[str] = COMPONENTS, seed: int | None = 0, always: bool = True, **overrides: Any
) -> np.ndarray:
    """Apply the enabled components to one image (for toggle/slider widgets); ``always`` forces p=1."""
    enabled = [enabled] if isinstance(enabled, str) else list(enabled)
    check_component_names(enabled)
    disable = [n for n in COMPONENTS if n not in enabled]
    size = image.shape[0] if image.shape[0] == image.shape[1] else max(image.shape[:2])
    t = build_train_transform(size, disable, seed=seed, always=always, **overrides)
    return t(image=image)["image"]


def preview_grid(image: np.ndarray, n: int = 16, seed: int = 0, **kwargs: Any) -> list[np.ndarray]:
    """``n`` draws of the full training pipeline (usual probabilities) on one image."""
    size = image.shape[0] if image.shape[0] == image.shape[1] else max(image.shape[:2])
    t = build_train_transform(size, seed=seed, **kwargs)
    return [t(image=image)["image"] for _ in range(n)]


def describe(params: AugmentParams | None = None) -> dict[str, dict[str, Any]]:
    """``{component: {parameter: value}}`` — the settings grouped by component, for printing."""
    values = asdict(params or AugmentParams())
    prefixes = {
        "rotate": ("rotate_",),
        "scale": ("scale_",),
        "flip": ("flip_",),
        "shift_scale_rotate": ("shift_", "ssr_"),
        "brightness_contrast": ("brightness_", "contrast_"),
        "hue_saturation": ("hue_", "sat_", "val_"),
        "noise": ("noise_",),
        "motion_blur": ("motion_blur_",),
        "cutout": ("cutout_",),
    }
    return {c: {k: v for k, v in values.items() if k.startswith(prefixes[c])} for c in COMPONENTS}
