"""Recognition from expression-parameter trajectories: scores a 3D reconstruction by how well its motion
classifies, as the reconstruction paper does; fed the synthetic benchmark's ground-truth expression
trajectories it gives the upper bound.

``TrajectoryClassifier: trajectories (B, T, E) -> logits (B, K)``: optional displacement from the onset frame
(identity and neutral offsets cancel), a stack of temporal convolutions, mean + max pooling over time, a
linear classifier.

Shapes: B clips, T frames, E expression parameters per frame, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from microface.utils.checks import config_from_dict


@dataclass(frozen=True)
class TrajectoryConfig:
    """Settings of the trajectory classifier.

    Suggested: smoke hidden 16, layers 1; cpu hidden 64, layers 2; full hidden 128, layers 3 (all kernel 3).

    Args:
        n_classes: MER classes K, >= 2.
        n_expression: E, the expression parameters per frame.
        hidden: channels of the temporal convolutions.
        layers: how many temporal convolutions.
        kernel: their odd temporal size.
        use_displacement: append ``x_t - x_onset`` (the first frame) to each frame's parameters.
        dropout: before the classifier.

    Raises:
        ValueError: an even or non-positive kernel, a size < 1, or fewer than 2 classes.
    """

    n_classes: int = 3
    n_expression: int = 50
    hidden: int = 64
    layers: int = 2
    kernel: int = 3
    use_displacement: bool = True
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kernel % 2 == 0 or self.kernel < 1:
            raise ValueError(f"trajectory config: kernel must be odd and positive, got {self.kernel}")
        if self.layers < 1 or self.hidden < 1 or self.n_expression < 1:
            raise ValueError(
                f"trajectory config: layers, hidden, n_expression must be >= 1, got "
                f"{self.layers}, {self.hidden}, {self.n_expression}"
            )
        if self.n_classes < 2:
            raise ValueError(f"trajectory config: n_classes must be >= 2, got {self.n_classes}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "TrajectoryConfig":
        """The config from a mapping (the ``trajectory`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the TrajectoryConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "trajectory")


def displacement_from_onset(trajectories: torch.Tensor) -> torch.Tensor:
    """Each frame minus the first (onset) frame.

    Args:
        trajectories: shape (B, T, E).

    Returns:
        displacements, shape (B, T, E).

    Example:
        >>> displacement_from_onset(torch.tensor([[[1.0], [3.0]]])).tolist()
        [[[0.0], [2.0]]]
    """
    return trajectories - trajectories[:, :1]


class TrajectoryClassifier(nn.Module):
    """``trajectories (B, T, E) -> logits (B, K)``; any T >= 1.

    Args:
        config: the TrajectoryConfig.
    """

    def __init__(self, config: TrajectoryConfig) -> None:
        super().__init__()
        self.config = config
        in_channels = config.n_expression * (2 if config.use_displacement else 1)
        convs = []
        for _ in range(config.layers):
            convs.append(nn.Conv1d(in_channels, config.hidden, config.kernel, padding=config.kernel // 2))
            in_channels = config.hidden
        self.convs = nn.ModuleList(convs)
        self.norm = nn.LayerNorm(2 * config.hidden)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * config.hidden, config.n_classes))

    def forward(self, trajectories: torch.Tensor) -> torch.Tensor:
        """Class logits of expression trajectories.

        Args:
            trajectories: expression parameters per frame, shape (B, T, E), T >= 1.

        Returns:
            logits, shape (B, K).

        Raises:
            ValueError: ``trajectories`` of the wrong shape.
        """
        e = self.config.n_expression
        if trajectories.ndim != 3 or trajectories.shape[-1] != e or trajectories.shape[1] < 1:
            raise ValueError(f"expected trajectories (B, T, {e}), got {tuple(trajectories.shape)}")
        x = trajectories
        if self.config.use_displacement:
            x = torch.cat([x, displacement_from_onset(x)], dim=-1)
        x = x.transpose(1, 2)  # (B, channels, T)
        for conv in self.convs:
            x = F.gelu(conv(x))
        pooled = torch.cat([x.mean(-1), x.amax(-1)], dim=-1)  # (B, 2*hidden)
        return self.classifier(self.norm(pooled))


def trajectory_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy.

    Args:
        logits: shape (B, K).
        labels: class indices, shape (B,).

    Returns:
        ``{"loss": ce, "ce": ce detached}``.
    """
    ce = F.cross_entropy(logits, labels)
    return {"loss": ce, "ce": ce.detach()}
