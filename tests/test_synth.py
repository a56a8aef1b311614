"""The synthetic benchmark: determinism, CASME II layout, ground truth (flow, apex motion), bad input, resume."""
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from microface.cli import app
from microface.face.open_model import OpenFaceModel
from microface.data.synth import config_for_profile, generate, load_ground_truth
from microface.data.synth import dataset as generate_module
from microface.data.synth.dataset import plan_clips, render_clip, subject_for
from microface.data.synth.schedules import AUEvent, expression_trajectory, intensity_profile

TINY = dict(subjects=2, clips=2, macro_clips=1, image_size=48, micro_duration_s=(0.05, 0.07), macro_duration_s=(0.3, 0.4))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, config_for_profile("smoke", seed=3, **TINY), show_progress=False)
    return out


def test_same_seed_gives_byte_identical_files(tiny_dataset, tmp_path):
    again = generate(tmp_path / "again", config_for_profile("smoke", seed=3, **TINY), show_progress=False)
    assert tree_digest(tiny_dataset) == tree_digest(again)
    other = generate(tmp_path / "other", config_for_profile("smoke", seed=4, **TINY), show_progress=False)
    assert tree_digest(other) != tree_digest(tiny_dataset)


def test_casme2_layout_and_spreadsheet_columns(tiny_dataset):
    sheet = pd.read_excel(tiny_dataset / "CASME2-coding-20140508.xlsx")
    assert list(sheet.columns) == ["Subject", "Filename", "Unnamed: 2", "OnsetFrame", "ApexFrame", "OffsetFrame",
                                   "Unnamed: 6", "Action Units", "Estimated Emotion"]
    assert len(sheet) == 4
    for row in sheet.itertuples(index=False):
        folder = tiny_dataset / f"sub{int(row.Subject):02d}" / row.Filename
        numbers = sorted(int(p.stem[3:]) for p in folder.glob("img*.jpg"))
        assert numbers == list(range(numbers[0], numbers[-1] + 1))
        assert numbers[0] <= row.OnsetFrame < row.ApexFrame < row.OffsetFrame <= numbers[-1]
        gt = load_ground_truth(tiny_dataset / "ground_truth" / folder.relative_to(tiny_dataset).parent / f"{row.Filename}.npz")
        assert gt["frame_numbers"][int(gt["apex"])] == row.ApexFrame
        assert gt["vertices"].shape == (len(numbers), 468, 3)
        assert gt["flow"].shape == (len(numbers) - 1, 48, 48, 2)
    macro = pd.read_excel(tiny_dataset / "macro" / "CASME2-coding-20140508.xlsx")
    assert set(macro["Estimated Emotion"]) <= {"anger", "disgust", "fear", "happiness", "sadness", "surprise"}


def test_micro_apex_motion_is_subtle_and_macro_is_not():
    config = config_for_profile("smoke", seed=1, **TINY)
    model = OpenFaceModel()
    for spec in plan_clips(config):
        clip = render_clip(spec, config, model, subject_for(config, spec.subject, model))
        gt = clip.ground_truth
        canonical = gt["vertices_canonical"]
        apex_motion = np.linalg.norm(canonical[gt["apex"]] - canonical[gt["onset"]], axis=-1).max()
        if spec.kind == "micro":
            assert 0.4 <= apex_motion <= 3.1, spec
        else:
            assert apex_motion > 2.0, spec


def test_ground_truth_flow_warps_frame_t_onto_t_plus_1():
    config = config_for_profile("smoke", seed=2, subjects=1, clips=1, macro_clips=1, image_size=96,
                                macro_duration_s=(0.4, 0.4))
    model = OpenFaceModel()
    spec = [s for s in plan_clips(config) if s.kind == "macro"][0]
    clip = render_clip(spec, config, model, subject_for(config, 1, model))
    flow = clip.ground_truth["flow"].astype(np.float32)
    frames = clip.frames_clean.astype(np.float32)
    speed = np.linalg.norm(flow, axis=-1)
    t = int((speed > 0.3).reshape(len(flow), -1).sum(1).argmax())  # the frame pair with most moving pixels
    h, w = flow.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    valid = cv2.erode(clip.ground_truth["flow_mask"][t].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    moving = valid & (speed[t] > 0.3)
    assert moving.sum() > 100

    def error_after_warp(sign):
        warped = cv2.remap(frames[t + 1], grid_x + sign * flow[t, ..., 0], grid_y + sign * flow[t, ..., 1],
                           cv2.INTER_LINEAR)
        return np.abs(warped - frames[t])[moving].mean()

    assert error_after_warp(1) < 0.5 * error_after_warp(0)  # better than assuming no motion
    assert error_after_warp(1) < 0.5 * error_after_warp(-1)  # and the direction is right


def test_intensity_profile_and_bad_timing():
    profile = intensity_profile(20, 2, 8, 15, 0.5)
    assert profile[:3].max() == 0 and profile[8] == pytest.approx(0.5) and profile[15:].max() == pytest.approx(0)
    assert np.all(np.diff(profile[2:9]) >= 0) and np.all(np.diff(profile[8:16]) <= 0)
    with pytest.raises(ValueError, match="impossible timing onset=8, apex=5"):
        intensity_profile(20, 8, 5, 15, 0.5)
    with pytest.raises(ValueError, match="negative AU intensity"):
        intensity_profile(20, 2, 5, 15, -0.5)
    with pytest.raises(ValueError, match="unknown action unit 'AU99'"):
        expression_trajectory([AUEvent("AU99", 1, 2, 3, 1.0)], ("AU1",), 5)


def test_refuses_a_folder_holding_another_dataset(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="already holds a different dataset"):
        generate(tiny_dataset, config_for_profile("smoke", seed=99, **TINY), show_progress=False)
    before = tree_digest(tiny_dataset)
    generate(tiny_dataset, config_for_profile("smoke", seed=3, **TINY), show_progress=False)  # same: no-op
    assert tree_digest(tiny_dataset) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a microface synthetic dataset"):
        generate(foreign, config_for_profile("smoke", **TINY), show_progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_generation_resumes_to_identical_files(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real_render = generate_module.render_clip
    calls = {"n": 0}

    def flaky_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_clip", flaky_render)
    with pytest.raises(KeyboardInterrupt):
        generate(out, config_for_profile("smoke", seed=3, **TINY), show_progress=False)
    assert not out.exists() and (tmp_path / "resumed.partial").is_dir()
    calls["n"] = 100  # no more interruptions
    generate(out, config_for_profile("smoke", seed=3, **TINY), show_progress=False)
    assert not (tmp_path / "resumed.partial").exists()
    assert tree_digest(out) == tree_digest(tiny_dataset)


def test_cli_synth_reports_bad_profile(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--profile", "huge"])
    assert result.exit_code == 2
    assert "unknown synth profile 'huge'" in result.output
