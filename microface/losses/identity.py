"""Identity consistency: one person's shape code should not change within a clip.

A real face-descriptor (face-recognition) distance is NOT used: no differentiable face-recognition network
(ArcFace or similar) is obtainable offline. dlib's ResNet 128-D descriptor (``dlib-bin`` +
``face-recognition-models``) can be installed but is not differentiable, so it could only serve evaluation.
"""
from __future__ import annotations

import torch


def shape_consistency(shapes: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation of each frame's shape code from its clip mean.

    shapes (B,T,S) per-frame shape codes -> scalar (0 iff every clip has one shape code).
    """
    if shapes.ndim != 3:
        raise ValueError(f"shapes: expected (B, T, S) per-frame shape codes, got {tuple(shapes.shape)}")
    return (shapes - shapes.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean()
