"""FlameFaceModel on a tiny synthetic FLAME written at test time (no FLAME data in the repository)."""
from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
import scipy.sparse
import smplx.lbs
import torch

import microface.face.flame as flame
from microface.face import load_face_model
from microface.face.flame import FlameFaceModel, load_flame_pickle, load_landmark_embedding

try:
    from tests.fixtures_flame import fixture_tables, flame_arrays, grid_masks, write_tiny_flame
except ImportError:  # tests/ is on sys.path under pytest's default import mode
    from fixtures_flame import fixture_tables, flame_arrays, grid_masks, write_tiny_flame

torch.manual_seed(0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_flame(tmp_path_factory.mktemp("flame2020"))


@pytest.fixture(scope="module")
def model(model_path):
    return FlameFaceModel(model_path, n_shape=20, n_expression=10)


def random_params(model, batch, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(batch, model.n_shape, generator=gen),
        scale * torch.randn(batch, model.n_expression, generator=gen),
        0.2 * torch.randn(batch, 6, generator=gen),
    )


def hand_landmarks(vertices: torch.Tensor, faces: torch.Tensor, face_idx, bary) -> torch.Tensor:
    """vertices (V,3), face_idx (L,), bary (L,3) -> (L,3), written out without smplx."""
    out = []
    for f, w in zip(np.asarray(face_idx), np.asarray(bary)):
        a, b, c = faces[int(f)]
        out.append(w[0] * vertices[a] + w[1] * vertices[b] + w[2] * vertices[c])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- loading
def test_chumpy_pickle_loads_without_chumpy(model_path):
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    data = load_flame_pickle(model_path)
    ref = flame_arrays(seed=0)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J"):
        assert isinstance(data[key], np.ndarray), key
        np.testing.assert_array_equal(data[key], ref[key])
    assert data["shapedirs"].shape == (60, 3, 400) and data["posedirs"].shape == (60, 3, 36)
    assert scipy.sparse.issparse(data["J_regressor"]) and data["J_regressor"].shape == (5, 60)
    np.testing.assert_array_equal(data["J_regressor"].toarray(), ref["J_regressor"].toarray())
    assert data["kintree_table"][0, 0] == 4294967295 and data["bs_style"] == "lbs"
    assert "chumpy" not in sys.modules


def test_plain_numpy_pickle_gives_the_same_model(tmp_path, model):
    path = write_tiny_flame(tmp_path, with_chumpy=False)
    plain = FlameFaceModel(path, n_shape=20, n_expression=10)
    params = random_params(model, 2)
    torch.testing.assert_close(plain(*params).vertices, model(*params).vertices)


@pytest.mark.parametrize("variant", ["2023", "2023_no_jaw"])
def test_flame2023_variants_load(tmp_path, variant, model):
    path = write_tiny_flame(tmp_path, variant=variant)
    assert path.name.startswith("flame2023")
    m2023 = FlameFaceModel(path, n_shape=20, n_expression=10)
    params = random_params(model, 2, seed=3)
    out = m2023(*params)
    assert out.vertices.shape == (2, 60, 3) and out.landmarks.shape == (2, 68, 3)
    torch.testing.assert_close(out.vertices, model(*params).vertices)


def test_chumpy_operation_nodes_fall_back_to_their_operand(tmp_path):
    """Objects from other chumpy modules (ch_ops, reordering) are read through the same shim, with a warning."""
    import types

    module = types.ModuleType("chumpy.reordering")

    class Select:
        def __getstate__(self):
            return {"a": np.arange(6.0).reshape(2, 3), "idxs": np.array([0, 1])}

    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    module.Select = Select
    package = types.ModuleType("chumpy")
    package.reordering = module
    sys.modules["chumpy"], sys.modules["chumpy.reordering"] = package, module
    try:
        blob = pickle.dumps({"value": Select()}, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.reordering"]
    path = tmp_path / "ops.pkl"
    path.write_bytes(blob)
    with pytest.warns(UserWarning, match="chumpy.reordering.Select is an operation"):
        data = flame._unpickle(path, "test")
    np.testing.assert_array_equal(data["value"], np.arange(6.0).reshape(2, 3))


def test_missing_file_names_path_and_registration(tmp_path):
    missing = tmp_path / "nowhere" / "generic_model.pkl"
    with pytest.raises(FileNotFoundError) as err:
        load_flame_pickle(missing)
    message = str(err.value)
    assert str(missing) in message and "flame.is.tue.mpg.de" in message
    assert "regist" in message and "face_model.flame_path" in message
    with pytest.raises(FileNotFoundError, match="flame.is.tue.mpg.de"):
        load_face_model("flame", str(missing))


def test_wrong_keys_are_listed(tmp_path):
    data = flame_arrays()
    del data["posedirs"], data["weights"]
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError) as err:
        load_flame_pickle(path)
    assert str(path) in str(err.value) and "posedirs" in str(err.value) and "weights" in str(err.value)


def test_wrong_array_shape_is_reported(tmp_path):
    data = flame_arrays()
    data["weights"] = data["weights"][:, :4]
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError, match=r"'weights' has shape \(60, 4\)"):
        load_flame_pickle(path)


def test_not_a_pickle_names_the_file(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a pickle")
    with pytest.raises(ValueError, match="generic_model.pkl is not a readable FLAME model pickle"):
        load_flame_pickle(path)


def test_pickle_with_foreign_global_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load global \w+\.print"):
        load_flame_pickle(path)


def test_component_counts_beyond_the_file_are_rejected(model_path):
    with pytest.raises(ValueError, match="n_shape: expected 0..300"):
        FlameFaceModel(model_path, n_shape=301)
    with pytest.raises(ValueError, match="n_expression: expected 0..100"):
        FlameFaceModel(model_path, n_expression=101)
    full = FlameFaceModel(model_path, n_shape=300, n_expression=100)
    assert full.shapedirs.shape == (60, 3, 400)


def test_load_face_model_builds_flame(model_path):
    face = load_face_model("flame", str(model_path))
    assert isinstance(face, FlameFaceModel) and (face.n_shape, face.n_expression) == (100, 50)
    assert face(*face.zero_params(1)).vertices.shape == (1, 60, 3)


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("batch", [1, 4])
def test_output_shapes(model, batch):
    out = model(*random_params(model, batch))
    assert out.vertices.shape == (batch, 60, 3)
    assert out.landmarks.shape == (batch, 68, 3)
    assert torch.isfinite(out.landmarks).all()
    assert model.faces.shape == (90, 3) and model.faces.dtype == torch.long
    assert model.v_template.shape == (60, 3)


def test_dtype_follows_inputs(model):
    params = [p.double() for p in random_params(model, 2)]
    out = model(*params)
    assert out.vertices.dtype == torch.float64 and out.landmarks.dtype == torch.float64
    torch.testing.assert_close(out.vertices.float(), model(*random_params(model, 2)).vertices, atol=1e-4, rtol=1e-5)


def test_bad_parameter_shapes_raise(model):
    shape, expression, pose = model.zero_params(2)
    with pytest.raises(ValueError, match=r"pose: expected \(B, 6\)"):
        model(shape, expression, torch.zeros(2, 9))
    with pytest.raises(ValueError, match="expression: expected"):
        model(shape, torch.zeros(2, 3), pose)


def test_zero_params_give_template_in_millimetres(model, model_path):
    out = model(*model.zero_params(3))
    template_mm = torch.as_tensor(flame_arrays()["v_template"] * 1000.0, dtype=torch.float32)
    torch.testing.assert_close(model.v_template, template_mm)
    for b in range(3):
        torch.testing.assert_close(out.vertices[b], template_mm)


def test_shape_and_expression_are_the_right_blendshapes(model):
    """vertices = template + shape . dirs[:, :, :S] + expression . dirs[:, :, 300:300+E] (mm) at zero pose."""
    shape, expression, _ = random_params(model, 2, seed=5)
    pose = torch.zeros(2, 6)
    dirs = torch.as_tensor(flame_arrays()["shapedirs"] * 1000.0, dtype=torch.float32)
    # expected[b,v,k] = sum_l shape[b,l] dirs[v,k,l] + sum_m expr[b,m] dirs[v,k,300+m]
    expected = (model.v_template
                + torch.einsum("bl,vkl->bvk", shape, dirs[..., :20])
                + torch.einsum("bm,vkm->bvk", expression, dirs[..., 300:310]))
    out = model(shape, expression, pose).vertices
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    only_expression = model(torch.zeros_like(shape), expression, pose).vertices
    assert (only_expression - model.v_template).abs().max() > 1e-3


def test_jaw_pose_moves_only_jaw_weighted_vertices(model):
    shape, expression, pose = model.zero_params(1)
    pose[0, 3] = 0.3  # open the jaw about x
    moved = (model(shape, expression, pose).vertices[0] - model.v_template).norm(dim=-1)
    jaw_weighted = flame_arrays()["weights"][:, 2] > 0
    assert moved[torch.as_tensor(~jaw_weighted)].max() < 1e-4
    assert (moved[torch.as_tensor(jaw_weighted)] > 0.1).all()


def test_global_rotation_is_rigid(model):
    shape, expression, _ = random_params(model, 1, seed=2)
    pose = torch.zeros(1, 6)
    rest = model(shape, expression, pose).vertices[0]
    pose[0, :3] = torch.tensor([0.1, 0.5, -0.2])
    turned = model(shape, expression, pose).vertices[0]
    assert (turned - rest).abs().max() > 1.0
    def pairwise(v):  # explicit differences: cdist's matmul shortcut is noisy on its diagonal
        return (v[:, None] - v[None]).norm(dim=-1)

    torch.testing.assert_close(pairwise(turned), pairwise(rest), atol=1e-3, rtol=1e-4)


def test_gradients_reach_parameters(model):
    shape, expression, pose = (p.requires_grad_() for p in random_params(model, 2))
    out = model(shape, expression, pose)
    (out.vertices.sum() + out.landmarks.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (shape, expression, pose))


def test_smplx_does_the_skinning(model, monkeypatch):
    assert flame.lbs is smplx.lbs.lbs and flame.vertices2landmarks is smplx.lbs.vertices2landmarks
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return smplx.lbs.lbs(*args, **kwargs)

    monkeypatch.setattr(flame, "lbs", spy)
    model(*model.zero_params(2))
    assert calls == [torch.Size([2, 30])]


# ---------------------------------------------------------------------------------------------- landmarks
def test_landmarks_are_the_barycentric_combination(model):
    tables = fixture_tables()
    shape, expression, pose = random_params(model, 2, seed=7)
    pose[:, :3] = 0.0  # zero yaw: contour row 0 of the dynamic table
    out = model(shape, expression, pose)
    for b in range(2):
        inner = hand_landmarks(out.vertices[b], model.faces, tables["static_lmk_faces_idx"], tables["static_lmk_bary_coords"])
        contour = hand_landmarks(out.vertices[b], model.faces, tables["dynamic_lmk_faces_idx"][0],
                                 tables["dynamic_lmk_bary_coords"][0])
        torch.testing.assert_close(out.landmarks[b, 17:], inner)
        torch.testing.assert_close(out.landmarks[b, :17], contour)


def test_contour_follows_head_yaw(model):
    tables = fixture_tables()
    shape, expression, pose = model.zero_params(1)
    pose[0, 1] = -math.radians(20)  # yaw -20 deg -> smplx's table row 20
    out = model(shape, expression, pose)
    contour = hand_landmarks(out.vertices[0], model.faces, tables["dynamic_lmk_faces_idx"][20],
                             tables["dynamic_lmk_bary_coords"][20])
    torch.testing.assert_close(out.landmarks[0, :17], contour)


def test_static_contour_uses_the_full_embedding(model_path):
    tables = fixture_tables()
    fixed = FlameFaceModel(model_path, n_shape=20, n_expression=10, dynamic_contour=False)
    assert fixed.contour_mode == "static"
    shape, expression, pose = random_params(fixed, 1, seed=9)
    out = fixed(shape, expression, pose)
    expected = hand_landmarks(out.vertices[0], fixed.faces, tables["full_lmk_faces_idx"][0],
                              tables["full_lmk_bary_coords"][0])
    torch.testing.assert_close(out.landmarks[0], expected)


def test_flame_static_and_dynamic_files_match_deca_layout(tmp_path, model):
    path = write_tiny_flame(tmp_path, with_embedding="flame")
    assert not (tmp_path / "landmark_embedding.npy").exists()
    own = FlameFaceModel(path, n_shape=20, n_expression=10)
    assert own.contour_mode == "dynamic"
    params = random_params(model, 2, seed=11)
    torch.testing.assert_close(own(*params).landmarks, model(*params).landmarks)


def test_static_only_embedding_leaves_contour_nan(tmp_path):
    path = write_tiny_flame(tmp_path, with_embedding="static")
    with pytest.warns(UserWarning, match="flame_dynamic_embedding"):
        partial = FlameFaceModel(path, n_shape=20, n_expression=10)
    landmarks = partial(*partial.zero_params(1)).landmarks
    assert torch.isnan(landmarks[0, :17]).all() and torch.isfinite(landmarks[0, 17:]).all()


def test_no_embedding_gives_nan_landmarks_and_warns(tmp_path):
    path = write_tiny_flame(tmp_path, with_embedding=False)
    with pytest.warns(UserWarning, match="landmark_embedding.npy"):
        bare = FlameFaceModel(path, n_shape=20, n_expression=10)
    out = bare(*bare.zero_params(2))
    assert out.landmarks.shape == (2, 68, 3) and torch.isnan(out.landmarks).all()
    assert torch.isfinite(out.vertices).all()


def test_explicit_embedding_path(tmp_path, model_path):
    bare = write_tiny_flame(tmp_path / "bare", with_embedding=False)
    explicit = FlameFaceModel(bare, n_shape=20, n_expression=10,
                              landmark_embedding=model_path.parent / "landmark_embedding.npy")
    assert torch.isfinite(explicit(*explicit.zero_params(1)).landmarks).all()
    with pytest.raises(FileNotFoundError, match="no_such_embedding.npy"):
        FlameFaceModel(bare, landmark_embedding=tmp_path / "no_such_embedding.npy")


def test_embedding_with_wrong_point_count_is_rejected(tmp_path):
    bad = tmp_path / "flame_static_embedding.pkl"
    bad.write_bytes(pickle.dumps({"lmk_face_idx": np.zeros(40, np.int64), "lmk_b_coords": np.ones((40, 3)) / 3}))
    with pytest.raises(ValueError, match="expected 51 inner landmarks"):
        load_landmark_embedding(bad)


# ---------------------------------------------------------------------------------------------- regions
def test_regions_from_flame_masks(model):
    masks = grid_masks()
    regions = {k: set(v.tolist()) for k, v in model.regions.items()}
    assert set(regions) == {"forehead", "brows", "eyes", "nose", "cheeks", "mouth", "chin"}
    assert regions["mouth"] == set(masks["lips"].tolist())
    assert regions["brows"] | regions["eyes"] == set(masks["eye_region"].tolist())
    y = model.v_template[:, 1]
    assert y[sorted(regions["brows"])].min() > y[sorted(regions["eyes"])].max()
    assert y[sorted(regions["chin"])].max() < y[sorted(regions["mouth"])].min()
    assert not set().union(*regions.values()) & set(masks["neck"].tolist())
    assert all(v.dtype == torch.long for v in model.regions.values())


def test_geometric_regions_without_masks(tmp_path):
    path = write_tiny_flame(tmp_path, with_masks=False)
    geo = FlameFaceModel(path, n_shape=20, n_expression=10)
    assert geo.region_source.startswith("geometry")
    regions = geo.regions
    assert all(len(v) > 0 for v in regions.values())
    members = torch.cat(list(regions.values()))
    assert len(members) == len(set(members.tolist())), "regions overlap"
    mean_y = {k: geo.v_template[v, 1].mean().item() for k, v in regions.items()}
    assert mean_y["forehead"] > mean_y["brows"] > mean_y["eyes"] > mean_y["mouth"] > mean_y["chin"]
    # eyes sit to the sides, the nose in the middle
    assert geo.v_template[regions["eyes"], 0].abs().min() > geo.v_template[regions["nose"], 0].abs().max()


def test_regions_follow_the_module(model):
    moved = FlameFaceModel(model.path, n_shape=2, n_expression=2).to(torch.float64)
    assert moved.v_template.dtype == torch.float64 and moved.regions["mouth"].dtype == torch.long
