"""A clip's face crop: one eye-aligned crop per clip, from its onset landmarks, held over the clip.

Frames that show more than the face (CASME II's 640x480 frames, the version 2 synthetic benchmark, a user's video)
are cut to the face before a model sees them, with the geometry ``microface reconstruct`` uses on real video
(``microface.data.preprocess.eye_alignment_transform``: the onset's eye centres at fixed places of the crop), so a
model trained on the benchmark's crops sees real footage the same way. One transform per clip (the ME convention):
the head's own small motion stays in the frames and the onset -> t flow is measured in one coordinate frame. The
landmarks are those the model is allowed to read (the detector's on the frames; the ground truth's only in the
"oracle landmarks" ablation).

Sampling: the frame is first reduced by area averaging to the crop's scale (a 640x480 frame's face is cut to 64 or
128 px, a 3-7x reduction, where bilinear sampling alone would alias JPEG and sensor noise into false flow), then
warped bilinearly by the remaining rotation and shift, borders replicated.
"""
from __future__ import annotations

import cv2
import numpy as np

# A frame is cut to the face when the face spans less than this share of the frame's width (the version 1
# benchmark's frames are face crops already: its faces span ~0.7 of the frame; CASME II's and version 2's ~0.4).
CROP_BELOW_WIDTH_SHARE = 0.5


def needs_face_crop(points: np.ndarray, frame_width: int) -> bool:
    """Whether frames of this width are wider than a face crop: the face (onset landmarks (68, 2), pixels) spans
    less than ``CROP_BELOW_WIDTH_SHARE`` of it."""
    points = np.asarray(points)
    return bool((points[:, 0].max() - points[:, 0].min()) < CROP_BELOW_WIDTH_SHARE * frame_width)


def clip_crop_transform(points: np.ndarray, size: int, frame_size: tuple[int, int], key: str = "") -> np.ndarray:
    """The clip's crop transform from its onset landmarks, checked against the frame.

    Args:
        points: (68, 2) iBUG-68 landmarks of the onset frame, source pixels.
        size: the crop's side, pixels.
        frame_size: (W, H) of the source frames.
        key: the clip's name, for errors.

    Returns:
        (2, 3) float64 similarity, source pixels -> crop pixels.

    Raises:
        ValueError: landmarks that are not finite, or that put the crop's centre off the frame or make it more than
            twice the frame's larger side or under 8 px (wrong landmarks, not a face).
    """
    from microface.data.preprocess import eye_alignment_transform

    points = np.asarray(points, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise ValueError(f"clip {key!r}: face crop: expected finite (68, 2) onset landmarks, got shape {points.shape}")
    transform = eye_alignment_transform(points, size)
    linear = transform[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    centre = np.linalg.solve(linear, np.array([size / 2.0, size / 2.0]) - transform[:, 2])
    width, height = frame_size
    if not (0 <= centre[0] < width and 0 <= centre[1] < height) or not 8 <= size / scale <= 2 * max(width, height):
        raise ValueError(f"clip {key!r}: its landmarks put the face crop (centre {centre.round(1).tolist()}, side "
                         f"{size / scale:.0f} px) off its {width}x{height} frames")
    return transform


def _reduced(array: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-reduce ``array`` (H, W[, C]) to the transform's scale when it shrinks; the transform from the reduced
    array (pixel centres at integers, as cv2 maps them). Returns (array, (2, 3) transform)."""
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if scale >= 1.0:
        return array, transform
    height, width = array.shape[:2]
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    reduced = cv2.resize(np.ascontiguousarray(array), (new_width, new_height), interpolation=cv2.INTER_AREA)
    fx, fy = new_width / width, new_height / height
    # a reduced pixel x' sits at source x = (x' + 0.5) / f - 0.5
    linear = transform[:, :2] / np.array([fx, fy])[None, :]
    offset = transform[:, 2] + transform[:, :2] @ np.array([0.5 / fx - 0.5, 0.5 / fy - 0.5])
    return reduced, np.concatenate([linear, offset[:, None]], 1)


def crop_image(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) image -> (size, size, C) crop by ``transform`` (2, 3) source -> crop pixels; same dtype."""
    reduced, warp = _reduced(image, np.asarray(transform, np.float64))
    return cv2.warpAffine(reduced, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_flow(flow: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W, 2) flow in source pixels -> (K, size, size, 2) in crop pixels: each field is cut like the frames
    and its vectors mapped by the transform's linear part (rotation and scale)."""
    transform = np.asarray(transform, np.float64)
    linear = transform[:, :2].astype(np.float32)
    return np.stack([crop_image(np.ascontiguousarray(f, dtype=np.float32), transform, size) @ linear.T for f in flow])
