"""Two speed-ups for the augmentation pipeline, as albumentations 2.0.8 transforms.

Profiling one 300 px image (``python -m bcc_utils bench pipeline --profile``)
showed the time going to (1) stock ``GaussNoise`` on ``uint8`` (float64 noise,
float32 round trip: ~3 ms, more than the rest of the pipeline together) and
(2) the geometric components, each a full ``warpAffine``.

* :class:`GaussNoiseU8` draws the same Gaussian noise, rounded to ``int16``, and
  adds it with saturation in one OpenCV call (~0.9 ms).
* :class:`AffineChain` runs rotate/scale/flip/shift-scale-rotate with *one*
  warp: every child transform still samples its own parameters (same
  probabilities, same distributions, same random streams), only their 3×3
  matrices are multiplied and the image is resampled once. The geometry is
  exactly the composition; pixels differ only by the interpolation blur the
  extra resamplings would have added (less blur here). Out-of-frame areas
  reflect the original image (``BORDER_REFLECT_101``).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.core.transforms_interface import BaseTransformInitSchema


class GaussNoiseU8(A.GaussNoise):
    """``A.GaussNoise`` (same parameters and distribution), added in integers for ``uint8`` images.

    The noise is rounded to whole grey levels (the stock version truncates
    towards zero, which slightly *lowers* its standard deviation). Float
    images use the stock implementation.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"] if "image" in data else data["images"][0]
        if image.dtype != np.uint8:
            return super().get_params_dependent_on_data(params, data)
        sigma = self.py_random.uniform(*self.std_range) * 255.0
        mean = self.py_random.uniform(*self.mean_range) * 255.0
        h, w = image.shape[:2]
        c = image.shape[2] if image.ndim == 3 else 1
        gh, gw = max(1, int(h * self.noise_scale_factor)), max(1, int(w * self.noise_scale_factor))
        nc = c if self.per_channel else 1
        noise = np.empty((gh, gw, nc), np.int16)
        cv2.setRNGSeed(int(self.random_generator.integers(0, 2**31 - 1)))
        cv2.randn(noise, (mean,) * nc, (sigma,) * nc)  # a bare float would only fill channel 0
        if (gh, gw) != (h, w):
            noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        if noise.shape[2] != c:
            noise = np.repeat(noise, c, axis=2)
        return {"noise_map": noise.reshape(image.shape)}

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype == np.uint8 and noise_map.dtype == np.int16:
            return cv2.add(img, noise_map, dtype=cv2.CV_8U)
        return super().apply(img, noise_map, **params)


_FLIPS = {A.HorizontalFlip: "h", A.VerticalFlip: "v"}
_ROTATE, _AFFINE = A.Rotate, A.Affine


class AffineChain(A.ImageOnlyTransform):
    """Apply ``A.Rotate`` / ``A.Affine`` / ``A.HorizontalFlip`` / ``A.VerticalFlip`` children with one warp.

    Parameters
    ----------
    transforms
        The child transforms, in the order they would run; each keeps its own ``p``.
    interpolation, border_mode
        Used for the single warp (bilinear, reflect by default).
    p
        Probability of running the chain at all (normally 1).

    Image-only (classification); ``.transforms`` exposes the children.
    """

    class InitSchema(BaseTransformInitSchema):
        transforms: list[Any]
        interpolation: int
        border_mode: int

    def __init__(self, transforms: list[Any], interpolation: int = cv2.INTER_LINEAR,
                 border_mode: int = cv2.BORDER_REFLECT_101, p: float = 1.0):
        super().__init__(p=p)
        for t in transforms:
            ok = type(t) in _FLIPS or (isinstance(t, _ROTATE) and not t.crop_border) or (
                type(t) is _AFFINE and not t.fit_output)
            if not ok:
                raise TypeError(f"AffineChain cannot merge {type(t).__name__}: only Rotate (no crop_border), "
                                "Affine (no fit_output) and horizontal/vertical flips.")
        self.transforms = list(transforms)
        self.interpolation, self.border_mode = interpolation, border_mode

    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        children = np.random.SeedSequence(seed).spawn(len(self.transforms)) if seed is not None else None
        for i, t in enumerate(getattr(self, "transforms", ())):  # also called by the base __init__
            t.set_random_seed(None if children is None else int(children[i].generate_state(1)[0]))

    def set_random_state(self, random_generator: np.random.Generator, py_random: Any) -> None:
        super().set_random_state(random_generator, py_random)
        for t in getattr(self, "transforms", ()):
            t.set_random_state(random_generator, py_random)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        matrix, warp, flips = np.eye(3), False, {"h": False, "v": False}
        for t in self.transforms:
            t.params = {}
            if not t.should_apply():
                continue
            flip = _FLIPS.get(type(t))
            if flip == "h":
                m = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]])
            elif flip == "v":
                m = np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]])
            else:
                child = t.update_transform_params(t.get_params(), data)
                child.update(t.get_params_dependent_on_data(child, data))
                m, warp = child["matrix"], True
            if flip:
                flips[flip] = not flips[flip]
            t.params = {"matrix": m}
            matrix = m @ matrix
        # flips alone are exact permutations: cv2.flip, no resampling
        flip_code = {(True, False): 1, (False, True): 0, (True, True): -1}.get((flips["h"], flips["v"]))
        return {"matrix": matrix, "warp": warp, "flip_code": flip_code}

    def apply(self, img: np.ndarray, matrix: np.ndarray, warp: bool = True, flip_code: int | None = None,
              **params: Any) -> np.ndarray:
        if not warp:
            return img if flip_code is None else cv2.flip(img, flip_code)
        h, w = img.shape[:2]
        if img.ndim == 3 and img.shape[2] > 4:  # OpenCV warps at most 4 channels at once
            return fgeometric.warp_affine(img, matrix, self.interpolation, 0, self.border_mode, (h, w))
        return cv2.warpAffine(img, matrix[:2], (w, h), flags=self.interpolation, borderMode=self.border_mode)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("interpolation", "border_mode")
