"""The clip's face crop (microface.data.face_crop) and its use by the clip tensors: version 2's 640x480 frames are
cut to the face from the landmarks, version 1's face-filling frames are not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from microface.data import synth as synth_package
from microface.data.clips import clip_tensors_from_synth
from microface.data.datasets import load_dataset
from microface.data.face_crop import clip_crop_transform, crop_flow, crop_image, needs_face_crop
from microface.data.preprocess import eye_alignment_transform, transform_landmarks
from microface.data.synth import config_for_profile, generate
from microface.data.synth import dataset as synth_dataset
from microface.data.synth.appearance import assign_textures
from microface.data.synth.textures import TEXTURE_SOURCES, texture_pool


def _face_points(left: float, top: float, width: float, height: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (68, 2)) * [width, height] + [left, top]
    points[0], points[1] = [left, top], [left + width, top + height]  # the box's corners
    return points.astype(np.float32)


def _eyes_at(left_eye, right_eye) -> np.ndarray:
    points = _face_points(200, 150, 250, 280)
    points[36:42], points[42:48] = left_eye, right_eye
    return points


def test_the_crop_is_the_eye_alignment_reconstruct_uses_and_is_checked_against_the_frame():
    points = _eyes_at([280.0, 240.0], [380.0, 240.0])
    transform = clip_crop_transform(points, 64, (640, 480))
    assert np.allclose(transform, eye_alignment_transform(points, 64))  # what `microface reconstruct` cuts
    with pytest.raises(ValueError, match="clip 'sub01/EP01_01'.*off its 640x480"):
        clip_crop_transform(_eyes_at([1e6, 10.0], [1e6 + 100, 10.0]), 64, (640, 480), "sub01/EP01_01")
    with pytest.raises(ValueError, match="off its"):  # eyes 3000 px apart: a crop 15x the frame
        clip_crop_transform(_eyes_at([-1180.0, 240.0], [1820.0, 240.0]), 64, (640, 480))
    with pytest.raises(ValueError, match="off its"):  # eyes 0.5 px apart: a crop of 1.6 px
        clip_crop_transform(_eyes_at([320.0, 240.0], [320.5, 240.0]), 64, (640, 480))
    with pytest.raises(ValueError, match="finite"):
        clip_crop_transform(np.full((68, 2), np.nan), 64, (640, 480))


def test_points_and_pixels_land_in_the_same_place_with_rotation_and_reduction():
    image = np.zeros((480, 640, 3), np.uint8)
    image[296:304, 436:444] = 255  # a bright 8x8 square, centre (439.5, 299.5)
    points = _eyes_at([280.0, 240.0], [376.0, 268.0])  # a tilted head: the crop rotates
    transform = clip_crop_transform(points, 64, (640, 480))
    crop = crop_image(image, transform, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    weights = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:64, :64]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    expected = transform_landmarks(np.array([[439.5, 299.5]]), transform)[0]
    assert np.abs(found - expected).max() < 0.5


def test_reduction_averages_noise_instead_of_aliasing_it():
    rng = np.random.default_rng(0)
    noise = np.clip(128 + 40 * rng.standard_normal((480, 640, 3)), 0, 255).astype(np.uint8)
    transform = clip_crop_transform(_eyes_at([200.0, 240.0], [440.0, 240.0]), 64, (640, 480))  # ~1/7 scale
    assert crop_image(noise, transform, 64).astype(float).std() < 40 / 4


def test_flow_is_cut_and_its_vectors_rotated_and_scaled():
    flow = np.zeros((2, 480, 640, 2), np.float32)
    flow[1, ..., 0] = 3.0
    transform = clip_crop_transform(_eyes_at([280.0, 240.0], [376.0, 268.0]), 64, (640, 480))
    cropped = crop_flow(flow, transform, 64)
    assert cropped.shape == (2, 64, 64, 2) and np.allclose(cropped[0], 0)
    assert np.allclose(cropped[1], transform[:, :2] @ np.array([3.0, 0.0]), atol=1e-4)


def test_only_frames_wider_than_a_face_crop_are_cut():
    assert needs_face_crop(_face_points(200, 150, 270, 300), frame_width=640)  # CASME II / version 2
    assert not needs_face_crop(_face_points(15, 10, 66, 75), frame_width=96)  # version 1: the face fills it


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory):
    pool = texture_pool(cache_dir=tmp_path_factory.mktemp("textures"), sources=TEXTURE_SOURCES[:1], download=False)
    patch = pytest.MonkeyPatch()
    patch.setattr(synth_dataset, "_textures_for",
                  lambda config: assign_textures(pool, config.subjects, config.test_fraction))
    config = config_for_profile("smoke", subjects=1, clips=1, macro_clips=0, seed=5, version=2,
                                micro_duration_s=(0.05, 0.05), lead_frames=(2, 2))
    try:
        with pytest.warns(UserWarning, match="1 identity"):
            return generate(tmp_path_factory.mktemp("v2") / "synth", config, show_progress=False)
    finally:
        patch.undo()


def test_v2_clip_tensors_are_face_crops_with_landmarks_and_flow_in_them(v2_root):
    records = load_dataset("synth", v2_root, kind="micro")
    clip = clip_tensors_from_synth(records, 64, "gt", 6, False, landmarks="oracle")[0]
    assert clip.frames.shape[1:] == (3, 64, 64)
    points = clip.landmarks2d
    # the face fills the crop: its landmarks span most of it and stay inside
    assert points.min() > 0 and points.max() < 64
    assert 0.45 * 64 < float(points[0, :, 0].max() - points[0, :, 0].min()) < 0.75 * 64
    # the gt flow is in crop pixels: the apex motion of the 640x480 frame shrinks by the crop's scale
    truth = synth_package.load_ground_truth(records[0].ground_truth)
    scale = float(np.ptp(points[0, :, 0])) / float(np.ptp(truth["landmarks2d"][0, :, 0]))  # crop px per source px
    whole = clip_tensors_from_synth(records, 64, "gt", 6, False, landmarks="oracle", face_crop=False)[0]
    apex = clip.apex_index
    assert 0 < clip.flow[apex].abs().max() and scale > 64 / 640
    ratio = float(clip.flow[apex].norm(dim=0).max() / whole.flow[apex].norm(dim=0).max())
    assert ratio == pytest.approx(scale / (64 / 640), rel=0.35)  # whole frame: 64 / 640 crop px per source px
