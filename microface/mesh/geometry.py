"""Mesh geometry: rotations (axis-angle) and area-weighted vertex normals."""
from __future__ import annotations

import torch


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. axis_angle (..., 3) -> rotation matrices (..., 3, 3)."""
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
    """Area-weighted unit vertex normals. vertices (B, V, 3), faces (F, 3) -> (B, V, 3)."""
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    face_normals = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area, so sums are area-weighted
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals = normals.index_add(1, faces[:, k], face_normals)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
