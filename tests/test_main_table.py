"""The main table of notebook 04 (``run_evaluation``) end to end on the tiny trained chain of ``conftest.py``, and
which subjects train the recognition-from-reconstruction classifier.

The contract (``microface.experiments.main_table``'s docstring): the trajectory classifier is trained and scored by
leave-one-subject-out over the TEST subjects only, because the FIELDS row saw the training subjects' emotion
labels. The test records the subjects of every sample handed to the LOSO runner.

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
from microface.experiments.main_table import METHODS, run_evaluation


def stand_in_features(images: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 6): per-channel mean and standard deviation (in place of Inception pool features)."""
    return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1).double()


def stand_in_perceptual(rendered: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, *args, **kwargs) -> float:
    return float(((rendered - target).abs() * alpha).mean())


@pytest.fixture
def recorded_loso(monkeypatch) -> list[dict]:
    """Every call of the LOSO runner: {"subjects": the samples' subjects, "clip_ids", "model"}; the real runner
    still runs, so the scores are real."""
    calls: list[dict] = []
    real_run_loso = mer.run_loso

    def recording_run_loso(model_name, samples, *args, **kwargs):
        calls.append({"model": model_name, "subjects": list(samples.subjects), "clip_ids": list(samples.clip_ids)})
        return real_run_loso(model_name, samples, *args, **kwargs)

    monkeypatch.setattr(mer, "run_loso", recording_run_loso)
    monkeypatch.setattr(main_table, "run_loso", recording_run_loso, raising=False)  # if imported at module level
    for module in (image_metrics, main_table):
        monkeypatch.setattr(module, "inception_pool_features", stand_in_features, raising=module is image_metrics)
        monkeypatch.setattr(module, "perceptual_distance", stand_in_perceptual, raising=module is image_metrics)
    return calls


def test_run_evaluation_trains_the_classifier_on_the_test_subjects_only(tiny_chain, recorded_loso, tmp_path):
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
    numbers = table[["apex_error_mm", "clip_error_mm", "photometric_l1", "perceptual", "fid",
                     "mer_acc", "mer_uf1", "mer_uar", "mer_wf1"]].to_numpy(dtype=float)
    assert np.isfinite(numbers).all()
    assert ((table[["mer_acc", "mer_uar"]] >= 0) & (table[["mer_acc", "mer_uar"]] <= 1)).all().all()

    # recognition from reconstruction: one LOSO run per method, on the test subjects' clips and nothing else
    assert len(recorded_loso) == len(METHODS)
    n_test_clips = int(table["n_test_clips"].iloc[0])
    for call in recorded_loso:
        assert set(call["subjects"]) == test_subjects, call["subjects"]
        assert not set(call["subjects"]) & train_subjects
        assert len(call["clip_ids"]) == n_test_clips
