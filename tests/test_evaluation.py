"""Pieces of the main table (notebook 04_evaluate): resampling, settings, and recognition from mesh displacement on
the test subjects only."""
from __future__ import annotations

import pytest
import torch

from microface.experiments.main_table import EvaluationSettings
from microface.experiments.mesh_recognition import resample_trajectory


def test_resample_trajectory_keeps_endpoints_and_interpolates():
    values = torch.tensor([[0.0], [1.0], [3.0]])
    out = resample_trajectory(values, 5)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0]))
    assert resample_trajectory(values, 3) is values


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        EvaluationSettings.from_dict({"fid": 1})


def _mesh_clips(subjects_per_clip, n_classes=3, seed=0):
    """Clips with a label and a key, and their mesh sequences (T, V, 3) mm: two regions of 3 vertices each
    (labels (V,)); a clip's class shows as a motion of its own size in region 0."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    clips = [SimpleNamespace(label=i % n_classes, key=f"{s}/EP{i:02d}") for i, s in enumerate(subjects_per_clip)]
    meshes = []
    for clip in clips:
        mesh = torch.randn(1, 6, 3, generator=g).expand(5, -1, -1).clone()
        mesh[1:, :3, 1] += (1.0 + clip.label) * torch.linspace(0.2, 1.0, 4)[:, None]
        mesh += 0.05 * torch.randn(mesh.shape, generator=g)
        meshes.append(mesh)
    return clips, meshes, torch.tensor([0, 0, 0, 1, 1, 1])


def test_recognition_trains_and_scores_on_the_test_subjects_only(tmp_path, monkeypatch):
    """FIELDS saw the training subjects' labels: their clips never reach the classifier, and each test subject is
    scored by a classifier trained on the other test subjects."""
    import microface.experiments.mer as mer
    from microface.experiments.main_table import recognition_protocol, recognition_scores

    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    subjects = [f"synth/sub0{k}" for k in (1, 2, 3, 4) for _ in range(3)]
    test_subjects = ["synth/sub03", "synth/sub04"]
    clips, meshes, region_labels = _mesh_clips(subjects)
    seen = []
    real_run_loso = mer.run_loso

    def recording_run_loso(name, samples, *args, **kwargs):
        seen.append(list(samples.subjects))
        seen.append(tuple(samples.inputs["trajectory"].shape))
        result = real_run_loso(name, samples, *args, **kwargs)
        seen.append(result.folds)
        return result

    monkeypatch.setattr(mer, "run_loso", recording_run_loso)
    settings = EvaluationSettings.from_dict({"recognition": {"epochs": 2, "batch_size": 4, "model": {"hidden": 8}}})
    scores = recognition_scores("DEM", meshes, clips, subjects, test_subjects, ("a", "b", "c"), region_labels, 2, 7,
                                settings, tmp_path, seed=0, device="cpu")
    assert set(seen[0]) == set(test_subjects) and len(seen[0]) == 6
    assert seen[1] == (6, 7, 2 * 4)  # 6 test clips, resampled to 7 frames, 2 regions x 4 features
    folds = seen[2]
    assert sorted(folds["test_subject"]) == test_subjects and list(folds["n_train"]) == [3, 3]
    assert set(scores) == {"mer_acc", "mer_uf1", "mer_uar", "mer_wf1"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert recognition_protocol(2).startswith("recognition from mesh displacement, pooled by region: LOSO over the 2 "
                                              "test subjects' clips only")
    assert (tmp_path / "recognition_mesh" / "DEM" / "trajectory" / "fixed-epoch" / "predictions.csv").is_file()

    # one test subject: nobody to train on, so nothing is trained and the scores are NaN
    seen.clear()
    scores = recognition_scores("DEM", meshes, clips, subjects, ["synth/sub04"], ("a", "b", "c"), region_labels, 2, 7,
                                settings, tmp_path, seed=0, device="cpu")
    assert not seen and all(value != value for value in scores.values())
    assert "not scored" in recognition_protocol(1)
