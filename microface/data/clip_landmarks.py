"""Detected landmarks of a clip: the offline MediaPipe landmarker on every source frame, cached per clip.

No ground truth reaches a model at test time: the iBUG-68 landmarks that DEM's landmark loss and DGMD's landmark
cue read come from ``microface.data.landmarks.FaceLandmarker`` (468 points -> ``to_ibug68``) run on the clip's
frames as they are on disk (full resolution), for training and test clips alike. Callers rescale them to the
resolution each model reads (``microface.data.clips.clip_tensors_from_record``). The 468-point meshes the 68 points
come from are kept too (``DetectedLandmarks.meshes``): the landmark fit (``microface.fit.landmark_fit``) reads them.

Frames where no face is found hold the previous frame's landmarks (a clip's first frames: the first found); their
indices are kept (``DetectedLandmarks.held``) and logged. The meshes are not held: their rows are NaN there
(``DetectedLandmarks.valid`` is False), for the fit's own ``valid`` mask. A clip with no face in any frame raises
``NoFaceInClipError`` naming the clip. With two faces in a frame, the one nearest the previous frame's face is
followed (``microface.data.landmarks.select_face`` on the 68 points; the first found frame: the detector's best);
the mesh of a frame is that same face's.

Cache (one ``.npz`` per clip, written atomically)::

    <cache_dir>/clips/<dataset>/<subject>/<clip_id>.npz
        landmarks68  (T, 68, 2) float32, source-image pixels, NaN where no face was found (before holding)
        meshes       (T, 468, 3) float32, the followed face's MediaPipe mesh (x, y pixels, z relative depth in x's
                     scale, see ``microface.data.landmarks``), NaN where no face was found (never held)
        key          str: sha256 of the format version, the detector's bundle and thresholds, and the bytes of
                     every frame; a different key redoes the clip

``landmark_cache_dir(synth_root)`` puts the cache beside the benchmark: ``results/<profile>/landmarks`` for the
embedded one (next to ``results/<profile>/prepared``), so notebooks 01, 02, 04 and 05 detect each clip once.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microface.data.clip import ClipRecord
from microface.data.landmarks import N_MESH_LANDMARKS, default_task_path, select_face, to_ibug68
from microface.data.preprocess import ClipError, clip_path, read_rgb
from microface.utils.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the 468-point meshes are cached beside the 68 points
CACHE_DIRNAME = "landmarks"
MIN_DETECTION_CONFIDENCE = 0.5
MIN_PRESENCE_CONFIDENCE = 0.5
LANDMARK_SOURCES = ("detected", "oracle")


class NoFaceInClipError(ClipError):
    """The landmarker found no face in any frame of a clip."""


@dataclass
class DetectedLandmarks:
    """One clip's landmarks.

    points: (T, 68, 2) float32 source-image pixels, every frame filled. held: indices of the frames without a
    detected face (their points are held from a neighbour, see the module doc). meshes: (T, 468, 3) float32, the
    same face's MediaPipe mesh (x, y source-image pixels, z relative depth in x's scale), NaN rows where no face
    was found (not held); None when only 68 points were given (``hold_missing`` without meshes).
    """

    points: np.ndarray
    held: tuple[int, ...]
    meshes: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """(T,) bool: the frames where a face was detected (the complement of ``held``)."""
        valid = np.ones(len(self.points), dtype=bool)
        valid[list(self.held)] = False
        return valid


def landmark_cache_dir(synth_root: str | Path) -> Path:
    """The detected-landmark cache of a benchmark: ``<synth_root>/../landmarks`` (``results/<profile>/landmarks``
    for the embedded benchmark ``results/<profile>/synth``)."""
    return Path(synth_root).parent / CACHE_DIRNAME


def hold_missing(points: np.ndarray, key: str = "", meshes: np.ndarray | None = None) -> DetectedLandmarks:
    """Fill frames without a face: each holds the previous frame's points; frames before the first found one
    take the first found.

    Args:
        points: (T, L, 2) pixels, a frame all NaN where no face was found.
        key: the clip's name, for the error.
        meshes: optional (T, 468, 3) pixels of the same faces, NaN where no face was found; passed through
            unfilled.

    Returns:
        DetectedLandmarks with points (T, L, 2) float32, no NaN, the indices of the filled frames and the meshes
        (float32, or None).

    Raises:
        NoFaceInClipError: no frame holds a face.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"clip {key!r} landmarks: expected (T, L, 2) pixels, got {points.shape}")
    found = ~np.isnan(points).any(axis=(1, 2))
    if not found.any():
        raise NoFaceInClipError(f"clip {key!r}: the face landmarker found no face in any of its {len(points)} frames")
    filled = points.copy()
    last = filled[int(np.argmax(found))]
    for t in range(len(filled)):
        if found[t]:
            last = filled[t]
        else:
            filled[t] = last
    if meshes is not None:
        meshes = np.asarray(meshes, dtype=np.float32)
        if meshes.shape != (len(points), N_MESH_LANDMARKS, 3):
            raise ValueError(f"clip {key!r} meshes: expected ({len(points)}, {N_MESH_LANDMARKS}, 3) pixels, "
                             f"got {meshes.shape}")
    return DetectedLandmarks(points=filled, held=tuple(int(t) for t in np.flatnonzero(~found)), meshes=meshes)


def follow_faces(faces_per_frame: list[np.ndarray]) -> np.ndarray:
    """Which detection to follow in each frame: the detector's best in the first frame with a face, then the face
    nearest the last followed one (``microface.data.landmarks.select_face``).

    Args:
        faces_per_frame: T arrays (F_t, L, D) pixels, F_t >= 0, best detection first.

    Returns:
        (T,) int64: the index of the followed face among frame t's detections, -1 where F_t = 0.
    """
    chosen = np.full(len(faces_per_frame), -1, np.int64)
    previous = None
    for t, faces in enumerate(faces_per_frame):
        faces = np.asarray(faces)
        # an extra channel carries each detection's index through select_face (it reads x, y only; the faces keep
        # their dtype, so the distances it compares are the ones it computes on the faces themselves)
        index = np.arange(len(faces), dtype=faces.dtype)[:, None, None]
        numbered = np.concatenate([faces, np.broadcast_to(index, (*faces.shape[:2], 1))], axis=-1)
        face = select_face(numbered, previous)
        if face is not None:
            chosen[t] = int(face[0, -1])
            previous = face
    return chosen


def track_faces(faces_per_frame: list[np.ndarray]) -> np.ndarray:
    """One face per frame from every frame's detections (the faces ``follow_faces`` picks).

    Args:
        faces_per_frame: T arrays (F_t, L, D) pixels, F_t >= 0, best detection first.

    Returns:
        (T, L, 2) float32 pixels, NaN where F_t = 0.
    """
    n_points = next((f.shape[1] for f in faces_per_frame if len(f)), 68)
    out = np.full((len(faces_per_frame), n_points, 2), np.nan, np.float32)
    for t, index in enumerate(follow_faces(faces_per_frame)):
        if index >= 0:
            out[t] = faces_per_frame[t][index][:, :2]
    return out


# One landmarker per process and bundle (it holds two interpreters); built on first use.
_LANDMARKERS: dict = {}
_BUNDLE_DIGESTS: dict = {}


def _landmarker(task_path: Path):
    from microface.data.landmarks import FaceLandmarker

    if task_path not in _LANDMARKERS:
        _LANDMARKERS[task_path] = FaceLandmarker(task_path, max_faces=2, min_detection_confidence=MIN_DETECTION_CONFIDENCE,
                                                 min_presence_confidence=MIN_PRESENCE_CONFIDENCE)
    return _LANDMARKERS[task_path]


def _bundle_digest(task_path: Path) -> str:
    stat = task_path.stat()
    marker = (task_path, stat.st_size, stat.st_mtime_ns)
    if marker not in _BUNDLE_DIGESTS:
        _BUNDLE_DIGESTS[marker] = hashlib.sha256(task_path.read_bytes()).hexdigest()[:16]
    return _BUNDLE_DIGESTS[marker]


def detection_key(frames: list[Path], task_path: Path) -> str:
    """What a clip's detections depend on: format version, detector bundle and thresholds, the frames' bytes."""
    digest = hashlib.sha256()
    for path in frames:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    what = {"format_version": FORMAT_VERSION, "bundle": _bundle_digest(task_path),
            "min_detection_confidence": MIN_DETECTION_CONFIDENCE, "min_presence_confidence": MIN_PRESENCE_CONFIDENCE,
            "frames": digest.hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def detect_frames(frames: list[Path], task_path: Path, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The followed face's landmarks in each frame file (faces followed on their iBUG-68 points, ``follow_faces``).

    Returns:
        landmarks68 (T, 68, 2) float32 and meshes (T, 468, 3) float32 of the same face, source-image pixels (z:
        relative depth in x's scale), NaN where no face was found.
    """
    landmarker = _landmarker(task_path)
    detections = []
    for path in frames:
        try:
            image = read_rgb(path)
        except ValueError as err:
            raise ClipError(f"clip {key}: {err}") from None
        detections.append(landmarker.detect_all(image))
    meshes = np.full((len(frames), N_MESH_LANDMARKS, 3), np.nan, np.float32)
    for t, index in enumerate(follow_faces([to_ibug68(faces) for faces in detections])):
        if index >= 0:
            meshes[t] = detections[t][index]
    return np.ascontiguousarray(to_ibug68(meshes)[..., :2]), meshes


def clip_landmarks(record: ClipRecord, cache_dir: str | Path | None = None,
                   task_path: str | Path | None = None) -> DetectedLandmarks:
    """Detected iBUG-68 landmarks of every frame of ``record`` (``record.frames``), missing frames held, and the
    468-point meshes they come from.

    Args:
        record: a clip (any dataset); its frames are read from disk.
        cache_dir: the cache folder (``landmark_cache_dir``); None: detect without caching.
        task_path: the landmarker bundle (None: ``microface.data.landmarks.default_task_path()``).

    Returns:
        DetectedLandmarks: points (T, 68, 2) float32 in source-image pixels, T = len(record.frames); meshes
        (T, 468, 3) float32 of the same face (NaN rows where no face was found); ``valid`` (T,) bool.

    Raises:
        FileNotFoundError: the landmarker is unavailable (the message says how to build it).
        NoFaceInClipError: no face in any frame of the clip.
    """
    from microface.data.landmarks import landmarker_unavailable_reason

    task_path = Path(task_path) if task_path is not None else default_task_path()
    reason = landmarker_unavailable_reason(task_path)
    if reason is not None:
        raise FileNotFoundError(f"clip {record.key}: detected landmarks need the face landmarker: {reason} "
                                "(or set the config's dem.landmarks to 'oracle' for the ground-truth ablation)")
    if not record.frames:
        raise ClipError(f"clip {record.key}: it has no frames")
    key = detection_key(record.frames, task_path)
    path = None if cache_dir is None else clip_path(Path(cache_dir), record)
    raw = meshes = None
    T = len(record.frames)
    if path is not None and path.is_file():
        with np.load(path) as cached:
            if (str(cached["key"]) == key and "meshes" in cached.files and cached["landmarks68"].shape == (T, 68, 2)
                    and cached["meshes"].shape == (T, N_MESH_LANDMARKS, 3)):
                raw, meshes = cached["landmarks68"], cached["meshes"]
    if raw is None:
        raw, meshes = detect_frames(record.frames, task_path, record.key)
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, landmarks68=raw, meshes=meshes, key=np.array(key))
    detected = hold_missing(raw, record.key, meshes)
    if detected.held:
        log.warning("clip %s: no face found in %d of %d frames (%s); their landmarks are held from a neighbour",
                    record.key, len(detected.held), len(raw), ", ".join(map(str, detected.held[:10])))
    return detected
