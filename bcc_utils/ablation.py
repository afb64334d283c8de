"""Leave-one-component-out ablation: does each part of the paper's pipeline measurably help?

The paper says its preprocessing and augmentation "played a crucial role" but never measures it.
:func:`run_ablation` trains the full pipeline and one variant per removed component, every one with
the same budget and several seeds, and writes one small JSON per run; :func:`summarize` turns them
into mean ± spread per variant and the difference to the full pipeline with bootstrap confidence
intervals over the test images and the seeds (drawn by :func:`bcc_utils.viz.plot_ablation`).

The variants (:data:`VARIANTS`) are config overrides of one base config (:func:`base_config`), so
"remove cutout" is exactly ``augment_disable="cutout"`` and nothing else changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from bcc_utils.augment import GEOMETRIC, NOISE_BLUR, PHOTOMETRIC
from bcc_utils.config import TrainConfig, config_for
from bcc_utils.data import DataWarning

#: Variant name -> (what it removes, config overrides relative to the full pipeline).
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("nothing: CLAHE, all nine augmentations, mixup, sampler + weighted loss", {}),
    "no_clahe": ("CLAHE", {"clahe": False}),
    "no_geometric": ("flips, rotation, scaling, shift-scale-rotate", {"augment_disable": ",".join(GEOMETRIC)}),
    "no_photometric": ("brightness/contrast, hue/saturation/value", {"augment_disable": ",".join(PHOTOMETRIC)}),
    "no_noise_blur": ("Gaussian noise and motion blur", {"augment_disable": ",".join(NOISE_BLUR)}),
    "no_cutout": ("cutout", {"augment_disable": "cutout"}),
    "no_mixup": ("mixup", {"mixup_p": 0.0}),
    "balance_none": ("both balancing corrections (plain sampling, plain loss)", {"balance": "none"}),
    "balance_sampler": ("the weighted loss (keeps the balanced sampler)", {"balance": "sampler"}),
    "balance_loss": ("the balanced sampler (keeps the weighted loss)", {"balance": "loss"}),
}

#: Whole recipes compared with the full pipeline (not part of the default leave-one-out grid):
#: ``classroom`` is the ``cpu`` preset's own recipe, so ``--base classroom --variants full classroom`` measures what
#: the taught augmentation, mixup and balancing cost or buy at the classroom budget.
RECIPES: dict[str, tuple[str, dict]] = {
    "classroom": ("the paper's augmentations, mixup and balancing; flips and transposes instead (the cpu preset)",
                  {"augment": "dihedral", "augment_disable": "", "mixup_p": 0.0, "balance": "none"}),
}


#: The remedies against another lab's images (base ``robust``): each leaves out one component of
#: :mod:`bcc_utils.robust_augment`, and ``no_remedies`` all of them (the ``cpu`` preset's flips and transposes).
REMEDIES: dict[str, tuple[str, dict]] = {
    "no_zoom": ("zoom and free rotation (cell size against the frame)", {"augment_disable": "zoom"}),
    "no_stain": ("stain jitter in optical density (HED)", {"augment_disable": "stain"}),
    "no_colour": ("hue, saturation and grey", {"augment_disable": "colour"}),
    "no_white_balance": ("white balance, brightness and contrast", {"augment_disable": "white_balance"}),
    "no_blur": ("Gaussian blur", {"augment_disable": "blur"}),
    "no_remedies": ("all five: flips and transposes only", {"augment": "dihedral", "augment_disable": ""}),
}

#: Every variant name, in the order tables list them.
ORDER: tuple[str, ...] = (*VARIANTS, *REMEDIES, *RECIPES)


def _variant(name: str, base: str | None = None) -> tuple[str, dict]:
    if name == "full" and base == "robust":
        return "nothing: the robust preset (its five remedies and the weighted loss)", {}
    for table in (VARIANTS, REMEDIES, RECIPES):
        if name in table:
            return table[name]
    raise ValueError(f"Unknown ablation variant {name!r}; choose from {', '.join(ORDER)}")


def default_variants(base: str) -> list[str]:
    """The grid a base runs when no variants are named: the remedies for ``robust``, else :data:`VARIANTS`."""
    return ["full", *REMEDIES] if base == "robust" else list(VARIANTS)


#: Folder (inside the results folder) of the claims that stop two processes from training one run.
CLAIMS = ".claims"

#: The full pipeline on each kind of hardware; variants only switch components off.
BASES: dict[str, dict] = {
    # The classroom CPU budget: offline ImageNet Lite0 at 96 px with the first 4 of 7 stages frozen, one epoch
    # (one-cycle schedule), one thread and no worker processes (so two seeds can run side by side on 2 cores),
    # no TTA (the model alone is measured). About 5 CPU-minutes per run.
    "cpu": dict(preset="cpu", augment="paper", mixup_p=0.5, balance="both", label_smoothing=0.0, tta="none",
                freeze_blocks=4, epochs=1, num_workers=0, num_threads=1, bootstrap_resamples=200),
    # The `cpu` preset's own budget (5 epochs, 2 of 7 stages frozen, flip TTA) with the paper's pipeline put back:
    # augmentations vectorised over batches, mixup p=0.5, sampler + weighted loss. One thread per run, so two
    # seeds train side by side on 2 cores; about 13 minutes per run that way.
    "classroom": dict(preset="cpu", augment="batch", mixup_p=0.5, balance="both", num_threads=1,
                      bootstrap_resamples=200),
    # The paper's own recipe on a GPU (10 epochs at 300 px per run: hours for the whole grid).
    "paper": dict(preset="paper", tta="none", bootstrap_resamples=200),
    # The `robust` preset (remedies against other labs' images), one thread per run so two train side by side.
    "robust": dict(preset="robust", num_threads=1, bootstrap_resamples=200),
    # Seconds per run, for CI: the whole grid, tiny inputs, a few batches.
    "smoke": dict(preset="smoke", augment="paper", mixup_p=0.5, balance="both", tta="none", tta_val=False,
                  num_workers=0, num_threads=1, limit_train_batches=3, limit_eval_batches=2,
                  bootstrap_resamples=50),
}


def base_config(base: str = "cpu", **overrides) -> TrainConfig:
    """The full pipeline of an ablation base (a key of :data:`BASES`), with fields overridden."""
    if base not in BASES:
        raise ValueError(f"Unknown ablation base {base!r}; choose one of {', '.join(BASES)}")
    values = dict(BASES[base])
    preset = values.pop("preset")
    return config_for(preset, **{**values, **overrides})


def variant_config(name: str, base: TrainConfig, seed: int) -> TrainConfig:
    """The config of variant ``name`` (see :data:`VARIANTS`, :data:`REMEDIES`, :data:`RECIPES`) with training seed ``seed``."""
    return dataclasses.replace(base, **_variant(name)[1], seed=seed)


def run_ablation(data_dir=None, results_dir="results/ablation", runs_dir="runs/ablation", *, base: str = "cpu",
                 variants=None, seeds=(0, 1), overrides: dict | None = None, progress: bool = True,
                 command: str | None = None, cache_dir=None, external=(), log=print) -> Path:
    """Train every (variant, seed) pair that has no result yet and write its JSON to ``results_dir``.

    Parameters
    ----------
    data_dir
        Dataset folder (default ``$BCC_DATA_DIR``).
    results_dir
        Where ``<variant>-s<seed>.json`` and the grid's ``ablation.json`` go (small; commit them).
        ``ablation.json`` records every invocation: command, seeds, wall time, hardware.
    runs_dir
        Where the training runs (checkpoints) go.
    base
        Key of :data:`BASES`.
    variants, seeds
        Which variants (default: :func:`default_variants` of ``base``) and training seeds. The split is the same
        for every run (``split_seed``), so runs with the same seed differ only in the component.
    overrides
        Config fields changed for *all* runs (e.g. ``{"epochs": 5}``); recorded in ``ablation.json``.
    command
        The command line to record (default: a reconstruction from the arguments).
    external
        Folders of external sets (see :mod:`bcc_utils.external`): each newly trained run is also evaluated
        on them, and its record keeps ``external`` (:func:`external_record`). Only measured, never used to
        choose anything; records written before are left as they are.

    Returns
    -------
    Path
        ``results_dir``. Re-running continues an interrupted grid: finished runs are skipped.
    """
    from bcc_utils.atomic import try_claim, update_json, write_json
    from bcc_utils.device import resolve_device
    from bcc_utils.metrics import hardware_info
    from bcc_utils.train import train_or_load

    variants = default_variants(base) if variants is None else list(variants)
    external = [Path(f) for f in external]
    names = [f.name for f in external]
    if len(set(names)) < len(names):
        raise ValueError(f"external sets need distinct folder names, got {names}")
    seeds = [int(s) for s in seeds]
    base_cfg = base_config(base, **(overrides or {}))
    for v in variants:
        variant_config(v, base_cfg, 0)  # unknown names, or a variant the base cannot take, fail before any training
    results, runs = Path(results_dir), Path(runs_dir)
    results.mkdir(parents=True, exist_ok=True)
    grid_file = results / "ablation.json"
    if grid_file.exists() and json.loads(grid_file.read_text())["base_config"] != base_cfg.to_dict():
        raise ValueError(f"{grid_file} holds a grid with a different base config; use another results_dir")
    variant_names = list(dict.fromkeys([*default_variants(base), *variants]))

    def describe(grid: dict) -> None:  # what the grid is, written before any run: an interrupted grid still says it
        grid.setdefault("invocations", [])
        grid.update({"schema_version": 1, "base": base, "base_config": base_cfg.to_dict(),
                     "variants": {**grid.get("variants", {}),
                                  **{v: {"removes": _variant(v, base)[0], "overrides": _variant(v)[1]}
                                     for v in variant_names}}})

    update_json(grid_file, describe)
    device = resolve_device(base_cfg.device)
    todo = [(s, v) for s in seeds for v in variants if not (results / f"{v}-s{s}.json").exists()]
    log(f"ablation: {len(variants) * len(seeds) - len(todo)} of {len(variants) * len(seeds)} runs done; "
        f"{len(todo)} to train")
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    trained = []
    with warnings.catch_warnings():
        warnings.simplefilter("once", DataWarning)  # every run scans the same data: say each problem once
        for i, (seed, v) in enumerate(todo, 1):
            name = f"{v}-s{seed}"
            claim = results / CLAIMS / f"{name}.claim"
            # several processes or machines may share this folder: each run is trained by the one that claims it
            if (results / f"{name}.json").exists() or not try_claim(claim):
                log(f"[{i}/{len(todo)}] {v} seed {seed}: done or being trained by another process, skipped")
                continue
            try:
                if (results / f"{name}.json").exists():  # finished between our look and our claim
                    continue
                cfg = variant_config(v, base_cfg, seed)
                run_dir = train_or_load(cfg, data_dir, runs / name, progress=progress, cache_dir=cache_dir)
                record = run_record(run_dir, v, seed, base)
                if external:
                    record["external"] = external_record(run_dir, external)
                write_json(record, results / f"{name}.json")
                trained.append(name)
            finally:
                claim.unlink(missing_ok=True)
            log(f"[{i}/{len(todo)}] {v} seed {seed}: test accuracy {record['accuracy']:.4f} "
                f"({record['total_s']:.0f} s)")
    invocation = {
        "command": command or _command(base, variants, seeds, overrides, external), "seeds": seeds, "variants": variants,
        "runs_trained": len(trained), "runs": trained, "started": started,
        "wall_s": round(time.perf_counter() - t0, 1),
        "hardware": hardware_info(device)}

    def add_invocation(grid: dict) -> None:  # under a lock: other processes may share this results folder
        describe(grid)
        grid["invocations"].append(invocation)

    update_json(grid_file, add_invocation)
    return results


def _command(base, variants, seeds, overrides, external=()) -> str:
    parts = ["python -m bcc_utils ablate", f"--base {base}", "--seeds " + " ".join(map(str, seeds))]
    if list(variants) != default_variants(base):
        parts.append("--variants " + " ".join(variants))
    parts += [f"--set {k}={v}" for k, v in (overrides or {}).items()]
    if external:  # the sets by name: a results file must not carry this machine's folders
        parts.append("--external " + " ".join(f"…/{Path(f).name}" for f in external))
    return " ".join(parts)


#: What :func:`external_record` keeps of each external report.
EXTERNAL_FIELDS = ("n", "n_per_class", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "recall",
                   "confusion")


def external_record(run_dir, folders) -> dict:
    """``{set name: accuracy, balanced accuracy (with 95 % intervals), recall, confusion}`` of a run on external sets.

    The run's own preprocessing, test-time augmentation and temperature are used
    (:func:`bcc_utils.external.evaluate_external`); the set is named by its folder.
    """
    from bcc_utils.external import evaluate_external
    from bcc_utils.run import BEST

    out = {}
    for folder in folders:
        report, _ = evaluate_external(Path(run_dir) / BEST, folder)
        out[Path(folder).name] = {k: report[k] for k in EXTERNAL_FIELDS}
    return out


#: Columns of a run's ``history.csv`` kept in its record.
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def run_record(run_dir: str | os.PathLike, variant: str, seed: int, base: str | None = None) -> dict:
    """The small JSON kept for one ablation run of grid ``base``: metrics, learning curves, timing, test predictions."""
    import pandas as pd

    from bcc_utils.run import HISTORY_CSV, METRICS, PREDICTIONS

    run_dir = Path(run_dir)
    m = json.loads((run_dir / METRICS).read_text())
    pred = pd.read_csv(run_dir / PREDICTIONS)
    history = pd.read_csv(run_dir / HISTORY_CSV)
    classes = m["classes"]
    return {
        "schema_version": 1, "variant": variant, "seed": seed, "removes": _variant(variant, base)[0],
        "config": m["config"], "accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
        "accuracy_ci": m["test"]["accuracy_ci"], "best_epoch": m["best_epoch"],
        "val_acc": float(history["val_acc"].max()),  # what model selection may use
        # the learning curves, so under-fitting (validation still rising at the end) can be seen from the record
        "history": history[list(HISTORY_FIELDS)].round(5).to_dict(orient="records"),
        "total_s": m["timing"]["total_s"], "train_img_per_s": m["timing"]["train_img_per_s"],
        "dataset": m["dataset"], "classes": classes,
        "f1": {c: m["test"]["per_class"][c]["f1"] for c in classes},
        "paths_sha": _paths_sha(pred["path"]),
        "y_true": [classes.index(c) for c in pred["label"]],
        "y_pred": [classes.index(c) for c in pred["pred"]],
    }


def _paths_sha(paths) -> str:
    import hashlib

    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()


def load_ablation(results_dir="results/ablation"):
    """All run records of a results folder as a DataFrame (one row per run), plus the grid's ``ablation.json``."""
    import pandas as pd

    results = Path(results_dir)
    rows = [json.loads(f.read_text()) for f in sorted(results.glob("*-s*.json"))]
    if not rows:
        raise FileNotFoundError(f"no ablation results (*-s<seed>.json) in {results}")
    grid_file = results / "ablation.json"
    grid = json.loads(grid_file.read_text()) if grid_file.exists() else {}
    return pd.DataFrame(rows), grid


def welch_interval(diff: float, values_a, values_b, extra_var: float = 0.0,
                   confidence: float = 0.95) -> tuple[float, float]:
    """Interval for a difference of two seed means: Welch's t over the seeds, plus a variance known otherwise.

    ``values_a``, ``values_b`` are the per-seed values of the two sides; their spread is *estimated* from a few
    seeds, so the quantile is Student's t with Welch–Satterthwaite degrees of freedom of the seed part (with 2
    seeds a side that is 2 or fewer: t is 4.3 or more at 95 % instead of 1.96). ``extra_var`` is variance that
    does not come from the seeds (e.g. the test-set sampling of the difference); it widens the interval but is
    left out of the degrees of freedom, so more uncertainty never narrows it. ``(nan, nan)`` when a side has
    fewer than 2 seeds: its seed noise cannot be estimated.
    """
    from scipy.stats import t as student_t

    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    total = va + vb + float(extra_var)
    if total == 0:
        return float(diff), float(diff)
    denom = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
    dof = (va + vb) ** 2 / denom if denom > 0 else np.inf
    q = float(student_t.ppf((1 + confidence) / 2, dof))
    return float(diff - q * np.sqrt(total)), float(diff + q * np.sqrt(total))


def summarize(runs, reference: str = "full", n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
    """Per variant: mean, min and max test accuracy over seeds, and the difference to ``reference``.

    The difference is ``mean over seeds(variant accuracy) - mean over seeds(reference accuracy)``. Two
    intervals at level ``confidence`` come with it (for k comparisons with one reference, Bonferroni's
    ``confidence = 1 - 0.05 / k`` keeps the chance of any false "measurable" under 5 %):

    * ``test_lo, test_hi`` — resampling the *test images* only (the same resample for both sides, so it
      is paired): what the test-set size alone allows one to tell apart;
    * ``diff_lo, diff_hi`` — resampling the test images *and* each side's seeds (a two-level
      bootstrap): it adds the training noise, which on a short budget can be the larger of the two.

    ``significant`` uses the second interval: a variant "measurably" differs only when the
    difference is larger than both the test-set noise and the seed-to-seed noise.

    With two or three seeds a side the bootstrap over seeds is too narrow: a resampled mean never leaves
    the range of the seeds seen. ``t_lo, t_hi`` (:func:`welch_interval`: Welch's t over the seeds plus the
    test-only variance) allow for the seed spread being *estimated* from so few values; ``t_significant``
    uses them. They are ``nan`` for the reference row and for a side with a single seed.

    Returns
    -------
    DataFrame
        Indexed by variant (in :data:`ORDER`): ``removes, n_seeds, mean, min, max, macro_f1,
        diff, diff_lo, diff_hi, test_lo, test_hi, significant, t_lo, t_hi, t_significant``.
    """
    import pandas as pd

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if reference not in set(runs["variant"]):
        raise ValueError(f"the results have no {reference!r} runs to compare with")
    if runs["paths_sha"].nunique() != 1:
        raise ValueError("the runs were evaluated on different test sets; they cannot be compared")
    rng = np.random.default_rng(seed)
    n = len(runs["y_true"].iloc[0])
    idx = rng.integers(0, n, size=(n_resamples, n))

    def boot_acc(variant):  # seeds × resamples: accuracy of each seed's run on each test resample
        part = runs[runs["variant"] == variant]
        return np.stack([(np.asarray(r.y_pred) == np.asarray(r.y_true))[idx].mean(1) for r in part.itertuples()])

    ref = boot_acc(reference)
    cols = np.arange(n_resamples)
    order = [v for v in ORDER if v in set(runs["variant"])] + sorted(set(runs["variant"]) - set(ORDER))
    out = []
    for v in order:
        part = runs[runs["variant"] == v]
        acc = boot_acc(v)
        test_only = acc.mean(0) - ref.mean(0)
        pick_v = rng.integers(0, len(acc), size=(len(acc), n_resamples))
        pick_r = rng.integers(0, len(ref), size=(len(ref), n_resamples))
        both = acc[pick_v, cols].mean(0) - ref[pick_r, cols].mean(0)
        q = [50 * (1 - confidence), 50 * (1 + confidence)]
        lo, hi = np.percentile(both, q)
        tlo, thi = np.percentile(test_only, q)
        ref_acc = runs.loc[runs["variant"] == reference, "accuracy"]
        diff = part["accuracy"].mean() - ref_acc.mean()
        t_lo, t_hi = ((np.nan, np.nan) if v == reference else
                      welch_interval(diff, part["accuracy"], ref_acc, test_only.var(ddof=1), confidence))
        out.append({"variant": v, "removes": part["removes"].iloc[0], "n_seeds": len(part),
                    "mean": part["accuracy"].mean(), "min": part["accuracy"].min(), "max": part["accuracy"].max(),
                    "macro_f1": part["macro_f1"].mean(), "diff": diff, "diff_lo": lo, "diff_hi": hi,
                    "test_lo": tlo, "test_hi": thi, "significant": bool(v != reference and (lo > 0 or hi < 0)),
                    "t_lo": t_lo, "t_hi": t_hi, "t_significant": bool(t_lo > 0 or t_hi < 0)})
    return pd.DataFrame(out).set_index("variant")


def per_class_f1(runs, reference: str = "full"):
    """Mean F1 per class (columns) and variant (rows) over seeds, minus the ``reference`` row (0 = no change)."""
    import pandas as pd

    f1 = pd.DataFrame([r.f1 for r in runs.itertuples()], index=runs["variant"]).groupby(level=0).mean()
    order = [v for v in ORDER if v in f1.index] + sorted(set(f1.index) - set(ORDER))
    f1 = f1.loc[order]
    return f1 - f1.loc[reference]


def external_summary(runs, measure: str = "accuracy", reference: str = "full", confidence: float = 0.95):
    """Per variant and external set (records made with ``--external``): ``measure`` over seeds and its change.

    Parameters
    ----------
    measure
        ``"accuracy"`` or ``"balanced_accuracy"`` (over the classes the set has).

    confidence
        Level of ``diff_lo, diff_hi``: :func:`welch_interval` over the seeds, plus each side's test-set
        variance read from the records' bootstrap intervals (``<measure>_ci``) as if the two sides were
        independent. They are not (same images), so the interval is conservative.

    Returns
    -------
    DataFrame
        Indexed by (variant, set): ``n_seeds, mean, min, max, diff`` (mean minus the ``reference`` variant's mean
        on the same set), ``diff_lo, diff_hi, significant``; runs without external results are left out.
    """
    import pandas as pd
    from scipy.stats import norm

    if measure not in ("accuracy", "balanced_accuracy"):
        raise ValueError(f"measure must be 'accuracy' or 'balanced_accuracy', got {measure!r}")
    z = norm.ppf(0.975)  # the records' intervals are 95 %

    def test_var(ext):
        lo, hi = ext.get(f"{measure}_ci") or (np.nan, np.nan)
        return ((hi - lo) / (2 * z)) ** 2

    rows = [{"variant": r.variant, "seed": r.seed, "set": name, "value": ext[measure], "test_var": test_var(ext)}
            for r in runs.itertuples() if isinstance(getattr(r, "external", None), dict)
            for name, ext in r.external.items()]
    if not rows:
        raise ValueError("no run of these results was measured on an external set (ablate --external)")
    df = pd.DataFrame(rows)
    out = df.groupby(["variant", "set"])["value"].agg(n_seeds="count", mean="mean", min="min", max="max")
    if reference in out.index.get_level_values(0):
        ref = out.loc[reference, "mean"]
        out["diff"] = [m - ref.get(s, np.nan) for (_, s), m in zip(out.index, out["mean"])]
        bounds = []
        for v, s in out.index:
            side, base = df[(df["variant"] == v) & (df["set"] == s)], df[(df["variant"] == reference) & (df["set"] == s)]
            if v == reference or base.empty:
                bounds.append((np.nan, np.nan))
                continue
            extra = side["test_var"].mean() / len(side) + base["test_var"].mean() / len(base)
            bounds.append(welch_interval(out.loc[(v, s), "diff"], side["value"], base["value"],
                                         extra if np.isfinite(extra) else 0.0, confidence))
        out["diff_lo"], out["diff_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
        out["significant"] = (out["diff_lo"] > 0) | (out["diff_hi"] < 0)
    order = [v for v in ORDER if v in out.index.get_level_values(0)]
    order += sorted(set(out.index.get_level_values(0)) - set(order))
    return out.reindex(order, level=0)


def per_class_recall(runs, by_seed: bool = False):
    """Mean recall per class (rows: classes) and variant (columns) over seeds, from the records' test predictions.

    ``by_seed=True``: no mean; one column per run, labelled ``(variant, seed)``.
    """
    return _per_class(runs, "recall", by_seed)


def per_class_precision(runs, by_seed: bool = False):
    """Mean precision per class (rows) and variant (columns) over seeds; a class never predicted counts as 0.

    ``by_seed=True``: no mean; one column per run, labelled ``(variant, seed)``.
    """
    return _per_class(runs, "precision", by_seed)


def _per_class(runs, metric: str, by_seed: bool = False):
    import pandas as pd

    classes = runs["classes"].iloc[0]
    rows = []
    for r in runs.itertuples():
        y_true, y_pred = np.asarray(r.y_true), np.asarray(r.y_pred)
        # recall: of the images of class c, the share predicted c; precision: the same with the roles swapped
        ref, other = (y_true, y_pred) if metric == "recall" else (y_pred, y_true)
        rows.append([float(np.mean(other[ref == c] == c)) if (ref == c).any() else 0.0 for c in range(len(classes))])
    index = pd.MultiIndex.from_arrays([runs["variant"].to_numpy(), runs["seed"].to_numpy()], names=["variant", "seed"])
    table = pd.DataFrame(rows, index=index, columns=classes)
    if not by_seed:
        table = table.groupby(level="variant").mean()
    variants = set(table.index.get_level_values("variant"))
    order = [v for v in ORDER if v in variants] + sorted(variants - set(ORDER))
    return table.sort_index(level="seed").reindex(order, level="variant").T if by_seed else table.loc[order].T


__all__ = ["VARIANTS", "REMEDIES", "RECIPES", "ORDER", "default_variants", "BASES", "base_config", "variant_config",
           "run_ablation", "run_record",
           "external_record", "EXTERNAL_FIELDS", "load_ablation",
           "summarize", "per_class_f1", "per_class_recall", "per_class_precision", "external_summary", "welch_interval", "HISTORY_FIELDS"]
