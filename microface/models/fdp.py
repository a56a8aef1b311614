"""FDP: Fine-grained Dynamic Perception for micro-expression recognition (Zhou et al.).

A clip's frames (8 sampled uniformly over the whole clip, 64x64 gray in the public code CYF-cuber/FDP) are
encoded one by one by a local-global feature-aware transformer; a linear rank scorer scores each frame feature
(trained to score them in chronological order) and its scores weight the temporal pooling of the rank features
(``score_pool``: T times the softmax of the scores, minus 1, so the weights sum to zero and a static face
pools to nothing), giving one dynamic representation. It feeds the MER head and a decoder (sigmoid output) that
must reconstruct the clip's min-max-scaled approximate rank-pooling dynamic image (Bilen et al., "Dynamic image
networks", CVPR 2016), as the public code does; the loss is cross-entropy (NLL of log-softmax) + 100 x MSE,
trained with Adam at 1e-4 (its defaults).

Pieces, each testable on its own:
- ``approximate_rank_pooling_weights(T) -> (T,)`` and ``rank_pool(x (B, T, *)) -> (B, *)``;
  ``approximate_dynamic_image(frames (B, T, C, H, W)) -> (B, C, H, W)``, ``minmax_scale_images``;
- ``score_pooling_weights(scores (B, T)) -> (B, T)`` and ``score_pool(x (B, T, *), scores) -> (B, *)``;
- ``LocalAggregator`` (depthwise + pointwise convolutions), ``EfficientSelfAttention`` (multi-head attention
  whose keys/values come from a spatially reduced map, as PVT's SRA / ResT's EMSA), ``LocalGlobalBlock``;
- ``FrameEncoder`` ((N, C, H, W) -> (N, D, h, w)), ``RankScorer`` ((B, T, D) -> (B, T)), ``pairwise_ranking_loss``;
- ``DynamicImageDecoder`` ((B, D, h, w) -> (B, C, H, W)), ``FDP`` and ``fdp_loss``.

Sizes come from ``FDPConfig`` (see its docstring for the paper-scale and CPU presets).

Shapes: B clips, T frames, N = B * T frames encoded one by one, C image channels, H/W image size,
D feature channels, h/w feature-map size, K classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from microface.utils.checks import config_from_dict


@dataclass(frozen=True)
class FDPConfig:
    """Sizes and loss weights of FDP.

    Presets (suggested): paper scale, a PVT-v1-tiny sized encoder on 224 px frames, dims (64, 128, 320, 512),
    depths (2, 2, 2, 2), heads (1, 2, 5, 8), sr_ratios (8, 4, 2, 1), mlp_ratio 4 (the FDP paper builds on this
    family of local-global transformers; check its exact widths before claiming a reproduction). CPU: 64 px
    frames, dims (32, 64, 128), depths (1, 1, 1), heads (1, 2, 4), sr_ratios (4, 2, 1). Smoke: dims (8, 16),
    depths (1, 1), heads (1, 2), sr_ratios (2, 1).

    Args:
        n_classes: number of MER classes.
        in_channels: 1 for gray aligned crops (3 for RGB).
        image_size: side of the square input frames; must be divisible by ``stem_stride * 2**(len(dims)-1)``.
        dims: per-stage channel width (one entry per stage).
        depths: per-stage number of local-global blocks.
        heads: per-stage attention heads.
        sr_ratios: per-stage key/value spatial reduction.
        stem_stride: downsampling of stage 1; each later stage downsamples by 2.
        mlp_ratio: hidden width of each block's feed-forward layer relative to the stage width.
        local_kernel: depthwise kernel of the local aggregators.
        decoder_dim: channels of the dynamic-image decoder's first layer (halved at each upsampling, min 8).
        dropout: before the MER head.
        recon_weight: weight of the dynamic-image reconstruction MSE (100 in the public code).
        rank_weight: weight of the frame ranking hinge that trains the scorer to order frames in time (the public
            code has no such term: its ``reference`` preset sets 0).
        rank_margin: hinge margin of the pairwise ranking loss.

    Raises:
        ValueError: per-stage lists of different lengths, a width not divisible by its heads, an image size not
            divisible by the encoder stride, or fewer than 2 classes.
    """

    n_classes: int = 3
    in_channels: int = 1
    image_size: int = 64
    dims: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    heads: tuple[int, ...] = (1, 2, 4)
    sr_ratios: tuple[int, ...] = (4, 2, 1)
    stem_stride: int = 4
    mlp_ratio: float = 2.0
    local_kernel: int = 5
    decoder_dim: int = 64
    dropout: float = 0.1
    recon_weight: float = 100.0
    rank_weight: float = 0.1
    rank_margin: float = 0.1

    def __post_init__(self) -> None:
        n = len(self.dims)
        if n == 0 or not (len(self.depths) == len(self.heads) == len(self.sr_ratios) == n):
            raise ValueError(
                f"FDP config: dims, depths, heads, sr_ratios need one entry per stage, got "
                f"{self.dims}, {self.depths}, {self.heads}, {self.sr_ratios}"
            )
        for dim, heads in zip(self.dims, self.heads):
            if dim % heads:
                raise ValueError(f"FDP config: stage width {dim} is not divisible by its {heads} heads")
        if self.image_size % self.total_stride:
            raise ValueError(
                f"FDP config: image_size {self.image_size} must be divisible by the encoder stride {self.total_stride}"
            )
        if self.n_classes < 2:
            raise ValueError(f"FDP config: n_classes must be >= 2, got {self.n_classes}")

    @property
    def total_stride(self) -> int:
        """Downsampling of the whole encoder, ``stem_stride * 2**(len(dims) - 1)``."""
        return self.stem_stride * 2 ** (len(self.dims) - 1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "FDPConfig":
        """The config from a mapping (the ``FDP`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the FDPConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "FDP")


# ----------------------------------------------------------------------------------------------------------------
# Approximate rank pooling (Bilen et al.)


def approximate_rank_pooling_weights(n_frames: int, device: torch.device | None = None,
                                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights of approximate rank pooling, ``alpha_t = 2(T-t+1) - (T+1)(H_T - H_{t-1})``.

    t runs 1..T, H_t is the t-th harmonic number and H_0 = 0. The weights sum to zero, so a constant
    (static appearance, identity) contributes nothing: only change over time survives pooling.

    Args:
        n_frames: T, >= 1.
        device: device of the weights.
        dtype: dtype of the weights (computed in float64).

    Returns:
        alpha, shape (T,).

    Raises:
        ValueError: T < 1.

    Example:
        >>> approximate_rank_pooling_weights(2).tolist()
        [-0.5, 0.5]
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    t = torch.arange(1, n_frames + 1, device=device, dtype=torch.float64)
    harmonic = torch.cat([torch.zeros(1, device=device, dtype=torch.float64), torch.cumsum(1.0 / t, 0)])  # H_0..H_T
    alpha = 2.0 * (n_frames - t + 1) - (n_frames + 1) * (harmonic[-1] - harmonic[:-1])
    return alpha.to(dtype)


def rank_pool(sequence: torch.Tensor) -> torch.Tensor:
    """Approximate rank pooling over time: ``out = sum_t alpha_t x_t``.

    Args:
        sequence: shape (B, T, *).

    Returns:
        pooled, shape (B, *).

    Raises:
        ValueError: fewer than 2 dimensions.
    """
    if sequence.ndim < 2:
        raise ValueError(f"expected (B, T, *), got {tuple(sequence.shape)}")
    alpha = approximate_rank_pooling_weights(sequence.shape[1], sequence.device, sequence.dtype)
    # out[b, ...] = sum_t alpha[t] * x[b, t, ...]
    return (sequence * alpha.view(1, -1, *([1] * (sequence.ndim - 2)))).sum(1)


def approximate_dynamic_image(frames: torch.Tensor) -> torch.Tensor:
    """The approximate rank-pooling dynamic image of clips.

    Args:
        frames: shape (B, T, C, H, W).

    Returns:
        dynamic images, shape (B, C, H, W).

    Raises:
        ValueError: ``frames`` is not 5-dimensional.
    """
    if frames.ndim != 5:
        raise ValueError(f"expected frames (B, T, C, H, W), got {tuple(frames.shape)}")
    return rank_pool(frames)


def minmax_scale_images(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1] over (C, H, W), the public code's dynamic-image target.

    Args:
        images: shape (B, C, H, W).
        eps: added to the range (a flat image maps to 0).

    Returns:
        scaled images in [0, 1], shape (B, C, H, W).
    """
    flat = images.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    high = flat.max(1).values.view(-1, 1, 1, 1)
    return (images - low) / (high - low + eps)


def score_pooling_weights(scores: torch.Tensor) -> torch.Tensor:
    """Temporal pooling weights from rank scores: ``a_t = T softmax(s)_t - 1`` (0 for equal scores).

    The weights sum to zero, so what is the same in every frame (identity, static appearance) pools to nothing,
    as with approximate rank pooling; a scorer that ranks frames in time order gives later frames positive and
    earlier frames negative weights, so the pooled vector points along the change.

    Args:
        scores: rank scores, shape (B, T).

    Returns:
        weights, shape (B, T), each row summing to 0.

    Raises:
        ValueError: ``scores`` not (B, T).
    """
    if scores.ndim != 2:
        raise ValueError(f"expected scores (B, T), got {tuple(scores.shape)}")
    return scores.shape[1] * scores.softmax(dim=1) - 1.0


def score_pool(sequence: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Pool a sequence over time with weights from its rank scores: ``out = sum_t a_t x_t``.

    Args:
        sequence: rank features, shape (B, T, *).
        scores: rank scores, shape (B, T).

    Returns:
        pooled, shape (B, *).

    Raises:
        ValueError: shapes that do not match.
    """
    if sequence.ndim < 2 or scores.shape != sequence.shape[:2]:
        raise ValueError(f"expected sequence (B, T, *) and scores (B, T), got {tuple(sequence.shape)} and "
                         f"{tuple(scores.shape)}")
    weights = score_pooling_weights(scores).to(sequence.dtype)
    # out[b, ...] = sum_t a[b, t] * x[b, t, ...]
    return (sequence * weights.view(*weights.shape, *([1] * (sequence.ndim - 2)))).sum(1)


# ----------------------------------------------------------------------------------------------------------------
# Local-global feature-aware transformer


class PatchEmbedding(nn.Module):
    """Overlapping strided convolution + BatchNorm: ``(N, C_in, H, W) -> (N, C_out, H/s, W/s)``.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: s.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        kernel = 2 * stride - 1
        self.proj = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=stride - 1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a map.

        Args:
            x: shape (N, C_in, H, W).

        Returns:
            shape (N, C_out, H/s, W/s).
        """
        return self.norm(self.proj(x))


class LocalAggregator(nn.Module):
    """Local context: ``x + pw(dw(pw(BN(x))))``.

    Pointwise mixes channels, the depthwise ``kernel x kernel`` conv aggregates each channel's neighbourhood.

    Args:
        dim: D.
        kernel: depthwise kernel size.
    """

    def __init__(self, dim: int, kernel: int = 5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.pw_in = nn.Conv2d(dim, dim, 1)
        self.dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.pw_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add local context.

        Args:
            x: shape (N, D, h, w).

        Returns:
            shape (N, D, h, w).
        """
        return x + self.pw_out(F.gelu(self.dw(self.pw_in(self.norm(x)))))


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with spatially reduced keys/values.

    Keys and values come from the map downsampled by a strided ``sr x sr`` conv (PVT's SRA, ResT's EMSA),
    so the cost is ``(hw)^2 / sr^2`` instead of ``(hw)^2`` while every query still sees the whole face.

    Args:
        dim: D, divisible by ``heads``.
        heads: attention heads.
        sr_ratio: sr, the spatial reduction of keys and values (1: none).

    Raises:
        ValueError: ``dim`` not divisible by ``heads``.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.reduce = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.reduce_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Attend over the tokens of a map.

        Args:
            tokens: shape (N, h*w, D).
            height: h.
            width: w.

        Returns:
            shape (N, h*w, D).

        Raises:
            ValueError: a token count other than h*w, or h, w not divisible by ``sr_ratio``.
        """
        n, length, dim = tokens.shape
        if length != height * width:
            raise ValueError(f"expected {height}x{width}={height * width} tokens, got {length}")
        if self.sr_ratio > 1:
            if height % self.sr_ratio or width % self.sr_ratio:
                raise ValueError(f"feature map {height}x{width} is not divisible by sr_ratio {self.sr_ratio}")
            grid = tokens.transpose(1, 2).reshape(n, dim, height, width)
            context = self.reduce_norm(self.reduce(grid).flatten(2).transpose(1, 2))
        else:
            context = tokens
        head_dim = dim // self.heads
        q = self.q(tokens).view(n, length, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(context).view(n, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, hw, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class GlobalAggregator(nn.Module):
    """Pre-norm residual efficient attention on a map: ``(N, D, h, w) -> (N, D, h, w)``.

    Args:
        dim: D.
        heads: attention heads.
        sr_ratio: key/value spatial reduction.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add global context.

        Args:
            x: shape (N, D, h, w).

        Returns:
            shape (N, D, h, w).
        """
        n, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm(tokens), h, w)
        return tokens.transpose(1, 2).reshape(n, d, h, w)


class FeedForward(nn.Module):
    """Pre-norm residual channel MLP on a map: ``(N, D, h, w) -> (N, D, h, w)``.

    Args:
        dim: D.
        ratio: hidden width relative to D.
    """

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * ratio)))
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP.

        Args:
            x: shape (N, D, h, w).

        Returns:
            shape (N, D, h, w).
        """
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class LocalGlobalBlock(nn.Module):
    """Local aggregator, then global aggregator, then feed-forward: ``(N, D, h, w) -> (N, D, h, w)``.

    Args:
        dim: D.
        heads: attention heads.
        sr_ratio: key/value spatial reduction.
        mlp_ratio: feed-forward hidden width relative to D.
        local_kernel: depthwise kernel of the local aggregator.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float, local_kernel: int) -> None:
        super().__init__()
        self.local = LocalAggregator(dim, local_kernel)
        self.glob = GlobalAggregator(dim, heads, sr_ratio)
        self.ffn = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: shape (N, D, h, w).

        Returns:
            shape (N, D, h, w).
        """
        return self.ffn(self.glob(self.local(x)))


class FrameEncoder(nn.Module):
    """Per-frame local-global transformer: ``frames (N, C, H, W) -> maps (N, dims[-1], H/s, W/s)``.

    s is ``config.total_stride``.

    Args:
        config: the FDPConfig.
    """

    def __init__(self, config: FDPConfig) -> None:
        super().__init__()
        stages = []
        in_channels = config.in_channels
        for i, (dim, depth, heads, sr) in enumerate(zip(config.dims, config.depths, config.heads, config.sr_ratios)):
            stride = config.stem_stride if i == 0 else 2
            blocks = [LocalGlobalBlock(dim, heads, sr, config.mlp_ratio, config.local_kernel) for _ in range(depth)]
            stages.append(nn.Sequential(PatchEmbedding(in_channels, dim, stride), *blocks))
            in_channels = dim
        self.stages = nn.Sequential(*stages)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode frames one by one.

        Args:
            frames: shape (N, C, H, W).

        Returns:
            feature maps, shape (N, dims[-1], H/s, W/s).
        """
        return self.stages(frames)


# ----------------------------------------------------------------------------------------------------------------
# Rank scorer, decoder, model


class RankScorer(nn.Module):
    """Linear score of each frame feature: ``features (B, T, D) -> scores (B, T)``.

    Args:
        dim: D.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # no bias: the ranking loss only sees score differences, so a bias would never be trained
        self.linear = nn.Linear(dim, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Score frames.

        Args:
            features: shape (B, T, D).

        Returns:
            scores, shape (B, T).
        """
        return self.linear(features).squeeze(-1)


def pairwise_ranking_loss(scores: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Hinge loss asking ``score_i + margin <= score_j`` for every frame pair i < j.

    Args:
        scores: shape (B, T), T >= 2.
        margin: hinge margin.

    Returns:
        the scalar mean hinge.

    Raises:
        ValueError: ``scores`` not (B, T) with T >= 2.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected scores (B, T) with T >= 2, got {tuple(scores.shape)}")
    n_frames = scores.shape[1]
    # diff[b, i, j] = s[b, j] - s[b, i]
    diff = scores.unsqueeze(1) - scores.unsqueeze(2)
    later = torch.triu(torch.ones(n_frames, n_frames, dtype=torch.bool, device=scores.device), diagonal=1)
    return F.relu(margin - diff[:, later]).mean()


class DynamicImageDecoder(nn.Module):
    """Decode a dynamic feature map to a dynamic image in [0, 1] (sigmoid): ``(B, D, h, w) -> (B, C, h*2^n, w*2^n)``.

    Args:
        in_dim: D.
        out_channels: C.
        n_upsamples: n, bilinear x2 upsamplings.
        width: channels of the first layer (halved at each upsampling, min 8).
    """

    def __init__(self, in_dim: int, out_channels: int, n_upsamples: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, width, 1)]
        for _ in range(n_upsamples):
            next_width = max(8, width // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width, next_width, 3, padding=1), nn.BatchNorm2d(next_width), nn.GELU()]
            width = next_width
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, dynamic_map: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            dynamic_map: shape (B, D, h, w).

        Returns:
            dynamic image in [0, 1], shape (B, C, h*2^n, w*2^n).
        """
        return torch.sigmoid(self.net(dynamic_map))


@dataclass
class FDPOutput:
    """FDP forward result.

    Attributes:
        logits: class scores, shape (B, K).
        frame_scores: rank-scorer outputs, shape (B, T).
        dynamic_features: the score-pooled representation, shape (B, D).
        dynamic_image: decoded dynamic image in [0, 1], shape (B, C, H, W).
    """

    logits: torch.Tensor
    frame_scores: torch.Tensor
    dynamic_features: torch.Tensor
    dynamic_image: torch.Tensor


class FDP(nn.Module):
    """Fine-grained dynamic perception: ``clips (B, T, C, H, W) -> FDPOutput``; T >= 2 frames in time order.

    Args:
        config: the FDPConfig.
    """

    def __init__(self, config: FDPConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = FrameEncoder(config)
        dim = config.dims[-1]
        self.rank_scorer = RankScorer(dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(config.dropout), nn.Linear(dim, config.n_classes))
        n_up = int(round(math.log2(config.total_stride)))
        self.decoder = DynamicImageDecoder(dim, config.in_channels, n_up, config.decoder_dim)

    def check_clips(self, clips: torch.Tensor) -> None:
        """Check the clips' shape up front.

        Args:
            clips: expected shape (B, T, in_channels, image_size, image_size), T >= 2.

        Raises:
            ValueError: another shape.
        """
        c, s = self.config.in_channels, self.config.image_size
        if clips.ndim != 5 or clips.shape[2] != c or clips.shape[3] != s or clips.shape[4] != s or clips.shape[1] < 2:
            raise ValueError(f"FDP expects clips (B, T>=2, {c}, {s}, {s}), got {tuple(clips.shape)}")

    def forward(self, clips: torch.Tensor) -> FDPOutput:
        """Classify clips and decode their dynamic images.

        Args:
            clips: frames in time order, shape (B, T, C, H, W), T >= 2.

        Returns:
            the FDPOutput.

        Raises:
            ValueError: ``clips`` of the wrong shape.
        """
        self.check_clips(clips)
        b, t = clips.shape[:2]
        maps = self.encoder(clips.flatten(0, 1))  # (B*T, D, h, w)
        maps = maps.view(b, t, *maps.shape[1:])
        frame_features = maps.mean(dim=(-2, -1))  # (B, T, D)
        scores = self.rank_scorer(frame_features)  # (B, T)
        # the pooling is linear in the maps, so pooling the maps then averaging equals pooling the frame vectors
        dynamic_map = score_pool(maps, scores)  # (B, D, h, w)
        dynamic_features = dynamic_map.mean(dim=(-2, -1))
        return FDPOutput(
            logits=self.head(dynamic_features),
            frame_scores=scores,
            dynamic_features=dynamic_features,
            dynamic_image=self.decoder(dynamic_map),
        )


def fdp_loss(output: FDPOutput, clips: torch.Tensor, labels: torch.Tensor, config: FDPConfig) -> dict[str, torch.Tensor]:
    """Classification + ``recon_weight`` * dynamic-image MSE + ``rank_weight`` * ranking hinge.

    The target is the min-max-scaled ([0, 1]) approximate dynamic image of the clip, as the public code's.

    Args:
        output: the FDPOutput.
        clips: the model's input, shape (B, T, C, H, W).
        labels: shape (B,) long.
        config: gives the weights and the margin.

    Returns:
        ``{"loss", "ce", "recon", "rank"}`` scalars.
    """
    target = minmax_scale_images(approximate_dynamic_image(clips))
    ce = F.cross_entropy(output.logits, labels)
    recon = F.mse_loss(output.dynamic_image, target)
    rank = pairwise_ranking_loss(output.frame_scores, config.rank_margin)
    loss = ce + config.recon_weight * recon + config.rank_weight * rank
    return {"loss": loss, "ce": ce.detach(), "recon": recon.detach(), "rank": rank.detach()}
