"""The clip's face crop (microface.data.face_crop) and its use by the clip tensors: version 2's 640x480 frames are
cut to the face from the landmarks, version 1's face-filling frames are not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from microface.data import synth as synth_package
from microface.data.clips import clip_tensors_from_synth
from microface.data.datasets import load_dataset
from microface.data.face_crop import FaceBox, check_box_in_frame, crop_flow, crop_image, face_box, needs_face_crop
from microface.data.synth import config_for_profile, generate
from microface.data.synth import dataset as synth_dataset
from microface.data.synth.appearance import assign_textures
from microface.data.synth.textures import TEXTURE_SOURCES, texture_pool


def _face_points(left: float, top: float, width: float, height: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (68, 2)) * [width, height] + [left, top]
    points[0], points[1] = [left, top], [left + width, top + height]  # the box's corners
    return points.astype(np.float32)


def test_box_is_square_scaled_and_raised_over_the_landmarks():
    box = face_box(_face_points(200, 150, 250, 200))
    assert box.side == round(1.6 * 250)
    assert box.x0 == round(325 - box.side / 2)
    assert box.y0 == round(250 - 0.12 * 200 - box.side / 2)  # raised: the forehead is above the brows
    with pytest.raises(ValueError, match="finite"):
        face_box(np.full((68, 2), np.nan))


def test_points_and_pixels_land_in_the_same_place_also_past_the_frame_edge():
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:34, 150:154] = 255  # a bright 4x4 square, centre (152, 32), near the right edge
    box = FaceBox(x0=100, y0=-20, side=80)  # reaches past the top and the right edge: replicated there
    crop = crop_image(image, box, 40)
    assert crop.shape == (40, 40, 3) and crop.dtype == np.uint8
    ys, xs = np.nonzero(crop[..., 0] > 60)
    centre = box.to_crop(np.array([152.0, 32.0]), 40)
    assert abs(xs.mean() + 0.5 - centre[0]) < 0.6 and abs(ys.mean() + 0.5 - centre[1]) < 0.6


def test_a_box_off_the_frame_is_refused_with_the_clip_named():
    assert check_box_in_frame(FaceBox(-50, -50, 300), (640, 480)) == FaceBox(-50, -50, 300)
    with pytest.raises(ValueError, match="clip 'sub01/EP01_01'.*off its 640x480"):
        check_box_in_frame(face_box(_face_points(1e6, 10, 200, 200)), (640, 480), "sub01/EP01_01")
    with pytest.raises(ValueError, match="off its"):
        check_box_in_frame(FaceBox(0, 0, 5000), (640, 480))


def test_flow_is_cropped_and_rescaled_to_crop_pixels():
    flow = np.zeros((2, 120, 160, 2), np.float32)
    flow[1, ..., 0], flow[1, ..., 1] = 2.0, -1.0
    cropped = crop_flow(flow, FaceBox(10, 10, 100), 50)
    assert cropped.shape == (2, 50, 50, 2)
    assert np.allclose(cropped[0], 0) and np.allclose(cropped[1, ..., 0], 1.0) and np.allclose(cropped[1, ..., 1], -0.5)


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
