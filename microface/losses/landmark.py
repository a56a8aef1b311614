"""2D landmark loss on projected iBUG-68 points, with optional per-point weights."""
from __future__ import annotations

import torch

# iBUG-68 index ranges (0-based)
IBUG68_GROUPS: dict[str, range] = {
    "contour": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "outer_mouth": range(48, 60),
    "inner_mouth": range(60, 68),
}


def ibug68_weights(contour: float = 0.5, brows: float = 1.5, nose: float = 1.0, eyes: float = 1.5,
                   outer_mouth: float = 1.5, inner_mouth: float = 1.5) -> torch.Tensor:
    """Per-point weights (68,), normalised to mean 1. Defaults favour brows, eyes and mouth, where
    micro-expressions move, over the contour, whose 2D position is ill-defined on a turning face."""
    weights = torch.empty(68)
    values = dict(contour=contour, brows=brows, nose=nose, eyes=eyes, outer_mouth=outer_mouth, inner_mouth=inner_mouth)
    for group, index in IBUG68_GROUPS.items():
        weights[list(index)] = values[group]
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"ibug68_weights: expected non-negative weights with a positive sum, got {values}")
    return weights / weights.mean()


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                  norm: str = "l2", valid: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Weighted mean landmark distance.

    predicted (..., L, 2) and target (..., L, 2) in pixels; weights (L,) or None (uniform); valid (..., L) bool
    or None (all valid); scale: distances are divided by it (e.g. the image width, to make the loss
    resolution-free). norm "l2": mean Euclidean distance; "l1": mean of |dx| + |dy|; "mse": mean squared distance.
    Returns a scalar.
    """
    if predicted.shape != target.shape or predicted.ndim < 2 or predicted.shape[-1] != 2:
        raise ValueError(f"predicted and target: expected the same (..., L, 2), got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}")
    n_points = predicted.shape[-2]
    diff = (predicted - target) / scale
    if norm == "l2":
        per_point = diff.pow(2).sum(-1).add(1e-12).sqrt()
    elif norm == "l1":
        per_point = diff.abs().sum(-1)
    elif norm == "mse":
        per_point = diff.pow(2).sum(-1)
    else:
        raise ValueError(f"landmark_loss norm: expected 'l2', 'l1' or 'mse', got {norm!r}")
    point_weight = torch.ones(n_points, dtype=diff.dtype, device=diff.device) if weights is None else weights.to(diff)
    if point_weight.shape != (n_points,):
        raise ValueError(f"weights: expected ({n_points},), got {tuple(point_weight.shape)}")
    total_weight = point_weight.expand_as(per_point)
    if valid is not None:
        if valid.shape != per_point.shape:
            raise ValueError(f"valid: expected {tuple(per_point.shape)}, got {tuple(valid.shape)}")
        total_weight = total_weight * valid.to(diff.dtype)
    return (per_point * total_weight).sum() / total_weight.sum().clamp_min(1e-12)
