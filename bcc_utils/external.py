"""Evaluate a trained run on images from another lab: how well does it survive a domain shift?

An external set is a folder with one sub-folder per class, for example the ``wbc-external`` sets
(``python -m bcc_utils download wbc-external``)::

    dataset1-jtsc/images/Neutrophil/001.png    (an ``images`` sub-folder is entered by itself)

Folder names match the run's classes in any capitalisation (``NEUTROPHIL`` is ``neutrophil``);
other names need a class map, a JSON object ``{"their name": "our class"}`` (``null`` skips the
folder). Every image is preprocessed exactly as :func:`bcc_utils.inference.predict_images` does
(the run's CLAHE, size, normalisation, test-time augmentation and fitted temperature).

Such a set usually holds only some of the training classes, so the metrics are taken over the
classes *present*: accuracy, balanced accuracy (the mean of their recalls) and the confusion of
each present class into *all* training classes, since a model may well answer a class the set
does not have.

Typical use::

    from bcc_utils.external import evaluate_external, format_report
    report, predictions = evaluate_external("runs/lite0-cpu/best.pt", "wbc-external/dataset1-jtsc")
    print(format_report(report))
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from bcc_utils.data.locate import normalise_class_name
from bcc_utils.paths import CLASSES

#: A sub-folder of this name (any capitalisation) holds the class folders (``<set>/images/<class>/``).
IMAGES_DIR = "images"
#: Folder names never read as classes (macOS zip debris, version control, notebook checkpoints).
_IGNORED_DIRS = {"__macosx", ".git", ".ipynb_checkpoints"}


def load_class_map(class_map, classes=CLASSES) -> dict[str, str | None]:
    """Read and check a class map: ``{their folder name: one of classes, or None to skip it}``.

    Parameters
    ----------
    class_map
        A dict, a JSON file holding one, or ``None`` (no map).
    classes
        The run's class names.

    Returns
    -------
    dict
        Keys normalised like class folder names (:func:`bcc_utils.data.locate.normalise_class_name`).

    Raises
    ------
    ValueError
        If the file is not a JSON object of strings, or a value is not a class.
    """
    if class_map is None:
        return {}
    source = "class map"
    if not isinstance(class_map, dict):
        source = str(class_map)
        try:
            class_map = json.loads(Path(class_map).expanduser().read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not valid JSON ({exc})") from None
        if not isinstance(class_map, dict):
            raise ValueError(f'{source} must hold a JSON object {{"their name": "our class"}}')
    out = {}
    for name, target in class_map.items():
        if target is not None and (not isinstance(target, str) or normalise_class_name(target) not in classes):
            raise ValueError(f"{source}: {name!r} maps to {target!r}, which is not a class; valid classes: "
                             f"{', '.join(classes)} (or null to skip the folder)")
        out[normalise_class_name(str(name))] = None if target is None else normalise_class_name(target)
    return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name.lower() not in _IGNORED_DIRS)


def resolve_class_folders(folder, class_map=None, classes=CLASSES) -> tuple[Path, dict[str, list[Path]]]:
    """Find the class folders of an external set and the class each one stands for.

    Parameters
    ----------
    folder
        The set: a folder of class folders, or one holding an ``images`` sub-folder of them (then
        its other sub-folders, such as ``masks``, are not read).
    class_map
        See :func:`load_class_map`; it is consulted before the class names themselves.
    classes
        The run's class names.

    Returns
    -------
    root : Path
        The folder that directly holds the class folders.
    folders : dict
        ``{class: [sub-folders]}`` in the order of ``classes`` (several folders may map to one class).

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    ValueError
        If a sub-folder maps to no class (one line naming it and the valid names), or none is found.
    """
    classes = list(classes)
    mapping = load_class_map(class_map, classes)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"external set folder does not exist: {root}")
    subdirs = _subdirs(root)
    images = [d for d in subdirs if normalise_class_name(d.name) == IMAGES_DIR]
    if images and IMAGES_DIR not in mapping and IMAGES_DIR not in classes:
        root, subdirs = images[0], _subdirs(images[0])
    found: dict[str, list[Path]] = {}
    unknown = []
    for d in subdirs:
        key = normalise_class_name(d.name)
        target = mapping.get(key, key if key in classes else "")
        if target is None:
            continue  # skipped on purpose by the class map
        if target:
            found.setdefault(target, []).append(d)
        else:
            unknown.append(d.name)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        verb = "folders {} map" if len(unknown) > 1 else "folder {} maps"
        raise ValueError(f"{root}: {verb.format(names)} to no class; valid names (any capitalisation): "
                         f"{', '.join(classes)}; give others with --class-map FILE "
                         f'(JSON {{"their name": "our class"}})')
    if not found:
        raise ValueError(f"{root} holds no class folders; expected sub-folders named like {', '.join(classes)}")
    return root, {c: found[c] for c in classes if c in found}


def _balanced_accuracy_ci(correct: np.ndarray, y: np.ndarray, n_resamples: int, seed: int,
                          level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the balanced accuracy, resampling within each class (its size kept)."""
    rng = np.random.default_rng(seed)
    recalls = []
    for c in np.unique(y):
        hits = correct[y == c].astype(float)
        recalls.append(hits[rng.integers(0, len(hits), (n_resamples, len(hits)))].mean(1))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return np.percentile(np.mean(recalls, 0), q).tolist()


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def evaluate_external(checkpoint, folder, class_map=None, *, device: str = "cpu", temperature: float | None = None,
                      batch_size: int | None = None, n_resamples: int | None = None, seed: int | None = None,
                      top_confusions: int = 5, progress: bool = False, transform=None):
    """Classify every image of an external set and measure the run on it.

    Parameters
    ----------
    checkpoint
        ``best.pt`` of a run (or a ``(model, ckpt)`` pair from :func:`bcc_utils.run.load_model`).
    folder, class_map
        The set and how its folder names map to classes (see :func:`resolve_class_folders`).
    device
        ``"cpu"``, ``"cuda"``, ``"auto"`` …
    temperature
        Divides the logits; ``None``: the run's fitted one (:func:`bcc_utils.run.load_temperature`), else 1.
    batch_size, n_resamples, seed
        Default to the run's ``eval_batch_size``, ``bootstrap_resamples`` and ``seed``.
    top_confusions
        How many of the largest off-diagonal confusion counts to list.
    transform
        ``None``, or a function of one RGB ``uint8`` image returning another, applied to every image as read,
        before the run's preprocessing: a test-time normalisation (e.g. :func:`bcc_utils.shift.white_balance`).

    Returns
    -------
    report : dict
        ``n``, ``n_per_class`` and ``recall`` (classes present), ``accuracy``, ``balanced_accuracy`` and
        their bootstrap 95 % intervals (``*_ci``), ``confusion`` (``rows``: present classes, ``columns``:
        all run classes, ``counts``), ``predicted_counts``, ``top_confusions``, ``mean_confidence_correct``
        and ``_wrong``, plus the run's settings and any ``skipped`` files.
    predictions : pandas.DataFrame
        One row per image: ``path`` (relative to the set), ``folder``, ``label``, ``pred``, ``correct``,
        ``confidence``, ``prob_<class>``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bcc_utils.config import TrainConfig
    from bcc_utils.data.files import image_files
    from bcc_utils.data.scan import read_image
    from bcc_utils.device import resolve_device
    from bcc_utils.inference import predict_proba
    from bcc_utils.metrics import bootstrap_ci
    from bcc_utils.preprocess import preprocess_image
    from bcc_utils.run import load_model, load_temperature

    dev = resolve_device(device)
    if isinstance(checkpoint, tuple):
        (model, ckpt), name = checkpoint, "(model in memory)"
        temperature = 1.0 if temperature is None else temperature
    else:
        name = Path(checkpoint).name
        temperature = load_temperature(checkpoint) if temperature is None else temperature
        model, ckpt = load_model(checkpoint, dev)
    classes = list(ckpt["classes"])
    root, folders = resolve_class_folders(folder, class_map, classes)
    cfg = TrainConfig.from_dict(ckpt["config"])
    batch_size = batch_size or cfg.eval_batch_size
    n_resamples, seed = n_resamples or cfg.bootstrap_resamples, cfg.seed if seed is None else seed

    items = [(f, c, d.name) for c, dirs in folders.items() for d in dirs for f in image_files([d])]
    for c, dirs in folders.items():
        if not any(f[1] == c for f in items):
            warnings.warn(f"{', '.join(str(d) for d in dirs)}: no images (class {c} left out)", stacklevel=2)
    kept, probs, skipped = [], [], []
    for a in tqdm(range(0, len(items), batch_size), desc="external", leave=False, disable=not progress):
        batch = []
        for f, c, d in items[a:a + batch_size]:
            try:
                rgb = read_image(f)
                batch.append(preprocess_image(transform(rgb) if transform else rgb, cfg.img_size,
                                              cfg.clahe_settings()))
            except ValueError as exc:  # not an image: skipped and reported, as predict does in folders
                warnings.warn(f"skipping {exc}", stacklevel=2)
                skipped.append({"path": f.relative_to(root).as_posix(), "reason": str(exc)})
                continue
            kept.append((f, c, d))
        if batch:
            probs.append(predict_proba(model, np.stack(batch), mean=ckpt["norm"]["mean"], std=ckpt["norm"]["std"],
                                       device=dev, batch_size=batch_size, tta=cfg.tta,
                                       channels_last=cfg.channels_last, temperature=temperature))
    if not kept:
        raise ValueError(f"{root}: no readable images in the class folders")
    prob = np.concatenate(probs)
    k = len(classes)
    y = np.array([classes.index(c) for _, c, _ in kept])
    pred = prob.argmax(1)
    conf = prob.max(1)
    correct = pred == y
    counts = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    present = [i for i in range(k) if counts[i].sum()]
    recall = {classes[i]: float(counts[i, i] / counts[i].sum()) for i in present}
    off = [(int(counts[i, j]), classes[i], classes[j]) for i in present for j in range(k) if i != j and counts[i, j]]
    off.sort(key=lambda t: (-t[0], classes.index(t[1]), classes.index(t[2])))
    report = {
        "checkpoint": name, "best_epoch": int(ckpt.get("epoch", 0)), "model": cfg.model, "img_size": cfg.img_size,
        "clahe": bool(cfg.clahe), "tta": cfg.tta, "temperature": float(temperature),
        "transform": getattr(transform, "__name__", type(transform).__name__) if transform else None,
        "folder": str(root), "folders": {c: [d.name for d in dirs] for c, dirs in folders.items()},
        "classes": classes, "present": [classes[i] for i in present],
        "n": int(len(y)), "n_per_class": {classes[i]: int(counts[i].sum()) for i in present},
        "accuracy": float(correct.mean()),
        "accuracy_ci": bootstrap_ci(y, pred, k, n_resamples, seed)["accuracy"],
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "balanced_accuracy_ci": _balanced_accuracy_ci(correct, y, n_resamples, seed),
        "recall": recall,
        "confusion": {"rows": [classes[i] for i in present], "columns": classes,
                      "counts": counts[present].astype(int).tolist()},
        "predicted_counts": {c: int(n) for c, n in zip(classes, counts.sum(0))},
        "top_confusions": [{"true": t, "pred": p, "n": n, "share": n / int(counts[classes.index(t)].sum())}
                           for n, t, p in off[:top_confusions]],
        "mean_confidence_correct": _mean_or_none(conf[correct]),
        "mean_confidence_wrong": _mean_or_none(conf[~correct]),
        "n_correct": int(correct.sum()), "n_wrong": int((~correct).sum()),
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "level": 0.95,
                      "balanced_accuracy": "resampled within each class"},
        "skipped": skipped,
    }
    df = pd.DataFrame({"path": [f.relative_to(root).as_posix() for f, _, _ in kept],
                       "folder": [d for _, _, d in kept], "label": [classes[i] for i in y],
                       "pred": [classes[i] for i in pred], "correct": correct, "confidence": conf.round(6)})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = prob[:, i].round(6)
    return report, df


#: The shift of :func:`shifted_copy`'s stand-in set: a yellow cast (towards +b*, as the first wbc-external
#: set's background) and a tighter crop (its cells fill more of the frame), at the corruption benchmark's levels.
STAND_IN_SHIFT: tuple[tuple[str, int, float | None], ...] = (("color", 5, 90.0), ("zoom", 3, None))


def shifted_copy(items, out, shift=STAND_IN_SHIFT, seed: int = 0) -> Path:
    """Write a stand-in for another lab's set: PBC images with a known shift, as ``out/<class>/<name>.png``.

    For checks where no external set is at hand (CI): the result has the layout :func:`evaluate_external`
    reads, and its shift is known, unlike a real lab's. It is not another lab's data and says nothing
    about one.

    Parameters
    ----------
    items
        ``(image path, class)`` pairs (more fields are ignored), e.g. from :func:`bcc_utils.shift.pbc_items`.
    out
        New or empty folder to write into; an existing file is never overwritten.
    shift
        ``(kind, severity, direction)`` steps of :func:`bcc_utils.corruptions.corrupt`, applied in order.
    """
    import cv2

    from bcc_utils.corruptions import corrupt
    from bcc_utils.data.scan import read_image

    out = Path(out)
    for i, (path, label, *_) in enumerate(items):
        rgb = read_image(path)
        for kind, severity, direction in shift:
            rgb = corrupt(rgb, kind, severity, seed=seed, key=i, direction=direction)
        target = out / label / f"{Path(path).stem}.png"
        if target.exists():
            raise FileExistsError(f"{target} exists; shifted_copy writes only into a new or empty folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return out


#: The two ``wbc-external`` sets (``python -m bcc_utils download wbc-external``) and the names the notebooks use.
WBC_SETS: dict[str, str] = {"dataset1-jtsc": "Tecom", "dataset2-cellavision": "CellaVision"}


def external_sets(external_dir=None, *, download_missing: bool = True, stand_in_items=None,
                  stand_in_dir=None) -> tuple[dict[str, Path], bool]:
    """The ``wbc-external`` sets by name, or a stand-in: ``({name: folder}, is_stand_in)``.

    Parameters
    ----------
    external_dir
        A folder holding ``dataset1-jtsc/`` and ``dataset2-cellavision/``; ``None``: the download cache.
    download_missing
        Without ``external_dir``, download the sets (once; verified). ``False`` (smoke runs, CI): the stand-in.
    stand_in_items, stand_in_dir
        What :func:`shifted_copy` makes the stand-in from, and where (made once, then reused). Used when no
        download is wanted or when it fails (offline: with a warning saying so).
    """
    if external_dir is not None:
        root = Path(external_dir).expanduser()
        missing = [k for k in WBC_SETS if not (root / k).is_dir()]
        if missing:
            raise FileNotFoundError(f"{root}: no {', '.join(missing)} folder (python -m bcc_utils download "
                                    "wbc-external makes them)")
        return {name: root / k for k, name in WBC_SETS.items()}, False
    if download_missing:
        from bcc_utils.data import download

        try:
            root = download("wbc-external")
            return {name: root / k for k, name in WBC_SETS.items()}, False
        except (RuntimeError, OSError) as exc:
            warnings.warn(f"wbc-external could not be fetched ({str(exc).splitlines()[0]}); using a stand-in made "
                          "from PBC images, whose numbers say nothing about another lab", stacklevel=2)
    if stand_in_dir is None or stand_in_items is None:
        raise ValueError("no external sets and no stand-in to make (give stand_in_items and stand_in_dir)")
    stand_in_dir = Path(stand_in_dir)
    if not stand_in_dir.is_dir():
        shifted_copy(stand_in_items, stand_in_dir)
    return {"stand-in": stand_in_dir}, True


def format_report(report: dict) -> str:
    """A short text summary of :func:`evaluate_external`: headline metrics and the confusion table."""
    import pandas as pd

    r = report
    (lo, hi), (blo, bhi) = r["accuracy_ci"], r["balanced_accuracy_ci"]
    conf = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"external set {r['folder']}: {r['n']} images, {len(r['present'])} of {len(r['classes'])} classes "
        f"({r['checkpoint']}, epoch {r['best_epoch']}, {r['img_size']} px, TTA {r['tta']}, "
        f"temperature {r['temperature']:.3f})",
        f"accuracy {r['accuracy']:.2%} (95% CI {lo:.2%}–{hi:.2%}), balanced accuracy "
        f"{r['balanced_accuracy']:.2%} (95% CI {blo:.2%}–{bhi:.2%})",
        f"mean confidence: correct {conf(r['mean_confidence_correct'])} (n={r['n_correct']}), "
        f"wrong {conf(r['mean_confidence_wrong'])} (n={r['n_wrong']})",
        "",
        "rows: true class; columns: predicted class (all training classes)",
    ]
    table = pd.DataFrame(r["confusion"]["counts"], index=r["confusion"]["rows"],
                         columns=[c[:5] for c in r["confusion"]["columns"]])
    table.insert(0, "recall", [f"{r['recall'][c]:.1%}" for c in table.index])
    table.insert(0, "n", [r["n_per_class"][c] for c in table.index])
    lines.append(table.to_string())
    if r["top_confusions"]:
        lines.append("top confusions: " + ", ".join(f"{t['true']}→{t['pred']} {t['n']} ({t['share']:.0%})"
                                                    for t in r["top_confusions"]))
    if r["skipped"]:
        lines.append(f"skipped {len(r['skipped'])} unreadable file(s)")
    return "\n".join(lines)


__all__ = ["IMAGES_DIR", "STAND_IN_SHIFT", "WBC_SETS", "load_class_map", "resolve_class_folders", "evaluate_external",
           "shifted_copy", "external_sets", "format_report"]
