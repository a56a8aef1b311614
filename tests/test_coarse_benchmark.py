"""The coarse-stage benchmark (notebook 01_dem_pretrain): data preparation, subject split, end-to-end run, resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from microface.experiments.coarse import METHODS, REFERENCE, CoarseBenchmarkSettings, run_coarse_benchmark
from microface.models.baseline import PerFrameBaseline, build_baseline
from microface.data.clips import clip_tensors_from_synth, subsample_indices
from microface.data.flow import accumulate_flow_opencv
from microface.viz.curves import read_training_curves
from microface.data.folds import subject_split
from microface.data.datasets import load_dataset
from microface.training.dem import build_dem
from microface.data.synth import config_for_profile, generate

TINY = {
    "max_frames": 4, "test_fraction": 0.34, "pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 2,
    "encoder": {"channels": [8, 8], "hidden": 16},
    "model": {"code_dim": 17, "motion_dim": 8, "hidden": 16, "static_channels": [8], "motion_channels": [8],
              "solver": "rk4", "step_size": 0.25},
}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coarse") / "synth"
    config = config_for_profile("smoke", subjects=3, clips=2, macro_clips=1, image_size=48,
                                micro_duration_s=(0.05, 0.07), macro_duration_s=(0.3, 0.4))
    return generate(root, config, show_progress=False)


def test_subsample_keeps_onset_apex_offset_and_spreads_uniformly():
    kept = subsample_indices(10, 23, 70, 7)
    assert len(kept) == 7 and kept[0] == 10 and kept[-1] == 70 and 23 in kept
    assert np.all(np.diff(kept) > 0)
    # the uniform grid is 10, 20, 30, ...: only the point nearest the apex moved
    assert sorted(set(kept) - {23}) == [10, 30, 40, 50, 60, 70]
    np.testing.assert_array_equal(subsample_indices(3, 4, 6, 8), [3, 4, 5, 6])  # short clip: every frame
    with pytest.raises(ValueError, match="onset <= apex <= offset"):
        subsample_indices(5, 2, 9, 4)
    with pytest.raises(ValueError, match=">= 3"):
        subsample_indices(0, 1, 9, 2)


def test_accumulated_flow_follows_the_moving_point():
    height, width = 12, 16
    shift = np.zeros((height, width, 2), np.float32)
    shift[..., 0] = 1.0  # frame 0 -> 1: everything moves one pixel right
    shear = np.zeros((height, width, 2), np.float32)
    shear[..., 1] = 0.1 * np.arange(width, dtype=np.float32)[None]  # frame 1 -> 2: down by 0.1 * x
    flows = accumulate_flow_opencv(np.stack([shift, shear]), 0, np.array([0, 1, 2]))
    assert flows.shape == (3, height, width, 2)
    np.testing.assert_array_equal(flows[0], 0.0)
    np.testing.assert_allclose(flows[1], shift)
    # the point at x reaches x + 1 after the first step, so the second step is sampled there
    interior = flows[2][:, : width - 2]
    np.testing.assert_allclose(interior[..., 0], 1.0)
    np.testing.assert_allclose(interior[..., 1], 0.1 * (np.arange(width - 2) + 1.0)[None].repeat(height, 0), atol=1e-5)


def test_subject_split_holds_out_the_last_third():
    train, test = subject_split(["sub03", "sub1", "sub02", "sub10", "sub04", "sub05", "sub02"], 1 / 3)
    assert test == ["sub05", "sub10"] and train == ["sub1", "sub02", "sub03", "sub04"]
    with pytest.raises(ValueError, match="leave none for training"):
        subject_split(["sub01"], 0.3)


def test_clip_tensors_carry_rescaled_ground_truth(synth_root):
    records = load_dataset("synth", synth_root, kind="macro")
    clips = clip_tensors_from_synth(records, 32, "gt", max_frames=5, show_progress=False, landmarks="oracle")
    for record, clip in zip(records, clips):
        truth = np.load(record.ground_truth)
        kept = subsample_indices(record.onset, record.apex, record.offset, 5)
        assert clip.frames.shape == (len(kept), 3, 32, 32) and clip.flow.shape == (len(kept), 2, 32, 32)
        assert float(clip.frames.min()) >= 0.0 and float(clip.frames.max()) <= 1.0
        torch.testing.assert_close(clip.landmarks2d, torch.from_numpy(truth["landmarks2d"][kept]) * (32 / 48))
        torch.testing.assert_close(clip.expression, torch.from_numpy(truth["expression"][kept]))
        torch.testing.assert_close(clip.times, torch.from_numpy(kept / float(truth["fps"])).float())
        assert kept[clip.apex] == record.apex
        assert float(clip.flow[0].abs().max()) == 0.0
    # macro motion is pixels large: estimated DIS flow and accumulated ground truth agree better than zero flow
    estimated = clip_tensors_from_synth(records, 32, "dis", max_frames=5, show_progress=False)
    for truth_clip, dis_clip in zip(clips, estimated):
        apex = truth_clip.apex
        moving = truth_clip.flow[apex].norm(dim=0) > 0.3
        error = (dis_clip.flow[apex] - truth_clip.flow[apex]).norm(dim=0)[moving].mean()
        assert float(error) < float(truth_clip.flow[apex].norm(dim=0)[moving].mean())


def test_per_frame_baseline_sees_one_frame_at_a_time(open_face_model):
    face_model = open_face_model
    model = build_baseline(face_model, {"channels": [8, 8], "hidden": 16}, seed=0).eval()
    assert isinstance(model, PerFrameBaseline)
    frames = torch.rand(1, 4, 3, 24, 24)
    times = torch.arange(4.0)[None]
    order = torch.tensor([0, 3, 1, 2])
    with torch.no_grad():
        out = model(frames, torch.zeros(1, 4, 2, 24, 24), times).expression
        shuffled = model(frames[:, order], torch.zeros(1, 4, 2, 24, 24), times).expression
    assert out.shape == (1, 4, face_model.n_expression)
    torch.testing.assert_close(shuffled, out[:, order])
    # baseline and DEM start from one seeded encoder, so only training tells them apart
    dem_encoder = build_dem(face_model, {"channels": [8, 8], "hidden": 16}, None, seed=0).coarse_encoder.state_dict()
    for name, value in model.coarse_encoder.state_dict().items():
        torch.testing.assert_close(value, dem_encoder[name])


def test_benchmark_end_to_end_and_resume(synth_root, tmp_path):
    out = tmp_path / "dem"
    table = run_coarse_benchmark(synth_root, out, TINY, seed=0, image_size=32, flow_method="dis", show_progress=False)
    assert list(table["method"]) == [*METHODS, REFERENCE]
    numbers = table.drop(columns=["method", "split"])
    assert np.isfinite(numbers.to_numpy(dtype=float)).all()
    assert (table["apex_error_mm"] > 0).all() and (table["gt_jitter_mm_per_frame2"] > 0).all()
    assert (table["n_test_clips"] == 2).all()  # sub03's two ME clips
    assert table["split"].iloc[0].startswith("test sub03")

    split = json.loads((out / "split.json").read_text())
    assert split["test_subjects"] == ["sub03"] and not set(split["train_subjects"]) & set(split["test_subjects"])
    trained_on = split["macro_train"] + split["micro_train"]
    assert trained_on and not any("/sub03/" in key for key in trained_on)
    per_clip = pd.read_csv(out / "per_clip.csv")
    assert set(per_clip["key"].str.split("/").str[1]) == {"sub03"}

    curves = read_training_curves(out)
    supervised_stages = {"baseline +3D supervision (macro)", "baseline-FT +3D supervision (ME)",
                         "DEM pretrain +3D supervision (macro)", "DEM fine-tune +3D supervision (ME)"}
    assert set(curves["stage"]) == {"baseline (macro)", "baseline-FT (ME)", "DEM w/o macro pretraining (ME)",
                                    "DEM pretrain (macro)", "DEM fine-tune (ME)", *supervised_stages}
    # the main rows never see the 3D truth; the "+3D supervision" rows train with it in both stages
    supervised = curves["stage"].isin(supervised_stages)
    assert "param" not in set(curves.loc[~supervised, "term"])
    for stage in supervised_stages:
        assert "param" in set(curves.loc[curves["stage"] == stage, "term"]), stage
    assert curves.loc[curves["stage"] == "DEM w/o macro pretraining (ME)", "epoch"].max() == 1  # 1 + 1 epochs
    # the per-frame baseline is trained without temporal terms, DEM with them
    assert "smooth" not in set(curves.loc[curves["stage"] == "baseline (macro)", "term"])
    assert "smooth" in set(curves.loc[curves["stage"] == "DEM pretrain (macro)", "term"])

    checkpoints = sorted((out / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == sorted(
        ["baseline.pt", "baseline_ft.pt", "dem_scratch.pt", "dem_pretrain.pt", "dem.pt", "baseline_3d.pt",
         "baseline_ft_3d.pt", "dem_pretrain_3d.pt", "dem_3d.pt"])
    stamps = {p.name: p.stat().st_mtime_ns for p in checkpoints}
    again = run_coarse_benchmark(synth_root, out, TINY, seed=0, image_size=32, flow_method="dis", show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints} == stamps  # nothing retrained
    pd.testing.assert_frame_equal(again, table)
    assert math.isclose(pd.read_csv(out / "coarse_table.csv")["apex_error_mm"].iloc[0], table["apex_error_mm"].iloc[0])
    assert (out / "coarse_table.md").read_text().startswith("| method")

    with pytest.raises(ValueError, match="other settings"):
        run_coarse_benchmark(synth_root, out, {**TINY, "max_frames": 5}, seed=0, image_size=32, show_progress=False)


def test_main_weights_are_self_supervised_and_supervision_is_added_on_top():
    config = CoarseBenchmarkSettings.from_dict({"weights": {"photometric": 1.0, "perceptual": 0.5, "param": 0.25},
                                                "supervision": {"param": 1.0}, "perceptual": "gradient_ssim"})
    main = config.stage(2, 1e-3, 0, per_frame=False)
    supervised = config.stage(2, 1e-3, 0, per_frame=False, supervised=True)
    assert main.weights["param"] == 0.25 and supervised.weights["param"] == 1.25  # added, not replaced
    assert {k: v for k, v in supervised.weights.items() if k != "param"} == {
        k: v for k, v in main.weights.items() if k != "param"}
    assert main.perceptual == supervised.perceptual == "gradient_ssim" and main.weights["perceptual"] == 0.5
    # without a param weight the main rows read no 3D truth; per-frame stages still drop the temporal terms
    default = CoarseBenchmarkSettings.from_dict({})
    assert default.stage(1, 1e-3, 0, False).weights["param"] == 0.0 and default.perceptual == "inception"
    per_frame = default.stage(1, 1e-3, 0, per_frame=True, supervised=True)
    assert per_frame.weights["param"] == 1.0 and per_frame.weights["smooth"] == 0.0
    with pytest.raises(ValueError, match="unknown keys"):
        CoarseBenchmarkSettings.from_dict({"supervision": {"vertex": 1.0}})
    with pytest.raises(ValueError, match="dem.supervision"):
        CoarseBenchmarkSettings.from_dict({"supervision": {"param": 0.0}})
    with pytest.raises(ValueError, match="dem.perceptual"):
        CoarseBenchmarkSettings.from_dict({"perceptual": "vgg"})


def test_settings_reject_unknown_keys_and_bad_values(synth_root, tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        run_coarse_benchmark(synth_root, tmp_path, {**TINY, "epochs": 3}, show_progress=False)
    with pytest.raises(ValueError, match="max_frames"):
        run_coarse_benchmark(synth_root, tmp_path, {**TINY, "max_frames": 2}, show_progress=False)
    with pytest.raises(FileNotFoundError, match="microface synth"):
        run_coarse_benchmark(tmp_path / "nothing", tmp_path / "out", TINY, show_progress=False)
