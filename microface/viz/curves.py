"""Training-curve and per-clip error figures of the coarse and refine experiments."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from microface.viz.save import save_figure


def training_curves(histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Histories per stage (``fit``'s records) -> one long DataFrame: stage, epoch, term, value."""
    records = [{"stage": stage, "epoch": int(record["epoch"]), "term": term, "value": float(value)}
               for stage, history in histories.items() for record in history
               for term, value in record.items() if term != "epoch"]
    return pd.DataFrame(records, columns=["stage", "epoch", "term", "value"])


def read_training_curves(out_dir) -> pd.DataFrame:
    """The training curves a ``run_coarse_benchmark`` wrote under ``out_dir`` (stage, epoch, term, value)."""
    path = Path(out_dir) / CURVES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run run_coarse_benchmark with out_dir={out_dir} first")
    return pd.read_csv(path)


def plot_training_curves(curves: pd.DataFrame, path=None, terms: tuple[str, ...] = ("loss", "param", "landmark",
                                                                                   "photometric")):
    """One panel per loss term, one line per stage (epochs of a fine-tuning stage continue its pretraining's).
    Saves to ``path`` (png) when given; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    terms = [t for t in terms if t in set(curves["term"])]
    if not terms:
        raise ValueError(f"curves: none of the terms {terms} was logged; found {sorted(set(curves['term']))}")
    offsets = {}
    for stage in curves["stage"].unique():
        if "(ME)" in stage and not stage.startswith("DEM w/o"):
            before = "baseline (macro)" if stage.startswith("baseline") else "DEM pretrain (macro)"
            offsets[stage] = int(curves.loc[curves["stage"] == before, "epoch"].max()) + 1 if before in set(curves["stage"]) else 0
    figure, axes = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.2), squeeze=False)
    for axis, term in zip(axes[0], terms):
        for stage, part in curves[curves["term"] == term].groupby("stage", sort=False):
            axis.plot(part["epoch"] + offsets.get(stage, 0), part["value"], marker=".", label=stage)
        axis.set_title(term)
        axis.set_xlabel("epoch (fine-tuning continues pretraining)")
        axis.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    if path is not None:
        save_figure(figure, path, suffixes=None, dpi=120, bbox_inches=None)
    return figure


def plot_errors(per_clip: pd.DataFrame, path=None):
    """Apex and clip expression-only errors per method (box over test clips). Saves to ``path`` when given."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(per_clip["method"]))
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, column, title in zip(axes, ("expression_apex_mm", "expression_clip_mm"), ("apex", "clip mean")):
        axis.boxplot([per_clip.loc[per_clip["method"] == m, column] for m in methods], showmeans=True)
        axis.set_xticks(range(1, len(methods) + 1), [m.replace(" ", "\n", 2) for m in methods], fontsize=7)
        axis.set_ylabel("per-vertex error (mm)")
        axis.set_title(f"expression-only error at the {title} (test subjects' ME clips)", fontsize=9)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path, suffixes=None, dpi=120, bbox_inches=None)
    return figure


CURVES_NAME = "training_curves.csv"
