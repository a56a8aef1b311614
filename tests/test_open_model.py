"""The embedded open face model: shapes, AU fields (region, millimetres, smoothness), identity, jaw, pose."""
import numpy as np
import pytest
import torch

from microface.face import load_face_model
from microface.mesh.geometry import axis_angle_to_matrix, vertex_normals
from microface.face.open_model import ACTION_UNITS, AU_NAMES, IBUG68_FROM_MEDIAPIPE

CASME2_SAMM_AUS = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26]


@pytest.fixture
def model(open_face_model):
    return open_face_model  # built once per session (tests/conftest.py)


def test_topology_is_mediapipe_canonical(model):
    assert model.v_template.shape == (468, 3)
    assert model.faces.shape == (898, 3)
    assert model.uvs.shape == (468, 2)
    assert int(model.faces.max()) == 467 and int(model.faces.min()) == 0
    width = model.v_template[:, 0].max() - model.v_template[:, 0].min()
    assert 140 < float(width) < 170  # about 15.5 cm, now in millimetres
    # frontal faces point toward +z (the camera side)
    normals = vertex_normals(model.v_template[None], model.faces)[0]
    assert float((normals[IBUG68_FROM_MEDIAPIPE[27:36], 2] > 0).float().mean()) == 1.0


@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shapes(model, batch):
    shape, expression, pose = model.zero_params(batch)
    out = model(shape, expression, pose)
    assert out.vertices.shape == (batch, 468, 3)
    assert out.landmarks.shape == (batch, 68, 3)
    torch.testing.assert_close(out.vertices[0], model.v_template)


def test_forward_float64_and_bad_shapes(model):
    shape, expression, pose = (t.double() for t in model.zero_params(2))
    assert model(shape, expression, pose).vertices.dtype == torch.float64
    with pytest.raises(ValueError, match="expression: expected"):
        model(shape, expression[:, :3], pose)
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(shape[:1], expression, pose)


def test_expression_basis_covers_casme2_and_samm_aus(model):
    assert list(AU_NAMES) == [f"AU{n}" for n in CASME2_SAMM_AUS]
    assert model.n_expression == 17 and model.n_shape >= 10


@pytest.mark.parametrize("au", ACTION_UNITS, ids=[au.name for au in ACTION_UNITS])
def test_each_au_moves_only_its_region_by_documented_mm(model, au):
    shape, _, pose = model.zero_params(1)
    expression = model.au_expression_vector({au.name: 1.0})
    moved = model(shape, expression, pose).vertices[0] - model.v_template
    norm = moved.norm(dim=-1)
    assert float(norm.max()) == pytest.approx(au.peak_mm, rel=1e-4)
    allowed = torch.zeros(468, dtype=torch.bool)
    for region in au.regions:
        allowed[model.regions[region]] = True
    assert float(norm[~allowed].max()) < 1e-5, f"{au.name} moves vertices outside {au.regions}"
    # linear in intensity: a micro-expression at 0.2 moves 0.2x as far
    small = model(shape, model.au_expression_vector({au.name: 0.2}), pose).vertices[0] - model.v_template
    torch.testing.assert_close(small, 0.2 * moved, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("au", ACTION_UNITS, ids=[au.name for au in ACTION_UNITS])
def test_au_fields_are_smooth_along_mesh_edges(model, au):
    field = model.expression_dirs[:, :, AU_NAMES.index(au.name)]
    edges = torch.cat([model.faces[:, [0, 1]], model.faces[:, [1, 2]], model.faces[:, [2, 0]]])
    jump = (field[edges[:, 0]] - field[edges[:, 1]]).norm(dim=-1)
    length = (model.v_template[edges[:, 0]] - model.v_template[edges[:, 1]]).norm(dim=-1)
    # across the eye/mouth openings tissue separates; elsewhere the strain stays below 60 %
    assert float((jump / length).quantile(0.99)) < 0.6


def test_au_directions_match_facs(model):
    shape, _, pose = model.zero_params(1)

    def move(au, index):
        expression = model.au_expression_vector({au: 1.0})
        return (model(shape, expression, pose).vertices[0, index] - model.v_template[index]).tolist()

    assert move("AU1", 107)[1] > 1.0  # inner brow up
    assert move("AU4", 105)[1] < -1.0  # brow down
    assert move("AU12", 61)[1] > 1.0 and move("AU12", 61)[0] < -1.0  # right corner up and out
    assert move("AU12", 291)[0] > 1.0  # left corner out (mirrored)
    assert move("AU15", 61)[1] < -1.0
    assert move("AU25", 14)[1] < -1.0 and abs(move("AU25", 13)[1]) < 1.5  # lower lip drops more


def test_ibug68_mapping_is_left_right_symmetric(model):
    lm = model.v_template[list(IBUG68_FROM_MEDIAPIPE)]
    mirror_pairs = [(0, 16), (1, 15), (4, 12), (17, 26), (21, 22), (36, 45), (39, 42), (48, 54), (31, 35), (60, 64)]
    for left, right in mirror_pairs:
        np.testing.assert_allclose(lm[left, 0], -lm[right, 0], atol=1e-3)
        np.testing.assert_allclose(lm[left, 1:], lm[right, 1:], atol=1e-3)
    assert float(lm[8, 1]) == float(lm[:, 1].min())  # point 8 is the chin bottom


def test_identity_modes_are_smooth_and_nontrivial(model):
    assert model.shape_dirs.shape == (468, 3, model.n_shape)
    peaks = model.shape_dirs.norm(dim=1).max(dim=0).values
    assert bool((peaks > 2.0).all())
    flat = model.shape_dirs.reshape(-1, model.n_shape)
    # the modes are distinct directions (no two identical)
    cos = torch.nn.functional.normalize(flat, dim=0).T @ torch.nn.functional.normalize(flat, dim=0)
    assert float((cos - torch.eye(model.n_shape)).abs().max()) < 0.95


def test_jaw_rotation_moves_only_the_lower_face(model):
    shape, expression, pose = model.zero_params(1)
    pose[:, 3] = 0.15  # open the jaw about the x axis
    moved = (model(shape, expression, pose).vertices[0] - model.v_template).norm(dim=-1)
    assert float(moved[model.regions["forehead"]].max()) < 1e-6
    assert float(moved[model.regions["brows"]].max()) < 1e-6
    assert float(moved[152]) > 5.0  # the chin drops


def test_global_pose_is_a_rigid_rotation(model):
    shape, expression, pose = model.zero_params(1)
    pose[:, :3] = torch.tensor([0.1, -0.2, 0.05])
    out = model(shape, expression, pose).vertices[0]
    rotation = axis_angle_to_matrix(pose[0, :3])
    torch.testing.assert_close(out, model.v_template @ rotation.T, atol=1e-4, rtol=1e-4)


def test_bad_au_input(model):
    with pytest.raises(ValueError, match="unknown action unit 'AU99'"):
        model.au_expression_vector({"AU99": 0.5})
    with pytest.raises(ValueError, match="negative intensity"):
        model.au_expression_vector({"AU12": -0.1})


def test_buffers_follow_dtype_and_registry():
    model = load_face_model("open").double()
    assert model.expression_dirs.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown face model"):
        load_face_model("bfm")


# ------------------------------------------------------------------------------ pose gradients at zero rotation
def cross_matrix(k: int) -> torch.Tensor:
    """[e_k]_x: the derivative of a rotation matrix along axis-angle coordinate k at the identity, shape (3, 3)."""
    e = torch.zeros(3, dtype=torch.float64)
    e[k] = 1.0
    x, y, z = e
    return torch.stack([torch.stack([0 * x, -z, y]), torch.stack([z, 0 * x, -x]), torch.stack([-y, x, 0 * x])])


def test_axis_angle_gradient_at_exactly_zero_rotation(device):
    """Rodrigues' formula divides by the angle; at axis-angle exactly 0 its gradient must still be the generator."""
    zero = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.equal(axis_angle_to_matrix(zero), torch.eye(3, dtype=torch.float64, device=device))
    jacobian = torch.autograd.functional.jacobian(axis_angle_to_matrix, zero)  # (3, 3, 3): dR[i, j] / dw[k]
    assert torch.isfinite(jacobian).all()
    for k in range(3):
        torch.testing.assert_close(jacobian[..., k].cpu(), cross_matrix(k), atol=1e-12, rtol=0)
    # finite differences agree at 0 and along a batch that mixes zero, tiny and ordinary rotations
    batch = torch.tensor([[0.0, 0.0, 0.0], [1e-9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, -0.2, 0.1]],
                         dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (batch,), eps=1e-6, atol=1e-7)


def test_face_model_pose_gradients_at_zero_rotation(face_model_on, device):
    model = face_model_on
    shape = (torch.randn(2, model.n_shape, generator=torch.Generator().manual_seed(0)) * 0.5).to(device).double()
    expression = torch.rand(2, model.n_expression, generator=torch.Generator().manual_seed(1)) * 0.3
    expression = expression.to(device).double()
    pose = torch.zeros(2, 6, dtype=torch.float64, device=device, requires_grad=True)  # global and jaw exactly 0
    some = torch.arange(0, model.n_vertices, 7, device=device)  # every 7th vertex keeps gradcheck quick

    def vertices(p):
        return model(shape, expression, p).vertices[:, some]

    (grad,) = torch.autograd.grad(vertices(pose).sum(), pose)
    assert torch.isfinite(grad).all()
    assert torch.autograd.gradcheck(vertices, (pose,), eps=1e-6, atol=1e-6, rtol=1e-4)
    # a small global rotation about y turns the face: the first-order change is what the gradient predicts
    (jac_y,) = torch.autograd.grad(vertices(pose)[..., 0].sum(), pose)
    step = torch.zeros(2, 6, dtype=torch.float64, device=device)
    step[:, 1] = 1e-4
    with torch.no_grad():
        moved = (vertices(step) - vertices(torch.zeros_like(step)))[..., 0].sum(-1) / 1e-4
    torch.testing.assert_close(moved, jac_y[:, 1], rtol=1e-3, atol=1e-3)
