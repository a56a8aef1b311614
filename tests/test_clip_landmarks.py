"""Detected landmarks (``microface.data.clip_landmarks``): no ground-truth landmark reaches a model.

The detector runs on a smoke-sized synthetic clip (96 x 96 renders, the smoke profile's size); the ground truth's
landmarks are poisoned to show that, with ``landmarks="detected"``, neither the clip tensors nor DGMD's refinement
of a test clip read them, while ``"oracle"`` does.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from microface.data.clip_landmarks import (
    NoFaceInClipError,
    clip_landmarks,
    detect_frames,
    follow_faces,
    hold_missing,
    landmark_cache_dir,
    track_faces,
)
from microface.data.clips import clip_tensors_from_synth, subsample_indices
from microface.data.datasets import load_dataset
from microface.data.landmarks import landmarker_unavailable_reason, to_ibug68

LANDMARKER_MISSING = landmarker_unavailable_reason()
needs_landmarker = pytest.mark.skipif(LANDMARKER_MISSING is not None,
                                      reason=f"face landmarker unavailable: {LANDMARKER_MISSING}")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """One subject, one ME clip, no macro clip, at the smoke profile's 96 x 96."""
    from microface.data.synth import config_for_profile, generate

    root = tmp_path_factory.mktemp("clip_landmarks") / "synth"
    return generate(root, config_for_profile("smoke", subjects=1, clips=1, macro_clips=0), show_progress=False)


def _poisoned_copy(synth, out, value: float):
    """A copy of the benchmark whose ground-truth landmarks2d are all ``value``."""
    root = shutil.copytree(synth, out)
    for path in root.glob("ground_truth/**/*.npz"):
        with np.load(path) as truth:
            arrays = dict(truth)
        arrays["landmarks2d"] = np.full_like(arrays["landmarks2d"], value)
        np.savez(path, **arrays)
    return root


def test_hold_missing_holds_the_previous_frame_and_the_first_found():
    points = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 3, 2)
    points[[0, 1, 3]] = np.nan
    held = hold_missing(points, "c")
    assert held.held == (0, 1, 3)
    np.testing.assert_array_equal(held.points[[0, 1, 2]], points[[2, 2, 2]])  # before the first found: the first
    np.testing.assert_array_equal(held.points[3], points[2])  # afterwards: the previous frame
    np.testing.assert_array_equal(held.points[4], points[4])
    with pytest.raises(NoFaceInClipError, match="'sub01/EP01_01'.*no face .* 4 frames"):
        hold_missing(np.full((4, 3, 2), np.nan), "sub01/EP01_01")


def test_track_faces_follows_the_face_nearest_the_last_one():
    face = lambda x: np.full((1, 3, 3), x, np.float32)
    frames = [np.zeros((0, 3, 3), np.float32), face(10.0), np.concatenate([face(50.0), face(11.0)]), face(12.0)]
    tracked = track_faces(frames)
    assert tracked.shape == (4, 3, 2) and np.isnan(tracked[0]).all()
    assert tracked[1, 0, 0] == 10.0 and tracked[2, 0, 0] == 11.0 and tracked[3, 0, 0] == 12.0


def test_follow_faces_gives_the_index_of_the_followed_detection():
    face = lambda x: np.full((1, 3, 2), x, np.float32)
    frames = [np.concatenate([face(10.0), face(90.0)]), np.zeros((0, 3, 2), np.float32),
              np.concatenate([face(91.0), face(12.0)]), face(13.0)]
    np.testing.assert_array_equal(follow_faces(frames), [0, -1, 1, 0])


def test_detect_frames_keeps_the_mesh_of_the_followed_face(tmp_path, monkeypatch):
    """With two faces in a frame (the other one detected first), the 468-point mesh kept is the face whose 68
    points are followed; a frame without a face has NaN in both and is held in the points only."""
    import cv2

    rng = np.random.default_rng(0)
    followed = [rng.uniform(0, 50, (468, 3)).astype(np.float32) + np.float32(t) for t in range(4)]
    other = rng.uniform(300, 350, (468, 3)).astype(np.float32)
    detections = [followed[0][None], np.stack([other, followed[1]]), np.zeros((0, 468, 3), np.float32),
                  np.stack([other, followed[3]])]

    class FakeLandmarker:
        def detect_all(self, image):  # the frame's index is its grey level / 10
            return detections[int(image[0, 0, 0]) // 10]

    monkeypatch.setattr("microface.data.clip_landmarks._landmarker", lambda task_path: FakeLandmarker())
    frames = []
    for t in range(4):
        frames.append(tmp_path / f"img{t + 1}.png")
        cv2.imwrite(str(frames[-1]), np.full((8, 8, 3), 10 * t, np.uint8))
    points, meshes = detect_frames(frames, tmp_path / "unused.task", "sub01/EP01_01")
    assert points.shape == (4, 68, 2) and meshes.shape == (4, 468, 3) and meshes.dtype == np.float32
    for t in (0, 1, 3):
        np.testing.assert_array_equal(meshes[t], followed[t])
        np.testing.assert_array_equal(points[t], to_ibug68(followed[t])[:, :2])
    assert np.isnan(meshes[2]).all() and np.isnan(points[2]).all()
    detected = hold_missing(points, "sub01/EP01_01", meshes)
    assert detected.held == (2,) and detected.valid.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(detected.points[2], points[1])  # the points are held ...
    assert np.isnan(detected.meshes[2]).all()  # ... the meshes are not
    with pytest.raises(ValueError, match="'sub01/EP01_01' meshes: expected \\(4, 468, 3\\)"):
        hold_missing(points, "sub01/EP01_01", meshes[:, :68])


@needs_landmarker
def test_detected_landmarks_are_near_the_ground_truth_and_cached(synth, monkeypatch):
    record = load_dataset("synth", synth, kind="micro")[0]
    truth = np.load(record.ground_truth)["landmarks2d"]
    detected = clip_landmarks(record, landmark_cache_dir(synth))
    assert detected.points.shape == truth.shape and np.isfinite(detected.points).all()
    assert len(detected.held) <= len(record.frames) // 10  # the detector sees the cartoon face on 96 px renders
    error = np.linalg.norm(detected.points - truth, axis=-1).mean(-1)  # (T,) px
    assert float(error.mean()) < 5.0 and float(error.max()) < 8.0
    # the 468-point meshes are the same face's, NaN only where no face was found
    assert detected.meshes.shape == (len(record.frames), 468, 3) and detected.meshes.dtype == np.float32
    found = detected.valid
    assert np.isfinite(detected.meshes[found]).all() and np.isnan(detected.meshes[~found]).all()
    np.testing.assert_array_equal(to_ibug68(detected.meshes[found])[..., :2], detected.points[found])
    # cached beside the benchmark: a second call detects nothing
    assert (landmark_cache_dir(synth) / "clips").is_dir()
    monkeypatch.setattr("microface.data.clip_landmarks.detect_frames", lambda *a, **k: pytest.fail("re-detected"))
    cached = clip_landmarks(record, landmark_cache_dir(synth))
    np.testing.assert_array_equal(cached.points, detected.points)
    np.testing.assert_array_equal(cached.meshes, detected.meshes)


@needs_landmarker
def test_detected_landmarks_are_rescaled_to_the_model_resolution(synth):
    record = load_dataset("synth", synth, kind="micro")[0]
    kept = subsample_indices(record.onset, record.apex, record.offset, 5)
    source = clip_landmarks(record).points[kept]
    for size in (64, 96):
        clip = clip_tensors_from_synth([record], size, "dis", max_frames=5, show_progress=False)[0]
        torch.testing.assert_close(clip.landmarks2d, torch.from_numpy(source) * (size / 96))


@needs_landmarker
def test_no_ground_truth_landmark_reaches_the_clip_tensors_or_dgmd(synth, tmp_path, open_face_model):
    from microface.experiments.refine import coarse_clips
    from microface.models.dgmd import build_dgmd
    from microface.training.dem import build_dem
    from microface.training.dgmd import refine_clip

    poisoned = _poisoned_copy(synth, tmp_path / "poisoned" / "synth", 1e6)
    nan = _poisoned_copy(synth, tmp_path / "nan" / "synth", float("nan"))

    def clips(root, landmarks):
        # no face crop: the 96 px renders are face crops already, and a crop box from the poisoned oracle
        # landmarks (1e6 px, or NaN) would be the poison's own failure, not the proof that the oracle is read
        records = load_dataset("synth", root, kind="micro")
        return clip_tensors_from_synth(records, 64, "dis", max_frames=5, show_progress=False, landmarks=landmarks,
                                       landmark_cache=landmark_cache_dir(root), face_crop=False)

    clean = clips(synth, "detected")
    for root in (poisoned, nan):
        for reference, clip in zip(clean, clips(root, "detected")):
            assert torch.isfinite(clip.landmarks2d).all()
            torch.testing.assert_close(clip.landmarks2d, reference.landmarks2d, rtol=0, atol=0)
    # the oracle reads the ground truth: the poison shows
    assert bool((clips(poisoned, "oracle")[0].landmarks2d > 1e4).all())
    assert bool(torch.isnan(clips(nan, "oracle")[0].landmarks2d).all())

    # DGMD's landmark cue on a test clip: the refinement is finite and the same with the poisoned ground truth
    dem = build_dem(open_face_model, {"channels": [8, 8], "hidden": 16},
                    {"code_dim": 17, "motion_dim": 8, "hidden": 16, "static_channels": [8], "motion_channels": [8],
                     "solver": "rk4", "step_size": 0.25}, seed=0)
    dgmd = build_dgmd(open_face_model, {"hidden": 8, "gcn_layers": 1}, seed=0).eval()
    assert dgmd.config.use_landmarks
    refined = [refine_clip(dgmd, coarse_clips(dem, open_face_model, clips(root, "detected"))[0][0]).offsets
               for root in (synth, poisoned, nan)]
    assert torch.isfinite(refined[0]).all()
    for other in refined[1:]:
        torch.testing.assert_close(other, refined[0], rtol=0, atol=0)
    oracle = refine_clip(dgmd, coarse_clips(dem, open_face_model, clips(poisoned, "oracle"))[0][0]).offsets
    assert not torch.equal(oracle, refined[0])  # the cue does read the landmarks it is given


def test_oracle_landmarks_row_is_named_exactly():
    from microface.experiments.ablations import ORACLE_LANDMARKS
    from microface.experiments.coarse import CoarseBenchmarkSettings

    assert ORACLE_LANDMARKS == "oracle landmarks"
    assert CoarseBenchmarkSettings.from_dict({}).landmarks == "detected"
    with pytest.raises(ValueError, match="dem.landmarks"):
        CoarseBenchmarkSettings.from_dict({"landmarks": "ground_truth"})
