"""The fine-stage benchmark (notebook 02_dgmd_refine): offsets back to the model frame, the moving/static split,
and an end-to-end run on a tiny coarse benchmark (consistent with notebook 01's DEM row, resumable)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from microface.experiments.coarse import run_coarse_benchmark
from microface.mesh.geometry import axis_angle_to_matrix
from microface.face.open_model import OpenFaceModel
from microface.experiments.refine import (METHOD_COARSE, METHOD_COARSE_3D, METHOD_REFINED, METHOD_REFINED_3D,
                                          REFERENCE, EvalClip, RefineBenchmarkSettings, load_refine_run,
                                          model_frame_offsets, run_refine_benchmark, score_clip)
from microface.metrics.geometry import moving_vertices
from microface.data.synth import config_for_profile, generate

TINY_DEM = {
    "max_frames": 4, "test_fraction": 0.34, "pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 2,
    "encoder": {"channels": [8, 8], "hidden": 16},
    "model": {"code_dim": 17, "motion_dim": 8, "hidden": 16, "static_channels": [8], "motion_channels": [8],
              "solver": "rk4", "step_size": 0.25},
}
TINY_DGMD = {"moving_threshold_mm": 0.1, "model": {"hidden": 8, "gcn_layers": 1, "gate_floor_px": 0.05},
             "train": {"epochs": 1, "batch_size": 4}}


def test_posed_offsets_map_back_to_the_model_frame():
    model = OpenFaceModel()
    torch.manual_seed(0)
    T = 3
    shape, expression = torch.randn(T, model.n_shape) * 0.3, torch.rand(T, model.n_expression) * 0.2
    pose = torch.zeros(T, 6)
    pose[:, :3] = torch.randn(T, 3) * 0.3
    delta = torch.randn(T, model.n_vertices, 3) * 0.5  # a model-frame displacement
    # the posed mesh is R (v - c) + c, so moving v by delta moves the posed mesh by R delta
    rotation = axis_angle_to_matrix(pose[:, :3])
    posed_delta = torch.einsum("tij,tvj->tvi", rotation, delta)
    torch.testing.assert_close(model_frame_offsets(posed_delta, rotation), delta, atol=1e-5, rtol=1e-5)
    # and through the face model itself: posing (v + delta) moves the posed mesh by R delta
    moved = model(shape, expression, pose).vertices + posed_delta
    canonical = model(shape, expression, torch.zeros(T, 6)).vertices
    centre_free = torch.einsum("tji,tvj->tvi", rotation, moved - moved.mean(1, keepdim=True))
    torch.testing.assert_close(centre_free, (canonical + delta) - (canonical + delta).mean(1, keepdim=True),
                               atol=1e-3, rtol=1e-4)


def test_moving_split_and_scores_by_hand():
    truth = torch.zeros(3, 4, 3)
    truth[1, 0, 0] = 0.3  # vertex 0 moves 0.3 mm at the apex (frame 1); vertex 1 only 0.05 mm
    truth[1, 1, 0] = 0.05
    moving = moving_vertices(truth, apex=1, threshold_mm=0.1)
    assert moving.tolist() == [True, False, False, False]
    mesh = truth.clone()
    mesh[:, 2, 1] = 0.2  # a static vertex off by 0.2 mm in every frame
    clip = EvalClip(expression_only=mesh, truth=truth, neutral=torch.zeros_like(truth),
                    rotation=torch.eye(3).expand(3, 3, 3), apex=1, key="k")
    row = score_clip(mesh, clip, moving)
    assert row["moving_apex_mm"] == 0.0
    assert math.isclose(row["static_apex_mm"], 0.2 / 3, rel_tol=1e-6)
    assert math.isclose(row["all_clip_mm"], 0.2 / 4, rel_tol=1e-6)


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    config = config_for_profile("smoke", subjects=3, clips=2, macro_clips=1, image_size=48,
                                micro_duration_s=(0.05, 0.07), macro_duration_s=(0.3, 0.4))
    synth = generate(root / "synth", config, show_progress=False)
    table = run_coarse_benchmark(synth, root / "dem", TINY_DEM, seed=0, image_size=32, show_progress=False)
    return synth, root / "dem", table


def test_refine_benchmark_end_to_end_and_resume(coarse_run, tmp_path):
    synth, coarse_dir, coarse_table = coarse_run
    out = tmp_path / "dgmd"
    table = run_refine_benchmark(synth, coarse_dir, out, TINY_DEM, TINY_DGMD, seed=0, image_size=32,
                                 show_progress=False)
    assert list(table["method"]) == [METHOD_COARSE, METHOD_REFINED, METHOD_COARSE_3D, METHOD_REFINED_3D, REFERENCE]
    assert (table["n_test_clips"] == 2).all() and table["split"].iloc[0].startswith("test sub03")
    for column in ("moving_apex_mm", "static_apex_mm", "all_clip_mm"):
        assert np.isfinite(table[column]).all()
    rows = table.set_index("method")
    # the same expression-only meshes as notebook 01: DEM's error over all vertices is its coarse-table error
    dem_coarse = coarse_table.set_index("method").loc["DEM"]
    assert math.isclose(rows.loc[METHOD_COARSE, "all_apex_mm"], dem_coarse["apex_error_mm"], rel_tol=1e-4)
    assert math.isclose(rows.loc[REFERENCE, "all_apex_mm"],
                        coarse_table.iloc[-1]["apex_error_mm"], rel_tol=1e-4)
    # "DEM +3D supervision" is notebook 01's row of that name; its DGMD alone trains on the 3D truth (vertex)
    assert math.isclose(rows.loc[METHOD_COARSE_3D, "all_apex_mm"],
                        coarse_table.set_index("method").loc["DEM +3D supervision", "apex_error_mm"], rel_tol=1e-4)
    curves = pd.read_csv(out / "training_curves.csv")
    supervised = curves["stage"].str.contains("+3D supervision", regex=False)
    assert supervised.any() and "vertex" in set(curves.loc[supervised, "term"])
    assert "vertex" not in set(curves.loc[~supervised, "term"])
    # DGMD is bounded and gated: its offsets are small and the gate is in [0, 1]
    assert 0.0 <= rows.loc[METHOD_REFINED, "gate_all"] <= 1.0
    assert rows.loc[METHOD_REFINED, "offset_mean_mm"] < 2.0
    per_clip = pd.read_csv(out / "per_clip.csv")
    assert set(per_clip["key"].str.split("/").str[1]) == {"sub03"}  # test subject only

    checkpoints = [out / "checkpoints" / "dgmd.pt", out / "checkpoints" / "dgmd_3d.pt"]
    stamps = [checkpoint.stat().st_mtime_ns for checkpoint in checkpoints]
    again = run_refine_benchmark(synth, coarse_dir, out, TINY_DEM, TINY_DGMD, seed=0, image_size=32,
                                 show_progress=False)
    assert [checkpoint.stat().st_mtime_ns for checkpoint in checkpoints] == stamps  # nothing retrained
    pd.testing.assert_frame_equal(again, table)
    model, test_refine, test_scoring = load_refine_run(synth, coarse_dir, out, TINY_DEM, TINY_DGMD, 0, image_size=32)
    assert len(test_refine) == len(test_scoring) == 2 and model.config.hidden == 8

    other = {**TINY_DGMD, "model": {**TINY_DGMD["model"], "hidden": 4}}
    with pytest.raises(ValueError, match="other settings"):
        run_refine_benchmark(synth, coarse_dir, out, TINY_DEM, other, seed=0, image_size=32, show_progress=False)


def test_supervision_weights_add_to_the_main_dgmd_weights():
    settings = RefineBenchmarkSettings.from_dict({"train": {"weights": {"flow": 2.0, "vertex": 0.0},
                                                            "supervision": {"vertex": 1.5}}})
    main, supervised = settings.main_weights(), settings.main_weights(supervised=True)
    assert main["vertex"] == 0.0 and supervised["vertex"] == 1.5 and main["flow"] == supervised["flow"] == 2.0
    assert "supervision" not in settings.train_settings(0).__dict__  # not a DGMDTrainSettings key
    assert RefineBenchmarkSettings.from_dict({}).supervision == {"vertex": 1.0}
    with pytest.raises(ValueError, match="unknown keys"):
        RefineBenchmarkSettings.from_dict({"train": {"supervision": {"param": 1.0}}})
    with pytest.raises(ValueError, match="dgmd.train.supervision"):
        RefineBenchmarkSettings.from_dict({"train": {"supervision": {"vertex": 0.0}}})


def test_refine_benchmark_needs_notebook_01(coarse_run, tmp_path):
    synth, _, _ = coarse_run
    with pytest.raises(FileNotFoundError, match="01_dem_pretrain"):
        run_refine_benchmark(synth, tmp_path / "no_dem", tmp_path / "out", TINY_DEM, TINY_DGMD, show_progress=False)
    with pytest.raises(ValueError, match="seed"):
        run_refine_benchmark(synth, tmp_path / "no_dem", tmp_path / "out", TINY_DEM,
                             {**TINY_DGMD, "train": {"seed": 3}}, show_progress=False)


def test_dgmd_at_its_own_resolution_and_ground_truth_targets(coarse_run):
    from microface.experiments.refine import prepare_refine_data

    synth, coarse_dir, _ = coarse_run
    same = prepare_refine_data(synth, coarse_dir, TINY_DEM, 0, 32, "dis", "cpu", show_progress=False)
    finer = prepare_refine_data(synth, coarse_dir, TINY_DEM, 0, 32, "dis", "cpu", show_progress=False,
                                refine_size=64)
    for a, b, truth in zip(same[2], finer[2], same[3]):
        assert a.key == b.key
        # DEM ran at 32 px both times: the same coarse meshes; DGMD's inputs are at 64 px
        torch.testing.assert_close(a.coarse_vertices, b.coarse_vertices)
        assert a.image_size == (32, 32) and b.image_size == (64, 64)
        assert b.landmarks2d is not None and float(b.landmarks2d.max()) > 32  # landmarks in 64-px pixels
        # the same camera, in twice the pixels
        torch.testing.assert_close(b.camera.scale, 2 * a.camera.scale)
        torch.testing.assert_close(b.camera.principal, 2 * a.camera.principal)
        # the vertex-loss targets are the truth minus DEM's expression-only mesh, in the posed frame
        torch.testing.assert_close(model_frame_offsets(a.target_offsets, truth.rotation),
                                   truth.truth - truth.expression_only, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="image_size"):
        run_refine_benchmark(synth, coarse_dir, "unused", TINY_DEM, {**TINY_DGMD, "image_size": 4}, seed=0,
                             image_size=32, show_progress=False)


def test_validation_holds_out_a_training_subject_and_never_reads_test_subjects(coarse_run):
    from microface.experiments.refine import load_split, validate_on_training_subject

    synth, coarse_dir, _ = coarse_run
    split = load_split(coarse_dir)
    train_subjects, test_subjects = split["train_subjects"], split["test_subjects"]
    assert len(train_subjects) >= 2
    table = validate_on_training_subject(synth, coarse_dir, TINY_DEM, TINY_DGMD, seed=0, image_size=32,
                                         show_progress=False)
    held = train_subjects[-1]
    assert table["split"].iloc[0].startswith(f"validation: held-out {held}, trained on ")
    assert list(table["method"]) == [METHOD_COARSE, REFERENCE, METHOD_REFINED]
    n_held = sum(k.split("/")[1] == held for k in split["micro_train"])
    assert (table["n_test_clips"] == n_held).all()
    again = validate_on_training_subject(synth, coarse_dir, TINY_DEM, TINY_DGMD, seed=0, image_size=32,
                                         show_progress=False)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same numbers
    with pytest.raises(ValueError, match="held-out subject"):
        validate_on_training_subject(synth, coarse_dir, TINY_DEM, TINY_DGMD, image_size=32,
                                     holdout=test_subjects[0], show_progress=False)


def test_validation_fold_reads_no_test_subject_and_its_dem_never_saw_the_held_out_one(coarse_run, tmp_path,
                                                                                      monkeypatch):
    """The test subjects' folders can be absent; the fold DEM and DGMD train on the other training subjects only
    (macro and ME clips), and the held-out subject's clips are what gets scored."""
    import shutil

    import microface.experiments.refine as refine
    import microface.training.dem as dem_training
    from microface.experiments.refine import load_split, validate_on_training_subject

    synth, coarse_dir, _ = coarse_run
    split = load_split(coarse_dir)
    held, test_subjects = split["train_subjects"][0], split["test_subjects"]
    root = tmp_path / "synth"
    shutil.copytree(synth, root)
    for subject in test_subjects:
        for folder in (root / subject, root / "macro" / subject, root / "ground_truth" / subject,
                       root / "ground_truth" / "macro" / subject):
            shutil.rmtree(folder)

    def subject(key: str) -> str:
        return key.split("/")[1]

    dem_keys, dgmd_keys, scored_keys = [], [], []
    real_train_dem, real_train_dgmd, real_refine_and_score = (dem_training.train_dem, refine.train_dgmd,
                                                              refine.refine_and_score)

    def recording_train_dem(dem, face_model, clips, *args, **kwargs):
        dem_keys.append([c.key for c in clips])
        return real_train_dem(dem, face_model, clips, *args, **kwargs)

    def recording_train_dgmd(model, clips, *args, **kwargs):
        dgmd_keys.extend(c.key for c in clips)
        return real_train_dgmd(model, clips, *args, **kwargs)

    def recording_refine_and_score(model, clips, *args, **kwargs):
        scored_keys.extend(c.key for c in clips)
        return real_refine_and_score(model, clips, *args, **kwargs)

    monkeypatch.setattr(dem_training, "train_dem", recording_train_dem)
    monkeypatch.setattr(refine, "train_dgmd", recording_train_dgmd)
    monkeypatch.setattr(refine, "refine_and_score", recording_refine_and_score)
    with pytest.warns(UserWarning, match="skipped"):  # the test subjects' rows of the coding sheet: no folders
        table = validate_on_training_subject(root, coarse_dir, TINY_DEM, TINY_DGMD, seed=0, image_size=32,
                                             holdout=held, show_progress=False, dem_dir=tmp_path / "fold_dem")
    assert table["split"].iloc[0].startswith(f"validation: held-out {held}, trained on ")
    others = set(split["train_subjects"]) - {held}
    macro_keys, micro_keys = dem_keys  # notebook 01's two DEM stages: macro pretraining, ME fine-tuning
    assert {subject(k) for k in macro_keys} == others and all("/MA" in k for k in macro_keys)
    assert sorted(micro_keys) == sorted(k for k in split["micro_train"] if subject(k) != held)
    assert sorted(dgmd_keys) == sorted(micro_keys)
    assert sorted(scored_keys) == sorted(k for k in split["micro_train"] if subject(k) == held)
    assert (tmp_path / "fold_dem" / "dem.pt").is_file()


def test_validate_tool_overrides_nested_keys():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "validate_dgmd.py"
    spec = importlib.util.spec_from_file_location("validate_dgmd", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    section = {"model": {"temporal_rank": 1, "hidden": 8}, "train": {"epochs": 2}}
    changed = tool.with_overrides(section, ["model.temporal_rank=0", "train.weights.vertex=0.5"])
    assert changed["model"] == {"temporal_rank": 0, "hidden": 8} and changed["train"]["weights"] == {"vertex": 0.5}
    assert section["model"]["temporal_rank"] == 1  # the profile's section is not modified
    with pytest.raises(ValueError, match="KEY=VALUE"):
        tool.with_overrides(section, ["model.temporal_rank"])
