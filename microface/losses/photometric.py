"""Photometric loss: masked L1 between a rendered face and the input image, the mask being the renderer's alpha."""
from __future__ import annotations

import torch


def photometric_l1(rendered: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean absolute colour error over covered pixels.

    rendered (B,3,H,W), target (B,3,H,W), alpha (B,1,H,W) soft coverage in [0,1] (``RenderOutput.alpha``)
    -> scalar ``sum(alpha * |rendered - target|) / (3 * sum(alpha))``. Pixels the face does not cover do not
    count, so the background of the input never pulls the geometry.
    """
    if rendered.ndim != 4 or rendered.shape[1] != 3 or rendered.shape != target.shape:
        raise ValueError(
            f"rendered and target: expected the same (B, 3, H, W), got {tuple(rendered.shape)} and {tuple(target.shape)}"
        )
    if alpha.shape != (rendered.shape[0], 1, *rendered.shape[2:]):
        raise ValueError(f"alpha: expected ({rendered.shape[0]}, 1, {rendered.shape[2]}, {rendered.shape[3]}), "
                         f"got {tuple(alpha.shape)}")
    weighted = (alpha * (rendered - target).abs()).sum()
    return weighted / (3.0 * alpha.sum() + eps)
