"""``microface reconstruct``: a video, a photo or a folder of frames in, a 3D face mesh per frame out.

Stages (``--stage``): "fit" (default) the face model fit to the tracked landmarks; "dem" + DEM from the fit's
onset; "dgmd" + DGMD; "encoder" the learned per-frame coarse encoder (the seed's per-frame baseline). Pipeline:

1. input (``microface.reconstruct.video.open_source``): a video read with OpenCV (a file that does not open or
   yields no frame raises ``ReconstructionError``, "corrupt or unreadable video", naming it); a photo (one frame);
   a folder of frames in natural order (``img2`` before ``img10``, the ME datasets' layout; fps 200 unless given);
2. the face is tracked with the offline MediaPipe landmarker (``microface.data.landmarks.FaceLandmarker``),
   one detection per frame. The FIRST frame must hold a face (otherwise ``ReconstructionError`` naming the
   input and suggesting ``--start auto``, which starts at the first frame that holds one). In a later frame with
   no detection the previous frame's landmarks are held; such frames are counted and listed in ``summary.json``
   (``frames_without_face``) and ignored by the fit. With two faces in a frame, the one nearest the previously
   tracked face is followed (in the first frame: the best detection);
3. the landmark fit (``microface.fit.fit_landmarks``) of the whole input's 468-point meshes: one identity, per
   frame a scaled-orthographic camera in source pixels, pose (global + jaw) and AUs. Stage "fit" stops here
   (its meshes are the fit's);
4. the frames are read again and cut into consecutive WINDOWS of ``window`` frames (a final lone frame joins the
   last window, as DEM needs two frames per clip; a photo is one window of one frame, stages "fit" / "encoder"
   only). Each window is a clip whose onset is its first frame, the micro-expression convention the models were
   trained with: one eye-aligned crop transform per window, from the onset frame's 68 landmarks
   (``microface.data.preprocess.eye_alignment_transform``), fixed over the window so that the optical flow sees
   the face move; crops are the checkpoint's image size S (DEM's input); when DGMD has its own resolution R != S
   (the bundle's ``refine_size``), each window is also cropped at R x R with the same framing (transform x R / S);
5. optical flow onset -> t per window (``microface.data.flow.clip_flow``, method from the checkpoint), on the
   S crops for DEM and, when R != S, on the R crops for DGMD (stages "dem", "dgmd");
6. DEM (``dem_expression_from_onset``): expression(t) = the fit's onset expression + (DEM(t) - DEM(onset)), DEM's
   static branch fed the fit's onset; identity, pose and camera stay the fit's. DEM is built with
   ``DEMConfig.still_field`` on (no parameters of its own): its ODE field is exactly zero without motion, so a
   still clip keeps its onset expression (no motion, no change);
7. DGMD (``microface.training.dgmd.refine_clip``) adds small per-vertex offsets guided by the flow and by the
   detected landmarks (in crop pixels), with the onset's camera held for the window: the fit's source camera seen
   through the R x R crop (``microface.render.camera.orthographic_to_crop_camera``). When the bundle's DGMD has
   ``temporal_rank`` > 0, its flow cues come from the WINDOW's flows reduced to their leading temporal modes, so a
   window should hold one expression (as the ME clips DGMD was trained on do).

Windows are reconstructed independently, like the clips DEM was trained on; with the fit as the onset of every
window, identity and pose are continuous across window boundaries (the expression restarts from the fit's).

Output folder (written to a hidden temporary folder beside it and renamed into place at the end, so an
interrupted or failed run leaves no half-written folder; an existing folder is only replaced when it holds
a previous reconstruction)::

    meshes/frame_00000.obj|ply   final mesh of every frame (mm, face-model frame, posed), 1-based OBJ faces;
                                 none with ``--format none`` (params.npz holds the same vertices)
    preview.png                  the mesh drawn over up to 6 frames spread over the input: look at it first
    params.npz                   per-frame parameters and meshes, vertices_px in source pixels (``PARAMS_KEYS``)
    landmarks.npz                landmarks68 (T,68,2) and landmarks_mesh (T,468,3) in VIDEO pixels, detected (T,)
                                 bool, landmarks68_crop (T,68,2) crop pixels
    viewer.html                  interactive plotly page of the mesh sequence (coloured by DGMD offset, mm)
    summary.json                 input, start frame, fit, checkpoint provenance, frames, windows, failures, timings

Checkpoint bundle (``save_bundle`` / ``load_bundle``): one ``torch.save`` dict, ``"format":
"microface-reconstruct-v1"``, holding the face model's name and sizes, the crop size, the flow method, the
encoder / DEM / DGMD configs and state dicts, and a free provenance dict; ``"refine_size"`` is DGMD's own crop
size (a bundle without it, written before DGMD had one, means the crop size). ``tools/export_checkpoint.py``
writes it from a training run's checkpoints. The default is ``default_checkpoint_path()``
(``microface/assets/checkpoints/open_dem_dgmd.pt``, package data once exported).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from microface.mesh.meshio import write_obj, write_ply
from microface.reconstruct.bundle import (
    FACE_MODELS,
    build_face_model,
    bundle_meta,
    check_device,
    default_checkpoint_path,
    models_from_bundle,
    read_bundle,
)
from microface.reconstruct.errors import ReconstructionError
from microface.reconstruct.output import (
    DEFAULT_VIEWER_FRAMES,
    MESH_FORMATS,
    OUTPUT_FORMAT,
    PARAMS_KEYS,
    _json_default,
    check_output_folder,
    commit_folder,
    write_arrays,
    write_preview,
    write_viewer,
)
from microface.reconstruct.video import open_source, track_face
from microface.utils.io import portable_path, staging_folder

STAGES = ("fit", "dem", "dgmd", "encoder")
STAGE_ALIASES = {"coarse": "encoder"}  # the per-frame encoder's name before the landmark fit became the coarse stage
MOTION_STAGES = ("dem", "dgmd")  # those that need optical flow and >= 2 frames
DEFAULT_WINDOW = 16


# ------------------------------------------------------------------------------------------ checkpoint bundle


# ------------------------------------------------------------------------------------------------- video


def iter_windows(items: Iterable, window: int, allow_single: bool = False) -> Iterator[tuple[int, list]]:
    """Consecutive windows of ``window`` items -> (start, items) pairs; a final lone item joins the last window
    (so that every window has >= 2 items: DEM integrates over a clip). Streams, holding at most window + 2 items.

    Raises ReconstructionError when there is exactly one item in all, unless allow_single (a photo: stages "fit"
    and "encoder" need no motion)."""
    if window < 2:
        raise ValueError(f"window: expected >= 2 frames, got {window}")
    buffer: list = []
    start = 0
    for item in items:
        buffer.append(item)
        if len(buffer) == window + 2:  # two items follow this window, so the next one cannot be a lone item
            yield start, buffer[:window]
            start += window
            buffer = buffer[window:]
    if len(buffer) == 1 and not (allow_single and start == 0):
        raise ReconstructionError("only one frame could be read; reconstruct needs at least 2 (DEM models motion "
                                  "from an onset frame)")
    if buffer:
        yield start, buffer


def window_bounds(n_frames: int, window: int, allow_single: bool = False) -> list[tuple[int, int]]:
    """(start, stop) of the windows ``iter_windows`` makes from ``n_frames`` frames."""
    return [(start, start + len(items)) for start, items in iter_windows(range(n_frames), window, allow_single)]


# --------------------------------------------------------------------------------------- crops, flow, models
def crop_window(images: np.ndarray, landmarks68: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye-aligned crops of one window with one transform from its first (onset) frame: the crops the models were
    trained on (``microface.data.face_crop``: area reduction to the crop's scale, then the warp).

    images (T, H, W, 3) uint8, landmarks68 (T, 68, 2) video pixels -> crops (T, S, S, 3) uint8,
    transform (2, 3) video -> crop pixels, landmarks68 in crop pixels (T, 68, 2) float32.
    """
    from microface.data.face_crop import crop_image
    from microface.data.preprocess import eye_alignment_transform, transform_landmarks

    images, landmarks68 = np.asarray(images), np.asarray(landmarks68)
    if images.ndim != 4 or landmarks68.shape != (images.shape[0], 68, 2):
        raise ValueError(f"expected images (T, H, W, 3) and landmarks68 (T, 68, 2), got {images.shape} and "
                         f"{landmarks68.shape}")
    transform = eye_alignment_transform(landmarks68[0], image_size)
    crops = np.stack([crop_image(np.ascontiguousarray(image), transform, image_size) for image in images])
    return crops, transform, transform_landmarks(landmarks68, transform)


def window_flow(crops: np.ndarray, method: str = "dis", **options) -> np.ndarray:
    """Flow onset -> t of a window's crops: (T, S, S, 3) uint8 RGB -> (T, S, S, 2) float32 px, zero at t = 0."""
    from microface.data.flow import clip_flow

    gray = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops])
    return clip_flow(gray, mode="onset", onset=0, method=method, **options)


@dataclass
class WindowInputs:
    """What the models see of one window of T frames, made by ``prepare_window``.

    crops (T, S, S, 3) uint8, transform (2, 3) video -> crop pixels, landmarks_crop (T, 68, 2) crop pixels, flow
    (T, S, S, 2) px onset -> t or None (stages "fit", "encoder"): DEM's inputs at its crop size S. refine_flow
    (T, R, R, 2) and refine_landmarks (T, 68, 2) R-crop pixels: DGMD's at its own size R, None when R = S or
    without DGMD (DGMD then takes flow and landmarks_crop)."""

    crops: np.ndarray
    transform: np.ndarray
    landmarks_crop: np.ndarray
    flow: np.ndarray | None = None
    refine_flow: np.ndarray | None = None
    refine_landmarks: np.ndarray | None = None


def _timed(timings: dict, key: str, function, *args, **kwargs):
    tic = time.perf_counter()
    try:
        return function(*args, **kwargs)
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - tic


def prepare_window(images: np.ndarray, landmarks68: np.ndarray, image_size: int, stage: str = "dgmd",
                   flow_method: str = "dis", flow_options: dict | None = None, refine_size: int | None = None,
                   timings: dict | None = None) -> WindowInputs:
    """Crops, landmarks and flows of one window for ``run_window``.

    images (T, H, W, 3) uint8 and landmarks68 (T, 68, 2) video pixels; image_size S (DEM's crop); refine_size R
    (DGMD's, None: S); stage: flow only for "dem" / "dgmd", R crops only for "dgmd" with R != S. The R inputs are
    cropped and flowed from the video frames again rather than resized from the S ones: that is how DGMD's
    training clips were made (crops and flow computed at R), with no second interpolation. timings: "crop" and
    "flow" entries increased by the seconds spent (both sizes included).
    """
    timings = {} if timings is None else timings
    options = dict(flow_options or {})
    crops, transform, landmarks_crop = _timed(timings, "crop", crop_window, images, landmarks68, image_size)
    inputs = WindowInputs(crops=crops, transform=transform, landmarks_crop=landmarks_crop)
    if STAGE_ALIASES.get(stage, stage) in MOTION_STAGES:
        inputs.flow = _timed(timings, "flow", window_flow, crops, flow_method, **options)
    if stage == "dgmd" and refine_size is not None and int(refine_size) != int(image_size):
        refine_crops, _, inputs.refine_landmarks = _timed(timings, "crop", crop_window, images, landmarks68,
                                                          int(refine_size))
        inputs.refine_flow = _timed(timings, "flow", window_flow, refine_crops, flow_method, **options)
    return inputs


@dataclass
class WindowFit:
    """The landmark fit's values for one window of T frames (numpy): shape (S,); expression (T, E) AUs; pose (T, 6);
    camera (T, 3) scaled orthographic in source pixels (scale px/mm, tx, ty); transform (2, 3) source -> DEM-crop
    pixels (the window's crop, for DGMD's camera)."""

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    camera: np.ndarray
    transform: np.ndarray


@dataclass
class WindowResult:
    """Outputs for one window of T frames (numpy, float32): shape (S,); expression (T, E); encoder_expression
    (T, E) the per-frame encoder's, or None when it did not run (a fit's window, stage "encoder" aside);
    pose (T, 6); camera (T, 3) (the fit's source-pixel camera, or the encoder's crop-NDC one without a fit);
    coarse_vertices, vertices (T, V, 3) mm; gate (T, V) or None (no DGMD); seconds: {"coarse_dem": s, "dgmd": s}."""

    shape: np.ndarray
    expression: np.ndarray
    encoder_expression: np.ndarray | None
    pose: np.ndarray
    camera: np.ndarray
    coarse_vertices: np.ndarray
    vertices: np.ndarray
    gate: np.ndarray | None
    seconds: dict = field(default_factory=dict)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _flow_tensor(flow: np.ndarray, device, dtype) -> torch.Tensor:
    """(T, H, W, 2) numpy px -> (T, 2, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(flow)).to(device=device, dtype=dtype).permute(0, 3, 1, 2)


def _refine_inputs(flow: np.ndarray | None, landmarks_crop: np.ndarray | None, refine_flow: np.ndarray | None,
                   refine_landmarks: np.ndarray | None, n_frames: int) -> tuple[np.ndarray, np.ndarray | None, int]:
    """DGMD's (flow (T, R, R, 2), landmarks (T, 68, 2) or None, R): the refine inputs when given, else DEM's.

    Raises ValueError for a refine flow that is not (T, R, R, 2), refine landmarks without a refine flow (or
    the reverse while DEM's landmarks are given: they are in S-crop pixels, not R-crop ones) or of a wrong shape.
    """
    if refine_flow is None:
        if refine_landmarks is not None:
            raise ValueError("refine_landmarks given without refine_flow: DGMD's resolution is that of its flow; "
                             "pass both (R-crop inputs) or neither (DGMD at the crop size)")
        return flow, landmarks_crop, int(np.asarray(flow).shape[1])
    refine_flow = np.asarray(refine_flow)
    if refine_flow.ndim != 4 or refine_flow.shape[0] != n_frames or refine_flow.shape[-1] != 2 \
            or refine_flow.shape[1] != refine_flow.shape[2]:
        raise ValueError(f"refine_flow: expected ({n_frames}, R, R, 2) px onset -> t at DGMD's resolution R "
                         f"(channels last, square), got {refine_flow.shape}")
    size = int(refine_flow.shape[1])
    if refine_landmarks is None:
        if landmarks_crop is not None:
            raise ValueError(f"refine_landmarks: needed with refine_flow ({size}x{size}) when landmarks_crop is "
                             "given: those are in DEM's crop pixels, DGMD needs them at its own size")
        return refine_flow, None, size
    refine_landmarks = np.asarray(refine_landmarks)
    if refine_landmarks.ndim != 3 or refine_landmarks.shape[0] != n_frames or refine_landmarks.shape[-1] != 2:
        raise ValueError(f"refine_landmarks: expected ({n_frames}, 68, 2) pixels of the {size}x{size} crop, got "
                         f"{refine_landmarks.shape}")
    return refine_flow, refine_landmarks, size


def dem_expression_from_onset(dem, frames: torch.Tensor, flow: torch.Tensor, times: torch.Tensor,
                              onset_expression: torch.Tensor) -> torch.Tensor:
    """DEM's expression for one clip started from a GIVEN onset expression (the landmark fit's).

    expression(t) = onset + (DEM(t) - DEM(0)), where DEM's static branch is fed ``onset_expression`` in place of
    its coarse encoder's onset estimate: z0 = lift(onset) + residual(onset image); then DEM's own motion
    encoder, ODE (or residual fusion) and decoder (``DEM.evolve``, the path ``DEM.forward`` takes). Why both:
    feeding the onset to the static branch starts the ODE at the code of the face actually fitted (the field depends on z, so the
    motion-driven change is the one for that face), and the difference makes frame 0 the fit's onset exactly
    (a trained decoder does not invert the lift, decode(lift(e)) != e) so DEM contributes only the change
    driven by motion: with ``DEMConfig.still_field``, zero motion gives exactly the onset on every frame.

    Args:
        dem: a ``DEM``.
        frames: (1, T, 3, S, S) in [0, 1]; flow: (1, T, 2, S, S) px onset -> t; times: (1, T) increasing.
        onset_expression: (1, E) the onset's expression (the fit's AUs).
    Returns:
        (T, E) expressions, row 0 = onset_expression.
    """
    from microface.models.dem import normalise_times

    *_, code = dem.evolve(frames[:, 0], onset_expression, flow, normalise_times(times.to(frames.dtype)))
    decoded = dem.decoder(code)[0]
    return onset_expression + (decoded - decoded[:1])


@torch.no_grad()
def run_window(dem, dgmd, face_model, crops: np.ndarray, flow: np.ndarray | None, times: np.ndarray,
               landmarks_crop: np.ndarray | None, stage: str = "dgmd", *, refine_flow: np.ndarray | None = None,
               refine_landmarks: np.ndarray | None = None, fit: WindowFit | None = None) -> WindowResult:
    """Reconstruct one window (a clip from its onset, frame 0).

    crops (T, S, S, 3) uint8; flow (T, S, S, 2) px onset -> t (needed for stages "dem" and "dgmd"); times (T,)
    strictly increasing seconds; landmarks_crop (T, 68, 2) crop pixels (DGMD's landmark cue); stage: "fit" (the
    landmark fit's meshes), "encoder" (per-frame coarse encoder; alias "coarse"), "dem" (+ DEM) or "dgmd" (+ DGMD).
    fit: the landmark fit's window (needed for "fit"): with it, "dem" / "dgmd" take identity, pose and camera from
    the fit and start DEM from the fit's onset (``dem_expression_from_onset``), and DGMD sees the fit's onset
    camera through the crop (``orthographic_to_crop_camera``); without it, from the coarse encoder (the seed's
    chain). refine_flow (T, R, R, 2) px and refine_landmarks (T, 68, 2) pixels of the R x R crop (same framing):
    DGMD's inputs at its own resolution R, read off the flow's shape, and its camera rendered at R x R (stage
    "dgmd" only; None: DGMD takes flow and landmarks_crop at S). Runs on the models' device.
    """
    from microface.render.camera import orthographic_to_crop_camera, to_render_camera
    from microface.training.dem import reconstruct
    from microface.training.dgmd import RefineClip, refine_clip

    stage = STAGE_ALIASES.get(stage, stage)
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    if stage == "fit" and fit is None:
        raise ValueError("stage 'fit': pass the landmark fit's window (fit=WindowFit(...))")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops: expected (T, S, S, 3), got {crops.shape}")
    n_frames, size = crops.shape[0], crops.shape[1]
    if stage in MOTION_STAGES and (flow is None or np.asarray(flow).shape != (n_frames, size, size, 2)):
        raise ValueError(f"flow: expected ({n_frames}, {size}, {size}, 2) for stage {stage!r}, got "
                         f"{None if flow is None else np.asarray(flow).shape}")
    if fit is not None and (fit.expression.shape[0] != n_frames or fit.pose.shape != (n_frames, 6)
                            or fit.camera.shape != (n_frames, 3)):
        raise ValueError(f"fit: expected expression ({n_frames}, E), pose ({n_frames}, 6), camera ({n_frames}, 3), "
                         f"got {fit.expression.shape}, {fit.pose.shape}, {fit.camera.shape}")
    if stage == "dgmd":
        dgmd_flow, dgmd_landmarks, refine_size = _refine_inputs(flow, landmarks_crop, refine_flow, refine_landmarks,
                                                                n_frames)
    parameter = next(dem.parameters())
    device, dtype = parameter.device, parameter.dtype
    tensor = lambda a: torch.as_tensor(np.asarray(a), device=device, dtype=dtype)  # noqa: E731
    frames = torch.from_numpy(np.ascontiguousarray(crops)).to(device=device, dtype=dtype).permute(0, 3, 1, 2)[None] / 255.0
    start = time.perf_counter()
    coarse = dem.encode_frames(frames) if stage == "encoder" else None  # with a fit, the encoder is not needed
    if fit is not None:
        shape, pose, camera = tensor(fit.shape)[None], tensor(fit.pose), tensor(fit.camera)
        expression = tensor(fit.expression)
        if stage in MOTION_STAGES:
            flow_t = _flow_tensor(flow, device, dtype)
            times_t = torch.as_tensor(np.asarray(times, dtype=np.float64), device=device).to(dtype)[None]
            expression = dem_expression_from_onset(dem, frames, flow_t[None], times_t, expression[:1])
        if stage == "encoder":
            shape, expression, pose, camera = (coarse.shape.mean(dim=1), coarse.expression[0], coarse.pose[0],
                                               coarse.camera[0])
        coarse_vertices = face_model(shape.expand(n_frames, -1), expression, pose).vertices
    elif stage == "encoder":
        shape, expression, pose, camera = (coarse.shape.mean(dim=1), coarse.expression[0], coarse.pose[0],
                                           coarse.camera[0])
        coarse_vertices = face_model(shape.expand(n_frames, -1), expression, pose).vertices
    else:
        flow_t = _flow_tensor(flow, device, dtype)
        times_t = torch.as_tensor(np.asarray(times, dtype=np.float64), device=device).to(dtype)[None]
        recon = reconstruct(dem, face_model, frames, flow_t[None], times_t)
        coarse, shape, expression = recon.output.coarse, recon.shape, recon.output.expression[0]
        pose, camera = coarse.pose[0], coarse.camera[0]
        coarse_vertices = recon.vertices[0]
    seconds = {"coarse_dem": time.perf_counter() - start}
    vertices, gate = coarse_vertices, None
    if stage == "dgmd":
        start = time.perf_counter()
        landmarks = None if dgmd_landmarks is None else tensor(dgmd_landmarks)
        if fit is not None:  # the onset's source camera through the R x R crop (same framing as the S crop)
            render_camera = orthographic_to_crop_camera(camera[:1], tensor(fit.transform) * (refine_size / size))
        else:
            render_camera = to_render_camera(camera[:1], (refine_size, refine_size))
        clip = RefineClip(coarse_vertices=coarse_vertices,
                          flow_onset_to_t=flow_t if dgmd_flow is flow else _flow_tensor(dgmd_flow, device, dtype),
                          camera=render_camera, landmarks2d=landmarks)
        refined = refine_clip(dgmd, clip)
        vertices, gate = refined.vertices, _numpy(refined.gate)
        seconds["dgmd"] = time.perf_counter() - start
    return WindowResult(shape=_numpy(shape[0]), expression=_numpy(expression),
                        encoder_expression=None if coarse is None else _numpy(coarse.expression[0]),
                        pose=_numpy(pose), camera=_numpy(camera),
                        coarse_vertices=_numpy(coarse_vertices), vertices=_numpy(vertices), gate=gate, seconds=seconds)


def vertices_in_source(vertices: np.ndarray, camera: np.ndarray, stage: str, transform: np.ndarray,
                       image_size: int) -> np.ndarray:
    """Every vertex in source-image pixels: (T, V, 3) mm -> (T, V, 2) px (x right, y down).

    camera (T, 3): the fit's scaled-orthographic source camera (stages "fit", "dem", "dgmd"), or for stage
    "encoder" the encoder's weak-perspective crop camera, projected into the S x S crop and mapped back to the
    source by the inverse of ``transform`` (T, 2, 3) source -> crop pixels.
    """
    from microface.data.preprocess import invert_transform
    from microface.render.camera import orthographic_to_pixels, weak_perspective_project

    points = torch.from_numpy(np.asarray(vertices, np.float64))
    cameras = torch.from_numpy(np.asarray(camera, np.float64))
    if STAGE_ALIASES.get(stage, stage) != "encoder":
        return orthographic_to_pixels(points, cameras).numpy().astype(np.float32)
    crop_px = weak_perspective_project(points, cameras, (image_size, image_size)).numpy()
    inverse = np.stack([invert_transform(t) for t in np.asarray(transform)])
    return (np.einsum("tvj,tij->tvi", crop_px, inverse[:, :, :2]) + inverse[:, None, :, 2]).astype(np.float32)


# ------------------------------------------------------------------------------------------------ mesh files


# ------------------------------------------------------------------------------------------- output folder


# --------------------------------------------------------------------------------------------------- driver
def track_source(source, landmarker, start_auto: bool, max_frames: int | None,
                 timings: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """First reading of a source: the tracked face of every frame reconstructed.

    Returns meshes (T, 468, 3) source pixels (held where ``detected`` is False), detected (T,) bool, and the
    index of the first frame (0, or the first frame holding a face with start_auto). T <= max_frames.
    """
    from itertools import islice

    from microface.utils.prefetch import prefetch

    frames = source.frames(0, None if start_auto else max_frames)
    # decoding (OpenCV) runs a few frames ahead in a second thread while the landmarker works on this one; closed
    # in this order: the tracker, the thread (joined), the decoder
    with closing(frames), closing(prefetch(frames, depth=4)) as decoded:
        tracked = track_face(decoded, landmarker, source.info.path, timings, start_auto=start_auto)
        with closing(tracked):
            records = [(f.index, f.mesh, f.detected) for f in islice(tracked, max_frames)]
    index = np.array([r[0] for r in records], dtype=np.int64)
    if len(index) and np.any(np.diff(index) != 1):
        raise RuntimeError("track_source: frames were skipped after the start")  # track_face never skips later
    return (np.stack([r[1] for r in records]).astype(np.float32), np.array([r[2] for r in records], dtype=bool),
            int(index[0]))


def fit_video(meshes: np.ndarray, detected: np.ndarray, model, mediapipe_embedding=None):
    """The landmark fit of the whole video (one identity, per-frame pose, camera, AUs and jaw): see
    ``microface.fit.fit_landmarks``. Frames without a face are ignored and filled by its temporal prior.
    A fit error (e.g. FLAME without its MediaPipe embedding) becomes a ReconstructionError."""
    from microface.fit import fit_landmarks

    try:
        return fit_landmarks(meshes, model, valid=detected, mediapipe_embedding=mediapipe_embedding)
    except ValueError as err:
        raise ReconstructionError(f"landmark fit: {err}") from None


def preview_indices(n_frames: int, count: int = 6) -> np.ndarray:
    """Up to ``count`` frame positions spread evenly over n_frames (first and last included): (K,) int."""
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, count)).round().astype(np.int64))


def reconstruct_video(video: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
                      face_model: str = "open", flame_path: str | Path | None = None, max_frames: int | None = None,
                      window: int = DEFAULT_WINDOW, mesh_format: str = "obj", device: str = "cpu",
                      stage: str = "fit", task_path: str | Path | None = None, show_progress: bool = True,
                      viewer_max_frames: int = DEFAULT_VIEWER_FRAMES, start: str | int = 0, fps: float | None = None,
                      mediapipe_embedding: str | Path | None = None) -> dict:
    """Reconstruct every frame of ``video`` into the folder ``out`` (layout and guarantees: module doc).

    video: a video file, a photo (.jpg/.png/...) or a folder of frames (natural order: img2 before img10).
    checkpoint: a bundle (default ``default_checkpoint_path()``); face_model "open" | "flame" (with flame_path, and
    mediapipe_embedding: FLAME's ``mediapipe_landmark_embedding.npz`` for the fit); max_frames: reconstruct at most
    this many frames (from the start); window: frames per DEM clip (>= 2); mesh_format "obj" | "ply" | "none" (no
    per-frame files: params.npz holds every frame's vertices); device: torch
    device of the models; stage: "fit" | "dem" | "dgmd" | "encoder" (what the meshes hold, module doc);
    task_path: the landmarker bundle (default: ``microface.data.landmarks.default_task_path()``); viewer_max_frames:
    frames in viewer.html (evenly subsampled beyond that); start: 0 (the first frame must hold a face) or "auto"
    (start at the first frame that holds one); fps: frames per second of a folder (default 200) or photo, or an
    override for a video. Returns the summary (also written as ``summary.json``).
    Errors: FileNotFoundError (missing input, checkpoint or landmarker) and ReconstructionError (a ValueError:
    unreadable input, no face in frame 0, wrong face model, unusable output folder), each naming the file.
    """
    from microface import __version__
    from microface.data.landmarks import FaceLandmarker, to_ibug68
    from microface.render.rasterize import warm_compiled_search
    from microface.utils.prefetch import prefetch
    from microface.utils.runtime import progress, split_threads

    stage = STAGE_ALIASES.get(stage, stage)
    if mesh_format not in MESH_FORMATS:
        raise ReconstructionError(f"mesh format: expected one of {MESH_FORMATS}, got {mesh_format!r}")
    if stage not in STAGES:
        raise ReconstructionError(f"stage: expected one of {STAGES}, got {stage!r}")
    if window < 2:
        raise ReconstructionError(f"window: expected >= 2 frames (DEM models motion from an onset), got {window}")
    if max_frames is not None and max_frames < 1:
        raise ReconstructionError(f"max frames: expected >= 1, got {max_frames}")
    if str(start) not in ("0", "auto"):
        raise ReconstructionError(f"start: expected 0 (the first frame holds the face) or 'auto', got {start!r}")
    start_auto = str(start) == "auto"
    if face_model not in FACE_MODELS:
        raise ReconstructionError(f"face model: expected one of {FACE_MODELS}, got {face_model!r}")
    if face_model == "flame" and flame_path is None:
        build_face_model("flame", None)  # raises the message saying --flame is needed
    torch_device = check_device(device)
    out = Path(out).expanduser().absolute()
    check_output_folder(out)
    bundle = read_bundle(checkpoint if checkpoint is not None else default_checkpoint_path())
    trained_for = bundle["face_model"]["name"]
    if trained_for != face_model:
        raise ReconstructionError(f"checkpoint {bundle['path']} was trained for the {trained_for!r} face model, not "
                                  f"{face_model!r}; pass --face-model {trained_for} or a checkpoint exported for "
                                  f"{face_model!r} (tools/export_checkpoint.py --face-model {face_model})")
    model = build_face_model(face_model, flame_path, bundle["face_model"]["n_shape"],
                             bundle["face_model"]["n_expression"]).to(torch_device)
    dem, dgmd, meta = models_from_bundle(bundle, model, still_field=True)
    image_size, refine_size, flow_cfg = int(meta["image_size"]), int(meta["refine_size"]), meta["flow"]
    faces = model.faces.detach().cpu().numpy().astype(np.int64)

    source = open_source(video, fps)
    info = source.info
    try:
        landmarker = FaceLandmarker(task_path, max_faces=2)
    except BaseException:
        source.close()
        raise
    staging = staging_folder(out)  # built in full, then moved onto out by commit_folder
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cleanup, warming = ExitStack(), None
    try:
        if torch_device.type == "cpu":  # the two pipeline threads (tracking | decoding, models | crops + flow)
            cleanup.enter_context(split_threads())
        if stage == "dgmd" and torch_device.type == "cpu":
            # numba's import and the compiled rasterizer's cache load (~0.8 s) overlap the tracking below
            warming = threading.Thread(target=warm_compiled_search, name="microface-warm-rasterizer", daemon=True)
            warming.start()
        # 1. track the face in every frame, then fit the face model to the whole video
        meshes, detected, first = track_source(source, landmarker, start_auto, max_frames, timings)
        n_frames, frames_read = len(meshes), info.frames_read
        info.start = first
        if n_frames < 2 and stage in MOTION_STAGES:
            raise ReconstructionError(f"{info.path} gave one frame: stage {stage!r} models motion from an onset and "
                                      "needs >= 2 frames; use --stage fit (or encoder) for a photo")
        fit, fit_summary = None, None
        if stage != "encoder":
            tic = time.perf_counter()
            fit = fit_video(meshes, detected, model, mediapipe_embedding)
            timings["fit"] = time.perf_counter() - tic
            fit_summary = {"median_residual_px": float(np.nanmedian(fit.residual_px.numpy())),
                           "frames_fitted": int(fit.valid.sum()), "settings": dataclasses.asdict(fit.settings)}
        fitted = None if fit is None else {k: v.numpy() for k, v in (("expression", fit.expression), ("pose", fit.pose),
                                                                     ("camera", fit.camera))}
        if warming is not None:
            warming.join()
        # 2. read the frames again: crops (and flow) per window, the models, the meshes
        writer = {"obj": write_obj, "ply": write_ply, "none": None}[mesh_format]
        if writer is not None:
            (staging / "meshes").mkdir()
        columns: dict[str, list] = {k: [] for k in ("frame_index", "window_index", "window_start", "shape",
                                                    "expression", "encoder_expression", "pose", "camera",
                                                    "crop_transform", "coarse_vertices", "vertices", "vertices_px",
                                                    "dgmd_gate", "mesh", "detected", "landmarks68_crop")}
        shown_preview = set(preview_indices(n_frames).tolist())
        preview_images: list[np.ndarray] = []
        images_iter = source.frames(first, n_frames)

        def window_inputs():
            """Each window's frames and model inputs (decoding, crops, flow: OpenCV, which releases the GIL), made
            in a second thread one window ahead of the models (``prefetch``); same inputs as a plain loop."""
            windows = iter_windows(enumerate(images_iter), window, allow_single=stage not in MOTION_STAGES)
            for position, items in windows:
                at = np.arange(position, position + len(items))
                images = np.stack([image for _, image in items])
                inputs = prepare_window(images, to_ibug68(meshes[at])[..., :2], image_size, stage, flow_cfg["method"],
                                        flow_cfg.get("options", {}), refine_size, timings)
                yield position, items, at, inputs

        quiet = {} if show_progress else {"disable": True}  # else progress() honours MICROFACE_NO_PROGRESS
        ahead = cleanup.enter_context(closing(prefetch(window_inputs())))  # closed (thread joined) before the source
        with progress(total=n_frames, desc="reconstruct", unit="frame", **quiet) as bar:
            for w, (position, items, at, inputs) in enumerate(ahead):
                n = len(items)
                preview_images += [image for p, image in items if p in shown_preview]
                mesh = meshes[at]
                index = first + at
                window_fit = None if fit is None else WindowFit(
                    shape=fit.shape.numpy(), expression=fitted["expression"][at], pose=fitted["pose"][at],
                    camera=fitted["camera"][at], transform=inputs.transform)
                result = run_window(dem, dgmd, model, inputs.crops, inputs.flow, index / info.fps,
                                    inputs.landmarks_crop, stage, refine_flow=inputs.refine_flow,
                                    refine_landmarks=inputs.refine_landmarks, fit=window_fit)
                for key, seconds in result.seconds.items():
                    timings[key] = timings.get(key, 0.0) + seconds
                transforms = np.repeat(inputs.transform[None], n, 0)
                tic = time.perf_counter()
                for t in range(n if writer is not None else 0):
                    writer(staging / "meshes" / f"frame_{index[t]:05d}.{mesh_format}", result.vertices[t], faces,
                           f"microface reconstruct: frame {index[t]}, stage {stage}, mm (face-model frame)")
                timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tic
                for key, value in (("frame_index", index), ("window_index", np.full(n, w, np.int32)),
                                   ("window_start", np.full(n, first + position, np.int64)),
                                   ("shape", np.repeat(result.shape[None], n, 0)), ("expression", result.expression),
                                   ("encoder_expression", result.encoder_expression), ("pose", result.pose),
                                   ("camera", result.camera), ("crop_transform", transforms),
                                   ("coarse_vertices", result.coarse_vertices), ("vertices", result.vertices),
                                   ("vertices_px", vertices_in_source(result.vertices, result.camera, stage,
                                                                      transforms, image_size)),
                                   ("dgmd_gate", result.gate), ("mesh", mesh), ("detected", detected[at]),
                                   ("landmarks68_crop", inputs.landmarks_crop)):
                    columns[key].append(value)
                bar.update(n)
        arrays = {k: np.concatenate(v) for k, v in columns.items() if v and v[0] is not None}
        if len(arrays["frame_index"]) != n_frames:
            raise ReconstructionError(f"{info.path}: {n_frames} frames were tracked but {len(arrays['frame_index'])} "
                                      "could be read again (a file changed or a video that decodes differently)")
        tic = time.perf_counter()
        write_arrays(staging, arrays, info.fps, image_size, faces, refine_size)
        shown = np.unique(np.linspace(0, n_frames - 1, min(n_frames, viewer_max_frames)).round().astype(int))
        write_viewer(staging / "viewer.html", arrays, shown, faces, f"{Path(info.path).name}: {stage} meshes",
                     with_offsets=stage == "dgmd")
        previewed = preview_indices(n_frames)
        write_preview(staging / "preview.png", np.stack(preview_images), arrays["vertices_px"][previewed], faces,
                      arrays["frame_index"][previewed])
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tic
        info.frames_read = frames_read  # the first reading's count (the second reads the same frames again)
        missing = [int(i) for i in arrays["frame_index"][~arrays["detected"]]]
        windows = sorted({(int(s), int((arrays["window_start"] == s).sum())) for s in arrays["window_start"]})
        path = Path(info.path)
        summary = {
            "format": OUTPUT_FORMAT,
            "video": {**dataclasses.asdict(info), "path": portable_path(info.path),
                      "size_bytes": path.stat().st_size if path.is_file()
                      else sum(p.stat().st_size for p in source.paths)},
            "frames": n_frames,
            "start": {"mode": "auto" if start_auto else "0", "frame": first},
            "frames_without_face": {"count": len(missing), "frames": missing,
                                    "policy": "the start frame must hold a face (--start auto: the first that does); "
                                              "later, the previous landmarks are held and the fit interpolates"},
            "windows": {"size": window, "count": len(windows), "starts_and_lengths": windows},
            "stage": stage,
            "fit": fit_summary,
            "dem": {"still_field": bool(dem.config.still_field),
                    "onset": "the landmark fit's" if stage in MOTION_STAGES else None},
            "camera": "scaled orthographic (scale px/mm, tx, ty px) in source pixels, the fit's"
                      if stage != "encoder" else "weak perspective (s, tx, ty) in crop NDC, the encoder's",
            "image_size": image_size,
            "refine_size": refine_size,
            "mesh_format": mesh_format,
            "viewer_frames": [int(i) for i in arrays["frame_index"][shown]],
            "preview_frames": [int(i) for i in arrays["frame_index"][previewed]],
            "checkpoint": {**bundle_meta(bundle), "path": portable_path(bundle["path"])},
            "face_model": face_model,
            "flame_path": None if flame_path is None else portable_path(flame_path),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "timings_s": {**{k: round(v, 4) for k, v in timings.items()},
                          "total": round(time.perf_counter() - started, 4)},
            "microface": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "outputs": {"meshes": f"meshes/frame_NNNNN.{mesh_format}" if writer is not None else None,
                        "params.npz": PARAMS_KEYS,
                        "landmarks.npz": "landmarks68 (T,68,2) and landmarks_mesh (T,468,3) video pixels, detected (T,), "
                                         "landmarks68_crop (T,68,2) crop pixels, frame_index (T,)",
                        "viewer.html": "plotly mesh sequence",
                        "preview.png": "the mesh drawn over up to 6 frames spread over the video"},
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
        commit_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        cleanup.close()
        source.close()
        landmarker.close()
    return summary


def summary_lines(summary: dict, out: str | Path) -> list[str]:
    """A few lines for the terminal: frames, windows, failures, speed, where the files are."""
    missing = summary["frames_without_face"]
    seconds = summary["timings_s"]["total"]
    lines = [f"reconstructed {summary['frames']} frames of {summary['video']['path']} in "
             f"{summary['windows']['count']} windows ({summary['stage']}, "
             f"{summary['frames'] / max(seconds, 1e-9):.1f} frames/s)"]
    if missing["count"]:
        shown = ", ".join(map(str, missing["frames"][:10])) + (" ..." if missing["count"] > 10 else "")
        lines.append(f"warning: no face detected in {missing['count']} frames (landmarks held from the previous "
                     f"frame): {shown}")
    meshes = "meshes/, " if summary["outputs"]["meshes"] else ""
    lines.append(f"wrote {out}: preview.png (look at it first), {meshes}params.npz, landmarks.npz, viewer.html, "
                 "summary.json")
    return lines


