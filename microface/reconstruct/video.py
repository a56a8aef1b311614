"""Input: a video, a photo or a folder of frames (``open_source``), and tracking one face with the MediaPipe landmarker.

Sources are re-readable (``FrameSource.frames``): ``reconstruct`` reads once to track the face and fit the face model
to the whole video, then again to crop, flow and draw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from microface.data.landmarks import select_face
from microface.reconstruct.errors import ReconstructionError
from microface.utils.io import atomic_path


@dataclass
class VideoInfo:
    """What OpenCV reports about a video: fps (assumed 30 when it reports none), frame size, frame count
    (container metadata, may be off; ``frames_read`` counts what was decoded). kind: "video", "photo" or "frames"
    (a folder of images; fps then the caller's); start: the first frame reconstructed (``--start auto``)."""

    path: str
    fps: float
    width: int
    height: int
    frame_count: int
    fps_reported: bool = True
    frames_read: int = 0
    kind: str = "video"
    start: int = 0


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


@dataclass
class TrackedFrame:
    """One decoded frame with its face: image (H, W, 3) RGB uint8, mesh (468, 3) landmarks in video pixels
    (held from the previous frame when ``detected`` is False)."""

    index: int
    image: np.ndarray
    mesh: np.ndarray
    detected: bool


def track_face(frames: Iterable[np.ndarray], landmarker, video: str, timings: dict | None = None,
               start_auto: bool = False) -> Iterator[TrackedFrame]:
    """Landmarks for each frame: the face is required in frame 0, followed from frame to frame
    (``FaceLandmarker.track``: the detector runs only when there is no face to follow), and held from the previous
    frame where it is lost.

    frames: iterable of (H, W, 3) RGB uint8; landmarker: a ``FaceLandmarker``; video: named in errors;
    timings: optional dict whose "decode" / "landmarks" entries are increased by the seconds spent; start_auto:
    skip the frames before the first one that holds a face (``TrackedFrame.index`` stays the source's frame
    index) instead of raising ReconstructionError at frame 0 (also raised when no frame holds a face).
    """
    timings = {} if timings is None else timings
    previous, track = None, None
    iterator = iter(frames)
    index = 0
    while True:
        start = time.perf_counter()
        try:
            image = next(iterator)
        except StopIteration:
            if previous is None and index > 0:
                raise ReconstructionError(f"no face found in any of the {index} frames of {video}") from None
            return
        finally:
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        # follow the face in the ROI that tracked it (MediaPipe's video mode); the detector runs when there is none
        faces, track = landmarker.track(image, track)
        mesh = select_face(faces, previous)
        if mesh is not None and len(faces) > 1 and not np.array_equal(mesh, faces[0]):
            track = None  # the face followed is not the one tracked: detect again next frame
        timings["landmarks"] = timings.get("landmarks", 0.0) + time.perf_counter() - start
        if mesh is None and previous is None:
            if start_auto:
                index += 1
                continue
            raise ReconstructionError(f"no face found in the first frame of {video}; reconstruct needs a face in "
                                      "frame 0: pass --start auto to start at the first frame that holds a face "
                                      "(or trim the video so it starts on the face)")
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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 200.0  # the ME datasets' rate (CASME II, SAMM); a folder holds no rate of its own
DEFAULT_PHOTO_FPS = 30.0  # a photo has one frame: fps only sets time_s


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) RGB uint8; unreadable -> ReconstructionError naming it."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ReconstructionError(f"unreadable image {path}: OpenCV cannot decode it (expected one of "
                                  f"{', '.join(IMAGE_SUFFIXES)})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def folder_frames(folder: str | Path) -> list[Path]:
    """The image files of a frame folder in NATURAL order (``img2`` before ``img10``, the ME datasets' layout).

    Raises ReconstructionError naming the folder when it holds no image."""
    from microface.data.datasets._common import natural_key

    folder = Path(folder)
    paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not paths:
        raise ReconstructionError(f"frame folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class FrameSource:
    """A re-readable sequence of RGB frames: a video file, one photo, or a folder of frames (made by ``open_source``).

    ``frames(start, max_frames)`` opens the source anew on every call and yields (H, W, 3) RGB uint8 frames from
    frame ``start``; ``info`` is a ``VideoInfo`` (``frames_read`` counts the first reading's frames).
    """

    def __init__(self, info: VideoInfo, paths: list[Path] | None = None, capture: cv2.VideoCapture | None = None):
        self.info, self.paths, self._capture = info, paths, capture

    def frames(self, start: int = 0, max_frames: int | None = None) -> Iterator[np.ndarray]:
        if self.paths is None:
            capture, self._capture = self._capture or open_video(self.info.path)[0], None
            try:
                for _ in range(start):
                    if not capture.grab():
                        return
                read_before = self.info.frames_read
                limit = None if max_frames is None else read_before + max_frames
                yield from iter_video_frames(capture, self.info, limit)
            finally:
                capture.release()
            return
        stop = len(self.paths) if max_frames is None else min(len(self.paths), start + max_frames)
        for path in self.paths[start:stop]:
            image = read_image(path)
            if image.shape[:2] != (self.info.height, self.info.width):
                raise ReconstructionError(f"frame {path} is {image.shape[1]}x{image.shape[0]}, not "
                                          f"{self.info.width}x{self.info.height} like the folder's first frame")
            self.info.frames_read += 1
            yield image

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_source(path: str | Path, fps: float | None = None) -> FrameSource:
    """A video file, a photo (``IMAGE_SUFFIXES``) or a folder of frames (natural order) -> ``FrameSource``.

    fps: frames per second of a folder (default ``DEFAULT_FOLDER_FPS``, the ME datasets' 200) or photo; for a
    video, overrides what the file reports. Missing path -> FileNotFoundError; unreadable -> ReconstructionError.
    """
    path = Path(path).expanduser()
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ReconstructionError(f"fps: expected a positive number, got {fps}")
    if path.is_dir():
        paths = folder_frames(path)
        kind = "frames"
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        paths, kind = [path], "photo"
    else:
        capture, info = open_video(path)
        if fps is not None:
            info.fps, info.fps_reported = float(fps), False
        return FrameSource(info, capture=capture)
    height, width = read_image(paths[0]).shape[:2]
    default = DEFAULT_FOLDER_FPS if kind == "frames" else DEFAULT_PHOTO_FPS
    info = VideoInfo(path=str(path), fps=float(default if fps is None else fps), width=width, height=height,
                     frame_count=len(paths), fps_reported=False, kind=kind)
    return FrameSource(info, paths=paths)
