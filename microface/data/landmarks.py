"""Facial landmarks offline: MediaPipe's face detector + face mesh (468 points) and their 68-point iBUG view.

The two networks are MediaPipe's BlazeFace short-range detector and its face-mesh landmark model (Apache-2.0),
taken from the mediapipe 0.10.21 wheel on PyPI and packed once, at setup time, into a ``.task`` zip by
``python tools/build_face_landmarker_task.py``. The bundle is looked up at
``$MICROFACE_ASSETS/face_landmarker.task`` when ``MICROFACE_ASSETS`` is set, else at
``${XDG_CACHE_HOME:-~/.cache}/microface/face_landmarker.task``. It is never package data and never committed.

Why not ``mediapipe.tasks.vision.FaceLandmarker``: the Tasks graph (mediapipe 1.2.2, the one that imports
with numpy 2) hard-codes 478 output landmarks, while the only landmark model a registry ships (the wheel's
``face_landmark.tflite``) emits 468 x 3 = 1404 values; Tasks then reads them as 478 (x, y) pairs and returns
plausible-looking garbage with z = 0. So both networks run here on LiteRT (``ai-edge-litert``), with the
pre- and post-processing of MediaPipe's legacy face-mesh graph re-implemented in numpy/OpenCV: letterbox to
128 x 128, SSD anchors, weighted NMS, a square ROI 1.5 x the box rotated so the eyes are level, a 192 x 192
crop, landmarks projected back. The iris points (468-477) need a third network and are not produced.

Coordinates: pixels of the input image, x to the right, y down. z is relative depth in the same scale as x,
smaller = closer to the camera, about 0 at the face centre.

iBUG 68 order is the usual image order: point 0 is the contour on the image's left (the subject's right),
36-41 the eye on the image's left, 42-47 the eye on the image's right.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from microface.face.open_model import IBUG68_FROM_MEDIAPIPE as _IBUG68_INDICES

N_MESH_LANDMARKS = 468

# MediaPipe face-mesh index for each of the 68 iBUG points, in iBUG order. The face model imports it from here.
# The face model owns the mesh-to-iBUG mapping (its vertices are MediaPipe's landmark indices).
IBUG68_FROM_MEDIAPIPE = np.asarray(_IBUG68_INDICES, dtype=np.int64)

# iBUG index sets used for alignment: the eye on the image's left and the one on the image's right.
IBUG_EYE_IMAGE_LEFT = np.arange(36, 42)
IBUG_EYE_IMAGE_RIGHT = np.arange(42, 48)

TASK_FILENAME = "face_landmarker.task"
BUILD_COMMAND = "python tools/build_face_landmarker_task.py"
DETECTOR_MEMBER = "face_detector.tflite"
MESH_MEMBER = "face_landmarks_detector.tflite"

# Constants of MediaPipe's face_detection_short_range and face_landmark graphs.
DETECTOR_SIZE = 128
MESH_SIZE = 192
ROI_SCALE = 1.5  # the mesh ROI is a square 1.5 x the longer side of the detection box
TRACK_TOLERANCE = 0.05  # a tracked ROI moves once the landmarks' ROI drifts 5 % of its side (or 0.05 rad)
NMS_IOU = 0.3


class FaceDetectionError(ValueError):
    """The image does not hold exactly one face."""


class NoFaceError(FaceDetectionError):
    """No face was found."""


class MultipleFacesError(FaceDetectionError):
    """More than one face was found, so which one to use is ambiguous."""


def default_task_path() -> Path:
    """Where the ``.task`` bundle is expected: ``$MICROFACE_ASSETS/face_landmarker.task`` or the user cache."""
    assets = os.environ.get("MICROFACE_ASSETS")
    if assets:
        return Path(assets).expanduser() / TASK_FILENAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "microface" / TASK_FILENAME


def landmarker_unavailable_reason(task_path: str | Path | None = None) -> str | None:
    """None when the landmarker can run; otherwise a sentence saying what is missing and what to do."""
    path = Path(task_path) if task_path is not None else default_task_path()
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except Exception as err:  # an ImportError, or a broken native extension
        return f"ai-edge-litert does not import ({type(err).__name__}: {err}); install it with `pip install ai-edge-litert`"
    if not path.is_file():
        return f"no face landmarker bundle at {path}; build it with `{BUILD_COMMAND}` (or set MICROFACE_ASSETS)"
    return None


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """The 68-point iBUG view of MediaPipe landmarks.

    landmarks: (..., 468 or 478, D) with D = 2 or 3 -> (..., 68, D), same dtype.
    """
    landmarks = np.asarray(landmarks)
    if landmarks.ndim < 2 or landmarks.shape[-2] not in (468, 478) or landmarks.shape[-1] not in (2, 3):
        raise ValueError(f"expected MediaPipe landmarks of shape (..., 468|478, 2|3), got {landmarks.shape}")
    return landmarks[..., IBUG68_FROM_MEDIAPIPE, :]


def eye_centres(landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the eye on the image's left and on its right: means of the iBUG eye points.

    landmarks68: (68, D) -> two (2,) float64 arrays (x, y).
    """
    landmarks68 = np.asarray(landmarks68, dtype=np.float64)
    if landmarks68.ndim != 2 or landmarks68.shape[0] != 68 or landmarks68.shape[1] not in (2, 3):
        raise ValueError(f"expected iBUG landmarks of shape (68, 2|3), got {landmarks68.shape}")
    return landmarks68[IBUG_EYE_IMAGE_LEFT, :2].mean(0), landmarks68[IBUG_EYE_IMAGE_RIGHT, :2].mean(0)


# ---------------------------------------------------------------------------------------------- detector


def ssd_anchors() -> np.ndarray:
    """Anchor centres of the short-range detector, normalised to [0, 1]: (896, 2) (x, y).

    SSD layout of MediaPipe's graph: strides 8, 16, 16, 16 on a 128 input, 2 anchors per layer per cell,
    layers sharing a stride merged into one grid (16x16x2 + 8x8x6 = 896), all of unit size.
    """
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        grid = DETECTOR_SIZE // stride
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cell = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 1, 2)
        centres.append(np.repeat(cell, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def decode_detections(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, min_score: float):
    """Boxes and keypoints of anchors scoring above ``min_score``, in the detector's normalised input frame.

    regressors: (896, 16) raw (cx, cy, w, h, then 6 keypoints x, y), in input pixels relative to the anchor;
    logits: (896,); anchors: (896, 2).
    -> boxes (N, 4) as (x0, y0, x1, y1), keypoints (N, 6, 2), scores (N,).
    Keypoints: 0 eye on the image's left, 1 eye on the image's right, 2 nose tip, 3 mouth, 4-5 ears.
    """
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    keep = scores >= min_score
    raw, anchors, scores = regressors[keep] / DETECTOR_SIZE, anchors[keep], scores[keep]
    centre = raw[:, 0:2] + anchors
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    return boxes, keypoints, scores


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU):
    """MediaPipe's weighted non-maximum suppression: each cluster of overlapping boxes becomes its
    score-weighted mean, scored by its best member. Shapes as ``decode_detections``; output sorted by score."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    alive = np.ones(len(scores), dtype=bool)
    out_boxes, out_keypoints, out_scores = [], [], []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        cluster = alive & (_iou(boxes[i], boxes) > iou_threshold)
        cluster[i] = True
        weight = scores[cluster] / scores[cluster].sum()
        out_boxes.append((boxes[cluster] * weight[:, None]).sum(0))
        out_keypoints.append((keypoints[cluster] * weight[:, None, None]).sum(0))
        out_scores.append(scores[i])
        alive &= ~cluster
    return (np.asarray(out_boxes, np.float32).reshape(-1, 4), np.asarray(out_keypoints, np.float32).reshape(-1, 6, 2),
            np.asarray(out_scores, np.float32))


@dataclass
class FaceDetection:
    """One detected face in image pixels: box (4,) as (x0, y0, x1, y1), keypoints (6, 2), score in [0, 1]."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float


def mesh_roi(detection: FaceDetection) -> np.ndarray:
    """Affine map from the 192 x 192 mesh input to image pixels: (2, 3).

    The ROI is a square of side 1.5 x the box's longer side, centred on the box, rotated so that the line
    between the detector's two eye keypoints is horizontal in the crop (as MediaPipe's face-mesh graph does).
    """
    left_eye, right_eye = detection.keypoints[0], detection.keypoints[1]
    angle = np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    side = ROI_SCALE * float(np.max(detection.box[2:] - detection.box[:2]))
    centre = (detection.box[:2] + detection.box[2:]) / 2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * (side / MESH_SIZE)
    # image = centre + rotation @ (crop - MESH_SIZE / 2)
    return np.concatenate([rotation, (centre - rotation @ np.full(2, MESH_SIZE / 2))[:, None]], 1)


def roi_from_landmarks(points: np.ndarray) -> np.ndarray:
    """The mesh ROI of a face's landmarks, as MediaPipe's face-landmark graph derives the next frame's ROI: a square of
    side 1.5 x the longer side of the landmarks' bounding box, centred on it, rotated so that the line from landmark
    33 to 263 (the eyes' outer corners) is horizontal.

    points: (468, 2+) pixels -> (2, 3) affine map from the 192 x 192 mesh input to image pixels (as ``mesh_roi``).
    """
    points = np.asarray(points, dtype=np.float64)[:, :2]
    start, end = points[33], points[263]
    angle = np.arctan2(end[1] - start[1], end[0] - start[0])
    low, high = points.min(0), points.max(0)
    side = ROI_SCALE * float(np.max(high - low))
    centre = (low + high) / 2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * (side / MESH_SIZE)
    return np.concatenate([rotation, (centre - rotation @ np.full(2, MESH_SIZE / 2))[:, None]], 1)


def rois_close(roi: np.ndarray, other: np.ndarray, tolerance: float) -> bool:
    """Whether two mesh ROIs (2, 3) differ by at most ``tolerance``: centre distance and side change as fractions of
    the first one's side, angle in radians."""
    side, other_side = (float(np.linalg.norm(r[:, 0])) * MESH_SIZE for r in (roi, other))  # px
    middle = np.array([MESH_SIZE / 2, MESH_SIZE / 2, 1.0])
    angle = np.arctan2(roi[1, 0], roi[0, 0]) - np.arctan2(other[1, 0], other[0, 0])
    angle = (angle + np.pi) % (2 * np.pi) - np.pi
    return (float(np.linalg.norm(roi @ middle - other @ middle)) <= tolerance * side
            and abs(other_side - side) <= tolerance * side and abs(angle) <= tolerance)


@dataclass
class FaceTrack:
    """What :meth:`FaceLandmarker.track` carries from frame to frame: the ROI the mesh model runs in, and the ROI of
    the landmarks it measured there last time it moved (the reference a face must drift from before it moves again).
    """

    roi: np.ndarray
    anchor: np.ndarray


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class FaceLandmarker:
    """MediaPipe face detector + face mesh on LiteRT, one image at a time (no tracking between frames).

    It looks for up to ``max_faces`` (default 2) faces so that a second face is seen and reported rather than
    silently ignored.

    >>> with FaceLandmarker() as landmarker:            # doctest: +SKIP
    ...     points = landmarker(image)                  # (468, 3) pixels
    """

    def __init__(self, task_path: str | Path | None = None, max_faces: int = 2, min_detection_confidence: float = 0.5,
                 min_presence_confidence: float = 0.5, num_threads: int = 1):
        path = Path(task_path) if task_path is not None else default_task_path()
        reason = landmarker_unavailable_reason(path)
        if reason is not None:
            raise FileNotFoundError(reason)
        if max_faces < 1:
            raise ValueError(f"expected max_faces >= 1, got {max_faces}")
        from ai_edge_litert.interpreter import Interpreter

        try:
            with zipfile.ZipFile(path) as bundle:
                detector_model, mesh_model = bundle.read(DETECTOR_MEMBER), bundle.read(MESH_MEMBER)
        except (zipfile.BadZipFile, KeyError) as err:
            raise FileNotFoundError(f"{path} is not a valid face landmarker bundle ({err}); rebuild it with "
                                    f"`{BUILD_COMMAND} --force`") from None
        self.task_path = path
        self.max_faces = max_faces
        self.min_detection_confidence = min_detection_confidence
        self.min_presence_confidence = min_presence_confidence
        self._anchors = ssd_anchors()
        self._detector = Interpreter(model_content=detector_model, num_threads=num_threads)
        self._mesh = Interpreter(model_content=mesh_model, num_threads=num_threads)
        for interpreter in (self._detector, self._mesh):
            interpreter.allocate_tensors()
        det_out = {d["name"]: d["index"] for d in self._detector.get_output_details()}
        self._det_in = self._detector.get_input_details()[0]["index"]
        self._det_regressors, self._det_logits = det_out["regressors"], det_out["classificators"]
        mesh_out = sorted(self._mesh.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
        self._mesh_in = self._mesh.get_input_details()[0]["index"]
        self._mesh_points, self._mesh_flag = mesh_out[0]["index"], mesh_out[1]["index"]

    def detect_faces(self, image: np.ndarray) -> list[FaceDetection]:
        """Face boxes and keypoints: (H, W, 3) RGB uint8 -> detections in pixels, best first."""
        image = _check_rgb(image)
        height, width = image.shape[:2]
        scale = DETECTOR_SIZE / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (DETECTOR_SIZE - new_w) // 2, (DETECTOR_SIZE - new_h) // 2
        canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.uint8)  # letterbox, as the graph does
        canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        self._detector.set_tensor(self._det_in, (canvas[None].astype(np.float32) / 127.5 - 1.0))
        self._detector.invoke()
        regressors = self._detector.get_tensor(self._det_regressors)[0]
        logits = self._detector.get_tensor(self._det_logits)[0, :, 0]
        boxes, keypoints, scores = weighted_nms(*decode_detections(regressors, logits, self._anchors, self.min_detection_confidence))
        to_pixels = lambda p: (p * DETECTOR_SIZE - np.array([pad_x, pad_y])) / scale  # noqa: E731
        return [FaceDetection(to_pixels(b.reshape(2, 2)).reshape(4), to_pixels(k), float(s))
                for b, k, s in zip(boxes, keypoints, scores)]

    def landmarks_in_roi(self, image: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, float]:
        """Run the mesh model on one ROI: image (H, W, 3) RGB uint8, roi (2, 3) from ``mesh_roi``
        -> (468, 3) float32 pixels, face-presence probability."""
        crop = cv2.warpAffine(image, roi, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        self._mesh.set_tensor(self._mesh_in, crop[None].astype(np.float32) / 255.0)
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._mesh_points).reshape(N_MESH_LANDMARKS, 3).astype(np.float64)
        flag = float(self._mesh.get_tensor(self._mesh_flag).reshape(-1)[0])
        points = np.empty_like(raw)
        points[:, :2] = raw[:, :2] @ roi[:, :2].T + roi[:, 2]
        points[:, 2] = raw[:, 2] * np.sqrt(abs(np.linalg.det(roi[:, :2])))  # depth scales like x
        return points.astype(np.float32), 1.0 / (1.0 + np.exp(-np.clip(flag, -100.0, 100.0)))

    def detect_all(self, image: np.ndarray) -> np.ndarray:
        """Every face found (up to ``max_faces``, best detection first).

        image: (H, W, 3) RGB uint8 -> (F, 468, 3) float32 pixels, F >= 0 (x, y, relative depth z; see module doc).
        """
        return self._detect(_check_rgb(image))[0]

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The detector, then the mesh model in each detection's ROI: (F, 468, 3) float32 pixels and the F ROIs."""
        faces, rois = [], []
        for detection in self.detect_faces(image)[: self.max_faces]:
            roi = mesh_roi(detection)
            points, presence = self.landmarks_in_roi(image, roi)
            if presence >= self.min_presence_confidence:
                faces.append(points)
                rois.append(roi)
        return np.asarray(faces, dtype=np.float32).reshape(len(faces), N_MESH_LANDMARKS, 3), rois

    def track(self, image: np.ndarray, track: FaceTrack | None) -> tuple[np.ndarray, FaceTrack | None]:
        """Follow one face from frame to frame without the detector, as MediaPipe's video mode does.

        The mesh model runs in the ROI that followed the face so far; that ROI moves only once the landmarks' own ROI
        (``roi_from_landmarks``) has drifted more than ``TRACK_TOLERANCE`` (centre or side as a fraction of the side,
        angle in radians) from where it was when the ROI last moved, and the face is then measured again in the new
        ROI. A face that keeps still is therefore measured in the same crop every frame and gets the same landmarks.
        Without a track, or when the mesh model no longer finds a face in its ROI, the detector looks again
        (:meth:`detect_all`: its ROI, its landmarks).

        Args:
            image: (H, W, 3) RGB uint8.
            track: the previous call's, or None.

        Returns:
            (faces (F, 468, 3) float32 pixels: one while tracking, up to ``max_faces`` after a detection, the followed
            one first; the track for the next frame, None when no face was found).
        """
        image = _check_rgb(image)
        if track is not None:
            points, presence = self.landmarks_in_roi(image, track.roi)
            if presence >= self.min_presence_confidence:
                following = roi_from_landmarks(points)
                if rois_close(track.anchor, following, TRACK_TOLERANCE):
                    return points[None], track
                points, presence = self.landmarks_in_roi(image, following)
                if presence >= self.min_presence_confidence:
                    return points[None], FaceTrack(following, roi_from_landmarks(points))
        faces, rois = self._detect(image)
        return faces, (FaceTrack(rois[0], roi_from_landmarks(faces[0])) if len(faces) else None)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The one face in ``image``: (H, W, 3) RGB uint8 -> (468, 3) float32 pixels.

        Raises NoFaceError when none is found and MultipleFacesError when more than one is.
        """
        faces = self.detect_all(image)
        if len(faces) == 0:
            raise NoFaceError(f"no face found in the {image.shape[1]}x{image.shape[0]} image")
        if len(faces) > 1:
            raise MultipleFacesError(f"{len(faces)} faces found in the {image.shape[1]}x{image.shape[0]} image; expected one")
        return faces[0]

    def close(self) -> None:
        """Release the interpreters (they are also released when the object is garbage-collected)."""
        self._detector = self._mesh = None

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def select_face(faces: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    """The face to follow among a frame's detections (used by ``reconstruct`` and the benchmark's landmark cache).

    Args:
        faces: detections, best first, shape (F, L, D) pixels (D >= 2; F may be 0).
        previous: the face followed so far, shape (L, D), or None.

    Returns:
        (L, D): the first (best) detection when there is no previous face, else the one whose landmark centroid is
        nearest the previous face's; None when F = 0.
    """
    if len(faces) == 0:
        return None
    if previous is None or len(faces) == 1:
        return faces[0]
    distance = np.linalg.norm(faces[:, :, :2].mean(1) - previous[:, :2].mean(0), axis=1)
    return faces[int(np.argmin(distance))]
