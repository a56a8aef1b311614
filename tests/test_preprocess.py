"""Alignment, crop, the offline landmarker, and ``prepare`` (cache, idempotence, resume, bad input, CLI)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from microface.data.clip import ClipRecord
from microface.data.landmarks import (
    IBUG68_FROM_MEDIAPIPE, MultipleFacesError, NoFaceError, eye_centres, landmarker_unavailable_reason,
    to_ibug68,
)
from microface.data.preprocess import (
    ClipError, align_crop, center_crop_transform, eye_alignment_transform, invert_transform, load_clip, load_manifest,
    prepare, similarity_from_points, transform_landmarks,
)

LANDMARKER_MISSING = landmarker_unavailable_reason()
needs_landmarker = pytest.mark.skipif(LANDMARKER_MISSING is not None, reason=f"face landmarker unavailable: {LANDMARKER_MISSING}")


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def random_landmarks(rng: np.random.Generator) -> np.ndarray:
    """68 points with two eye clusters around (100, 120) and (160, 120) plus noise elsewhere: (68, 2)."""
    points = rng.uniform(60, 200, (68, 2))
    points[36:42] = np.array([100.0, 120.0]) + rng.normal(0, 4, (6, 2))
    points[42:48] = np.array([160.0, 120.0]) + rng.normal(0, 4, (6, 2))
    return points


# ------------------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("size,eye_y,eye_dist", [(64, 0.38, 0.32), (144, 0.4, 0.3), (224, 0.35, 0.4)])
def test_alignment_puts_eyes_at_canonical_positions(size, eye_y, eye_dist):
    rng = np.random.default_rng(size)
    landmarks = random_landmarks(rng)
    transform = eye_alignment_transform(landmarks, size, eye_y=eye_y, eye_dist=eye_dist)
    left, right = eye_centres(transform_landmarks(landmarks, transform))
    np.testing.assert_allclose(left, [(0.5 - eye_dist / 2) * size, eye_y * size], atol=1e-4)
    np.testing.assert_allclose(right, [(0.5 + eye_dist / 2) * size, eye_y * size], atol=1e-4)


def test_alignment_recovers_a_known_similarity_and_its_inverse():
    rng = np.random.default_rng(1)
    size = 128
    canonical = random_landmarks(rng)
    # put the canonical landmarks exactly where alignment sends eyes, then move them by a known similarity
    canonical = transform_landmarks(canonical, eye_alignment_transform(canonical, size)).astype(np.float64)
    known = similarity(angle=0.3, scale=1.7, tx=40.0, ty=-12.0)
    in_image = transform_landmarks(canonical, known).astype(np.float64)
    recovered = eye_alignment_transform(in_image, size)
    np.testing.assert_allclose(recovered, invert_transform(known), atol=1e-4)
    np.testing.assert_allclose(transform_landmarks(in_image, recovered), canonical, atol=1e-3)
    round_trip = transform_landmarks(transform_landmarks(in_image, recovered), invert_transform(recovered))
    np.testing.assert_allclose(round_trip, in_image, atol=1e-3)


def test_transform_landmarks_scales_depth_and_checks_shapes():
    points = np.array([[[1.0, 2.0, 5.0]]])
    out = transform_landmarks(points, similarity(0.5, 2.0, 3.0, 4.0))
    assert out.shape == (1, 1, 3)
    assert out[0, 0, 2] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="expected points"):
        transform_landmarks(np.zeros((5, 4)), similarity(0, 1, 0, 0))
    with pytest.raises(ValueError, match="distinct"):
        similarity_from_points(np.zeros((2, 2)), np.eye(2))


def test_align_crop_moves_image_content_to_the_eye_positions():
    """Two bright discs drawn at the eye centres of an image land where the transform says."""
    image = np.zeros((300, 400, 3), np.uint8)
    eyes = np.array([[150.0, 170.0], [230.0, 150.0]])  # tilted, so rotation matters
    for x, y in eyes:
        cv2.circle(image, (int(x), int(y)), 6, (255, 255, 255), -1)
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = eyes[0], eyes[1]
    size = 128
    crop = align_crop(image, eye_alignment_transform(landmarks, size), size, gray=True)
    assert crop.shape == (size, size) and crop.dtype == np.uint8
    n, labels, stats, centroids = cv2.connectedComponentsWithStats((crop > 127).astype(np.uint8))
    assert n == 3  # background + two discs
    found = centroids[1:][np.argsort(centroids[1:, 0])]
    expected = np.array([[0.34 * size, 0.38 * size], [0.66 * size, 0.38 * size]])
    np.testing.assert_allclose(found, expected, atol=0.6)


def test_crop_modes_and_centre_crop():
    image = skimage.data.astronaut()
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = (204.0, 101.0), (247.0, 104.0)
    t144 = eye_alignment_transform(landmarks, 144)
    assert align_crop(image, eye_alignment_transform(landmarks, 64), 64, gray=True).shape == (64, 64)
    assert align_crop(image, eye_alignment_transform(landmarks, 224), 224).shape == (224, 224, 3)
    assert align_crop(image[..., 0], t144, 144, gray=False).shape == (144, 144, 3)  # gray in, RGB out
    full = align_crop(image, t144, 144)
    centre = align_crop(image, center_crop_transform(t144, 144, 128), 128)
    # equal up to OpenCV's fixed-point bilinear rounding (one grey level)
    np.testing.assert_allclose(centre.astype(int), full[8:136, 8:136].astype(int), atol=1)
    with pytest.raises(ValueError, match="uint8 image"):
        align_crop(image.astype(np.float32), t144, 144)
    with pytest.raises(ValueError, match="crop"):
        center_crop_transform(t144, 144, 200)


# ----------------------------------------------------------------------------------------------- landmarks


def test_ibug_mapping_is_68_distinct_mesh_indices():
    assert IBUG68_FROM_MEDIAPIPE.shape == (68,)
    assert len(set(IBUG68_FROM_MEDIAPIPE.tolist())) == 68
    assert IBUG68_FROM_MEDIAPIPE.max() < 468
    mesh = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    np.testing.assert_array_equal(to_ibug68(mesh)[:, 0], IBUG68_FROM_MEDIAPIPE * 3)
    assert to_ibug68(np.zeros((5, 468, 2))).shape == (5, 68, 2)
    with pytest.raises(ValueError, match="468"):
        to_ibug68(np.zeros((100, 3)))


@pytest.fixture
def landmarker(face_landmarker):
    return face_landmarker  # opened once per session (tests/conftest.py); skips when the bundle is not built


@needs_landmarker
def test_landmarker_finds_the_astronaut_face_in_ibug_order(landmarker):
    image = skimage.data.astronaut()
    mesh = landmarker(image)
    assert mesh.shape == (468, 3) and mesh.dtype == np.float32
    ibug = to_ibug68(mesh)
    left_eye, right_eye = eye_centres(ibug)
    assert ibug[0, 0] < ibug[16, 0] and left_eye[0] < right_eye[0]  # image order
    assert ibug[19, 1] < left_eye[1] < ibug[30, 1] < ibug[51, 1] < ibug[57, 1] < ibug[8, 1]  # brow, eye, nose, lips, chin
    # the face is in the upper middle of the picture and a plausible size
    assert 150 < ibug[:, 0].mean() < 300 and 50 < ibug[:, 1].mean() < 200
    assert 30 < np.linalg.norm(right_eye - left_eye) < 70


@needs_landmarker
def test_landmarker_is_equivariant_to_rotation_and_scale(landmarker):
    image = skimage.data.astronaut()
    reference = to_ibug68(landmarker(image))[:, :2]
    known = cv2.getRotationMatrix2D((256.0, 256.0), 12.0, 0.8)
    moved = cv2.warpAffine(image, known, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    back = transform_landmarks(to_ibug68(landmarker(moved))[:, :2], invert_transform(known))
    eye_distance = np.linalg.norm(np.subtract(*eye_centres(reference)))
    assert np.median(np.linalg.norm(back - reference, axis=1)) < 0.08 * eye_distance


@needs_landmarker
def test_landmarker_reports_no_face_and_two_faces(landmarker):
    with pytest.raises(NoFaceError):
        landmarker(np.full((256, 256, 3), 128, np.uint8))
    face = skimage.data.astronaut()[0:260, 140:310]
    with pytest.raises(MultipleFacesError, match="2 faces"):
        landmarker(np.ascontiguousarray(np.concatenate([face, face], axis=1)))
    with pytest.raises(ValueError, match="RGB uint8"):
        landmarker(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------------------- prepare

ASTRONAUT_EYES = np.array([[204.0, 101.0], [247.0, 104.0]])  # eye centres in skimage's astronaut, for fixtures


def make_clip(root: Path, clip_id: str, n_frames: int = 3, seed: int = 0, dataset: str = "synth") -> ClipRecord:
    """A tiny clip on disk: the astronaut's face moving by a fraction of a pixel, plus a ground-truth npz
    with 68 landmarks whose eye points sit on her eyes (only the eyes matter for alignment)."""
    from microface.data.flow import synthetic_flow, warp_image

    face = skimage.data.astronaut()[20:240, 120:330]
    offset = np.array([120.0, 20.0])
    folder = root / "frames" / clip_id
    folder.mkdir(parents=True)
    frames = []
    for t in range(n_frames):
        moved = warp_image(face, synthetic_flow(*face.shape[:2], max_px=0.2 + 0.3 * t, seed=seed + t))
        path = folder / f"img{t + 1}.png"
        cv2.imwrite(str(path), cv2.cvtColor(moved, cv2.COLOR_RGB2BGR))
        frames.append(path)
    landmarks = np.random.default_rng(seed).uniform(20, 200, (n_frames, 68, 2)).astype(np.float32)
    landmarks[:, 36:42] = ASTRONAUT_EYES[0] - offset
    landmarks[:, 42:48] = ASTRONAUT_EYES[1] - offset
    gt = root / "ground_truth" / f"{clip_id}.npz"
    gt.parent.mkdir(parents=True, exist_ok=True)
    np.savez(gt, landmarks2d=landmarks)
    return ClipRecord(dataset=dataset, subject="sub01", clip_id=clip_id, frames=frames, onset=0, apex=1,
                      offset=n_frames - 1, emotion="happiness", ground_truth=gt)


FAST = dict(size=48, flow_method="dis", landmarks="ground_truth", dis_preset="ultrafast")


@pytest.fixture
def clips(tmp_path):
    return [make_clip(tmp_path, f"EP0{i}", seed=10 * i) for i in range(3)]


def test_prepare_writes_aligned_clips_and_is_idempotent(tmp_path, clips):
    out = tmp_path / "cache"
    summary = prepare(clips, out, **FAST)
    assert sorted(summary.prepared) == sorted(c.key for c in clips) and not summary.already_done
    data = load_clip(out / load_manifest(out)["clips"][clips[0].key]["file"])
    assert data["frames"].shape == (3, 48, 48, 3) and data["frames"].dtype == np.uint8
    assert data["landmarks68"].shape == (3, 68, 2) and data["transform"].shape == (2, 3)
    assert data["flow"].shape == (3, 48, 48, 2) and data["flow"].dtype == np.float16
    assert not data["flow"][0].any() and np.abs(data["flow"][2]).max() > 0.05  # zero at onset, motion later
    np.testing.assert_allclose(eye_centres(data["landmarks68"][0])[0], [0.34 * 48, 0.38 * 48], atol=1e-3)
    assert data["meta"]["key"] == clips[0].key and data["meta"]["landmark_source"] == "ground_truth"

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    again = prepare(clips, out, **FAST)
    assert again.nothing_to_do and sorted(again.already_done) == sorted(c.key for c in clips)
    assert "nothing to do" in str(again)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == mtimes


def test_prepare_resumes_after_an_interruption(tmp_path, clips):
    out = tmp_path / "cache"
    prepare(clips, out, **FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    lost = clips[1].key
    lost_file = out / manifest["clips"].pop(lost)["file"]
    (out / "manifest.json").write_text(json.dumps(manifest))  # as if killed before recording clip 1
    leftover = lost_file.with_name(f".{lost_file.name}.tmp-99999")
    leftover.write_bytes(b"half a zip")  # and a half-written temp file
    (out / load_manifest(out)["clips"][clips[2].key]["file"]).unlink()  # and one listed clip's file gone
    summary = prepare(clips, out, **FAST)
    assert sorted(summary.prepared) == sorted([lost, clips[2].key]) and summary.already_done == [clips[0].key]
    assert not leftover.exists()
    assert set(load_manifest(out)["clips"]) == {c.key for c in clips}
    assert load_clip(lost_file)["frames"].shape == (3, 48, 48, 3)


def test_prepare_redoes_clips_when_the_config_changes(tmp_path, clips):
    out = tmp_path / "cache"
    prepare(clips[:1], out, **FAST)
    summary = prepare(clips[:1], out, **{**FAST, "gray": True, "flow_mode": "consecutive"})
    assert summary.prepared == [clips[0].key]
    data = load_clip(out / load_manifest(out)["clips"][clips[0].key]["file"])
    assert data["frames"].shape == (3, 48, 48) and data["flow"].shape == (2, 48, 48, 2)


def test_bad_frame_names_the_clip_and_file_or_is_skipped(tmp_path, clips):
    broken = clips[1].frames[2]
    broken.write_bytes(b"not an image")
    out = tmp_path / "cache"
    with pytest.raises(ClipError) as err:
        prepare(clips, out, **FAST)
    assert clips[1].key in str(err.value) and str(broken) in str(err.value)

    summary = prepare(clips, out, on_error="skip", **FAST)
    assert list(summary.skipped) == [clips[1].key] and str(broken) in summary.skipped[clips[1].key]
    assert clips[1].key in load_manifest(out)["skipped"]
    again = prepare(clips, out, on_error="skip", **FAST)
    assert again.nothing_to_do and again.previously_skipped == [clips[1].key]


def test_missing_ground_truth_landmarks_name_the_clip(tmp_path, clips):
    clips[0].ground_truth.unlink()
    with pytest.raises(ClipError, match=clips[0].key):
        prepare(clips[:1], tmp_path / "cache", **FAST)


def test_parallel_prepare_matches_serial(tmp_path, clips):
    serial = prepare(clips[:2], tmp_path / "serial", **FAST)
    parallel = prepare(clips[:2], tmp_path / "parallel", workers=2, **FAST)
    assert sorted(serial.prepared) == sorted(parallel.prepared)
    for key in serial.prepared:
        a = load_clip(tmp_path / "serial" / load_manifest(tmp_path / "serial")["clips"][key]["file"])
        b = load_clip(tmp_path / "parallel" / load_manifest(tmp_path / "parallel")["clips"][key]["file"])
        for name in ("frames", "landmarks68", "flow", "transform"):
            np.testing.assert_array_equal(a[name], b[name])


@needs_landmarker
def test_prepare_with_the_detector(tmp_path):
    record = make_clip(tmp_path, "EP10", dataset="casme2")
    out = tmp_path / "cache"
    prepare([record], out, size=64, gray=True, flow_method="dis", landmarks="detector")
    data = load_clip(out / load_manifest(out)["clips"][record.key]["file"])
    assert data["meta"]["landmark_source"] == "detector" and data["meta"]["frames_without_face"] == []
    assert data["frames"].shape == (3, 64, 64) and data["landmarks_mesh"].shape == (3, 468, 3)
    left, right = eye_centres(data["landmarks68"][0])
    np.testing.assert_allclose([left, right], [[0.34 * 64, 0.38 * 64], [0.66 * 64, 0.38 * 64]], atol=1e-3)
    # later frames were detected on their own and, the motion being sub-pixel, agree with the onset
    assert np.abs(data["landmarks68"][1:] - data["landmarks68"][:1]).mean() < 1.0


@needs_landmarker
def test_prepare_rejects_an_onset_frame_with_two_faces(tmp_path):
    record = make_clip(tmp_path, "EP11", dataset="casme2")
    onset = cv2.imread(str(record.frames[0]))
    cv2.imwrite(str(record.frames[0]), np.concatenate([onset, onset], axis=1))
    with pytest.raises(ClipError) as err:
        prepare([record], tmp_path / "cache", size=48, landmarks="detector")
    assert record.key in str(err.value) and str(record.frames[0]) in str(err.value) and "2 faces" in str(err.value)


def test_cli_prepare(tmp_path, clips, monkeypatch):
    from typer.testing import CliRunner

    from microface.cli import app

    fake = types.ModuleType("microface.data.datasets")
    fake.load_dataset = lambda name, root, **options: clips if name == "synth" else []
    monkeypatch.setitem(sys.modules, "microface.data.datasets", fake)
    monkeypatch.setattr("microface.data.landmarks.landmarker_unavailable_reason", lambda *a: "disabled in this test")
    args = ["prepare", "--dataset", "synth", "--root", str(tmp_path), "--out", str(tmp_path / "cache"),
            "--size", "32", "--gray", "--flow", "dis", "--flow-mode", "consecutive", "--dis-preset", "ultrafast"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "prepared 3 clips" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "nothing to do" in second.output
    data = load_clip(next((tmp_path / "cache").rglob("*.npz")))
    assert data["frames"].shape == (3, 32, 32) and data["flow"].shape == (2, 32, 32, 2)
    assert data["meta"]["landmark_source"] == "ground_truth"  # synth falls back when the detector is unavailable


def test_changed_record_labels_redo_the_cached_clip(tmp_path):
    """A class map applied after a first prepare must not leave stale labels in the cache."""
    from dataclasses import replace

    from microface.data.preprocess import load_clip, load_manifest, prepare
    from microface.data.synth import config_for_profile, generate
    from microface.data.datasets import load_dataset

    root = generate(tmp_path / "synth", config_for_profile("smoke", subjects=2, clips=1, macro_clips=0, image_size=48,
                                                           micro_duration_s=(0.05, 0.06)), show_progress=False)
    records = load_dataset("synth", root)
    out = tmp_path / "prepared"
    prepare(records, out, size=48, flow_method=None)
    labelled = [replace(r, label="happiness") for r in records]
    summary = prepare(labelled, out, size=48, flow_method=None)
    assert sorted(summary.prepared) == sorted(r.key for r in records)
    manifest = load_manifest(out)
    for record in labelled:
        assert load_clip(out / manifest["clips"][record.key]["file"])["meta"]["record"]["label"] == "happiness"
    assert prepare(labelled, out, size=48, flow_method=None).nothing_to_do
