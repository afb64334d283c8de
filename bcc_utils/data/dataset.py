"""A torch ``Dataset`` over one split of a manifest, reading the original image files."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from bcc_utils.data.locate import locate_root
from bcc_utils.data.scan import read_image
from bcc_utils.data.split import SPLITS, check_manifest_paths, load_manifest
from bcc_utils.paths import CLASSES


def _is_albumentations(transform: object) -> bool:
    return type(transform).__module__.split(".", 1)[0] == "albumentations"


class PBCDataset(Dataset):
    """Images of one split of a manifest, as ``(image, label_int)`` pairs.

    Parameters
    ----------
    root
        Dataset folder (anything :func:`~bcc_utils.data.locate_root` accepts).
    manifest
        A manifest DataFrame (``path, label, split``) or the path of its CSV.
    split
        ``"train"``, ``"val"`` or ``"test"``; ``None`` keeps every row.
    transform
        ``None``: the image is RGB uint8 HxWx3 numpy. An albumentations transform
        is called as ``transform(image=image)["image"]``; any other callable as
        ``transform(image)``.

    Raises
    ------
    ValueError
        For an unknown split or class name, or a manifest path outside ``root``
        (see :func:`~bcc_utils.data.split.check_manifest_paths`).

    Attributes
    ----------
    paths : list of str
        Paths relative to ``root``, in manifest order.
    labels : numpy.ndarray
        Integer labels (index into :data:`~bcc_utils.paths.CLASSES`).
    classes : tuple of str
        The class names.
    """

    def __init__(self, root: str | os.PathLike, manifest: pd.DataFrame | str | os.PathLike,
                 split: str | None, transform: Callable | None = None):
        self.root = locate_root(root)
        df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
        check_manifest_paths(df)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
            df = df[df["split"] == split]
        unknown = sorted(set(df["label"]) - set(CLASSES))
        if unknown:
            raise ValueError(f"manifest has unknown class names {unknown}")
        self.split = split
        self.classes = CLASSES
        self.paths = list(df["path"])
        self.labels = np.array([CLASSES.index(c) for c in df["label"]], dtype=np.int64)
        self.transform = transform
        self._albu = _is_albumentations(transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_image(self.root / self.paths[index])
        if self.transform is not None:
            image = self.transform(image=image)["image"] if self._albu else self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"PBCDataset(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
