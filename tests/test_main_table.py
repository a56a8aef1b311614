"""The main table of notebook 04 (``run_evaluation``) end to end on the tiny trained chain of ``conftest.py``, and
which subjects train the recognition-from-reconstruction classifier.

The contract (``microface.experiments.main_table``'s docstring): the trajectory classifier is trained and scored by
leave-one-subject-out over the TEST subjects only, because the FIELDS row saw the training subjects' emotion
labels. The test records the subjects of every sample handed to the LOSO runner.

The landmark fit (``microface.experiments.landmark_fit_method``, another module, minutes per clip) is replaced by a
stand-in that returns half the ground-truth expression at the kept frames: the row must score what it is given.

The Inception networks behind the perceptual distance and FID are replaced by a cheap stand-in (channel means
and spreads as features): they have their own tests (``test_image_metrics.py``), and on 2 cores they would take
minutes here; FID itself still runs on the stand-in features.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import microface.experiments.main_table as main_table
import microface.experiments.mer as mer
import microface.metrics.image as image_metrics
from microface.data.clip_landmarks import landmark_cache_dir
from microface.data.clips import subsample_indices
from microface.experiments.main_table import LANDMARK_FIT, METHODS, NEUTRAL, run_evaluation, verdict_lines


def stand_in_features(images: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 6): per-channel mean and standard deviation (in place of Inception pool features)."""
    return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1).double()


def stand_in_perceptual(rendered: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, *args, **kwargs) -> float:
    return float(((rendered - target).abs() * alpha).mean())


@pytest.fixture
def recorded_loso(monkeypatch) -> list[dict]:
    """Every call of the LOSO runner: {"subjects": the samples' subjects, "clip_ids", "model", "features": the
    trajectories the classifier reads}; the real runner still runs, so the scores are real."""
    calls: list[dict] = []
    real_run_loso = mer.run_loso

    def recording_run_loso(model_name, samples, *args, **kwargs):
        calls.append({"model": model_name, "subjects": list(samples.subjects), "clip_ids": list(samples.clip_ids),
                      "features": samples.inputs["trajectory"].clone()})
        return real_run_loso(model_name, samples, *args, **kwargs)

    monkeypatch.setattr(mer, "run_loso", recording_run_loso)
    monkeypatch.setattr(main_table, "run_loso", recording_run_loso, raising=False)  # if imported at module level
    for module in (image_metrics, main_table):
        monkeypatch.setattr(module, "inception_pool_features", stand_in_features, raising=module is image_metrics)
        monkeypatch.setattr(module, "perceptual_distance", stand_in_perceptual, raising=module is image_metrics)
    return calls


@pytest.fixture
def half_truth_landmark_fit(monkeypatch) -> list[dict]:
    """Replace the landmark fit by half the ground-truth expression at each record's kept frames; records its calls."""
    calls: list[dict] = []

    def fit(records, max_frames, cache_dir, show_progress=True):
        calls.append({"keys": [r.key for r in records], "max_frames": max_frames, "cache_dir": cache_dir})
        out = []
        for record in records:
            kept = subsample_indices(record.onset, record.apex, record.offset, max_frames)
            out.append(0.5 * np.load(record.ground_truth)["expression"][kept].astype(np.float32))
        return out

    monkeypatch.setattr(main_table, "landmark_fit_expressions", fit)
    return calls


def test_verdict_states_both_targets_with_numbers():
    table = pd.DataFrame({"method": [NEUTRAL, LANDMARK_FIT, "baseline-FT", "DEM", "DEM + DGMD"],
                          "all_apex_mm": [0.20, 0.15, 0.12, 0.11, 0.10],
                          "moving_apex_mm": [0.40, 0.30, 0.28, 0.27, 0.25]})
    lines = verdict_lines(table)
    assert lines[0].startswith("(a) DEM + DGMD beats the neutral face") and "0.1000 vs 0.2000 mm" in lines[0]
    assert "50.0%" in lines[0]
    assert lines[1].startswith("(b) DEM + DGMD does NOT beat the landmark fit") and "16.7%" in lines[1]
    assert "moving-vertex" in lines[1] and "0.2500 vs 0.3000 mm" in lines[1]


def test_run_evaluation_trains_the_classifier_on_the_test_subjects_only(tiny_chain, recorded_loso,
                                                                        half_truth_landmark_fit, tmp_path):
    from microface.experiments.refine import load_split

    split = load_split(tiny_chain["coarse_dir"])
    test_subjects = {f"synth/{s}" for s in split["test_subjects"]}
    train_subjects = {f"synth/{s}" for s in split["train_subjects"]}
    assert len(test_subjects) == 2 and len(train_subjects) == 2  # LOSO over the test subjects needs two

    out = tmp_path / "evaluate"
    table = run_evaluation(tiny_chain["synth"], tiny_chain["coarse_dir"], tiny_chain["refine_dir"], out,
                           tiny_chain["dem"], tiny_chain["dgmd"], tiny_chain["evaluate"], seed=0,
                           image_size=tiny_chain["image_size"], show_progress=False)

    assert list(table["method"]) == list(METHODS)
    for name in ("main_table.csv", "main_table.md", "per_clip.csv", "training_curves.csv"):
        assert (out / name).is_file(), name
    per_clip = pd.read_csv(out / "per_clip.csv")
    assert {f"synth/{k.split('/')[1]}" for k in per_clip["key"]} == test_subjects  # geometry on test clips only
    geometry = table[["all_apex_mm", "all_clip_mm", "static_apex_mm", "static_clip_mm", "all_apex_std_mm",
                      "mer_acc", "mer_uf1", "mer_uar", "mer_wf1"]].to_numpy(dtype=float)
    assert np.isfinite(geometry).all()
    # the references have no render in the crop: NaN image columns; every trained method has them
    rows = table.set_index("method")
    images = rows[["photometric_l1", "perceptual", "fid"]]
    assert images.loc[[NEUTRAL, LANDMARK_FIT]].isna().all().all()
    assert np.isfinite(images.drop(index=[NEUTRAL, LANDMARK_FIT]).to_numpy(dtype=float)).all()
    # the neutral face does not move; half the true expression lies between it and the truth
    assert rows.loc[NEUTRAL, "jitter_mm_per_frame2"] == 0.0
    assert 0.0 < rows.loc[LANDMARK_FIT, "all_apex_mm"] < rows.loc[NEUTRAL, "all_apex_mm"]
    assert [sorted(c["keys"]) for c in half_truth_landmark_fit] == [sorted(split["micro_test"])]
    assert half_truth_landmark_fit[0]["max_frames"] == tiny_chain["dem"]["max_frames"]
    assert half_truth_landmark_fit[0]["cache_dir"] == landmark_cache_dir(tiny_chain["synth"])
    assert ((table[["mer_acc", "mer_uar"]] >= 0) & (table[["mer_acc", "mer_uar"]] <= 1)).all().all()

    # recognition from reconstruction: one LOSO run per method, on the test subjects' clips and nothing else
    assert len(recorded_loso) == len(METHODS)
    n_test_clips = int(table["n_test_clips"].iloc[0])
    for call in recorded_loso:
        assert set(call["subjects"]) == test_subjects, call["subjects"]
        assert not set(call["subjects"]) & train_subjects
        assert len(call["clip_ids"]) == n_test_clips
    # ... reading mesh displacement pooled by region (18 region sides x 4), not expression parameters
    features = {method: call["features"] for method, call in zip(METHODS, recorded_loso)}
    assert all(f.shape == (n_test_clips, tiny_chain["dem"]["max_frames"], 18 * 4) for f in features.values())
    assert float(features[NEUTRAL].abs().max()) == 0.0  # the neutral face does not move
    assert float(features[LANDMARK_FIT].abs().max()) > 0.0
    assert float((features["DEM + DGMD"] - features["DEM"]).abs().max()) > 0.0  # DGMD's offsets count
    assert table["mer_protocol"].iloc[0].startswith("recognition from mesh displacement, pooled by region: LOSO")
