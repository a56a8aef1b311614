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
