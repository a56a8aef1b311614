"""Coarse encoder and DEM: shapes, ODE integration at irregular times, gradient flow, camera agreement."""
from __future__ import annotations

import pytest
import torch

from microface.models.dem import (DEM, DEMConfig, integrate_codes, interpolate_linear,
                                  normalise_times)
from microface.models.encoder import CoarseEncoder, EncoderConfig
from microface.render.camera import weak_perspective_project

TINY_ENCODER = dict(channels=(8, 8), hidden=16)
TINY_DEM = dict(code_dim=8, motion_dim=4, hidden=8, static_channels=(4, 4), motion_channels=(4, 4))


def make_dem(n_shape=5, n_expression=6, **dem_kwargs) -> DEM:
    torch.manual_seed(0)
    encoder = CoarseEncoder(EncoderConfig(n_shape=n_shape, n_expression=n_expression, **TINY_ENCODER))
    return DEM(encoder, n_expression, DEMConfig(**{**TINY_DEM, **dem_kwargs}))


def clip_inputs(batch: int, frames: int = 4, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, frames, 3, size, size, generator=g)
    flow = torch.randn(batch, frames, 2, size, size, generator=g) * 0.5
    flow[:, 0] = 0.0
    # irregular and different per clip
    times = torch.cumsum(torch.rand(batch, frames, generator=g) + 0.2, dim=1)
    return images, flow, times


@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_shapes_and_neutral_start(batch):
    torch.manual_seed(0)
    encoder = CoarseEncoder(EncoderConfig(n_shape=5, n_expression=6, **TINY_ENCODER))
    out = encoder(torch.rand(batch, 3, 32, 32))
    assert out.shape.shape == (batch, 5) and out.expression.shape == (batch, 6) and out.pose.shape == (batch, 6)
    assert out.camera.shape == (batch, 3) and out.lighting.shape == (batch, 9, 3)
    assert out.expression.abs().max() < 0.05  # starts near the neutral face
    assert (out.camera[:, 0] > 0).all()
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        encoder(torch.rand(batch, 32, 32))


def test_encoder_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        EncoderConfig.from_dict({"n_shape": 3, "n_expression": 2, "chanels": [4]})
    assert EncoderConfig.from_dict({"n_shape": 3, "n_expression": 2, "channels": [4, 8]}).channels == (4, 8)


def test_weak_perspective_matches_renderer_projection():
    from microface import render
    from microface.render.camera import to_render_camera

    points = torch.randn(2, 10, 3) * 50
    camera = torch.tensor([[0.011, 0.1, -0.2], [0.009, -0.3, 0.05]])
    ours = weak_perspective_project(points, camera, (48, 48))
    theirs = render.project_points(points, to_render_camera(camera, (48, 48)))[..., :2]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    # +y (up) in the model frame is up in the image (smaller y_px)
    up = weak_perspective_project(torch.tensor([[[0.0, 10.0, 0.0], [0.0, 0.0, 0.0]]]), camera[:1], (48, 48))
    assert up[0, 0, 1] < up[0, 1, 1]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("temporal", ["ode", "residual"])
def test_dem_shapes_and_onset(batch, temporal):
    dem = make_dem(temporal=temporal, solver="rk4", step_size=0.1)
    images, flow, times = clip_inputs(batch)
    out = dem(images, flow, times)
    assert out.code.shape == (batch, 4, 8) and out.expression.shape == (batch, 4, 6)
    assert out.frame_code.shape == (batch, 4, 8) and out.z0.shape == (batch, 8) and out.motion.shape == (batch, 4, 4)
    assert out.coarse.pose.shape == (batch, 4, 6) and out.coarse.lighting.shape == (batch, 4, 9, 3)
    # zero flow at the onset gives exactly zero motion features
    assert torch.equal(out.motion[:, 0], torch.zeros_like(out.motion[:, 0]))
    if temporal == "ode":
        torch.testing.assert_close(out.code[:, 0], out.z0)  # the ODE starts at the static code
    else:
        assert torch.equal(out.code, out.frame_code)
    # an untrained DEM reproduces the coarse onset expression (decoder = lift^T), up to the small residual
    assert (out.expression[:, 0] - out.coarse.expression[:, 0]).abs().max() < 0.05


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_still_field_keeps_a_still_clip_at_its_onset(solver):
    """No motion, no change: the default ("fusion") wiring, and the "motion" wiring with ``still_field``, return the
    onset's expression on every frame of a clip of identical frames and zero flow, exactly; the "motion" wiring
    without it (checkpoints from before issue 18) drifts under a trained-looking field."""
    batch, frames = 2, 5
    images = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).expand(batch, frames, -1, -1, -1)
    flow = torch.zeros(batch, frames, 2, 32, 32)
    times = torch.arange(frames, dtype=torch.float32).expand(batch, -1) / 200.0
    outputs = {}
    for wiring, still in (("motion", False), ("motion", True), ("fusion", False)):
        dem = make_dem(solver=solver, step_size=0.1, ode_condition=wiring, still_field=still).eval()
        with torch.no_grad():  # a field and a fusion of a trained size (the seeded ones are near zero by design)
            dem.vector_field.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(2))
            if dem.vector_field.net[-1].bias is not None:
                dem.vector_field.net[-1].bias.fill_(0.2)
            dem.fusion.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
            if dem.fusion.net[-1].bias is not None:
                dem.fusion.net[-1].bias.fill_(0.2)
            outputs[wiring, still] = dem(images, flow, times)
    for key in (("motion", True), ("fusion", False)):
        assert torch.equal(outputs[key].motion, torch.zeros_like(outputs[key].motion))
        still = outputs[key].expression
        assert torch.equal(still, still[:, :1].expand_as(still)), key  # every frame IS the onset, bit for bit
        assert torch.equal(outputs[key].expression[:, 0], outputs["motion", False].expression[:, 0])  # same onset
    fused = outputs["fusion", False].frame_code
    assert torch.equal(fused, outputs["fusion", False].z0[:, None].expand_as(fused))  # the fusion adds nothing either
    drifting = outputs["motion", False].expression
    assert (drifting[:, -1] - drifting[:, 0]).abs().max() > 1e-2  # what the old wiring did without the flag
    assert DEMConfig.from_dict({"still_field": True}).still_field and not DEMConfig().still_field
    assert DEMConfig().ode_condition == "fusion"
    with pytest.raises(ValueError, match="ode_condition"):
        DEMConfig(ode_condition="flow")


def test_the_ode_evolves_the_residual_fusion():
    """With the default wiring the fusion is on the output path: the ODE's codes depend on the fusion's weights
    (their gradient reaches them), and with motion the codes move; with the "motion" wiring they do not depend on
    the fusion at all (it reached the loss only through the consistency term)."""
    images, flow, times = clip_inputs(2)
    for wiring, reaches in (("fusion", True), ("motion", False)):
        dem = make_dem(solver="rk4", step_size=0.1, ode_condition=wiring)
        with torch.no_grad():
            dem.fusion.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
        out = dem(images, flow, times)
        out.code.sum().backward()
        gradient = dem.fusion.net[0].weight.grad
        assert (gradient is not None and gradient.abs().sum() > 0) == reaches, wiring
    assert (out.code[:, -1] - out.code[:, 0]).abs().max() > 0  # moving flow, moving codes


def test_dem_rejects_mismatched_inputs():
    dem = make_dem()
    images, flow, times = clip_inputs(2)
    with pytest.raises(ValueError, match="flow_onset_to_t"):
        dem(images, flow[:, :3], times)
    with pytest.raises(ValueError, match="strictly increasing"):
        dem(images, flow, times.flip(1))


def test_normalise_times_and_interpolation():
    tau = normalise_times(torch.tensor([[2.0, 3.0, 6.0], [0.0, 5.0, 10.0]]))
    torch.testing.assert_close(tau, torch.tensor([[0.0, 0.25, 1.0], [0.0, 0.5, 1.0]]))
    values = torch.tensor([[[0.0], [1.0], [5.0]], [[0.0], [2.0], [2.0]]])
    got = interpolate_linear(tau, values, torch.tensor(0.625))
    # clip 0: halfway between tau 0.25 (1) and 1.0 (5) -> 3; clip 1: between 0.5 (2) and 1.0 (2) -> 2
    torch.testing.assert_close(got, torch.tensor([[3.0], [2.0]]))


class LinearField(torch.nn.Module):
    """dz/dtau = A z (ignores motion): solution exp(A tau) z0."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix)

    def forward(self, z, motion, tau):
        return z @ self.matrix.T


class MotionField(torch.nn.Module):
    """dz/dtau = m(tau) broadcast: solution z0 + integral of the interpolated motion."""

    def forward(self, z, motion, tau):
        return motion.expand_as(z)


def test_ode_matches_analytic_solution_at_irregular_times():
    torch.manual_seed(0)
    matrix = torch.tensor([[-1.0, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    z0 = torch.randn(1, 2, dtype=torch.float64)
    tau = torch.tensor([[0.0, 0.1, 0.35, 1.0]], dtype=torch.float64)
    motion = torch.zeros(1, 4, 1, dtype=torch.float64)
    config = DEMConfig(solver="dopri5", rtol=1e-9, atol=1e-10)
    got = integrate_codes(LinearField(matrix), z0, tau, motion, config)
    expected = torch.stack([z0[0] @ torch.matrix_exp(matrix * t).T for t in tau[0]])[None]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_sparse_irregular_times_equal_dense_integration(solver):
    torch.manual_seed(1)
    field = LinearField(torch.randn(3, 3) * 0.5)
    z0 = torch.randn(2, 3)
    sparse = torch.tensor([0.0, 0.1, 0.35, 1.0])
    dense = torch.linspace(0.0, 1.0, 21)  # contains 0.1 and 1.0 but not 0.35
    dense = torch.unique(torch.cat([dense, sparse]))
    config = DEMConfig(solver=solver, rtol=1e-7, atol=1e-8, step_size=0.01)
    zeros = lambda t: torch.zeros(2, t.shape[0], 1)  # noqa: E731
    got_sparse = integrate_codes(field, z0, sparse.expand(2, -1), zeros(sparse), config)
    got_dense = integrate_codes(field, z0, dense.expand(2, -1), zeros(dense), config)
    picked = got_dense[:, torch.searchsorted(dense, sparse)]
    torch.testing.assert_close(got_sparse, picked, rtol=1e-4, atol=1e-5)


def test_ode_motion_input_is_piecewise_linear_per_clip():
    # each clip has its own irregular times; dz/dtau = m(tau) integrates the interpolant exactly (trapezoid)
    tau = torch.tensor([[0.0, 0.1, 0.35, 1.0], [0.0, 0.5, 0.6, 1.0]], dtype=torch.float64)
    motion = torch.tensor([[0.0, 1.0, -2.0, 3.0], [0.0, 4.0, 4.0, 0.0]], dtype=torch.float64)[..., None]
    z0 = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    config = DEMConfig(solver="dopri5", rtol=1e-10, atol=1e-10)
    got = integrate_codes(MotionField(), z0, tau, motion, config)
    steps = (motion[:, 1:, 0] + motion[:, :-1, 0]) / 2 * (tau[:, 1:] - tau[:, :-1])
    expected = z0 + torch.cat([torch.zeros(2, 1, dtype=torch.float64), steps.cumsum(1)], dim=1)
    torch.testing.assert_close(got[..., 0], expected, rtol=1e-6, atol=1e-6)


def test_adjoint_gradients_match_direct_backprop():
    dem_direct = make_dem(solver="rk4", step_size=0.25, adjoint=False)
    dem_adjoint = make_dem(solver="rk4", step_size=0.25, adjoint=True)
    dem_adjoint.load_state_dict(dem_direct.state_dict())
    images, flow, times = clip_inputs(2)
    grads = []
    for dem in (dem_direct, dem_adjoint):
        dem.zero_grad()
        dem(images, flow, times).expression.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in dem.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in ("vector_field.net.0.weight", "motion_encoder.head.weight", "static_encoder.residual.2.weight"):
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-6)


def test_gradients_reach_every_part_of_dem():
    dem = make_dem(solver="rk4", step_size=0.25)
    images, flow, times = clip_inputs(2)
    out = dem(images, flow, times)
    loss = out.expression.pow(2).sum() + out.frame_expression.sum() + sum(
        getattr(out.coarse, f).sum() for f in ("shape", "pose", "camera", "lighting"))
    loss.backward()
    missing = [n for n, p in dem.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_gradients_flow_through_face_model_and_renderer(open_face_model):
    from microface.render.renderer import MeshRenderer
    from microface.losses.photometric import photometric_l1
    from microface.training.dem import reconstruct, render_frames

    face = open_face_model
    dem = make_dem(n_shape=face.n_shape, n_expression=face.n_expression, solver="euler", step_size=0.25)
    images, flow, times = clip_inputs(1, frames=3)
    recon = reconstruct(dem, face, images, flow, times)
    rendered = render_frames(recon, face, images, MeshRenderer(), "constant")
    assert rendered.alpha.sum() > 0  # the face is in view at initialisation
    photometric_l1(rendered.image, images.flatten(0, 1), rendered.alpha).backward()
    for name in ("vector_field.net.4.weight", "decoder.weight", "coarse_encoder.camera_head.weight",
                 "coarse_encoder.lighting_head.weight", "motion_encoder.head.weight"):
        grad = dict(dem.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
