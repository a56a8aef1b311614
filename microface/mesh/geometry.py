"""Mesh geometry: rotations (axis-angle) and area-weighted vertex normals.

Shapes: B batch, V vertices, F faces; ``...`` any leading dimensions.
"""
from __future__ import annotations

import torch


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from axis-angle vectors (Rodrigues' formula).

    Args:
        axis_angle: rotation axis scaled by the angle in radians, shape (..., 3).

    Returns:
        rotation matrices, shape (..., 3, 3).

    Example:
        >>> axis_angle_to_matrix(torch.zeros(2, 3)).shape
        torch.Size([2, 3, 3])
    """
    angle = axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    axis = axis_angle / angle
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    # K is the cross-product matrix of the unit axis
    K = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(K)
    s = torch.sin(angle)[..., None]
    c = torch.cos(angle)[..., None]
    return eye + s * K + (1 - c) * (K @ K)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: vertex positions, shape (B, V, 3).
        faces: triangle vertex indices, shape (F, 3).

    Returns:
        unit normals, shape (B, V, 3).
    """
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    face_normals = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area, so sums are area-weighted
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals = normals.index_add(1, faces[:, k], face_normals)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
