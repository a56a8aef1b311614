"""MOL blocks: FCC's global receptive field, CCC's kNN and EdgeConv, heads, losses, gradients."""
import pytest
import torch

from microface.models.mol import (
    MOL,
    ChannelCorrespondenceConv,
    EdgeConv,
    F5CBlock,
    FullyConnectedConv,
    GlobalCircularConv,
    MOLConfig,
    end_point_error,
    gather_neighbours,
    knn_indices,
    mol_loss,
    pupil_normalized_l1,
    resize_flow,
)

TINY = dict(n_classes=3, image_size=32, stem_channels=(4, 8), n_blocks=1, knn_k=2, flow_upsample=2, dropout=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("batch", [1, 3])
def test_block_shapes(batch):
    x = torch.randn(batch, 8, 6, 6)
    assert GlobalCircularConv(8, 6, "h")(x).shape == x.shape
    assert GlobalCircularConv(8, 6, "w")(x).shape == x.shape
    assert FullyConnectedConv(8, 6)(x).shape == x.shape
    assert ChannelCorrespondenceConv(8, 6, k=3)(x).shape == x.shape
    assert F5CBlock(8, 6, 2.0, 3, "euclidean")(x).shape == x.shape
    assert EdgeConv(5, 7, k=2)(torch.randn(batch, 4, 5)).shape == (batch, 4, 7)


def test_circular_conv_spans_its_axis_only():
    conv = GlobalCircularConv(1, 5, "h")
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    conv(x)[0, 0, 0, 2].backward()
    reached = x.grad[0, 0] != 0
    assert bool(reached[:, 2].all())  # the whole column
    assert not bool(reached[:, [0, 1, 3, 4]].any())  # and nothing else
    with pytest.raises(ValueError, match="expected"):
        conv(torch.randn(1, 1, 4, 5))


def test_fcc_has_a_global_receptive_field():
    fcc = FullyConnectedConv(4, 6).eval()
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    fcc(x)[0, :, 0, 0].sum().backward()
    assert bool((x.grad[0].abs().sum(0) > 0).all())  # one output pixel depends on every input pixel


def test_positional_embedding_breaks_circular_shift_equivariance():
    conv = GlobalCircularConv(2, 6, "w")
    x = torch.randn(1, 2, 6, 6)
    shifted_then_conv = conv(torch.roll(x, 1, dims=-1))
    conv_then_shift = torch.roll(conv(x), 1, dims=-1)
    assert not torch.allclose(shifted_then_conv, conv_then_shift, atol=1e-6)
    with torch.no_grad():
        conv.position.zero_()
    assert torch.allclose(conv(torch.roll(x, 1, dims=-1)), torch.roll(conv(x), 1, dims=-1), atol=1e-5)


def test_knn_picks_true_nearest_neighbours():
    # points on a line at 0, 1, 3, 7, 15: nearest others are known by hand
    nodes = torch.tensor([0.0, 1.0, 3.0, 7.0, 15.0]).view(1, 5, 1)
    idx = knn_indices(nodes, k=2, metric="euclidean")
    assert idx[0].tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]
    # cosine: directions at 0, 10, 30, 100 degrees
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 30.0, 100.0]))
    directions = torch.stack([angles.cos(), angles.sin()], -1).unsqueeze(0) * torch.tensor([1.0, 5.0, 0.2, 3.0]).view(1, 4, 1)
    idx = knn_indices(directions, k=1, metric="cosine")
    assert idx[0, :, 0].tolist() == [1, 0, 1, 2]
    batch = torch.cat([nodes, -nodes], 0)
    assert torch.equal(knn_indices(batch, 2, "euclidean")[1], knn_indices(nodes, 2, "euclidean")[0])
    with pytest.raises(ValueError, match="k must be"):
        knn_indices(nodes, k=5)


def test_gather_neighbours():
    nodes = torch.arange(12.0).view(1, 4, 3)
    idx = torch.tensor([[[1, 2], [0, 3], [3, 1], [2, 0]]])
    got = gather_neighbours(nodes, idx)
    assert got.shape == (1, 4, 2, 3)
    assert torch.equal(got[0, 2, 0], nodes[0, 3]) and torch.equal(got[0, 3, 1], nodes[0, 0])


def test_edge_conv_is_max_over_neighbour_mlp():
    conv = EdgeConv(2, 3, k=2, metric="euclidean")
    nodes = torch.randn(2, 5, 2)
    idx = knn_indices(nodes, 2, "euclidean")
    expected = torch.empty(2, 5, 3)
    for b in range(2):
        for i in range(5):
            messages = [conv.mlp(torch.cat([nodes[b, i], nodes[b, j] - nodes[b, i]])) for j in idx[b, i].tolist()]
            expected[b, i] = torch.stack(messages).max(0).values
    assert torch.allclose(conv(nodes), expected, atol=1e-6)


def test_resize_flow_scales_vectors():
    flow = torch.zeros(1, 2, 8, 16)
    flow[:, 0] = 4.0  # 4 px to the right on a 16-wide grid
    flow[:, 1] = -2.0  # 2 px up on an 8-high grid
    small = resize_flow(flow, (4, 4))
    assert small.shape == (1, 2, 4, 4)
    assert torch.allclose(small[:, 0], torch.full((1, 4, 4), 1.0))
    assert torch.allclose(small[:, 1], torch.full((1, 4, 4), -1.0))
    assert torch.allclose(resize_flow(small, (8, 16)), flow)  # upsampling scales back


def test_end_point_error():
    target = torch.zeros(2, 2, 3, 3)
    predicted = target.clone()
    predicted[:, 0] = 3.0
    predicted[:, 1] = 4.0
    assert float(end_point_error(predicted, target)) == pytest.approx(5.0)
    assert float(end_point_error(target, target)) == pytest.approx(0.0, abs=1e-5)


def _face_landmarks(batch):
    landmarks = torch.rand(batch, 68, 2) * 40 + 40
    landmarks[:, 36:42] = torch.tensor([50.0, 60.0])  # eye centres 30 px apart
    landmarks[:, 42:48] = torch.tensor([80.0, 60.0])
    return landmarks


def test_pupil_normalized_l1_is_scale_invariant():
    target = _face_landmarks(3).unsqueeze(1).expand(3, 2, 68, 2)
    predicted = target + torch.randn(3, 2, 68, 2) * 2
    error = pupil_normalized_l1(predicted, target)
    for scale in (0.25, 3.0):
        assert float(pupil_normalized_l1(predicted * scale, target * scale)) == pytest.approx(float(error), rel=1e-5)
    # a 3 px error in x only: mean |error| 1.5 px over (x, y), over the eye-centre distance
    shifted = target + torch.tensor([3.0, 0.0])
    assert float(pupil_normalized_l1(shifted, target)) == pytest.approx(1.5 / 30.0, rel=1e-5)
    with pytest.raises(ValueError, match="68"):
        pupil_normalized_l1(torch.zeros(1, 1, 5, 2), torch.zeros(1, 1, 5, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_mol_takes_8_frames_and_returns_flow_for_7_pairs_and_landmarks_of_frames_2_to_8(batch):
    config = MOLConfig(**TINY)
    model = MOL(config)
    frames = torch.rand(batch, 8, 1, 32, 32)
    out = model(frames)
    assert out.logits.shape == (batch, 3)
    assert out.flow.shape == (batch, 7, 2, config.flow_size, config.flow_size) == (batch, 7, 2, 16, 16)
    assert out.landmarks.shape == (batch, 7, 68, 2)
    landmarks = (_face_landmarks(batch) * 32 / 128).unsqueeze(1).expand(batch, 8, 68, 2)
    losses = mol_loss(out, torch.arange(batch) % 3, config, flow=torch.randn(batch, 7, 2, 32, 32), landmarks=landmarks)
    assert set(losses) == {"loss", "ce", "flow_mse", "epe", "nme"}
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing}"


def test_each_pair_flow_and_landmarks_follow_their_own_frames():
    """Pair t's flow depends on frames t and t+1 only; landmarks t on frame t+1 only; the class on every frame."""
    model = MOL(MOLConfig(**TINY)).eval()
    frames = torch.rand(1, 8, 1, 32, 32)
    changed = frames.clone()
    changed[:, 5] = torch.rand(1, 32, 32)  # frame 6 (1-based): pairs 5->6 and 6->7, landmarks of frame 6
    with torch.no_grad():
        a, b = model(frames), model(changed)
    moved = [not torch.allclose(a.flow[0, t], b.flow[0, t]) for t in range(7)]
    assert moved == [False, False, False, False, True, True, False]
    moved = [not torch.allclose(a.landmarks[0, t], b.landmarks[0, t]) for t in range(7)]
    assert moved == [False, False, False, False, True, False, False]
    assert not torch.allclose(a.logits, b.logits)


def test_mol_loss_without_optional_targets_and_rgb():
    config = MOLConfig(**{**TINY, "in_channels": 3})
    model = MOL(config)
    out = model(torch.rand(2, 8, 3, 32, 32))
    losses = mol_loss(out, torch.tensor([0, 1]), config)
    assert set(losses) == {"loss", "ce"} and torch.equal(losses["loss"], losses["ce"])
    with pytest.raises(ValueError, match="frame sequence"):
        model(torch.rand(2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="target flow"):
        mol_loss(out, torch.tensor([0, 1]), config, flow=torch.randn(2, 2, 32, 32))


def test_mol_config_checks():
    with pytest.raises(ValueError, match="knn_k"):
        MOLConfig(**{**TINY, "knn_k": 8})
    with pytest.raises(ValueError, match="temporal_kernel"):
        MOLConfig(**{**TINY, "temporal_kernel": 8})
    with pytest.raises(ValueError, match="unknown keys"):
        MOLConfig.from_dict({"blocks": 2})
    assert MOLConfig.from_dict({"stem_channels": [4, 8]}).stem_channels == (4, 8)
    reference = MOLConfig(stem_channels=(32, 64, 128), n_blocks=2)  # the public code's 128 channels at 16x16
    assert reference.feature_size == 16 and reference.n_frames == 8
