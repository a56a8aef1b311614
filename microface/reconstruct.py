"""``microface reconstruct``: a video in, a 3D face mesh per frame out (coarse encoder -> DEM -> DGMD).

Pipeline, per video (one face, filmed roughly frontally):

1. frames are read with OpenCV (``cv2.VideoCapture``); a file that does not open or yields no frame raises
   ``ReconstructionError`` ("corrupt or unreadable video") naming it;
2. the face is tracked with the offline MediaPipe landmarker (``microface.data.landmarks.FaceLandmarker``),
   one detection per frame. The FIRST frame must hold a face (otherwise ``ReconstructionError`` naming the
   video: trim it so it starts on the face). In a later frame with no detection the previous frame's
   landmarks are held; such frames are counted and listed in ``summary.json`` (``frames_without_face``).
   With two faces in a frame, the one nearest the previously tracked face is followed (in the first frame:
   the best detection);
3. the frames are cut into consecutive WINDOWS of ``window`` frames (a final lone frame joins the last
   window, as DEM needs two frames per clip). Each window is a clip whose onset is its first frame, the
   micro-expression convention the models were trained with: one eye-aligned crop transform per window,
   from the onset frame's 68 landmarks (``microface.data.preprocess.eye_alignment_transform``), fixed over
   the window so that the optical flow sees the face move; crops are the checkpoint's image size S (DEM's input);
   when DGMD has its own resolution R != S (the bundle's ``refine_size``), each window is also cropped at R x R
   with the same eye-aligned framing (the crop transform scaled by R / S);
4. optical flow onset -> t per window (``microface.data.flow.clip_flow``, method from the checkpoint), on the
   S crops for DEM and, when R != S, on the R crops for DGMD;
5. coarse encoder + DEM (``microface.models.dem_training.reconstruct``): per-frame expression from DEM, pose
   and weak-perspective camera from the coarse encoder, one identity (shape) per window;
6. DGMD (``microface.models.dgmd_training.refine_clip``) adds small per-vertex offsets guided by the flow and
   by the detected landmarks (in crop pixels), with the onset frame's camera held for the window; all three at
   DGMD's resolution R (the weak-perspective camera is resolution-free: it is rendered at R x R). When the
   bundle's DGMD has ``temporal_rank`` > 0, its flow cues come from the WINDOW's flows reduced to their leading
   temporal modes, so a window should hold one expression (as the ME clips DGMD was trained on do).

Windows are reconstructed independently, like the clips DEM was trained on, so the mesh may step at a window
boundary (identity and expression restart from the new onset).

Output folder (written to a hidden temporary folder beside it and renamed into place at the end, so an
interrupted or failed run leaves no half-written folder; an existing folder is only replaced when it holds
a previous reconstruction)::

    meshes/frame_00000.obj|ply   refined mesh of every frame (mm, face-model frame, posed), 1-based OBJ faces
    params.npz                   per-frame parameters and meshes (see ``PARAMS_KEYS``)
    landmarks.npz                landmarks68 (T,68,2) and landmarks_mesh (T,468,3) in VIDEO pixels, detected (T,)
                                 bool, landmarks68_crop (T,68,2) crop pixels
    viewer.html                  interactive plotly page of the mesh sequence (coloured by DGMD offset, mm)
    summary.json                 video, checkpoint provenance, frames, windows, failures, timings

Checkpoint bundle (``save_bundle`` / ``load_bundle``): one ``torch.save`` dict, ``"format":
"microface-reconstruct-v1"``, holding the face model's name and sizes, the crop size, the flow method, the
encoder / DEM / DGMD configs and state dicts, and a free provenance dict; ``"refine_size"`` is DGMD's own crop
size (a bundle without it, written before DGMD had one, means the crop size). ``tools/export_checkpoint.py``
writes it from a training run's checkpoints. The default is ``default_checkpoint_path()``
(``microface/assets/checkpoints/open_dem_dgmd.pt``, package data once exported).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np
import torch

from microface.atomic import atomic_path

BUNDLE_FORMAT = "microface-reconstruct-v1"
OUTPUT_FORMAT = "microface-reconstruction-v1"
FACE_MODELS = ("open", "flame")
STAGES = ("coarse", "dem", "dgmd")
MESH_FORMATS = ("obj", "ply")
DEFAULT_WINDOW = 16
DEFAULT_VIEWER_FRAMES = 240  # about 50 kB of HTML per frame: a whole long video would make a page of tens of MB
CHECKPOINT_HELP = ("train the models with `snakemake all --cores 2 --configfile config/cpu.yaml`, then export them "
                   "with `python tools/export_checkpoint.py --profile cpu --dgmd-checkpoint "
                   "results/cpu/dgmd/checkpoints/dgmd.pt`, or pass --checkpoint PATH")
PARAMS_KEYS = {
    "frame_index": "(T,) int64 video frame index (0-based)",
    "time_s": "(T,) float64 seconds (frame_index / fps)",
    "fps": "() float64",
    "window_index": "(T,) int32 window of each frame",
    "window_start": "(T,) int64 onset frame (video index) of each frame's window",
    "shape": "(T, S) identity of each frame's window (mean of its per-frame encoder shapes)",
    "expression": "(T, E) DEM expression (the encoder's for stage 'coarse')",
    "encoder_expression": "(T, E) per-frame coarse-encoder expression",
    "pose": "(T, 6) global + jaw axis-angle (coarse encoder)",
    "camera": "(T, 3) weak perspective (s, tx, ty) in crop NDC (coarse encoder)",
    "crop_transform": "(T, 2, 3) video pixels -> crop pixels of each frame's window",
    "image_size": "() DEM's crop size S in pixels (that of crop_transform and landmarks68_crop)",
    "refine_size": "() DGMD's crop size R in pixels (stage 'dgmd'; its crop transform is crop_transform * R / S)",
    "coarse_vertices": "(T, V, 3) mm, DGMD's input: DEM's mesh (the encoder's for stage 'coarse')",
    "vertices": "(T, V, 3) mm, the final (refined) mesh, as in meshes/",
    "dgmd_gate": "(T, V) DGMD motion-attention gate in [0, 1) (stage 'dgmd' only)",
    "faces": "(F, 3) int64 triangles",
}


class ReconstructionError(ValueError):
    """A video, checkpoint or output folder that ``reconstruct_video`` cannot use; the message says what to do."""


# ------------------------------------------------------------------------------------------ checkpoint bundle
def default_checkpoint_path() -> Path:
    """The packaged checkpoint: ``microface/assets/checkpoints/open_dem_dgmd.pt`` (may not exist yet)."""
    return Path(__file__).resolve().parent / "assets" / "checkpoints" / "open_dem_dgmd.pt"


def _plain(value: Any) -> Any:
    """Configs as plain dicts / lists (dataclasses and tuples unrolled) so the bundle loads with weights_only."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cpu_state(state: dict) -> dict:
    return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _state_size(state: dict, key: str, path: Path | str, axis: int = 0) -> int:
    if key not in state:
        raise ValueError(f"{path}: state dict has no {key!r}; is it a DEM (resp. DGMD) state dict?")
    return int(state[key].shape[axis])


def save_bundle(path: str | Path, *, face_model_name: str, image_size: int, flow_method: str, encoder_cfg: dict,
                dem_cfg: dict, dem_state: dict, dgmd_cfg: dict, dgmd_state: dict, provenance: dict,
                flow_options: dict | None = None, refine_size: int | None = None) -> Path:
    """Write a reconstruction checkpoint bundle (atomically) and return its path.

    face_model_name: "open" | "flame"; image_size: crop size S DEM was trained on (S x S); refine_size: DGMD's
    own crop size R (its flow, landmarks and rasterization; the profile's ``dgmd.image_size``), None: S; flow_method:
    "dis" | "tvl1" (flow_options: extra ``compute_flow`` keywords, e.g. dis_preset); encoder_cfg / dem_cfg: the
    ``build_dem`` arguments; dem_state: ``DEM.state_dict()``; dgmd_cfg: ``DGMDConfig`` keys; dgmd_state:
    ``DGMD.state_dict()``; provenance: JSON-able dict (what was trained on what, by which command). The face
    model's sizes (n_shape S, n_expression E, n_vertices V) are read off the state dicts and recorded, so a
    mismatched face model is caught at load time.
    """
    from microface.data.flow import FLOW_METHODS
    from microface.train import atomic_torch_save
    from microface import __version__

    if face_model_name not in FACE_MODELS:
        raise ValueError(f"face_model_name: expected one of {FACE_MODELS}, got {face_model_name!r}")
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    refine_size = int(image_size) if refine_size is None else int(refine_size)
    if refine_size < 8:
        raise ValueError(f"refine_size: expected >= 8 pixels (or None: image_size), got {refine_size}")
    if flow_method not in FLOW_METHODS:
        raise ValueError(f"flow_method: expected one of {FLOW_METHODS} (a flow real videos can have), got {flow_method!r}")
    json.dumps(provenance)  # fail now, not when someone reads summary.json
    bundle = {
        "format": BUNDLE_FORMAT,
        "face_model": {
            "name": face_model_name,
            "n_shape": _state_size(dem_state, "coarse_encoder.shape_head.weight", path),
            "n_expression": _state_size(dem_state, "coarse_encoder.expression_head.weight", path),
            "n_vertices": _state_size(dgmd_state, "vertex_region", path),
        },
        "image_size": int(image_size),
        "refine_size": refine_size,
        "flow": {"method": flow_method, "options": _plain(dict(flow_options or {}))},
        "encoder_cfg": _plain(dict(encoder_cfg or {})),
        "dem_cfg": _plain(dem_cfg or {}),
        "dgmd_cfg": _plain(dgmd_cfg or {}),
        "dem_state": _cpu_state(dem_state),
        "dgmd_state": _cpu_state(dgmd_state),
        "provenance": _plain(dict(provenance)),
        "created": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "microface": __version__,
                    "torch": str(torch.__version__)},
    }
    path = Path(path)
    atomic_torch_save(bundle, path)
    return path


def read_bundle(path: str | Path) -> dict:
    """Read and check a bundle written by ``save_bundle`` -> its dict (plus "sha256" and "path" of the file).

    An older bundle without "refine_size" gets refine_size = image_size (DGMD then ran at DEM's crop size).
    Missing file -> FileNotFoundError saying how to produce one; anything else unusable -> ReconstructionError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no reconstruction checkpoint at {path}: {CHECKPOINT_HELP}")
    data = path.read_bytes()
    try:
        bundle = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, a pickle with foreign objects, not a torch file at all
        reason = (str(err).strip().splitlines() or [""])[0][:200]  # torch's own messages run to a page
        raise ReconstructionError(f"checkpoint {path} could not be read ({type(err).__name__}: {reason}); "
                                  f"re-export it: {CHECKPOINT_HELP}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
        hint = (" (it looks like a training checkpoint: convert it with tools/export_checkpoint.py)"
                if isinstance(bundle, dict) and "model" in bundle else "")
        raise ReconstructionError(f"checkpoint {path} is not a reconstruction bundle: expected format "
                                  f"{BUNDLE_FORMAT!r}, found {found!r}{hint}")
    missing = sorted({"face_model", "image_size", "flow", "encoder_cfg", "dem_cfg", "dgmd_cfg", "dem_state",
                      "dgmd_state", "provenance"} - set(bundle))
    if missing:
        raise ReconstructionError(f"checkpoint {path} lacks {missing}; re-export it with tools/export_checkpoint.py")
    bundle["refine_size"] = bundle_refine_size(bundle, path)
    bundle["path"] = str(path)
    bundle["sha256"] = hashlib.sha256(data).hexdigest()
    return bundle


def bundle_refine_size(bundle: dict, source: str | Path | None = None) -> int:
    """DGMD's crop size R of a bundle dict: its "refine_size", or its "image_size" when absent or None (bundles
    written before DGMD had its own resolution). A value below 8 -> ReconstructionError naming ``source``."""
    value = bundle.get("refine_size")
    size = bundle["image_size"] if value is None else value
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 8:
        raise ReconstructionError(f"checkpoint {source or bundle.get('path', 'the bundle')} has refine_size "
                                  f"{size!r}, expected an int >= 8 pixels; re-export it with "
                                  "tools/export_checkpoint.py")
    return int(size)


def bundle_meta(bundle: dict) -> dict:
    """Everything in a bundle but the weights (JSON-able)."""
    return {k: v for k, v in bundle.items() if k not in ("dem_state", "dgmd_state")}


def models_from_bundle(bundle: dict, face_model) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(DEM, DGMD, meta) from a ``read_bundle`` dict, in eval mode on the face model's device.

    meta: ``bundle_meta`` (no weights), with "image_size" (DEM's crop size S) and "refine_size" (DGMD's, R).
    Raises ReconstructionError when the face model does not match the one the bundle was trained for.
    """
    from microface.models.dem_training import build_dem
    from microface.models.dgmd import build_dgmd

    source = bundle.get("path", "the bundle")
    expected = bundle["face_model"]
    found = {"n_shape": int(face_model.n_shape), "n_expression": int(face_model.n_expression),
             "n_vertices": int(face_model.v_template.shape[0])}
    wrong = {k: (expected[k], v) for k, v in found.items() if int(expected[k]) != v}
    if wrong:
        details = ", ".join(f"{k} {a} in the checkpoint vs {b} in the model" for k, (a, b) in wrong.items())
        raise ReconstructionError(f"checkpoint {source} was trained for a {expected['name']!r} face model of other "
                                  f"sizes ({details}); use the face model it was trained with")
    try:
        dem = build_dem(face_model, bundle["encoder_cfg"], bundle["dem_cfg"], seed=0)
        dem.load_state_dict(bundle["dem_state"])
        dgmd = build_dgmd(face_model, bundle["dgmd_cfg"], seed=0)
        dgmd.load_state_dict(bundle["dgmd_state"])
    except (RuntimeError, ValueError, TypeError) as err:
        raise ReconstructionError(f"checkpoint {source} does not fit the current model code ({err}); re-export it "
                                  "with tools/export_checkpoint.py from its training checkpoints") from None
    device = face_model.v_template.device
    meta = {**bundle_meta(bundle), "refine_size": bundle_refine_size(bundle, source)}
    return dem.to(device).eval(), dgmd.to(device).eval(), meta


def load_bundle(path: str | Path, face_model) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(DEM, DGMD, meta) from a bundle file for ``face_model`` (see ``read_bundle``, ``models_from_bundle``)."""
    return models_from_bundle(read_bundle(path), face_model)


def build_face_model(name: str, flame_path: str | Path | None = None, n_shape: int | None = None,
                     n_expression: int | None = None):
    """The face model a checkpoint needs: "open" (embedded) or "flame" (``flame_path`` required, sizes as trained)."""
    if name == "open":
        from microface.face.open_model import OpenFaceModel

        return OpenFaceModel()
    if name == "flame":
        if flame_path is None:
            raise ReconstructionError("--face-model flame needs --flame PATH, the FLAME model pickle (registration at "
                                      "flame.is.tue.mpg.de); the embedded open model needs none")
        from microface.face.flame import FlameFaceModel

        sizes = {k: int(v) for k, v in (("n_shape", n_shape), ("n_expression", n_expression)) if v is not None}
        return FlameFaceModel(flame_path, **sizes)
    raise ReconstructionError(f"face model: expected one of {FACE_MODELS}, got {name!r}")


def check_device(device: str) -> torch.device:
    """A torch device that can be used here, or ReconstructionError saying why not (e.g. cuda on a CPU build)."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ReconstructionError(f"device: {device!r} is not a torch device; use cpu, cuda, cuda:1, mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(parsed.type, True):
        raise ReconstructionError(f"device {device!r}: torch {torch.__version__} here has no {parsed.type} device; "
                                  "use --device cpu")
    return parsed


# ------------------------------------------------------------------------------------------------- video
@dataclass
class VideoInfo:
    """What OpenCV reports about a video: fps (assumed 30 when it reports none), frame size, frame count
    (container metadata, may be off; ``frames_read`` counts what was decoded)."""

    path: str
    fps: float
    width: int
    height: int
    frame_count: int
    fps_reported: bool = True
    frames_read: int = 0


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a video for reading -> (capture, info). Missing file -> FileNotFoundError; one OpenCV cannot open
    -> ReconstructionError ("corrupt or unreadable video") naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist; check the path")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ReconstructionError(f"corrupt or unreadable video {path}: OpenCV cannot open it (truncated file, or a "
                                  "codec this OpenCV build lacks; re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    reported = np.isfinite(fps) and fps > 0
    info = VideoInfo(path=str(path), fps=fps if reported else 30.0, width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     frame_count=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0), fps_reported=bool(reported))
    return capture, info


def iter_video_frames(capture: cv2.VideoCapture, info: VideoInfo, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decoded frames (H, W, 3) RGB uint8, at most ``max_frames``; counts them in ``info.frames_read``.

    A video that yields no frame at all raises ReconstructionError ("corrupt or unreadable video")."""
    while max_frames is None or info.frames_read < max_frames:
        ok, frame = capture.read()
        if not ok or frame is None:
            break
        info.frames_read += 1
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if info.frames_read == 0:
        raise ReconstructionError(f"corrupt or unreadable video {info.path}: OpenCV opened it but decoded no frame; "
                                  "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")


def select_face(faces: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    """The face to follow among detections: faces (F, 468, 3), previous (468, 3) or None -> (468, 3) or None.

    None when F = 0; the first (best) detection when there is no previous face; else the one whose landmark
    centroid is nearest the previous face's."""
    if len(faces) == 0:
        return None
    if previous is None or len(faces) == 1:
        return faces[0]
    distance = np.linalg.norm(faces[:, :, :2].mean(1) - previous[:, :2].mean(0), axis=1)
    return faces[int(np.argmin(distance))]


@dataclass
class TrackedFrame:
    """One decoded frame with its face: image (H, W, 3) RGB uint8, mesh (468, 3) landmarks in video pixels
    (held from the previous frame when ``detected`` is False)."""

    index: int
    image: np.ndarray
    mesh: np.ndarray
    detected: bool


def track_face(frames: Iterable[np.ndarray], landmarker, video: str, timings: dict | None = None) -> Iterator[TrackedFrame]:
    """Landmarks for each frame (see the module doc: face required in frame 0, held where detection fails).

    frames: iterable of (H, W, 3) RGB uint8; landmarker: a ``FaceLandmarker``; video: named in errors;
    timings: optional dict whose "decode" / "landmarks" entries are increased by the seconds spent.
    """
    timings = {} if timings is None else timings
    previous = None
    iterator = iter(frames)
    index = 0
    while True:
        start = time.perf_counter()
        try:
            image = next(iterator)
        except StopIteration:
            return
        finally:
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        mesh = select_face(landmarker.detect_all(image), previous)
        timings["landmarks"] = timings.get("landmarks", 0.0) + time.perf_counter() - start
        if mesh is None and previous is None:
            raise ReconstructionError(f"no face found in the first frame of {video}; reconstruct needs a face in "
                                      "frame 0 (trim the video so it starts on the face)")
        detected = mesh is not None
        previous = mesh if detected else previous
        yield TrackedFrame(index=index, image=image, mesh=previous, detected=detected)
        index += 1


def iter_windows(items: Iterable, window: int) -> Iterator[tuple[int, list]]:
    """Consecutive windows of ``window`` items -> (start, items) pairs; a final lone item joins the last window
    (so that every window has >= 2 items: DEM integrates over a clip). Streams, holding at most window + 2 items.

    Raises ReconstructionError when there is exactly one item in all."""
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
    if len(buffer) == 1:
        raise ReconstructionError("only one frame could be read; reconstruct needs at least 2 (DEM models motion "
                                  "from an onset frame)")
    if buffer:
        yield start, buffer


def window_bounds(n_frames: int, window: int) -> list[tuple[int, int]]:
    """(start, stop) of the windows ``iter_windows`` makes from ``n_frames`` frames."""
    return [(start, start + len(items)) for start, items in iter_windows(range(n_frames), window)]


# --------------------------------------------------------------------------------------- crops, flow, models
def crop_window(images: np.ndarray, landmarks68: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye-aligned crops of one window with one transform from its first (onset) frame.

    images (T, H, W, 3) uint8, landmarks68 (T, 68, 2) video pixels -> crops (T, S, S, 3) uint8,
    transform (2, 3) video -> crop pixels, landmarks68 in crop pixels (T, 68, 2) float32.
    """
    from microface.data.preprocess import align_crop, eye_alignment_transform, transform_landmarks

    images, landmarks68 = np.asarray(images), np.asarray(landmarks68)
    if images.ndim != 4 or landmarks68.shape != (images.shape[0], 68, 2):
        raise ValueError(f"expected images (T, H, W, 3) and landmarks68 (T, 68, 2), got {images.shape} and "
                         f"{landmarks68.shape}")
    transform = eye_alignment_transform(landmarks68[0], image_size)
    crops = np.stack([align_crop(image, transform, image_size) for image in images])
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
    (T, S, S, 2) px onset -> t or None (stage "coarse"): DEM's inputs at its crop size S. refine_flow (T, R, R, 2)
    and refine_landmarks (T, 68, 2) R-crop pixels: DGMD's at its own size R, None when R = S or without DGMD
    (DGMD then takes flow and landmarks_crop)."""

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
    if stage != "coarse":
        inputs.flow = _timed(timings, "flow", window_flow, crops, flow_method, **options)
    if stage == "dgmd" and refine_size is not None and int(refine_size) != int(image_size):
        refine_crops, _, inputs.refine_landmarks = _timed(timings, "crop", crop_window, images, landmarks68,
                                                          int(refine_size))
        inputs.refine_flow = _timed(timings, "flow", window_flow, refine_crops, flow_method, **options)
    return inputs


@dataclass
class WindowResult:
    """Outputs for one window of T frames (numpy, float32): shape (S,); expression, encoder_expression (T, E);
    pose (T, 6); camera (T, 3); coarse_vertices, vertices (T, V, 3) mm; gate (T, V) or None (no DGMD);
    seconds: {"coarse_dem": s, "dgmd": s} model time."""

    shape: np.ndarray
    expression: np.ndarray
    encoder_expression: np.ndarray
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


@torch.no_grad()
def run_window(dem, dgmd, face_model, crops: np.ndarray, flow: np.ndarray | None, times: np.ndarray,
               landmarks_crop: np.ndarray | None, stage: str = "dgmd", *, refine_flow: np.ndarray | None = None,
               refine_landmarks: np.ndarray | None = None) -> WindowResult:
    """Reconstruct one window (a clip from its onset, frame 0).

    crops (T, S, S, 3) uint8; flow (T, S, S, 2) px onset -> t (needed for stages "dem" and "dgmd"); times (T,)
    strictly increasing seconds; landmarks_crop (T, 68, 2) crop pixels (DGMD's landmark cue); stage:
    "coarse" (per-frame coarse encoder), "dem" (+ DEM) or "dgmd" (+ DGMD). refine_flow (T, R, R, 2) px and
    refine_landmarks (T, 68, 2) pixels of the R x R crop (same framing): DGMD's inputs at its own resolution R,
    read off the flow's shape, and its camera rendered at R x R (stage "dgmd" only; None: DGMD takes flow and
    landmarks_crop at S). Runs on the models' device.
    """
    from microface.models.dem_training import reconstruct
    from microface.models.dgmd_training import RefineClip, refine_clip
    from microface.models.encoder import to_render_camera

    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops: expected (T, S, S, 3), got {crops.shape}")
    n_frames, size = crops.shape[0], crops.shape[1]
    if stage != "coarse" and (flow is None or np.asarray(flow).shape != (n_frames, size, size, 2)):
        raise ValueError(f"flow: expected ({n_frames}, {size}, {size}, 2) for stage {stage!r}, got "
                         f"{None if flow is None else np.asarray(flow).shape}")
    if stage == "dgmd":
        dgmd_flow, dgmd_landmarks, refine_size = _refine_inputs(flow, landmarks_crop, refine_flow, refine_landmarks,
                                                                n_frames)
    parameter = next(dem.parameters())
    device, dtype = parameter.device, parameter.dtype
    frames = torch.from_numpy(np.ascontiguousarray(crops)).to(device=device, dtype=dtype).permute(0, 3, 1, 2)[None] / 255.0
    start = time.perf_counter()
    if stage == "coarse":
        coarse = dem.encode_frames(frames)
        shape = coarse.shape.mean(dim=1)
        expression = coarse.expression
        face = face_model(shape.expand(n_frames, -1), coarse.expression[0], coarse.pose[0])
        coarse_vertices = face.vertices
    else:
        flow_t = _flow_tensor(flow, device, dtype)
        times_t = torch.as_tensor(np.asarray(times, dtype=np.float64), device=device).to(dtype)[None]
        recon = reconstruct(dem, face_model, frames, flow_t[None], times_t)
        coarse, shape, expression = recon.output.coarse, recon.shape, recon.output.expression
        coarse_vertices = recon.vertices[0]
    seconds = {"coarse_dem": time.perf_counter() - start}
    vertices, gate = coarse_vertices, None
    if stage == "dgmd":
        start = time.perf_counter()
        landmarks = None if dgmd_landmarks is None else torch.as_tensor(np.asarray(dgmd_landmarks), device=device,
                                                                         dtype=dtype)
        clip = RefineClip(coarse_vertices=coarse_vertices,
                          flow_onset_to_t=flow_t if dgmd_flow is flow else _flow_tensor(dgmd_flow, device, dtype),
                          camera=to_render_camera(coarse.camera[:, 0], (refine_size, refine_size)),
                          landmarks2d=landmarks)
        refined = refine_clip(dgmd, clip)
        vertices, gate = refined.vertices, _numpy(refined.gate)
        seconds["dgmd"] = time.perf_counter() - start
    return WindowResult(shape=_numpy(shape[0]), expression=_numpy(expression[0]),
                        encoder_expression=_numpy(coarse.expression[0]), pose=_numpy(coarse.pose[0]),
                        camera=_numpy(coarse.camera[0]), coarse_vertices=_numpy(coarse_vertices),
                        vertices=_numpy(vertices), gate=gate, seconds=seconds)


# ------------------------------------------------------------------------------------------------ mesh files
def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> None:
    """Wavefront OBJ: vertices (V, 3), faces (F, 3) 0-based (written 1-based)."""
    buffer = io.StringIO()
    if comment:
        buffer.write("".join(f"# {line}\n" for line in comment.splitlines()))
    np.savetxt(buffer, np.asarray(vertices, dtype=np.float64), fmt="v %.6f %.6f %.6f")
    np.savetxt(buffer, np.asarray(faces, dtype=np.int64) + 1, fmt="f %d %d %d")
    Path(path).write_text(buffer.getvalue())


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> None:
    """ASCII PLY: vertices (V, 3) float, faces (F, 3) 0-based vertex_indices."""
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    buffer = io.StringIO()
    buffer.write("ply\nformat ascii 1.0\n")
    buffer.write("".join(f"comment {line}\n" for line in comment.splitlines()))
    buffer.write(f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
                 f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    np.savetxt(buffer, vertices, fmt="%.6f %.6f %.6f")
    np.savetxt(buffer, faces, fmt="3 %d %d %d")
    Path(path).write_text(buffer.getvalue())


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle OBJ -> vertices (V, 3) float64, faces (F, 3) int64 0-based (``f a/b/c`` forms accepted)."""
    vertices, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vertices.append([float(p) for p in parts[1:4]])
        elif parts[0] == "f":
            if len(parts) != 4:
                raise ValueError(f"{path}: expected triangles, found a face with {len(parts) - 1} corners")
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:]])
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ASCII triangle PLY as ``write_ply`` writes it -> vertices (V, 3) float64, faces (F, 3) int64."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != "ply" or "format ascii 1.0" not in lines[1]:
        raise ValueError(f"{path}: expected an ASCII PLY file")
    counts, end = {}, None
    for i, line in enumerate(lines):
        parts = line.split()
        if parts[:1] == ["element"]:
            counts[parts[1]] = int(parts[2])
        if line == "end_header":
            end = i + 1
            break
    if end is None:
        raise ValueError(f"{path}: no end_header")
    n_v, n_f = counts.get("vertex", 0), counts.get("face", 0)
    vertices = np.array([[float(p) for p in lines[end + i].split()[:3]] for i in range(n_v)]).reshape(-1, 3)
    rows = [lines[end + n_v + i].split() for i in range(n_f)]
    if any(r[0] != "3" for r in rows):
        raise ValueError(f"{path}: expected triangles only")
    return vertices, np.array([[int(p) for p in r[1:4]] for r in rows], dtype=np.int64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------- output folder
def _is_reconstruction(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text()).get("format") == OUTPUT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out: Path) -> None:
    """Refuse an ``out`` that exists and is neither an empty folder nor a previous reconstruction."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_reconstruction(out))):
        raise ReconstructionError(f"output {out} exists and is not a previous reconstruction; choose another --out "
                                  "or remove it (only an empty folder or a reconstruction is replaced)")


def commit_folder(staging: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``; a previous reconstruction there is swapped out, then removed."""
    check_output_folder(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def write_arrays(folder: Path, arrays: dict[str, np.ndarray], fps: float, image_size: int, faces: np.ndarray,
                 refine_size: int | None = None) -> None:
    """params.npz and landmarks.npz from the per-frame columns (T leading) gathered by ``reconstruct_video``;
    image_size S and refine_size R (None: S) as in ``PARAMS_KEYS``."""
    from microface.data.landmarks import to_ibug68

    params = {k: arrays[k] for k in PARAMS_KEYS if k in arrays}
    params.update(time_s=arrays["frame_index"] / fps, fps=np.float64(fps), image_size=np.int64(image_size),
                  refine_size=np.int64(image_size if refine_size is None else refine_size), faces=faces)
    _save_npz(folder / "params.npz", params)
    _save_npz(folder / "landmarks.npz", {
        "frame_index": arrays["frame_index"], "landmarks68": to_ibug68(arrays["mesh"])[..., :2],
        "landmarks_mesh": arrays["mesh"], "detected": arrays["detected"], "landmarks68_crop": arrays["landmarks68_crop"]})


def write_viewer(path: Path, arrays: dict[str, np.ndarray], shown: np.ndarray, faces: np.ndarray, title: str,
                 with_offsets: bool) -> None:
    """viewer.html of the frames ``shown`` (indices into T), coloured by |refined - coarse| (mm) when with_offsets."""
    from microface.viz import mesh_sequence_html

    offsets = (np.linalg.norm(arrays["vertices"][shown] - arrays["coarse_vertices"][shown], axis=-1)
               if with_offsets else None)
    mesh_sequence_html(arrays["vertices"][shown], faces, path, values=offsets, title=title,
                       value_label="DGMD offset (mm)")


# --------------------------------------------------------------------------------------------------- driver
def reconstruct_video(video: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
                      face_model: str = "open", flame_path: str | Path | None = None, max_frames: int | None = None,
                      window: int = DEFAULT_WINDOW, mesh_format: str = "obj", device: str = "cpu",
                      stage: str = "dgmd", task_path: str | Path | None = None, show_progress: bool = True,
                      viewer_max_frames: int = DEFAULT_VIEWER_FRAMES) -> dict:
    """Reconstruct every frame of ``video`` into the folder ``out`` (layout and guarantees: module doc).

    checkpoint: a bundle (default ``default_checkpoint_path()``); face_model "open" | "flame" (with flame_path);
    max_frames: read at most this many frames; window: frames per DEM clip (>= 2); mesh_format "obj" | "ply";
    device: torch device of the models; stage: "coarse" | "dem" | "dgmd" (what the meshes hold); task_path: the
    landmarker bundle (default: ``microface.data.landmarks.default_task_path()``); viewer_max_frames: frames in
    viewer.html (evenly subsampled beyond that). Returns the summary (also written as ``summary.json``).
    Errors: FileNotFoundError (missing video, checkpoint or landmarker) and ReconstructionError (a ValueError:
    unreadable video, no face in frame 0, wrong face model, unusable output folder), each naming the file.
    """
    from microface import __version__
    from microface.data.landmarks import FaceLandmarker, to_ibug68
    from microface.train import progress

    if mesh_format not in MESH_FORMATS:
        raise ReconstructionError(f"mesh format: expected one of {MESH_FORMATS}, got {mesh_format!r}")
    if stage not in STAGES:
        raise ReconstructionError(f"stage: expected one of {STAGES}, got {stage!r}")
    if window < 2:
        raise ReconstructionError(f"window: expected >= 2 frames (DEM models motion from an onset), got {window}")
    if max_frames is not None and max_frames < 2:
        raise ReconstructionError(f"max frames: expected >= 2, got {max_frames}")
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
    dem, dgmd, meta = models_from_bundle(bundle, model)
    image_size, refine_size, flow_cfg = int(meta["image_size"]), int(meta["refine_size"]), meta["flow"]
    faces = model.faces.detach().cpu().numpy().astype(np.int64)

    capture, info = open_video(video)
    try:
        landmarker = FaceLandmarker(task_path, max_faces=2)
    except BaseException:
        capture.release()
        raise
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; the result should be shared like any folder
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        (staging / "meshes").mkdir()
        writer = write_obj if mesh_format == "obj" else write_ply
        columns: dict[str, list] = {k: [] for k in ("frame_index", "window_index", "window_start", "shape",
                                                    "expression", "encoder_expression", "pose", "camera",
                                                    "crop_transform", "coarse_vertices", "vertices", "dgmd_gate",
                                                    "mesh", "detected", "landmarks68_crop")}
        total = info.frame_count if max_frames is None else min(info.frame_count or max_frames, max_frames)
        frames = track_face(iter_video_frames(capture, info, max_frames), landmarker, info.path, timings)
        quiet = {} if show_progress else {"disable": True}  # else progress() honours MICROFACE_NO_PROGRESS
        with progress(total=total or None, desc="reconstruct", unit="frame", **quiet) as bar:
            for w, (start, items) in enumerate(iter_windows(frames, window)):
                n = len(items)
                images = np.stack([f.image for f in items])
                mesh = np.stack([f.mesh for f in items]).astype(np.float32)
                inputs = prepare_window(images, to_ibug68(mesh)[..., :2], image_size, stage, flow_cfg["method"],
                                        flow_cfg.get("options", {}), refine_size, timings)
                index = np.array([f.index for f in items], dtype=np.int64)
                result = run_window(dem, dgmd, model, inputs.crops, inputs.flow, index / info.fps,
                                    inputs.landmarks_crop, stage, refine_flow=inputs.refine_flow,
                                    refine_landmarks=inputs.refine_landmarks)
                for key, seconds in result.seconds.items():
                    timings[key] = timings.get(key, 0.0) + seconds
                tic = time.perf_counter()
                for t in range(n):
                    writer(staging / "meshes" / f"frame_{index[t]:05d}.{mesh_format}", result.vertices[t], faces,
                           f"microface reconstruct: video frame {index[t]}, stage {stage}, mm (face-model frame)")
                timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tic
                for key, value in (("frame_index", index), ("window_index", np.full(n, w, np.int32)),
                                   ("window_start", np.full(n, start, np.int64)),
                                   ("shape", np.repeat(result.shape[None], n, 0)), ("expression", result.expression),
                                   ("encoder_expression", result.encoder_expression), ("pose", result.pose),
                                   ("camera", result.camera),
                                   ("crop_transform", np.repeat(inputs.transform[None], n, 0)),
                                   ("coarse_vertices", result.coarse_vertices), ("vertices", result.vertices),
                                   ("dgmd_gate", result.gate), ("mesh", mesh),
                                   ("detected", np.array([f.detected for f in items])),
                                   ("landmarks68_crop", inputs.landmarks_crop)):
                    columns[key].append(value)
                bar.update(n)
        arrays = {k: np.concatenate(v) for k, v in columns.items() if v and v[0] is not None}
        tic = time.perf_counter()
        write_arrays(staging, arrays, info.fps, image_size, faces, refine_size)
        n_frames = len(arrays["frame_index"])
        shown = np.unique(np.linspace(0, n_frames - 1, min(n_frames, viewer_max_frames)).round().astype(int))
        write_viewer(staging / "viewer.html", arrays, shown, faces, f"{Path(info.path).name}: {stage} meshes",
                     with_offsets=stage == "dgmd")
        os.chmod(staging / "viewer.html", 0o666 & ~umask)  # written through mkstemp (0600)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tic
        missing = [int(i) for i in arrays["frame_index"][~arrays["detected"]]]
        windows = sorted({(int(s), int((arrays["window_start"] == s).sum())) for s in arrays["window_start"]})
        summary = {
            "format": OUTPUT_FORMAT,
            "video": {**dataclasses.asdict(info), "size_bytes": Path(info.path).stat().st_size},
            "frames": n_frames,
            "frames_without_face": {"count": len(missing), "frames": missing,
                                    "policy": "frame 0 must hold a face; elsewhere the previous landmarks are held"},
            "windows": {"size": window, "count": len(windows), "starts_and_lengths": windows},
            "stage": stage,
            "image_size": image_size,
            "refine_size": refine_size,
            "mesh_format": mesh_format,
            "viewer_frames": [int(i) for i in arrays["frame_index"][shown]],
            "checkpoint": bundle_meta(bundle),
            "face_model": face_model,
            "flame_path": None if flame_path is None else str(flame_path),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "timings_s": {**{k: round(v, 4) for k, v in timings.items()},
                          "total": round(time.perf_counter() - started, 4)},
            "microface": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "outputs": {"meshes": f"meshes/frame_NNNNN.{mesh_format}", "params.npz": PARAMS_KEYS,
                        "landmarks.npz": "landmarks68 (T,68,2) and landmarks_mesh (T,468,3) video pixels, detected (T,), "
                                         "landmarks68_crop (T,68,2) crop pixels, frame_index (T,)",
                        "viewer.html": "plotly mesh sequence"},
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
        commit_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        capture.release()
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
    lines.append(f"wrote {out}: meshes/, params.npz, landmarks.npz, viewer.html, summary.json")
    return lines


def frames_to_video(frame_paths: list, out: str | Path, fps: float = 30.0) -> Path:
    """Write image files (same size, in order) as an mp4v video at ``out`` (temp file, then rename) -> the path.

    For demos and tests: e.g. one clip of the synthetic benchmark (``microface synth``) as a short video.
    """
    out = Path(out)
    if not frame_paths:
        raise ValueError("frames_to_video: no frames given")
    first = cv2.imread(str(frame_paths[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise ValueError(f"frames_to_video: {frame_paths[0]} could not be read as an image")
    height, width = first.shape[:2]
    with atomic_path(out) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        try:
            for path in frame_paths:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None or image.shape[:2] != (height, width):
                    raise ValueError(f"frames_to_video: {path} is unreadable or not {width}x{height}")
                writer.write(image)
        finally:
            writer.release()
    return out
