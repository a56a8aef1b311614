"""Expression regularisers: code magnitude, temporal smoothness, and agreement of the ODE and per-frame codes."""
from __future__ import annotations

import torch


def expression_l2(expression: torch.Tensor) -> torch.Tensor:
    """Mean over items of the squared norm of the last axis. expression (..., E) -> scalar."""
    if expression.ndim < 1:
        raise ValueError("expression: expected (..., E), got a scalar")
    return expression.pow(2).sum(-1).mean()


def temporal_smoothness(codes: torch.Tensor, order: int = 1) -> torch.Tensor:
    """Mean squared norm of the ``order``-th difference between consecutive frames.

    codes (B,T,D) with T > order -> scalar. order 1 penalises frame-to-frame change, order 2 acceleration.
    """
    if codes.ndim != 3 or codes.shape[1] <= order or order < 1:
        raise ValueError(f"codes: expected (B, T, D) with T > order = {order}, got {tuple(codes.shape)}")
    diff = codes
    for _ in range(order):
        diff = diff[:, 1:] - diff[:, :-1]
    return diff.pow(2).sum(-1).mean()


def code_consistency(ode_codes: torch.Tensor, frame_codes: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the ODE trajectory and the per-frame (fused) codes. (B,T,D) x2 -> scalar."""
    if ode_codes.shape != frame_codes.shape or ode_codes.ndim != 3:
        raise ValueError(f"codes: expected the same (B, T, D), got {tuple(ode_codes.shape)} and {tuple(frame_codes.shape)}")
    return (ode_codes - frame_codes).pow(2).sum(-1).mean()
