"""FaceLandmarker.track: MediaPipe's video mode (the mesh model follows the face's own ROI; the detector only when
there is nothing to follow), with a ROI that holds still while the face does."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from microface.data.landmarks import (
    MESH_SIZE,
    FaceLandmarker,
    landmarker_unavailable_reason,
    roi_from_landmarks,
    rois_close,
)

needs_landmarker = pytest.mark.skipif(landmarker_unavailable_reason() is not None,
                                      reason=str(landmarker_unavailable_reason()))


def _roi(cx: float, cy: float, side: float, angle: float = 0.0) -> np.ndarray:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * (side / MESH_SIZE)
    return np.concatenate([rotation, (np.array([cx, cy]) - rotation @ np.full(2, MESH_SIZE / 2))[:, None]], 1)


def test_rois_close_measures_centre_and_side_in_pixels_and_angle_in_radians():
    base = _roi(200, 150, 300)
    assert rois_close(base, _roi(214, 150, 300), 0.05)  # 14 px of a 300 px side
    assert not rois_close(base, _roi(216, 150, 300), 0.05)
    assert rois_close(base, _roi(200, 150, 314), 0.05) and not rois_close(base, _roi(200, 150, 316), 0.05)
    assert rois_close(base, _roi(200, 150, 300, 0.04), 0.05) and not rois_close(base, _roi(200, 150, 300, 0.06), 0.05)


def test_roi_from_landmarks_is_square_around_them_and_level_with_the_eyes():
    points = np.zeros((468, 3))
    points[:, :2] = np.random.default_rng(0).uniform([100, 50], [300, 250], (468, 2))
    points[33, :2], points[263, :2] = (150, 120), (250, 120)  # eye corners level: no rotation
    roi = roi_from_landmarks(points)
    low, high = points[:, :2].min(0), points[:, :2].max(0)
    np.testing.assert_allclose(roi @ [MESH_SIZE / 2, MESH_SIZE / 2, 1], (low + high) / 2, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(roi[:, 0]) * MESH_SIZE, 1.5 * (high - low).max(), rtol=1e-9)
    assert abs(roi[1, 0]) < 1e-12


@pytest.fixture(scope="module")
def face_frames() -> list[np.ndarray]:
    """The astronaut, still for 3 frames, then shifted 2 px right per frame for 12 (cumulative 24 px)."""
    image = np.ascontiguousarray(skimage.data.astronaut()[:, :, :3])
    frames = [image] * 3
    for step in range(1, 13):
        frames.append(cv2.warpAffine(image, np.float32([[1, 0, 2 * step], [0, 1, 0]]), image.shape[1::-1],
                                     borderMode=cv2.BORDER_REPLICATE))
    return frames


@needs_landmarker
def test_a_still_face_keeps_its_roi_and_landmarks_and_a_moving_one_is_followed(face_frames):
    with FaceLandmarker() as landmarker:
        detected = landmarker.detect_all(face_frames[0])
        calls = {"detect": 0}
        detect = landmarker.detect_faces

        def counting(image):
            calls["detect"] += 1
            return detect(image)

        landmarker.detect_faces = counting
        faces, track = landmarker.track(face_frames[0], None)
        np.testing.assert_array_equal(faces, detected)  # the first frame: the detector's own result
        first = faces[0]
        for frame in face_frames[1:3]:  # still: the same crop, the same points
            faces, again = landmarker.track(frame, track)
            np.testing.assert_array_equal(faces[0], first)
            assert again is track
        shifts = []
        for frame in face_frames[3:]:
            faces, track = landmarker.track(frame, track)
            shifts.append(float((faces[0][:, 0] - first[:, 0]).mean()))
        assert calls["detect"] == 1  # never lost: the detector ran once
        assert abs(shifts[-1] - 24.0) < 1.5 and np.all(np.diff(shifts) > 0)
        faces, lost = landmarker.track(np.zeros_like(face_frames[0]), track)
        assert len(faces) == 0 and lost is None and calls["detect"] == 2
