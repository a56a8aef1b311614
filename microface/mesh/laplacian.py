"""Laplacian coordinates of a mesh: uniform (graph) and cotangent weights.

Shapes: B batch, V vertices, F faces, E edges.
"""
from __future__ import annotations

import torch


def uniform_laplacian_coordinates(vertices: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Uniform Laplacian coordinates: delta_i = v_i - mean of the neighbours of i.

    Isolated vertices get delta = 0.

    Args:
        vertices: vertex positions, shape (B, V, 3).
        edges: undirected edges, shape (2, E).

    Returns:
        Laplacian coordinates delta, shape (B, V, 3), in the units of ``vertices``.
    """
    src = torch.cat([edges[0], edges[1]])
    dst = torch.cat([edges[1], edges[0]])
    V = vertices.shape[1]
    neighbour_sum = torch.zeros_like(vertices).index_add(1, dst, vertices[:, src])
    degree = torch.zeros(V, dtype=vertices.dtype, device=vertices.device).index_add(
        0, dst, torch.ones_like(dst, dtype=vertices.dtype))
    mean = neighbour_sum / degree.clamp_min(1.0)[None, :, None]
    return torch.where((degree > 0)[None, :, None], vertices - mean, torch.zeros_like(vertices))


def cotangent_laplacian_coordinates(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Cotangent Laplacian coordinates: delta_i = v_i - sum_j w_ij v_j / sum_j w_ij.

    The cotangent weights are those of the mesh itself: w_ij = (cot alpha + cot beta) / 2, clamped at 0:
    obtuse triangles give negative weights whose normalisation can blow up, and a Laplacian feature only
    needs to be a stable smoothness descriptor.

    Args:
        vertices: vertex positions, shape (B, V, 3).
        faces: triangle vertex indices, shape (F, 3).

    Returns:
        Laplacian coordinates delta, shape (B, V, 3), in the units of ``vertices``; 0 at vertices with no
        positive weight.
    """
    faces = faces.long()
    delta_sum = torch.zeros_like(vertices)
    weight_sum = torch.zeros(vertices.shape[:2], dtype=vertices.dtype, device=vertices.device)
    corners = [vertices[:, faces[:, k]] for k in range(3)]  # each (B, F, 3)
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3  # edge (i, j) is opposite corner k
        a, b = corners[i] - corners[k], corners[j] - corners[k]
        cot = (a * b).sum(-1) / torch.cross(a, b, dim=-1).norm(dim=-1).clamp_min(1e-12)
        w = (0.5 * cot).clamp_min(0.0)  # (B, F)
        for s, t in ((i, j), (j, i)):
            delta_sum = delta_sum.index_add(1, faces[:, s], w[..., None] * corners[t])
            weight_sum = weight_sum.index_add(1, faces[:, s], w)
    mean = delta_sum / weight_sum.clamp_min(1e-12)[..., None]
    return torch.where((weight_sum > 0)[..., None], vertices - mean, torch.zeros_like(vertices))
