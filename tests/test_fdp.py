"""FDP blocks: shapes, approximate rank pooling against hand values and a direct sum, ranking, gradients."""
from fractions import Fraction

import pytest
import torch

from microface.models.fdp import (
    FDP,
    DynamicImageDecoder,
    EfficientSelfAttention,
    FDPConfig,
    FrameEncoder,
    GlobalAggregator,
    LocalAggregator,
    LocalGlobalBlock,
    RankScorer,
    approximate_dynamic_image,
    approximate_rank_pooling_weights,
    fdp_loss,
    pairwise_ranking_loss,
    minmax_scale_images,
    rank_pool,
    score_pool,
    score_pooling_weights,
)

TINY = dict(n_classes=3, image_size=16, dims=(8, 16), depths=(1, 1), heads=(1, 2), sr_ratios=(2, 1),
            stem_stride=2, decoder_dim=8, dropout=0.0)

# alpha_t = 2(T-t+1) - (T+1)(H_T - H_{t-1}), worked by hand with exact fractions
HAND_WEIGHTS = {
    1: [Fraction(0)],
    2: [Fraction(-1, 2), Fraction(1, 2)],
    3: [Fraction(-4, 3), Fraction(2, 3), Fraction(2, 3)],
    4: [Fraction(-29, 12), Fraction(7, 12), Fraction(13, 12), Fraction(9, 12)],
    5: [Fraction(-37, 10), Fraction(3, 10), Fraction(13, 10), Fraction(13, 10), Fraction(8, 10)],
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 5])
def test_rank_pooling_weights_match_hand_values(n_frames):
    expected = torch.tensor([float(w) for w in HAND_WEIGHTS[n_frames]], dtype=torch.float64)
    got = approximate_rank_pooling_weights(n_frames, dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-12)


def test_rank_pooling_weights_sum_to_zero_and_reject_empty():
    for n in range(1, 20):
        assert abs(float(approximate_rank_pooling_weights(n, dtype=torch.float64).sum())) < 1e-9
    with pytest.raises(ValueError, match="n_frames"):
        approximate_rank_pooling_weights(0)


def _harmonic(n):
    return sum(1.0 / i for i in range(1, n + 1))


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_image_equals_explicit_sum(batch):
    frames = torch.rand(batch, 6, 2, 5, 7, dtype=torch.float64)
    t_total = frames.shape[1]
    expected = torch.zeros(batch, 2, 5, 7, dtype=torch.float64)
    for t in range(1, t_total + 1):
        alpha = 2 * (t_total - t + 1) - (t_total + 1) * (_harmonic(t_total) - _harmonic(t - 1))
        expected += alpha * frames[:, t - 1]
    got = approximate_dynamic_image(frames)
    assert got.shape == (batch, 2, 5, 7)
    assert torch.allclose(got, expected, atol=1e-10)


def test_dynamic_image_ignores_static_content_and_orders_time():
    static = torch.rand(1, 1, 1, 4, 4).expand(1, 5, 1, 4, 4)
    assert torch.allclose(approximate_dynamic_image(static), torch.zeros(1, 1, 4, 4), atol=1e-5)
    ramp = torch.linspace(0, 1, 5).view(1, 5, 1, 1, 1).expand(1, 5, 1, 2, 2)
    assert bool((approximate_dynamic_image(ramp) > 0).all())  # brightening -> positive
    assert bool((approximate_dynamic_image(ramp.flip(1)) < 0).all())  # darkening -> negative
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        approximate_dynamic_image(torch.rand(5, 1, 4, 4))


def test_rank_pool_on_vectors_matches_images():
    x = torch.rand(2, 4, 3)
    assert torch.allclose(rank_pool(x), approximate_dynamic_image(x.view(2, 4, 3, 1, 1)).view(2, 3), atol=1e-6)


def test_minmax_scale_images():
    images = 5 + 3 * torch.randn(2, 1, 8, 8)
    out = minmax_scale_images(images)
    assert torch.allclose(out.flatten(1).min(1).values, torch.zeros(2), atol=1e-6)
    assert torch.allclose(out.flatten(1).max(1).values, torch.ones(2), atol=1e-6)


def test_score_pooling_weights_sum_to_zero_and_follow_the_scores():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    weights = score_pooling_weights(scores)
    assert torch.allclose(weights.sum(1), torch.zeros(2), atol=1e-6)
    assert bool((weights[0, 1:] > weights[0, :-1]).all())  # chronological scores: later frames weigh more
    assert torch.allclose(weights[1], torch.zeros(4), atol=1e-7)  # equal scores: nothing to pool
    x = torch.randn(2, 4, 3, 5, 5)
    expected = sum(weights[:, t].view(2, 1, 1, 1) * x[:, t] for t in range(4))
    assert torch.allclose(score_pool(x, scores), expected, atol=1e-6)
    with pytest.raises(ValueError, match="scores"):
        score_pool(x, scores[:, :3])


def test_pooled_representation_changes_with_the_scorer_weights():
    """The rank scorer's scores weight the temporal pooling: other scorer weights, another representation."""
    model = FDP(FDPConfig(**TINY)).eval()
    clips = torch.rand(2, 4, 1, 16, 16)
    with torch.no_grad():
        before = model(clips)
        model.rank_scorer.linear.weight.mul_(-3.0)
        after = model(clips)
    assert not torch.allclose(before.dynamic_features, after.dynamic_features, atol=1e-4)
    assert not torch.allclose(before.logits, after.logits, atol=1e-4)
    assert not torch.allclose(before.dynamic_image, after.dynamic_image, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_block_shapes(batch):
    x = torch.randn(batch, 8, 8, 8)
    assert LocalAggregator(8, kernel=3)(x).shape == x.shape
    assert GlobalAggregator(8, heads=2, sr_ratio=2)(x).shape == x.shape
    assert LocalGlobalBlock(8, heads=2, sr_ratio=4, mlp_ratio=2.0, local_kernel=5)(x).shape == x.shape
    tokens = x.flatten(2).transpose(1, 2)
    assert EfficientSelfAttention(8, heads=4, sr_ratio=2)(tokens, 8, 8).shape == (batch, 64, 8)
    assert RankScorer(8)(torch.randn(batch, 5, 8)).shape == (batch, 5)
    assert DynamicImageDecoder(16, 1, n_upsamples=3, width=8)(torch.randn(batch, 16, 2, 2)).shape == (batch, 1, 16, 16)
    config = FDPConfig(**TINY)
    assert FrameEncoder(config)(torch.randn(batch, 1, 16, 16)).shape == (batch, 16, 4, 4)


def test_attention_is_global_and_reduction_checks_size():
    attn = EfficientSelfAttention(4, heads=1, sr_ratio=2).eval()
    tokens = torch.randn(1, 16, 4, requires_grad=True)
    attn(tokens, 4, 4)[0, 0].sum().backward()
    # the first query depends on every token, including the far corner
    assert bool((tokens.grad[0].abs().sum(-1) > 0).all())
    with pytest.raises(ValueError, match="sr_ratio"):
        attn(torch.randn(1, 9, 4), 3, 3)
    with pytest.raises(ValueError, match="tokens"):
        attn(torch.randn(1, 10, 4), 4, 4)


def test_pairwise_ranking_loss():
    ordered = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert float(pairwise_ranking_loss(ordered, margin=0.5)) == 0.0
    reversed_ = ordered.flip(1)
    # pairs (i<j): differences s_j - s_i are -1,-2,-3,-1,-2,-1 -> hinge 1.5,2.5,3.5,1.5,2.5,1.5 -> mean 13/6
    assert float(pairwise_ranking_loss(reversed_, margin=0.5)) == pytest.approx(13 / 6)
    with pytest.raises(ValueError, match="T >= 2"):
        pairwise_ranking_loss(torch.zeros(2, 1))


def test_rank_scorer_learns_chronological_order():
    torch.manual_seed(1)
    # a shared drift hidden among noisier dimensions: order is recoverable by some linear score
    drift = torch.arange(6.0).view(1, 6, 1) * torch.randn(1, 1, 8) * 0.3
    features = drift + torch.randn(4, 6, 8) * 0.1 + torch.randn(4, 1, 8)
    scorer = RankScorer(8)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss = pairwise_ranking_loss(scorer(features), margin=0.1)
        loss.backward()
        optimizer.step()
    scores = scorer(features).detach()
    assert bool((scores[:, 1:] > scores[:, :-1]).all())


@pytest.mark.parametrize("batch", [1, 2])
def test_fdp_forward_shapes_and_gradients_reach_every_parameter(batch):
    config = FDPConfig(**TINY)
    model = FDP(config)
    clips = torch.rand(batch, 4, 1, 16, 16)
    labels = torch.arange(batch) % 3
    out = model(clips)
    assert out.logits.shape == (batch, 3)
    assert out.frame_scores.shape == (batch, 4)
    assert out.dynamic_features.shape == (batch, 16)
    assert out.dynamic_image.shape == (batch, 1, 16, 16)
    assert bool(((out.dynamic_image >= 0) & (out.dynamic_image <= 1)).all())  # sigmoid decoder
    losses = fdp_loss(out, clips, labels, config)
    assert set(losses) == {"loss", "ce", "recon", "rank"}
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing}"


def test_fdp_rejects_wrong_input():
    model = FDP(FDPConfig(**TINY))
    with pytest.raises(ValueError, match="FDP expects clips"):
        model(torch.rand(2, 4, 1, 32, 32))
    with pytest.raises(ValueError, match="T>=2"):
        model(torch.rand(2, 1, 1, 16, 16))


def test_config_from_dict_rejects_unknown_keys_and_bad_sizes():
    assert FDPConfig.from_dict({"dims": [8, 16], "depths": [1, 1], "heads": [1, 2], "sr_ratios": [2, 1]}).dims == (8, 16)
    with pytest.raises(ValueError, match="unknown keys"):
        FDPConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="one entry per stage"):
        FDPConfig(dims=(8, 16), depths=(1,), heads=(1, 2), sr_ratios=(2, 1))
    with pytest.raises(ValueError, match="divisible"):
        FDPConfig(image_size=18, dims=(8,), depths=(1,), heads=(1,), sr_ratios=(1,), stem_stride=4)


def test_fdp_learns_a_motion_signal():
    """Two classes that differ only in the direction of a small moving blob: a few dozen steps separate them (the
    scorer must first spread its scores before the pooled representation carries the motion)."""
    torch.manual_seed(0)
    config = FDPConfig(**{**TINY, "recon_weight": 0.1})
    model = FDP(config)
    n, t = 16, 4
    labels = torch.arange(n) % 2
    clips = 0.5 + 0.05 * torch.randn(n, 1, 1, 16, 16).expand(n, t, 1, 16, 16).clone()
    for i in range(n):
        for step in range(t):
            col = 4 + 2 * step if labels[i] == 0 else 10 - 2 * step
            clips[i, step, 0, 6:10, col:col + 2] += 0.4
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        optimizer.zero_grad()
        fdp_loss(model(clips), clips, labels, config)["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(clips).logits.argmax(1) == labels).float().mean()
    assert float(accuracy) == 1.0


def test_fdp_sees_only_change_over_time():
    """Score-pooling weights sum to zero, so any two static clips (different faces) get the same prediction."""
    model = FDP(FDPConfig(**TINY)).eval()
    face_a = torch.rand(1, 1, 1, 16, 16).expand(1, 4, 1, 16, 16)
    face_b = torch.rand(1, 1, 1, 16, 16).expand(1, 4, 1, 16, 16)
    moving = face_a + torch.linspace(0, 0.3, 4).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        logits_a, logits_b, logits_moving = (model(x).logits for x in (face_a, face_b, moving))
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert not torch.allclose(logits_a, logits_moving, atol=1e-3)
