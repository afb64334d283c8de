"""The paper's reported numbers, and our runs set beside them (notebooks 04-06).

The paper (Hameed, *Deep Learning-Based Blood Cell Classification with Enhanced Data
Preprocessing and Augmentation*, KJCS 2025) reports one test accuracy per model, a table of
per-class precision, recall, F1 and support, and its best validation accuracy. It gives no
confidence intervals, no confusion-matrix counts, no seeds and no code. :data:`PAPER_RESULTS`
holds those numbers as printed; the functions below read our runs' ``metrics.json`` files
(schema: :mod:`bcc_utils.metrics`) and build the comparison tables of notebook 06.
"""

from __future__ import annotations

from pathlib import Path

# Run names of the paper-preset runs (notebooks 04/05 on a GPU, colab/train_on_colab.ipynb): defined with the run folder.
from bcc_utils.run import PAPER_RUNS

#: As printed in the paper: test accuracy (section 7, Tables 2-3), best validation accuracy and its epoch
#: (section 7), the "overall" F1 of Tables 2-3 (which average is not stated), and per class
#: ``(precision, recall, f1, support)`` of Table 2 (EfficientNet-B0) and Table 3 (ResNet50).
PAPER_RESULTS: dict[str, dict] = {
    "efficientnet_b0": {
        "label": "EfficientNet-B0", "accuracy": 0.9836, "val_accuracy": 0.9854, "best_epoch": 7,
        "overall_f1": 0.985, "table": "Table 2",
        "per_class": {
            "basophil": (0.968, 0.996, 0.982, 244), "eosinophil": (1.000, 0.995, 0.998, 623),
            "erythroblast": (0.981, 0.994, 0.987, 313), "ig": (0.955, 0.964, 0.960, 579),
            "lymphocyte": (0.992, 0.996, 0.994, 243), "monocyte": (0.969, 0.996, 0.983, 284),
            "neutrophil": (0.992, 0.963, 0.977, 668), "platelet": (1.000, 0.996, 0.998, 470),
        },
    },
    "resnet50": {
        "label": "ResNet50", "accuracy": 0.9868, "val_accuracy": 0.9870, "best_epoch": 10,
        "overall_f1": 0.987, "table": "Table 3",
        "per_class": {
            "basophil": (0.97, 0.96, 0.96, 410), "eosinophil": (0.99, 0.98, 0.98, 428),
            "erythroblast": (0.98, 0.98, 0.98, 445), "ig": (0.97, 0.98, 0.98, 375),
            "lymphocyte": (0.99, 0.99, 0.99, 433), "monocyte": (0.98, 0.99, 0.98, 429),
            "neutrophil": (0.99, 0.99, 0.99, 450), "platelet": (0.98, 0.97, 0.98, 454),
        },
    },
}

#: Which paper model each of our architectures stands for (Lite0 is the CPU stand-in of B0, same family).
PAPER_ROLE = {"efficientnet_b0": "efficientnet_b0", "tf_efficientnet_lite0": "efficientnet_b0", "resnet50": "resnet50",
              "resnet18": "resnet50"}

#: Preference when several runs stand for the same paper model (lower first; unknown presets rank 2).
PRESET_RANK = {"paper": 0, "cpu": 1, "resnet18-cpu": 1, "smoke": 3}

#: What a run of each preset is, in words.
PRESET_MEANING = {
    "paper": "the paper's protocol",
    "cpu": "CPU classroom stand-in",
    "resnet18-cpu": "CPU residual network, trained from scratch",
    "smoke": "pipeline check (numbers meaningless)",
}


def paper_table(model: str):
    """The paper's per-class table of ``model`` (``efficientnet_b0`` or ``resnet50``) as a DataFrame."""
    import pandas as pd

    rows = PAPER_RESULTS[model]["per_class"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=["precision", "recall", "f1", "support"])


def paper_as_metrics(model: str) -> dict:
    """The paper's per-class table shaped like a ``metrics.json`` (enough for ``viz.plot_per_class_f1``)."""
    t = paper_table(model)
    per_class = {c: {"precision": float(r.precision), "recall": float(r.recall), "f1": float(r.f1),
                     "support": int(r.support)} for c, r in t.iterrows()}
    return {"test": {"per_class": per_class}}


def paper_consistency():
    """What each per-class table of the paper implies, beside what the paper states.

    The accuracy a table implies is Σ recall × support / Σ support (recall × support is the number of
    correctly classified test images of a class); its unweighted macro-F1 is the mean of the F1 column.
    A stratified 20 % test split has supports of 20 % of the class sizes.

    Returns
    -------
    pandas.DataFrame
        One row per paper model.
    """
    import pandas as pd

    rows = {}
    for model, p in PAPER_RESULTS.items():
        t = paper_table(model)
        rows[p["label"]] = {
            "table": p["table"], "test images": int(t["support"].sum()),
            "basophil support": int(t.loc["basophil", "support"]),
            "neutrophil support": int(t.loc["neutrophil", "support"]),
            "reported accuracy %": round(100 * p["accuracy"], 2),
            "implied accuracy %": round(100 * (t["recall"] * t["support"]).sum() / t["support"].sum(), 2),
            "reported overall F1": p["overall_f1"], "mean of F1 column": round(t["f1"].mean(), 3),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def run_summary(metrics: dict) -> str:
    """A few lines on a run's ``metrics.json``: what was trained, on what, where, how long, and the test result."""
    c, t, tm, d = metrics["config"], metrics["test"], metrics.get("timing", {}), metrics.get("dataset", {})
    hw = metrics.get("hardware", {})
    device = hw.get("device", "?")
    where = device if device.startswith("cuda") else f"{device} ({hw.get('cpu_count', '?')} cores)"
    lo, hi = t["accuracy_ci"]
    flo, fhi = t["macro_f1_ci"]
    nan = float("nan")
    return (
        f"run {metrics['run']}: {metrics['model']}, {metrics['preset']} preset, {c['img_size']} px, {c['epochs']} "
        f"epoch(s), weights {c['weights']}; data {d.get('data_dir_name', '?')} ({d.get('n_train', '?')} train / "
        f"{d.get('n_val', '?')} val / {d.get('n_test', '?')} test images); {where}\n"
        f"time: training {tm.get('train_s', nan):.0f} s, whole run {tm.get('total_s', nan):.0f} s; "
        f"{tm.get('train_img_per_s', nan):.0f} training img/s, {tm.get('infer_img_per_s', nan):.0f} test img/s "
        f"(test-time augmentation: {c['tta']})\n"
        f"test: accuracy {t['accuracy']:.2%} (95 % CI {lo:.2%}–{hi:.2%}), macro-F1 {t['macro_f1']:.4f} "
        f"({flo:.4f}–{fhi:.4f}), balanced accuracy {t['balanced_accuracy']:.2%}; best epoch {metrics['best_epoch']}"
    )


def per_class_table(metrics: dict, paper_model: str | None = None):
    """Per-class precision, recall, F1 and support of a run; with ``paper_model``, the paper's F1 beside it."""
    import pandas as pd

    ours = pd.DataFrame(metrics["test"]["per_class"]).T[["precision", "recall", "f1", "support"]]
    ours = ours.astype({"support": int})
    if paper_model:
        ours["paper f1"] = paper_table(paper_model)["f1"]
        ours["f1 − paper"] = ours["f1"] - ours["paper f1"]
    return ours.round(3)


def find_results(*folders, include_smoke: bool = True) -> tuple[dict[str, dict], list[str]]:
    """Collect the ``metrics.json`` of finished runs from several folders (an earlier folder wins a name).

    Parameters
    ----------
    *folders
        Folders holding run folders (e.g. ``RUNS_DIR`` and ``../results``); missing ones are reported.
    include_smoke
        Keep runs of the ``smoke`` preset (CI checks and CPU demos; their numbers mean nothing).

    Returns
    -------
    (dict, list of str)
        ``{run name: metrics}``, each with ``"source"`` (its folder, shortened for display), and one
        line per folder searched and per run left out.
    """
    from bcc_utils.metrics import load_results
    from bcc_utils.display import show_path

    found: dict[str, dict] = {}
    notes: list[str] = []
    for folder in map(Path, folders):
        try:
            runs = load_results(folder) if folder.is_dir() else {}
        except FileNotFoundError:
            runs = {}
        skipped = []
        for name, m in runs.items():
            if name in found:
                skipped.append(f"  {name} left out: a run of that name was found in {found[name]['source']}")
            elif m.get("preset") == "smoke" and not include_smoke:
                skipped.append(f"  {name} left out: a smoke run (pipeline check, not a result)")
            else:
                found[name] = {**m, "source": show_path(folder, keep=1)}
        state = f"{len(runs)} finished run(s)" if folder.is_dir() else "no such folder"
        notes += [f"{show_path(folder, keep=1)}: {state}", *skipped]
    return dict(sorted(found.items())), notes


def pick_runs(results: dict[str, dict]) -> dict[str, str | None]:
    """For each paper model, the run that stands for it best: ``paper`` preset, then ``cpu``, then others.

    Returns
    -------
    dict
        ``{"efficientnet_b0": run name or None, "resnet50": run name or None}``.
    """
    picked: dict[str, str | None] = {}
    for model in PAPER_RESULTS:
        cands = sorted((PRESET_RANK.get(m.get("preset"), 2), name) for name, m in results.items()
                       if PAPER_ROLE.get(m.get("model")) == model)
        picked[model] = cands[0][1] if cands else None
    return picked


def comparison_table(results: dict[str, dict]):
    """The paper's two results and every run standing for one of its models, side by side.

    Accuracy and macro-F1 in %, our bootstrap 95 % intervals beside them, and whether the paper's
    accuracy for that model lies inside the run's interval. Runs of other architectures are left out.

    Returns
    -------
    pandas.DataFrame
        One row per paper result, followed by the runs standing for that model.
    """
    import pandas as pd

    rows = []
    for model, p in PAPER_RESULTS.items():
        rows.append({"paper model": p["label"], "what": "paper, as reported", "run": "—", "architecture": model,
                     "img px": 300, "epochs": 10, "device": "Colab GPU", "test acc %": 100 * p["accuracy"],
                     "acc 95% CI": "not reported", "macro-F1 %": 100 * p["overall_f1"], "F1 95% CI": "not reported",
                     "params M": None, "train img/s": None, "test img/s": None, "paper acc in CI": "—"})
        for name, m in results.items():
            if PAPER_ROLE.get(m.get("model")) != model:
                continue
            t, tm, c = m["test"], m.get("timing", {}), m["config"]
            lo, hi = t["accuracy_ci"]
            flo, fhi = t["macro_f1_ci"]
            rows.append({
                "paper model": p["label"], "what": PRESET_MEANING.get(m.get("preset"), str(m.get("preset"))),
                "run": name, "architecture": m["model"], "img px": c["img_size"], "epochs": c["epochs"],
                "device": m.get("hardware", {}).get("device"), "test acc %": 100 * t["accuracy"],
                "acc 95% CI": f"{100 * lo:.2f}–{100 * hi:.2f}", "macro-F1 %": 100 * t["macro_f1"],
                "F1 95% CI": f"{100 * flo:.2f}–{100 * fhi:.2f}", "params M": m.get("params", 0) / 1e6,
                "train img/s": tm.get("train_img_per_s"), "test img/s": tm.get("infer_img_per_s"),
                "paper acc in CI": "yes" if lo <= p["accuracy"] <= hi else "no",
            })
    table = pd.DataFrame(rows)
    return table.round({"test acc %": 2, "macro-F1 %": 2, "params M": 2, "train img/s": 1, "test img/s": 1})


__all__ = ["PAPER_RESULTS", "PAPER_RUNS", "PAPER_ROLE", "PRESET_MEANING", "paper_table", "paper_as_metrics",
           "paper_consistency", "run_summary", "per_class_table", "find_results", "pick_runs", "comparison_table"]
