"""Notebook 06_figures' driver: paper-style figures from the tables and models of notebooks 01-05.

Written as PNG + PDF into ``<figures_dir>/<profile>/``: ``qualitative_sequence``, ``displacement_over_time``, one
bar chart per entry of ``BAR_CHARTS`` plus ``mer_uf1``, and ``refined_sequence.html`` (plotly).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from microface.config import project_root, resolve
from microface.experiments.coarse import benchmark_root
from microface.experiments.main_table import qualitative_example
from microface.experiments.report import NotebookReport
from microface.viz import mesh as viz
from microface.viz import paper as paper_figures

# (table under results_dir, metric column, error-bar column, unit, figure name)
BAR_CHARTS = [("evaluate/main_table.csv", "all_apex_mm", "all_apex_std_mm", "mm", "main_apex_error"),
              ("evaluate/main_table.csv", "mer_wf1", None, None, "main_recognition_wf1"),
              ("ablations/ablation_table.csv", "all_apex_mm", "all_apex_std_mm", "mm", "ablation_apex_error"),
              ("dem/coarse_table.csv", "apex_error_mm", "apex_error_std_mm", "mm", "coarse_apex_error")]


def run_figures_experiment(profile: str, seed: int, device: str, synth: dict, data: dict, dem: dict, dgmd: dict,
                           results_dir, figures_dir) -> NotebookReport:
    """Notebook 06_figures end to end.

    Args:
        profile, seed, device: the config's top-level keys.
        synth, data, dem, dgmd: the config's sections of those names.
        results_dir: results/<profile> (relative to the compendium root or absolute); needs the tables of
            notebooks 01, 03, 04, 05 and the checkpoints of 01 and 02.
        figures_dir: the figures' folder; they go to ``<figures_dir>/<profile>/``.

    Returns:
        figures: ``qualitative_sequence``, ``displacement_over_time``, the ``BAR_CHARTS`` names and ``mer_uf1``
        (saved and closed); notes: ``example`` (the test clip), ``qualitative_sequence`` (its PNG), ``written``
        (the PNG files in the folder), ``viewer``; paths: ``figures``, ``viewer``.
    """
    report = NotebookReport()
    root = project_root()
    results = resolve(results_dir, root)
    out = resolve(figures_dir, root) / profile
    synth_root = benchmark_root(results, data, synth, profile, seed)
    example = qualitative_example(synth_root, results / "dem", results / "dgmd", dem, dgmd,
                                  class_map=data["class_map"], seed=seed, image_size=data["size"],
                                  flow_method=data["flow_method"], device=device)
    report.notes["example"] = f"test clip: {example['key']} apex at kept frame {example['apex']}"

    # 1 · qualitative sequence
    T = len(example["frames"])
    index, labels = paper_figures.key_frames(0, example["apex"], T - 1, columns=min(5, T))
    error_maps = [(example["vertices_refined"][t], example["faces"], example["error_refined"][t]) for t in index]
    figure = paper_figures.qualitative_sequence_figure(example["frames"][index], example["coarse"][index],
                                                       example["refined"][index], error_maps, frame_labels=labels,
                                                       title=example["key"])
    paper_figures.save_figure(figure, out / "qualitative_sequence")
    plt.close(figure)
    report.figures["qualitative_sequence"] = figure
    report.notes["qualitative_sequence"] = str(out / "qualitative_sequence.png")

    # 2 · displacement of the moving vertices over time
    figure = paper_figures.au_displacement_figure(
        example["times"] - example["times"][0],
        {"DEM": example["displacement_coarse"], "DEM + DGMD": example["displacement_refined"]},
        truth=example["displacement_truth"], title=example["key"], onset=0.0,
        apex=float(example["times"][example["apex"]] - example["times"][0]),
        ylabel="mean displacement of moving vertices (mm)")
    paper_figures.save_figure(figure, out / "displacement_over_time")
    plt.close(figure)
    report.figures["displacement_over_time"] = figure

    # 3 · tables as bar charts
    for table_path, metric, error, unit, name in BAR_CHARTS:
        table = pd.read_csv(results / table_path)
        if not np.isfinite(table[metric].to_numpy(dtype=float)).any():
            # e.g. recognition on a split with one test subject: the table says why (its mer_protocol column)
            report.notes[name] = f"{name}: not drawn, {table_path} has no finite {metric}"
            report.figures[name] = _message_figure(report.notes[name])
            continue
        figure = paper_figures.table_bar_figure(table, metric, error_column=error, unit=unit,
                                                lower_is_better=not metric.startswith("mer_"), title=table_path)
        paper_figures.save_figure(figure, out / name)
        plt.close(figure)
        report.figures[name] = figure
    mer = pd.read_csv(results / "mer" / "mer_table.csv")
    mer = mer[mer["group"] == "all"]
    figure = paper_figures.table_bar_figure(mer, "uf1", method_column="model", lower_is_better=False,
                                            title="MER (LOSO)")
    paper_figures.save_figure(figure, out / "mer_uf1")
    plt.close(figure)
    report.figures["mer_uf1"] = figure
    report.notes["written"] = "\n".join(sorted(p.name for p in out.glob("*.png")))

    # 4 · interactive refined mesh sequence
    html = viz.mesh_sequence_html(example["vertices_refined"], example["faces"], out / "refined_sequence.html",
                                  values=example["error_refined"], title=f"{example['key']}: DEM + DGMD, error (mm)")
    report.notes["viewer"] = f"interactive viewer: {html}"
    report.paths.update(figures=out, viewer=html)
    return report


def _message_figure(text: str):
    """A small figure that only says ``text``: shown (not saved) where a chart has nothing to draw."""
    figure, axis = plt.subplots(figsize=(6, 1))
    axis.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    axis.set_axis_off()
    plt.close(figure)
    return figure
