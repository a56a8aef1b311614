"""Video input: reading frames and tracking one face with the MediaPipe landmarker."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from microface.reconstruct.errors import ReconstructionError
from microface.utils.io import atomic_path


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
