"""A clip's face crop: one square box per clip, from its DETECTED landmarks at the onset, held over the clip.

Frames that show more than the face (CASME II's 640x480 frames, the version 2 synthetic benchmark, a user's video)
are cut to a square around the face before a model sees them, as ME preprocessing does: one box per clip, so the
head's own small motion stays visible and the onset -> t flow is measured in one coordinate frame. The box comes
from the landmarks the model is allowed to read (the detector's on the frames, never the ground truth's, except in
the "oracle landmarks" ablation, where every landmark is the oracle's).

Box: the square centred on the onset's iBUG-68 bounding box, raised by ``RAISE`` of the box height (the landmarks
stop at the brows; the face model goes up to the forehead), with side ``SCALE`` x the box's larger side. Parts of
the box outside the frame are filled by edge replication. Pixel centres follow the resizing convention of
``microface.data.clips``: a point at source pixel ``p`` lands at ``(p - (x0, y0)) * size / side``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SCALE = 1.6
RAISE = 0.12
# A frame is cut to the face when the face spans less than this share of the frame's width (the version 1
# benchmark's frames are face crops already: its faces span ~0.7 of the frame; CASME II's and version 2's ~0.4).
CROP_BELOW_WIDTH_SHARE = 0.5


@dataclass(frozen=True)
class FaceBox:
    """A square crop: top-left corner (x0, y0) and side, integer source pixels."""

    x0: int
    y0: int
    side: int

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Source-pixel points (..., 2) -> pixels of the crop resized to ``size`` x ``size``."""
        return (np.asarray(points, np.float32) - np.array([self.x0, self.y0], np.float32)) * np.float32(size / self.side)


def face_box(points: np.ndarray) -> FaceBox:
    """The clip's square face box from its onset landmarks.

    Args:
        points: (68, 2) iBUG-68 landmarks of the onset frame, source pixels.

    Returns:
        FaceBox: side = SCALE x the landmarks' larger extent, centre raised by RAISE x their height.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"face_box: expected finite (68, 2) landmarks, got shape {points.shape}")
    low, high = points.min(0), points.max(0)
    width, height = high - low
    side = max(8, int(round(SCALE * max(width, height))))
    centre_x = (low[0] + high[0]) / 2.0
    centre_y = (low[1] + high[1]) / 2.0 - RAISE * height
    return FaceBox(int(round(centre_x - side / 2.0)), int(round(centre_y - side / 2.0)), side)


def check_box_in_frame(box: FaceBox, frame_size: tuple[int, int], key: str = "") -> FaceBox:
    """Refuse a box whose centre is off the frame or that is more than twice the frame's larger side: landmarks
    that put the face there are wrong (returns ``box`` otherwise). frame_size: (W, H) pixels."""
    width, height = frame_size
    centre_x, centre_y = box.x0 + box.side / 2.0, box.y0 + box.side / 2.0
    if not (0 <= centre_x < width and 0 <= centre_y < height) or box.side > 2 * max(width, height):
        raise ValueError(f"clip {key!r}: its landmarks put the face box (x0 {box.x0}, y0 {box.y0}, side {box.side} px) "
                         f"off its {width}x{height} frames")
    return box


def needs_face_crop(points: np.ndarray, frame_width: int) -> bool:
    """Whether frames of this width are wider than a face crop: the face (onset landmarks (68, 2), pixels) spans
    less than ``CROP_BELOW_WIDTH_SHARE`` of it."""
    points = np.asarray(points)
    return bool((points[:, 0].max() - points[:, 0].min()) < CROP_BELOW_WIDTH_SHARE * frame_width)


def _padded_window(array: np.ndarray, box: FaceBox) -> np.ndarray:
    """array[y0:y0+side, x0:x0+side] (first two axes), parts outside filled by edge replication."""
    height, width = array.shape[:2]
    pad_top, pad_left = max(0, -box.y0), max(0, -box.x0)
    pad_bottom, pad_right = max(0, box.y0 + box.side - height), max(0, box.x0 + box.side - width)
    if pad_top or pad_left or pad_bottom or pad_right:
        padding = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, padding, mode="edge")
    y0, x0 = box.y0 + pad_top, box.x0 + pad_left
    return array[y0:y0 + box.side, x0:x0 + box.side]


def crop_image(image: np.ndarray, box: FaceBox, size: int) -> np.ndarray:
    """(H, W, C) image -> (size, size, C) crop (area interpolation, same dtype)."""
    return cv2.resize(np.ascontiguousarray(_padded_window(image, box)), (size, size), interpolation=cv2.INTER_AREA)


def crop_flow(flow: np.ndarray, box: FaceBox, size: int) -> np.ndarray:
    """(K, H, W, 2) flow in source pixels -> (K, size, size, 2) in crop pixels (values scaled by size / side)."""
    scale = np.float32(size / box.side)
    return np.stack([cv2.resize(np.ascontiguousarray(_padded_window(f, box)), (size, size),
                                interpolation=cv2.INTER_AREA) * scale for f in flow])
