"""MOL: joint micro-expression recognition, optical flow estimation and landmark detection.

After Shao et al., "MOL: Joint Estimation of Micro-Expression, Optical Flow, and Landmark via
Transformer-Graph-Style Convolution" (TPAMI 2025) and its public code (CYF-cuber/MOL). MER from a raw frame
sequence, without key frames: T = 8 frames sampled over the whole clip (128x128 gray crops of a 144x144
alignment in the public code) go one by one through a shared backbone of F5C blocks; for each of the T-1
consecutive pairs a flow head predicts the pair's optical flow (trained against Dual TV-L1 flow), for each of
frames 2..T a landmark head predicts 68 landmarks, and a 3D convolution over (time, H, W) of the frame features
classifies the clip. Loss: cross-entropy + 0.5 x flow MSE + 0.5 x landmark L1 / inter-pupil distance, AdamW at
1e-4 with weight decay 1e-3 in the public code.

F5C block = FCC + CCC:
- FCC, fully-connected convolution: depthwise convolutions along H and along W whose kernel spans the whole
  feature map, with circular padding and learned positional embeddings added before each, so every output
  sees the entire row then the entire column (a global receptive field at convolution cost; the
  translation-equivariance the embeddings break is what a transformer's position code breaks too). Half the
  channels go H then W, the other half W then H. Then a channel feed-forward layer.
- CCC, channel correspondence convolution: the nodes are the C channels, each described by its flattened
  feature map (H*W values); a k-nearest-neighbour graph over those vectors (cosine similarity by default, as
  MOL's public code, or Euclidean) and EdgeConv ``h_i = max_j MLP([x_i, x_j - x_i])`` relate channels that
  respond to the same facial regions.

Shapes: ``frames (B, T, C, S, S)`` (C = 1 gray or 3 RGB) -> ``MOLOutput(logits (B, K), flow (B, T-1, 2, S', S'),
landmarks (B, T-1, 68, 2))``; flow[:, t] is frame t -> t+1 in pixels of the flow head's grid
(S' = S / 2**len(stem) * flow_upsample), landmarks[:, t] those of frame t+1 in pixels of the input frame. Inside
the backbone, N = B*T frames, D channels, S_f = S / 2**len(stem) the feature-map side; K classes. In CCC the
nodes of a graph are the D channels.

Differences from the public code, on purpose: one backbone shared by every frame (the public code runs two
copies, one for the first and one for the second frame of each pair, so each frame is encoded twice), and a
flow head on the pair's features (no FlowNetC correlation layer, which needs a compiled extension).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from microface.utils.checks import config_from_dict

# iBUG-68 eye contours (0-based): the subject's right eye and left eye; their centres are the "pupils"
LEFT_EYE = list(range(36, 42))
RIGHT_EYE = list(range(42, 48))
N_LANDMARKS = 68


@dataclass(frozen=True)
class MOLConfig:
    """Sizes and loss weights of MOL.

    Presets (suggested): paper scale, 128 px, stem (32, 64, 128) -> 16x16 features, D=128, 2 blocks, k=4
    (MOL's public code: 128 channels at 16x16, 4 neighbours, 8 frames, a (5, 2, 2) temporal kernel with 32
    filters and a 256-wide classifier). CPU: 64 px, stem (16, 32, 32), 1 block, k=4. Smoke: 64 px, stem (8, 16),
    1 block, k=2.

    Args:
        n_classes: MER classes K.
        in_channels: channels of one frame C (1 gray, 3 RGB).
        n_frames: T, frames of the input sequence (8 in the public code).
        image_size: side S of the square input frames (must be divisible by 2**len(stem_channels)).
        stem_channels: widths of the stride-2 conv layers that shrink each frame; the last one is the backbone
            width D (even, split between FCC's two branches). Feature size S_f = image_size / 2**len(stem_channels).
        n_blocks: F5C blocks in the shared backbone.
        ffn_ratio: hidden width of FCC's channel feed-forward relative to D.
        knn_k: neighbours per channel in CCC (< D).
        knn_metric: "cosine" or "euclidean".
        flow_upsample: the flow head's grid is S_f * flow_upsample.
        temporal_kernel: time extent of the MER head's 3D convolution (<= n_frames - 1).
        mer_channels: filters of the MER head's 3D convolution.
        mer_hidden: width of the MER head's hidden fully-connected layer.
        dropout: in the MER head (0.5 in the public code).
        mer_weight: weight of the cross-entropy.
        flow_weight: weight of the flow MSE.
        landmark_weight: weight of the inter-pupil normalised landmark L1.

    Raises:
        ValueError: no stem layer, an odd width D, an image size not divisible by the stem's stride, knn_k out
            of [1, D - 1], an unknown metric, fewer than 2 classes or 2 frames, or a temporal kernel or feature map
            too small for the MER head's pooling.
    """

    n_classes: int = 3
    in_channels: int = 1
    n_frames: int = 8
    image_size: int = 128
    stem_channels: tuple[int, ...] = (16, 32, 32)
    n_blocks: int = 1
    ffn_ratio: float = 2.0
    knn_k: int = 4
    knn_metric: str = "cosine"
    flow_upsample: int = 2
    temporal_kernel: int = 5
    mer_channels: int = 32
    mer_hidden: int = 256
    dropout: float = 0.5
    mer_weight: float = 1.0
    flow_weight: float = 0.5
    landmark_weight: float = 0.5

    def __post_init__(self) -> None:
        if not self.stem_channels:
            raise ValueError("MOL config: stem_channels needs at least one layer")
        if self.stem_channels[-1] % 2:
            raise ValueError(f"MOL config: backbone width stem_channels[-1] must be even, got {self.stem_channels[-1]}")
        if self.image_size % 2 ** len(self.stem_channels):
            raise ValueError(
                f"MOL config: image_size {self.image_size} must be divisible by 2**{len(self.stem_channels)}"
            )
        if not 1 <= self.knn_k < self.stem_channels[-1]:
            raise ValueError(f"MOL config: knn_k must be in [1, {self.stem_channels[-1] - 1}], got {self.knn_k}")
        if self.knn_metric not in ("cosine", "euclidean"):
            raise ValueError(f"MOL config: knn_metric must be 'cosine' or 'euclidean', got {self.knn_metric!r}")
        if self.n_classes < 2:
            raise ValueError(f"MOL config: n_classes must be >= 2, got {self.n_classes}")
        if self.n_frames < 2:
            raise ValueError(f"MOL config: n_frames must be >= 2 (one consecutive pair), got {self.n_frames}")
        if not 1 <= self.temporal_kernel <= self.n_frames - 1 or self.feature_size < 4:
            raise ValueError(
                f"MOL config: the MER head needs 1 <= temporal_kernel <= n_frames - 1 = {self.n_frames - 1} and "
                f"features of >= 4 px (got temporal_kernel {self.temporal_kernel}, feature_size {self.feature_size})"
            )

    @property
    def feature_size(self) -> int:
        """S_f, the side of the backbone's feature maps: ``image_size // 2**len(stem_channels)``."""
        return self.image_size // 2 ** len(self.stem_channels)

    @property
    def flow_size(self) -> int:
        """S', the side of the flow head's grid: ``feature_size * flow_upsample``."""
        return self.feature_size * self.flow_upsample

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "MOLConfig":
        """The config from a mapping (the ``MOL`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the MOLConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "MOL")


# ----------------------------------------------------------------------------------------------------------------
# FCC


class GlobalCircularConv(nn.Module):
    """Positional embedding, then a circular depthwise conv spanning one whole axis.

    Args:
        dim: D.
        size: S, the side of the feature map.
        axis: "h" (kernel (S, 1): each output mixes its entire column) or "w" (kernel (1, S): its entire row).

    Raises:
        ValueError: an unknown axis.
    """

    def __init__(self, dim: int, size: int, axis: str) -> None:
        super().__init__()
        if axis not in ("h", "w"):
            raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
        self.axis, self.size = axis, size
        kernel_shape = (size, 1) if axis == "h" else (1, size)
        self.weight = nn.Parameter(torch.randn(dim, 1, *kernel_shape) / size**0.5)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, dim, *kernel_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix one whole axis.

        Args:
            x: shape (N, D, S, S).

        Returns:
            shape (N, D, S, S).

        Raises:
            ValueError: a map that is not (S, S).
        """
        if x.shape[-2] != self.size or x.shape[-1] != self.size:
            raise ValueError(f"expected (N, D, {self.size}, {self.size}), got {tuple(x.shape)}")
        x = x + self.position
        pad = (0, 0, 0, self.size - 1) if self.axis == "h" else (0, self.size - 1, 0, 0)
        return F.conv2d(F.pad(x, pad, mode="circular"), self.weight, self.bias, groups=x.shape[1])


class FullyConnectedConv(nn.Module):
    """FCC: global H-then-W and W-then-H circular convolutions on channel halves, then a channel MLP.

    ``(N, D, S, S) -> (N, D, S, S)``; both parts residual.

    Args:
        dim: D, even.
        size: S.
        ffn_ratio: hidden width of the channel MLP relative to D.

    Raises:
        ValueError: an odd ``dim``.
    """

    def __init__(self, dim: int, size: int, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FCC needs an even channel count, got {dim}")
        half = dim // 2
        self.norm_a, self.norm_b = nn.BatchNorm2d(half), nn.BatchNorm2d(half)
        self.a_h, self.a_w = GlobalCircularConv(half, size, "h"), GlobalCircularConv(half, size, "w")
        self.b_w, self.b_h = GlobalCircularConv(half, size, "w"), GlobalCircularConv(half, size, "h")
        hidden = max(1, int(round(dim * ffn_ratio)))
        self.ffn = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply FCC.

        Args:
            x: shape (N, D, S, S).

        Returns:
            shape (N, D, S, S).
        """
        a, b = x.chunk(2, dim=1)
        a = a + self.a_w(self.a_h(self.norm_a(a)))
        b = b + self.b_h(self.b_w(self.norm_b(b)))
        x = torch.cat([a, b], dim=1)
        return x + self.ffn(x)


# ----------------------------------------------------------------------------------------------------------------
# CCC


def knn_indices(nodes: torch.Tensor, k: int, metric: str = "cosine") -> torch.Tensor:
    """Indices of each node's k nearest other nodes, nearest first. A node is never its own neighbour.

    Args:
        nodes: shape (B, N, F), N nodes of F features.
        k: neighbours, in [1, N - 1].
        metric: "cosine" (largest cosine similarity) or "euclidean" (smallest distance).

    Returns:
        indices, shape (B, N, k) long.

    Raises:
        ValueError: ``nodes`` not 3-dimensional, k out of range, or an unknown metric.
    """
    if nodes.ndim != 3:
        raise ValueError(f"expected nodes (B, N, F), got {tuple(nodes.shape)}")
    n = nodes.shape[1]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} nodes, got {k}")
    if metric == "cosine":
        unit = F.normalize(nodes, dim=-1)
        closeness = unit @ unit.transpose(1, 2)
    elif metric == "euclidean":
        closeness = -torch.cdist(nodes, nodes)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    self_mask = torch.eye(n, dtype=torch.bool, device=nodes.device)
    closeness = closeness.masked_fill(self_mask, float("-inf"))
    return closeness.topk(k, dim=-1).indices


def gather_neighbours(nodes: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Features of each node's neighbours.

    Args:
        nodes: shape (B, N, F).
        indices: shape (B, N, k).

    Returns:
        neighbour features, shape (B, N, k, F).
    """
    b, n, f = nodes.shape
    k = indices.shape[-1]
    flat = indices.reshape(b, n * k, 1).expand(-1, -1, f)
    return nodes.gather(1, flat).view(b, n, k, f)


class EdgeConv(nn.Module):
    """EdgeConv on a kNN graph: ``h_i = max_{j in kNN(i)} MLP([x_i, x_j - x_i])``, ``(B, N, F) -> (B, N, F_out)``.

    Args:
        in_features: F.
        out_features: F_out.
        k: neighbours per node.
        metric: "cosine" or "euclidean".
    """

    def __init__(self, in_features: int, out_features: int, k: int, metric: str = "cosine") -> None:
        super().__init__()
        self.k, self.metric = k, metric
        self.mlp = nn.Sequential(nn.Linear(2 * in_features, out_features), nn.LayerNorm(out_features), nn.GELU())

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        # the graph is rebuilt from the current features (dynamic graph), without gradient through the choice
        """Apply EdgeConv on the kNN graph of the current features (no gradient through the choice).

        Args:
            nodes: shape (B, N, F).

        Returns:
            shape (B, N, F_out).
        """
        with torch.no_grad():
            indices = knn_indices(nodes, self.k, self.metric)
        neighbours = gather_neighbours(nodes, indices)  # (B, N, k, F)
        centre = nodes.unsqueeze(2).expand_as(neighbours)
        edges = self.mlp(torch.cat([centre, neighbours - centre], dim=-1))  # (B, N, k, F_out)
        return edges.max(dim=2).values


class ChannelCorrespondenceConv(nn.Module):
    """CCC: EdgeConv over channels as graph nodes (node vector = the channel's flattened (S, S) map), residual.

    ``(N, D, S, S) -> (N, D, S, S)``.

    Args:
        dim: D.
        size: S.
        k: neighbours per channel.
        metric: "cosine" or "euclidean".
    """

    def __init__(self, dim: int, size: int, k: int, metric: str = "cosine") -> None:
        super().__init__()
        self.size = size
        self.edge_conv = EdgeConv(size * size, size * size, k, metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply CCC.

        Args:
            x: shape (N, D, S, S).

        Returns:
            shape (N, D, S, S).

        Raises:
            ValueError: a map that is not (S, S).
        """
        n, d, h, w = x.shape
        if h != self.size or w != self.size:
            raise ValueError(f"expected (N, D, {self.size}, {self.size}), got {tuple(x.shape)}")
        return x + self.edge_conv(x.flatten(2)).view(n, d, h, w)


class F5CBlock(nn.Module):
    """FCC then CCC: ``(N, D, S, S) -> (N, D, S, S)``.

    Args:
        dim: D.
        size: S.
        ffn_ratio: FCC's channel MLP width relative to D.
        k: CCC's neighbours per channel.
        metric: CCC's metric.
    """

    def __init__(self, dim: int, size: int, ffn_ratio: float, k: int, metric: str) -> None:
        super().__init__()
        self.fcc = FullyConnectedConv(dim, size, ffn_ratio)
        self.ccc = ChannelCorrespondenceConv(dim, size, k, metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: shape (N, D, S, S).

        Returns:
            shape (N, D, S, S).
        """
        return self.ccc(self.fcc(x))


class MOLBackbone(nn.Module):
    """Shared per-frame encoder: ``frames (N, C, S, S) -> (N, D, S_f, S_f)`` (stride-2 conv stem, F5C blocks).

    Args:
        config: the MOLConfig.
    """

    def __init__(self, config: MOLConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = config.in_channels
        for width in config.stem_channels:
            layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU()]
            in_channels = width
        self.stem = nn.Sequential(*layers)
        dim, size = config.stem_channels[-1], config.feature_size
        self.blocks = nn.Sequential(
            *[F5CBlock(dim, size, config.ffn_ratio, config.knn_k, config.knn_metric) for _ in range(config.n_blocks)]
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode frames.

        Args:
            frames: shape (N, C, S, S).

        Returns:
            features, shape (N, D, S_f, S_f).
        """
        return self.blocks(self.stem(frames))


# ----------------------------------------------------------------------------------------------------------------
# Heads


class TemporalMERHead(nn.Module):
    """3D convolution over (time, H, W) of the frame features, max-pooling, two fully-connected layers.

    ``features (B, D, T, S_f, S_f) -> logits (B, K)``: a (temporal_kernel, 2, 2) convolution with spatial
    stride 2, a 2x2x2 max-pool, dropout, a hidden layer with ReLU, dropout, the classifier (the public code's head).

    Args:
        config: the MOLConfig.
    """

    def __init__(self, config: MOLConfig) -> None:
        super().__init__()
        dim = config.stem_channels[-1]
        self.conv = nn.Conv3d(dim, config.mer_channels, (config.temporal_kernel, 2, 2), stride=(1, 2, 2))
        self.pool = nn.MaxPool3d(2, ceil_mode=True)
        time = -(-(config.n_frames - config.temporal_kernel + 1) // 2)
        side = -(-((config.feature_size - 2) // 2 + 1) // 2)
        self.fc = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.mer_channels * time * side * side,
                                                                       config.mer_hidden),
                                nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.mer_hidden, config.n_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            features: frame features in time order, shape (B, D, T, S_f, S_f).

        Returns:
            logits, shape (B, K).
        """
        return self.fc(self.pool(self.conv(features)).flatten(1))


class FlowHead(nn.Module):
    """``pair features (P, 2D, S_f, S_f) -> flow (P, 2, S_f*u, S_f*u)`` in pixels of that grid.

    Args:
        dim: D.
        upsample: u.
    """

    def __init__(self, dim: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv_in = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.GELU())
        self.conv_out = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1), nn.GELU(), nn.Conv2d(dim // 2, 2, 3, padding=1))

    def forward(self, pair_features: torch.Tensor) -> torch.Tensor:
        """Flow of each pair.

        Args:
            pair_features: the first frame's features and the difference of the second's, shape (P, 2D, S_f, S_f).

        Returns:
            flow in pixels of the head's grid, shape (P, 2, S_f*u, S_f*u).
        """
        x = self.conv_in(pair_features)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return self.conv_out(x)


class LandmarkHead(nn.Module):
    """``frame features (N, D, S_f, S_f) -> landmarks (N, 68, 2)`` in pixels of an ``image_size`` frame.

    The linear layer predicts offsets in frame units around the frame centre, so an untrained head starts
    near the middle of the face rather than at the corner.

    Args:
        dim: D.
        image_size: S.
    """

    def __init__(self, dim: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.conv = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.GELU())
        self.fc = nn.Linear(dim, 2 * N_LANDMARKS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Landmarks of each frame.

        Args:
            features: shape (N, D, S_f, S_f).

        Returns:
            landmarks ``(x, y)`` in input pixels, shape (N, 68, 2).
        """
        unit = 0.5 + self.fc(self.conv(features).mean(dim=(-2, -1))).view(-1, N_LANDMARKS, 2)
        return unit * self.image_size


@dataclass
class MOLOutput:
    """MOL forward result.

    Attributes:
        logits: shape (B, K).
        flow: frame t -> t+1 for each consecutive pair, in head-grid pixels, shape (B, T-1, 2, S', S').
        landmarks: of frames 2..T (1-based) in input pixels ``(x, y)``, shape (B, T-1, 68, 2).
    """

    logits: torch.Tensor
    flow: torch.Tensor
    landmarks: torch.Tensor


class MOL(nn.Module):
    """``frames (B, T, C, S, S)`` in time order -> ``MOLOutput``.

    Args:
        config: the MOLConfig.
    """

    def __init__(self, config: MOLConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.stem_channels[-1]
        self.backbone = MOLBackbone(config)
        self.mer_head = TemporalMERHead(config)
        self.flow_head = FlowHead(dim, config.flow_upsample)
        self.landmark_head = LandmarkHead(dim, config.image_size)

    def forward(self, frames: torch.Tensor) -> MOLOutput:
        """Class of each sequence, flow of each consecutive pair, landmarks of frames 2..T.

        Args:
            frames: shape (B, T, C, S, S), T = config.n_frames.

        Returns:
            the MOLOutput.

        Raises:
            ValueError: ``frames`` of the wrong shape.
        """
        t, c, s = self.config.n_frames, self.config.in_channels, self.config.image_size
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (t, c, s, s):
            raise ValueError(f"MOL expects a frame sequence (B, {t}, {c}, {s}, {s}), got {tuple(frames.shape)}")
        b = frames.shape[0]
        features = self.backbone(frames.flatten(0, 1))  # every frame through the shared backbone at once
        features = features.view(b, t, *features.shape[1:])  # (B, T, D, S_f, S_f)
        first, second = features[:, :-1].flatten(0, 1), features[:, 1:].flatten(0, 1)  # (B*(T-1), D, S_f, S_f)
        flow = self.flow_head(torch.cat([first, second - first], dim=1))
        landmarks = self.landmark_head(second)
        return MOLOutput(
            logits=self.mer_head(features.transpose(1, 2)),
            flow=flow.view(b, t - 1, *flow.shape[1:]),
            landmarks=landmarks.view(b, t - 1, N_LANDMARKS, 2),
        )


# ----------------------------------------------------------------------------------------------------------------
# Losses


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a flow field to another grid and rescale its vectors.

    Channel 0 is the x (column) displacement, scaled by w/W; channel 1 the y displacement, scaled by h/H.
    Downsampling averages over areas (a flow is a density of motion, not a point sample).

    Args:
        flow: flow in pixels of its grid, shape (B, 2, H, W).
        size: the new grid (h, w).

    Returns:
        flow in pixels of the new grid, shape (B, 2, h, w).

    Raises:
        ValueError: ``flow`` not (B, 2, H, W).
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow (B, 2, H, W), got {tuple(flow.shape)}")
    height, width = flow.shape[-2:]
    h, w = size
    if (h, w) == (height, width):
        return flow
    mode = "area" if h <= height and w <= width else "bilinear"
    resized = F.interpolate(flow, size=(h, w), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    scale = torch.tensor([w / width, h / height], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return resized * scale


def end_point_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between flow vectors.

    Args:
        predicted: shape (B, 2, h, w).
        target: shape (B, 2, h, w).

    Returns:
        the scalar mean, in pixels of the grid.

    Raises:
        ValueError: shapes that differ.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"flow shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    # a small epsilon keeps the gradient of the norm finite where the error is exactly zero
    return ((predicted - target).pow(2).sum(1) + 1e-12).sqrt().mean()


def pupil_distance(landmarks: torch.Tensor) -> torch.Tensor:
    """Distance between the eye centres (means of iBUG points 36-41 and 42-47).

    Args:
        landmarks: shape (..., 68, 2).

    Returns:
        distances, shape (...).
    """
    left = landmarks[..., LEFT_EYE, :].mean(-2)
    right = landmarks[..., RIGHT_EYE, :].mean(-2)
    return (right - left).norm(dim=-1)


def pupil_normalized_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute coordinate error divided by the target's inter-pupil distance (the public code's landmark loss).

    Invariant to the image scale, so crops of any size contribute alike.

    Args:
        predicted: landmarks, shape (B, F, 68, 2) (F frames each).
        target: landmarks, shape (B, F, 68, 2).

    Returns:
        the scalar mean over clips and frames.

    Raises:
        ValueError: shapes that differ or are not (B, F, 68, 2), or coincident eye centres.
    """
    if predicted.shape != target.shape or target.ndim != 4 or target.shape[-2:] != (N_LANDMARKS, 2):
        raise ValueError(
            f"expected landmarks (B, F, {N_LANDMARKS}, 2) twice, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    distance = pupil_distance(target)  # (B, F)
    if torch.any(distance <= 0):
        raise ValueError("target landmarks have coincident eye centres (points 36-41 and 42-47)")
    return ((predicted - target).abs().mean(dim=(-2, -1)) / distance).mean()


def mol_loss(output: MOLOutput, labels: torch.Tensor, config: MOLConfig, flow: torch.Tensor | None = None,
             landmarks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``mer_weight`` * cross-entropy + ``flow_weight`` * flow MSE + ``landmark_weight`` * inter-pupil normalised L1.

    A missing target drops its term.

    Args:
        output: the MOLOutput.
        labels: shape (B,) long.
        config: gives the weights.
        flow: target flow t -> t+1 of each consecutive pair at any resolution, in pixels of that grid, shape
            (B, T-1, 2, H, W); resized to the head's grid with its vectors rescaled.
        landmarks: landmarks of all T frames (frames 2..T are the targets) or of frames 2..T, in input pixels,
            shape (B, T, 68, 2) or (B, T-1, 68, 2).

    Returns:
        ``{"loss", "ce", and "flow_mse", "epe" / "nme" when computed}`` (epe: mean end-point error, for the log).
    """
    ce = F.cross_entropy(output.logits, labels)
    loss = config.mer_weight * ce
    scalars: dict[str, torch.Tensor] = {"ce": ce.detach()}
    if flow is not None:
        b, pairs = output.flow.shape[:2]
        if flow.ndim != 5 or tuple(flow.shape[:3]) != (b, pairs, 2):
            raise ValueError(f"expected target flow (B, {pairs}, 2, H, W), got {tuple(flow.shape)}")
        predicted = output.flow.flatten(0, 1)
        target = resize_flow(flow.flatten(0, 1).to(predicted.dtype), tuple(predicted.shape[-2:]))
        flow_mse = F.mse_loss(predicted, target)
        loss = loss + config.flow_weight * flow_mse
        scalars["flow_mse"] = flow_mse.detach()
        scalars["epe"] = end_point_error(predicted.detach(), target)
    if landmarks is not None:
        if landmarks.ndim == 4 and landmarks.shape[1] == output.landmarks.shape[1] + 1:
            landmarks = landmarks[:, 1:]
        nme = pupil_normalized_l1(output.landmarks, landmarks.to(output.landmarks.dtype))
        loss = loss + config.landmark_weight * nme
        scalars["nme"] = nme.detach()
    scalars["loss"] = loss
    return scalars
