"""Pieces of the main table (notebook 04_evaluate): the expression basis, offsets back to expression, resampling."""
from __future__ import annotations

import pytest
import torch

from microface.experiments.main_table import (EvaluationSettings, expression_basis, offsets_to_expression,
                                              resample_trajectory)
from microface.face.open_model import OpenFaceModel


@pytest.fixture(scope="module")
def face_model():
    return OpenFaceModel()


def test_basis_is_the_face_models_linearisation(face_model):
    basis = expression_basis(face_model)
    V, E = face_model.n_vertices, face_model.n_expression
    assert basis.shape == (V * 3, E)
    zero = (torch.zeros(1, face_model.n_shape), torch.zeros(1, 6))
    expression = torch.zeros(1, E)
    expression[0, 3] = 1e-3
    moved = face_model(zero[0], expression, zero[1]).vertices - face_model(zero[0], torch.zeros(1, E), zero[1]).vertices
    torch.testing.assert_close(moved.reshape(-1), basis @ expression[0], atol=1e-5, rtol=1e-3)
    assert float(basis[:, 3].abs().max()) > 0  # an AU moves some vertex


def test_offsets_from_the_basis_give_back_the_expression(face_model):
    basis = expression_basis(face_model)
    torch.manual_seed(0)
    expression = torch.randn(4, face_model.n_expression) * 0.1
    offsets = (expression @ basis.T).reshape(4, face_model.n_vertices, 3)
    torch.testing.assert_close(offsets_to_expression(offsets, basis), expression, atol=1e-4, rtol=1e-3)
    # an offset orthogonal to every AU (a rigid shift of the whole face is not an expression) explains little
    shift = torch.zeros(1, face_model.n_vertices, 3)
    shift[..., 2] = 1.0
    residual = shift.reshape(-1) - basis @ offsets_to_expression(shift, basis)[0]
    assert float(residual.norm()) > 0.5 * float(shift.norm())


def test_resample_trajectory_keeps_endpoints_and_interpolates():
    values = torch.tensor([[0.0], [1.0], [3.0]])
    out = resample_trajectory(values, 5)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0]))
    assert resample_trajectory(values, 3) is values


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        EvaluationSettings.from_dict({"fid": 1})


def _trajectory_clips(subjects_per_clip, n_classes=3, seed=0):
    """Clips with a label and a key, and trajectories (N, T, E) whose class shows as an offset."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    clips = [SimpleNamespace(label=i % n_classes, key=f"{s}/EP{i:02d}") for i, s in enumerate(subjects_per_clip)]
    trajectories = torch.randn(len(clips), 5, 4, generator=g)
    for i, clip in enumerate(clips):
        trajectories[i, :, clip.label] += 3.0
    return clips, trajectories


def test_recognition_trains_and_scores_on_the_test_subjects_only(tmp_path, monkeypatch):
    """FIELDS saw the training subjects' labels: their clips never reach the classifier, and each test subject is
    scored by a classifier trained on the other test subjects."""
    import microface.experiments.mer as mer
    from microface.experiments.main_table import recognition_protocol, recognition_scores

    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    subjects = [f"synth/sub0{k}" for k in (1, 2, 3, 4) for _ in range(3)]
    test_subjects = ["synth/sub03", "synth/sub04"]
    clips, trajectories = _trajectory_clips(subjects)
    seen = []
    real_run_loso = mer.run_loso

    def recording_run_loso(name, samples, *args, **kwargs):
        seen.append(list(samples.subjects))
        result = real_run_loso(name, samples, *args, **kwargs)
        seen.append(result.folds)
        return result

    monkeypatch.setattr(mer, "run_loso", recording_run_loso)
    settings = EvaluationSettings.from_dict({"recognition": {"epochs": 2, "batch_size": 4, "model": {"hidden": 8}}})
    scores = recognition_scores("DEM", trajectories, clips, subjects, test_subjects, ("a", "b", "c"), settings,
                                tmp_path, seed=0, device="cpu")
    assert set(seen[0]) == set(test_subjects) and len(seen[0]) == 6
    folds = seen[1]
    assert sorted(folds["test_subject"]) == test_subjects and list(folds["n_train"]) == [3, 3]
    assert set(scores) == {"mer_acc", "mer_uf1", "mer_uar", "mer_wf1"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert recognition_protocol(2).startswith("LOSO over the 2 test subjects' clips only")

    # one test subject: nobody to train on, so nothing is trained and the scores are NaN
    seen.clear()
    scores = recognition_scores("DEM", trajectories, clips, subjects, ["synth/sub04"], ("a", "b", "c"), settings,
                                tmp_path, seed=0, device="cpu")
    assert not seen and all(value != value for value in scores.values())
    assert recognition_protocol(1).startswith("not scored")
