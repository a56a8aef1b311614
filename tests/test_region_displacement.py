"""Region-pooled vertex displacement (``microface.mesh.region_displacement``) and recognition from it
(``microface.experiments.mesh_recognition``): shapes, pooling, onset, and that per-vertex offsets outside the
expression basis (DGMD's) reach the features instead of being projected away."""
from __future__ import annotations

import pytest
import torch

from microface.experiments.mesh_recognition import face_region_labels, mesh_recognition, mesh_trajectories
from microface.face.open_model import OpenFaceModel
from microface.mesh.region_displacement import FEATURES_PER_REGION, region_displacement_features, region_side_labels


@pytest.fixture(scope="module")
def face_model():
    return OpenFaceModel()


@pytest.fixture(scope="module")
def groups(face_model):
    labels, names = face_region_labels(face_model)
    return labels, names


def _expression_clip(face_model, T=6, seed=0):
    """A clip of the open model: random AU intensities ramping up from zero at the onset, (T, V, 3) mm."""
    g = torch.Generator().manual_seed(seed)
    peak = torch.rand(face_model.n_expression, generator=g) * 0.5
    expression = torch.linspace(0, 1, T)[:, None] * peak
    shape = torch.randn(1, face_model.n_shape, generator=g).expand(T, -1)
    return face_model(shape, expression, torch.zeros(T, 6)).vertices


def test_features_shape_batch_and_units(face_model, groups):
    labels, names = groups
    mesh = _expression_clip(face_model)
    features = region_displacement_features(mesh, labels, len(names))
    assert features.shape == (6, len(names) * FEATURES_PER_REGION)
    batched = region_displacement_features(torch.stack([mesh, mesh.flip(0)]), labels, len(names))
    assert batched.shape == (2, 6, len(names) * FEATURES_PER_REGION)
    torch.testing.assert_close(batched[0], features)
    # the magnitude feature is the regions' mean |x_t - x_0| in mm
    displacement = (mesh - mesh[:1]).norm(dim=-1)
    for r in (0, len(names) - 1):
        torch.testing.assert_close(features[:, FEATURES_PER_REGION * r + 3], displacement[:, labels == r].mean(-1))


def test_onset_is_zero_and_a_constant_offset_cancels(face_model, groups):
    labels, names = groups
    mesh = _expression_clip(face_model)
    features = region_displacement_features(mesh, labels, len(names))
    assert float(features[0].abs().max()) == 0.0
    assert float(features[-1].abs().max()) > 1e-3  # the expression moves the face
    shifted = region_displacement_features(mesh + torch.tensor([5.0, -2.0, 1.0]), labels, len(names))
    torch.testing.assert_close(shifted, features, atol=1e-5, rtol=0)


def test_a_motion_confined_to_one_region_shows_only_there(face_model, groups):
    labels, names = groups
    mesh = face_model(*face_model.zero_params(1)).vertices.expand(4, -1, -1).clone()
    mouth = names.index("mouth/+x")
    moved = labels == mouth
    mesh[2:, moved, 1] -= 0.4  # this side's mouth vertices drop 0.4 mm from frame 2 on
    features = region_displacement_features(mesh, labels, len(names)).reshape(4, len(names), FEATURES_PER_REGION)
    torch.testing.assert_close(features[2:, mouth], torch.tensor([0.0, -0.4, 0.0, 0.4]).expand(2, -1))
    others = [r for r in range(len(names)) if r != mouth]
    assert float(features[:, others].abs().max()) == 0.0
    assert float(features[:2].abs().max()) == 0.0


def test_sides_split_a_symmetric_motion_that_the_whole_region_averages_away():
    template = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    regions = {"mouth": torch.tensor([0, 1]), "nose": torch.tensor([2])}
    mesh = template.expand(2, -1, -1).clone()
    mesh[1, 0, 0] -= 0.3  # the corners pull apart
    mesh[1, 1, 0] += 0.3
    whole, whole_names = region_side_labels(regions, template, split_sides=False)
    assert whole_names == ("mouth", "nose")
    pooled = region_displacement_features(mesh, whole, 2)[1]
    assert float(pooled[0].abs()) == 0.0 and float(pooled[3]) == pytest.approx(0.3)  # x cancels, magnitude stays
    sided, sided_names = region_side_labels(regions, template)
    assert sided_names == ("mouth/-x", "mouth/+x", "nose/+x")  # no nose vertex at x < 0: no empty group
    split = region_displacement_features(mesh, sided, 3)[1]
    torch.testing.assert_close(split[[0, 4]], torch.tensor([-0.3, 0.3]))


def test_a_per_vertex_offset_outside_the_expression_basis_changes_the_features(face_model, groups):
    """DGMD adds per-vertex offsets; projected onto the expression basis by least squares (the main table did
    that), an offset orthogonal to the basis became no change at all. Pooled displacement keeps it."""
    labels, names = groups
    mesh = _expression_clip(face_model)
    V = face_model.n_vertices
    basis = face_model.expression_dirs.reshape(V * 3, -1)  # the expression offsets are linear in the parameters
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(V * 3, generator=g) * 0.1
    orthogonal = raw - basis @ torch.linalg.lstsq(basis, raw[:, None]).solution[:, 0]
    projected = torch.linalg.lstsq(basis, orthogonal[:, None]).solution[:, 0]
    assert float(projected.abs().max()) < 1e-4  # what the projection kept of it: nothing
    offsets = torch.linspace(0, 1, mesh.shape[0])[:, None, None] * orthogonal.reshape(V, 3)
    refined = region_displacement_features(mesh + offsets, labels, len(names))
    coarse = region_displacement_features(mesh, labels, len(names))
    assert float((refined - coarse).abs().max()) > 1e-2


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\(\*, T, V, 3\)"):
        region_displacement_features(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="labels"):
        region_displacement_features(torch.zeros(2, 4, 3), torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="hold no vertex"):
        region_displacement_features(torch.zeros(2, 4, 3), torch.zeros(4, dtype=torch.long), 2)


def test_mesh_trajectories_resample_clips_of_any_length(face_model, groups):
    labels, names = groups
    clips = [_expression_clip(face_model, T) for T in (4, 6, 9)]
    out = mesh_trajectories(clips, labels, len(names), n_frames=5)
    assert out.shape == (3, 5, len(names) * FEATURES_PER_REGION)
    torch.testing.assert_close(out[:, -1], torch.stack([region_displacement_features(c, labels, len(names))[-1]
                                                        for c in clips]))


def test_mesh_recognition_runs_loso_on_loader_labels(tmp_path, monkeypatch):
    """Labels as a loader gives them (names), subjects "<dataset>/<subject>": LOSO over the subjects, each held out
    once, and a class shown by one region's motion is learnt."""
    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    template = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    labels_v, names = region_side_labels({"left": torch.tensor([0, 1]), "right": torch.tensor([2, 3])}, template,
                                         split_sides=False)
    g = torch.Generator().manual_seed(0)
    meshes, labels, subjects = [], [], []
    for s in range(3):
        for i in range(8):
            mesh = template.expand(5, -1, -1).clone() + 0.02 * torch.randn(5, 4, 3, generator=g)
            side = slice(0, 2) if i % 2 == 0 else slice(2, 4)
            mesh[2:, side, 2] += 0.5  # the class is which side moves
            meshes.append(mesh)
            labels.append("left" if i % 2 == 0 else "right")
            subjects.append(f"casme2/sub0{s}")
    result = mesh_recognition(meshes, labels, subjects, ("left", "right"), labels_v, len(names), tmp_path,
                              {"epochs": 30, "batch_size": 8, "lr": 1e-2, "model": {"hidden": 8, "layers": 1}},
                              n_frames=5)
    assert result.trajectories.shape == (24, 5, 2 * FEATURES_PER_REGION)
    assert sorted(result.loso.folds["test_subject"]) == [f"casme2/sub0{s}" for s in range(3)]
    assert set(result.loso.predictions["dataset"]) == {"casme2"}
    assert result.scores["mer_acc"] >= 0.9
    with pytest.raises(ValueError, match="not one of"):
        mesh_recognition(meshes, ["up"] * 24, subjects, ("left", "right"), labels_v, len(names), tmp_path)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        mesh_recognition(meshes, labels, ["casme2/sub00"] * 24, ("left", "right"), labels_v, len(names), tmp_path)
