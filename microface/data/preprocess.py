"""Face alignment and crop, and ``prepare``: clips -> one cached ``.npz`` per clip (frames, landmarks, flow).

Alignment is a similarity transform (rotation, uniform scale, translation) that puts the two eye centres
(means of the iBUG eye points 36-41 and 42-47) at fixed canonical positions of a ``size x size`` crop:
``((0.5 -/+ eye_dist / 2) * size, eye_y * size)``. The defaults (eye_y = 0.38, eye_dist = 0.32) keep the
whole face mesh, forehead to chin, inside the crop with a margin. Crop presets used by the models:

    fdp             64 x 64 gray
    mol             144 x 144 aligned, centre 128 x 128 (``center_crop=128``), RGB
    reconstruction  224 x 224 RGB

One transform per clip, from the onset frame (the micro-expression convention): subtle motion, often
below a pixel, would be swamped by the frame-to-frame jitter of per-frame landmarks if each frame were
aligned on its own. Head motion inside a clip is small in ME datasets (the subject is asked to keep still)
and is left in the frames, where the flow sees it.

Cache layout under ``out_dir``::

    manifest.json                                 config, its hash, done and skipped clips
    clips/<dataset>/<subject>/<clip_id>.npz       one per clip

Each ``.npz`` holds (no pickles; ``np.load(path)`` reads it):

    frames          (T, S, S) or (T, S, S, 3) uint8, aligned crops (RGB)
    landmarks68     (T, 68, 2) float32, per-frame iBUG points in crop pixels (NaN where no face was found)
    landmarks_mesh  (T, 468, 3) float32, per-frame MediaPipe mesh in crop pixels (z scaled alike); NaN when
                    the landmarks came from ground truth
    flow            (T, S, S, 2) for flow_mode "onset" (flow[t]: onset -> t, zero at the onset) or
                    (T-1, S, S, 2) for "consecutive" (flow[t]: t -> t+1); pixels, forward flow in the
                    convention of ``microface.data.flow``; float16 by default (``flow_dtype``): its step
                    is below 1e-3 px for |flow| < 2 px, far below any flow method's error, and it halves
                    the cache. Absent when flow_method is None.
    transform       (2, 3) float64, source-image pixels -> crop pixels (same for every frame)
    meta            JSON string: the clip record, config, config hash, landmark source, frames without a face

Idempotent and resumable: a clip is done when ``manifest.json`` lists it under the current config hash
and its file exists; anything else is (re)done. Files are written to ``.<name>.tmp-<pid>`` and renamed;
leftover temp files from an interrupted run are deleted at start, so one ``prepare`` per ``out_dir`` at a
time. Changing the config (size, flow, ...) makes every clip stale and redoes it.

Progress: a plain ``tqdm`` bar on stderr with ``ascii=True`` and ``mininterval=5`` (at most one refresh
each 5 s), so a papermill or Snakemake log gets a few readable lines rather than thousands of carriage returns.

Landmarks: the offline MediaPipe detector (``microface.data.landmarks``). For the synthetic benchmark
(``record.dataset == "synth"``) only, when that detector is unavailable, ``landmarks="auto"`` falls back to
the ground truth ``landmarks2d`` (T, 68, 2) pixels in ``record.ground_truth``; the source is written in meta.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from microface.data.clip import ClipRecord
from microface.data.landmarks import N_MESH_LANDMARKS, eye_centres, to_ibug68
from microface.utils.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_EYE_Y = 0.38
DEFAULT_EYE_DIST = 0.32
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CROP_PRESETS = {
    "fdp": {"size": 64, "gray": True, "center_crop": None},
    "mol": {"size": 144, "gray": False, "center_crop": 128},
    "reconstruction": {"size": 224, "gray": False, "center_crop": None},
}


# ---------------------------------------------------------------------------------------- alignment (pure)


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform mapping two source points exactly onto two destination points.

    src, dst: (2, 2) rows (x, y) -> (2, 3) float64 matrix M with dst = M[:, :2] @ src + M[:, 2].
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != (2, 2) or dst.shape != (2, 2):
        raise ValueError(f"expected two (2, 2) point pairs, got {src.shape} and {dst.shape}")
    v_src, v_dst = complex(*(src[1] - src[0])), complex(*(dst[1] - dst[0]))
    if abs(v_src) < 1e-9:
        raise ValueError(f"expected two distinct source points, got {src.tolist()}")
    # as complex numbers the map is z -> a z + b, a = scale * exp(i angle)
    a = v_dst / v_src
    linear = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.concatenate([linear, (dst[0] - linear @ src[0])[:, None]], 1)


def eye_alignment_transform(landmarks68: np.ndarray, size: int, eye_y: float = DEFAULT_EYE_Y,
                            eye_dist: float = DEFAULT_EYE_DIST) -> np.ndarray:
    """Similarity transform putting the eye centres at their canonical places in a ``size x size`` crop.

    landmarks68: (68, 2|3) iBUG points in image pixels -> (2, 3) float64, image pixels -> crop pixels.
    The eye on the image's left goes to ((0.5 - eye_dist/2) * size, eye_y * size), the other to
    ((0.5 + eye_dist/2) * size, eye_y * size); eye_y and eye_dist are fractions of size.
    """
    if size < 2 or not 0 < eye_dist < 1 or not 0 < eye_y < 1:
        raise ValueError(f"expected size >= 2 and eye_y, eye_dist in (0, 1), got {size}, {eye_y}, {eye_dist}")
    left, right = eye_centres(landmarks68)
    canonical = np.array([[0.5 - eye_dist / 2, eye_y], [0.5 + eye_dist / 2, eye_y]]) * size
    return similarity_from_points(np.stack([left, right]), canonical)


def center_crop_transform(transform: np.ndarray, size: int, crop: int) -> np.ndarray:
    """The transform to the centre ``crop x crop`` window of a ``size x size`` aligned crop: (2, 3) -> (2, 3)."""
    if not 0 < crop <= size:
        raise ValueError(f"expected 0 < crop <= size, got crop={crop}, size={size}")
    out = np.array(transform, dtype=np.float64)
    out[:, 2] -= (size - crop) / 2
    return out


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map -> (2, 3)."""
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (2, 3):
        raise ValueError(f"expected a (2, 3) affine transform, got {transform.shape}")
    return cv2.invertAffineTransform(transform)


def transform_landmarks(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine map to points (..., N, 2|3) -> same shape, float32.

    x, y are mapped; a third coordinate (depth) is multiplied by the map's scale sqrt|det|, so it stays in
    the same units as x, y. NaNs stay NaN.
    """
    points, transform = np.asarray(points, dtype=np.float64), np.asarray(transform, dtype=np.float64)
    if points.ndim < 2 or points.shape[-1] not in (2, 3) or transform.shape != (2, 3):
        raise ValueError(f"expected points (..., N, 2|3) and a (2, 3) transform, got {points.shape} and {transform.shape}")
    out = points.copy()
    out[..., :2] = points[..., :2] @ transform[:, :2].T + transform[:, 2]
    if points.shape[-1] == 3:
        out[..., 2] = points[..., 2] * np.sqrt(abs(np.linalg.det(transform[:, :2])))
    return out.astype(np.float32)


def align_crop(image: np.ndarray, transform: np.ndarray, size: int, gray: bool = False) -> np.ndarray:
    """Warp an image into a ``size x size`` crop.

    image: (H, W, 3) RGB or (H, W) gray uint8; transform (2, 3) image -> crop pixels
    -> (size, size) uint8 if gray else (size, size, 3) (a gray input is repeated to 3 channels).
    Bilinear, with replicated borders, so that no black wedge enters the crop, where it would make flow.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 image (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    crop = cv2.warpAffine(image, np.asarray(transform, dtype=np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if gray:
        return crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return crop if crop.ndim == 3 else np.repeat(crop[..., None], 3, axis=2)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); ValueError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; check the dataset root and its frame layout")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} could not be decoded as an image; it may be truncated or not an image: re-extract it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------------- prepare


class ClipError(ValueError):
    """A clip that cannot be prepared: bad or missing file, no face or two faces on the onset frame."""


@dataclass(frozen=True)
class PrepareConfig:
    """What a cached clip depends on. Its hash keys the cache; ``task_path`` is left out of the hash."""

    size: int = 224
    gray: bool = False
    center_crop: int | None = None
    eye_y: float = DEFAULT_EYE_Y
    eye_dist: float = DEFAULT_EYE_DIST
    flow_method: str | None = "dis"
    flow_mode: str = "onset"
    dis_preset: str = "medium"
    dis_finest_scale: int | None = None  # None: the preset's own (see microface.data.flow)
    flow_dtype: str = "float16"
    landmarks: str = "auto"  # "auto" | "detector" | "ground_truth"
    compress: bool = False
    task_path: str | None = None

    def __post_init__(self):
        from microface.data.flow import DIS_PRESETS, FLOW_METHODS, FLOW_MODES

        checks = [
            (self.size >= 8, f"size >= 8, got {self.size}"),
            (self.center_crop is None or 0 < self.center_crop <= self.size, f"center_crop in (0, size], got {self.center_crop}"),
            (self.flow_method is None or self.flow_method in FLOW_METHODS, f"flow_method in {FLOW_METHODS} or None, got {self.flow_method!r}"),
            (self.flow_mode in FLOW_MODES, f"flow_mode in {FLOW_MODES}, got {self.flow_mode!r}"),
            (self.dis_preset in DIS_PRESETS, f"dis_preset in {sorted(DIS_PRESETS)}, got {self.dis_preset!r}"),
            (self.flow_dtype in ("float16", "float32"), f"flow_dtype float16 or float32, got {self.flow_dtype!r}"),
            (self.landmarks in ("auto", "detector", "ground_truth"), f"landmarks auto|detector|ground_truth, got {self.landmarks!r}"),
        ]
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"expected {expected}")

    @property
    def out_size(self) -> int:
        return self.center_crop or self.size

    def hashed(self) -> dict:
        """The fields that change the output, plus the cache format version."""
        fields = asdict(self)
        fields.pop("task_path")
        fields["format_version"] = FORMAT_VERSION
        return fields

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.hashed(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PrepareSummary:
    """What one ``prepare`` call did. Keys are ``ClipRecord.key``."""

    out_dir: Path
    config_hash: str
    prepared: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    previously_skipped: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.prepared and not self.skipped

    def __str__(self) -> str:
        total = len(self.prepared) + len(self.already_done) + len(self.skipped) + len(self.previously_skipped)
        if self.nothing_to_do:
            return (f"nothing to do: {len(self.already_done)} of {total} clips already prepared in {self.out_dir} "
                    f"with config {self.config_hash}" + (f" ({len(self.previously_skipped)} skipped earlier; see "
                                                          f"{MANIFEST_NAME})" if self.previously_skipped else ""))
        return (f"prepared {len(self.prepared)} clips, {len(self.already_done)} already done, {len(self.skipped)} skipped now, "
                f"{len(self.previously_skipped)} skipped earlier, in {self.out_dir} (config {self.config_hash})")


def clip_path(out_dir: Path, record: ClipRecord) -> Path:
    """Where a clip's ``.npz`` goes: ``out_dir/clips/<dataset>/<subject>/<clip_id>.npz`` (path separators in ids -> _)."""
    safe = lambda s: str(s).replace("/", "_").replace(os.sep, "_")  # noqa: E731
    return out_dir / "clips" / safe(record.dataset) / safe(record.subject) / f"{safe(record.clip_id)}.npz"


# One landmarker per process (it holds two interpreters); built on first use.
_LANDMARKERS: dict = {}


def _landmarker(task_path: str | None):
    from microface.data.landmarks import FaceLandmarker

    if task_path not in _LANDMARKERS:
        _LANDMARKERS[task_path] = FaceLandmarker(task_path, max_faces=2)
    return _LANDMARKERS[task_path]


def _landmark_source(record: ClipRecord, config: PrepareConfig) -> str:
    from microface.data.landmarks import landmarker_unavailable_reason

    if config.landmarks == "ground_truth":
        return "ground_truth"
    reason = landmarker_unavailable_reason(config.task_path)
    if reason is None:
        return "detector"
    if config.landmarks == "auto" and record.dataset == "synth":
        return "ground_truth"
    raise RuntimeError(f"the face landmarker is needed for clip {record.key} but is unavailable: {reason}")


def _ground_truth_landmarks(record: ClipRecord) -> np.ndarray:
    path = record.ground_truth
    if path is None or not Path(path).is_file():
        raise ClipError(f"clip {record.key}: ground truth file {path} is missing; landmarks='ground_truth' needs "
                        "ClipRecord.ground_truth (synthetic clips) with key 'landmarks2d'")
    with np.load(path) as data:
        if "landmarks2d" not in data:
            raise ClipError(f"clip {record.key}: {path} has no 'landmarks2d' (keys: {sorted(data.files)})")
        points = np.asarray(data["landmarks2d"], dtype=np.float32)
    if points.shape != (len(record.frames), 68, 2):
        raise ClipError(f"clip {record.key}: {path} 'landmarks2d' has shape {points.shape}, expected "
                        f"({len(record.frames)}, 68, 2) to match the clip's frames")
    return points


def _detect_frame_landmarks(images: list[np.ndarray], record: ClipRecord, config: PrepareConfig):
    """Mesh landmarks for every frame: (T, 468, 3) pixels, NaN where no face; the onset frame must hold one face."""
    from microface.data.landmarks import FaceDetectionError

    landmarker = _landmarker(config.task_path)
    mesh = np.full((len(images), N_MESH_LANDMARKS, 3), np.nan, np.float32)
    try:
        mesh[record.onset] = landmarker(images[record.onset])
    except FaceDetectionError as err:
        raise ClipError(f"clip {record.key}: onset frame {record.frames[record.onset]}: {err}; the clip cannot be "
                        "aligned (use on_error='skip' to leave it out)") from None
    reference = mesh[record.onset, :, :2].mean(0)
    for t, image in enumerate(images):
        if t == record.onset:
            continue
        faces = landmarker.detect_all(image)
        if len(faces):
            # with two faces in a frame, follow the one nearest the onset face
            mesh[t] = faces[np.argmin(np.linalg.norm(faces[:, :, :2].mean(1) - reference, axis=1))]
    return mesh


def prepare_clip(record: ClipRecord, config: PrepareConfig) -> dict[str, np.ndarray]:
    """Align, crop and compute flow for one clip -> the arrays of its ``.npz`` (see the module doc)."""
    from microface.data.flow import clip_flow

    if not record.frames:
        raise ClipError(f"clip {record.key}: it has no frames")
    if not 0 <= record.onset < len(record.frames):
        raise ClipError(f"clip {record.key}: onset index {record.onset} is outside its {len(record.frames)} frames")
    images = []
    for path in record.frames:
        try:
            images.append(read_rgb(path))
        except ValueError as err:
            raise ClipError(f"clip {record.key}: {err}") from None
    source = _landmark_source(record, config)
    if source == "detector":
        mesh_src = _detect_frame_landmarks(images, record, config)
        ibug_src = to_ibug68(mesh_src)[..., :2]
    else:
        mesh_src = np.full((len(images), N_MESH_LANDMARKS, 3), np.nan, np.float32)
        ibug_src = _ground_truth_landmarks(record)
    transform = eye_alignment_transform(ibug_src[record.onset], config.size, config.eye_y, config.eye_dist)
    if config.center_crop:
        transform = center_crop_transform(transform, config.size, config.center_crop)
    frames = np.stack([align_crop(image, transform, config.out_size, config.gray) for image in images])
    arrays = {
        "frames": frames,
        "landmarks68": transform_landmarks(ibug_src, transform),
        "landmarks_mesh": transform_landmarks(mesh_src, transform),
        "transform": transform,
    }
    if config.flow_method is not None:
        gray = frames if config.gray else np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        flow = clip_flow(gray, config.flow_mode, record.onset, config.flow_method, dis_preset=config.dis_preset,
                         dis_finest_scale=config.dis_finest_scale)
        arrays["flow"] = flow.astype(config.flow_dtype)
    meta = {
        "record": {**record.to_row(), "frames": [str(p) for p in record.frames], "frame_numbers": record.frame_numbers,
                   "aus": record.aus},
        "key": record.key,
        "config": config.hashed(),
        "config_hash": config.hash(),
        "landmark_source": source,
        "frames_without_face": [int(t) for t in np.flatnonzero(np.isnan(arrays["landmarks68"]).any(axis=(1, 2)))],
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def _write_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


def record_hash(record: ClipRecord) -> str:
    """Fingerprint of what the cache copies from the record (labels, timing, frames): a change redoes the clip."""
    return hashlib.sha256(json.dumps(record.to_row(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_and_write(record: ClipRecord, config: PrepareConfig, out_dir: Path) -> tuple[str, dict | None, str | None]:
    """Worker: (key, manifest entry, None) on success, (key, None, message) on a ClipError."""
    try:
        arrays = prepare_clip(record, config)
    except ClipError as err:
        return record.key, None, str(err)
    path = clip_path(out_dir, record)
    _write_npz(path, arrays, config.compress)
    meta = json.loads(str(arrays["meta"]))
    entry = {
        "file": str(path.relative_to(out_dir)),
        "config_hash": config.hash(),
        "record_hash": record_hash(record),
        "n_frames": int(arrays["frames"].shape[0]),
        "flow_shape": list(arrays["flow"].shape) if "flow" in arrays else None,
        "landmark_source": meta["landmark_source"],
        "frames_without_face": len(meta["frames_without_face"]),
    }
    return record.key, entry, None


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest of a cache folder (an empty one when absent)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "config": None, "config_hash": None, "clips": {}, "skipped": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to rebuild the cache index (clips are redone)") from None


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    write_text_atomic(json.dumps(manifest, indent=1, sort_keys=True), out_dir / MANIFEST_NAME)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip", ascii=True, mininterval=5.0, file=sys.stderr)


def prepare(records: Iterable[ClipRecord], out_dir: str | Path, size: int = 224, gray: bool = False,
            flow_method: str | None = "dis", flow_mode: str = "onset", workers: int = 1, on_error: str = "raise",
            *, center_crop: int | None = None, retry_skipped: bool = False, **config_kwargs) -> PrepareSummary:
    """Align, crop and compute flow for every clip, caching one ``.npz`` per clip under ``out_dir``.

    records: ClipRecords (any iterable); size/gray/center_crop: crop (see CROP_PRESETS); flow_method "dis",
    "tvl1" or None; flow_mode "onset" | "consecutive"; workers > 1 runs clips in a process pool;
    on_error "raise" stops at the first bad clip with a ClipError naming it and its file, "skip" logs it,
    counts it and lists it in the manifest (not retried under the same config unless retry_skipped).
    config_kwargs: other PrepareConfig fields (eye_y, eye_dist, dis_preset, dis_finest_scale, flow_dtype,
    landmarks, compress, task_path). Returns a PrepareSummary; see the module doc for layout and guarantees.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"expected on_error 'raise' or 'skip', got {on_error!r}")
    if workers < 1:
        raise ValueError(f"expected workers >= 1, got {workers}")
    config = PrepareConfig(size=size, gray=gray, center_crop=center_crop, flow_method=flow_method, flow_mode=flow_mode,
                           **config_kwargs)
    records = list(records)
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"expected unique clip keys, got duplicates: {duplicates[:5]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob("clips/**/.*.tmp-*"):
        leftover.unlink()  # a write cut short by an interruption; its clip is not in the manifest, so it is redone
    config_hash = config.hash()
    manifest = load_manifest(out_dir)
    if manifest.get("config_hash") not in (None, config_hash):
        log.warning("config changed (%s -> %s): every clip in %s is stale and will be redone",
                    manifest.get("config_hash"), config_hash, out_dir)
    manifest.update(format_version=FORMAT_VERSION, config=config.hashed(), config_hash=config_hash)
    summary = PrepareSummary(out_dir, config_hash)
    todo = []
    for record in records:
        entry = manifest["clips"].get(record.key)
        skipped = manifest["skipped"].get(record.key)
        if (entry and entry.get("config_hash") == config_hash and entry.get("record_hash") == record_hash(record)
                and (out_dir / entry["file"]).is_file()):
            summary.already_done.append(record.key)
        elif skipped and skipped.get("config_hash") == config_hash and not retry_skipped:
            summary.previously_skipped.append(record.key)
        else:
            todo.append(record)
    if not todo:
        _write_manifest(out_dir, manifest)
        log.info("%s", summary)
        return summary

    def record_result(key: str, entry: dict | None, error: str | None) -> None:
        if error is not None:
            if on_error == "raise":
                _write_manifest(out_dir, manifest)
                raise ClipError(error)
            log.warning("skipping: %s", error)
            summary.skipped[key] = error
            manifest["skipped"][key] = {"config_hash": config_hash, "error": error}
            manifest["clips"].pop(key, None)
        else:
            summary.prepared.append(key)
            manifest["clips"][key] = entry
            manifest["skipped"].pop(key, None)
        _write_manifest(out_dir, manifest)  # after every clip, so an interruption loses at most the clips in flight

    with _progress(len(todo), f"prepare {len(todo)} clips") as bar:
        if workers == 1:
            for record in todo:
                record_result(*_prepare_and_write(record, config, out_dir))
                bar.update()
        else:
            # spawn, not fork: the parent may hold native interpreter threads that a fork would copy half-alive
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_prepare_and_write, record, config, out_dir) for record in todo]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        record_result(*future.result())
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    log.info("%s", summary)
    return summary


def load_clip(path: str | Path) -> dict:
    """Read one cached clip: the arrays of its ``.npz`` with ``meta`` parsed to a dict."""
    with np.load(path) as data:
        out = {name: data[name] for name in data.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out
