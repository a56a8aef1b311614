"""Mesh topology: edges, face adjacency and the normalised vertex graph used for message passing.

Shapes: B batch, V vertices, F faces, E undirected edges, C feature channels.
"""
from __future__ import annotations

import torch


def mesh_edges(faces: torch.Tensor) -> torch.Tensor:
    """Unique undirected edges of a triangle mesh.

    Args:
        faces: triangle vertex indices, shape (F, 3).

    Returns:
        edges, shape (2, E) long, with ``edges[0] < edges[1]``.

    Raises:
        ValueError: ``faces`` is not (F, 3).

    Example:
        >>> mesh_edges(torch.tensor([[0, 1, 2]])).tolist()
        [[0, 0, 1], [1, 2, 2]]
    """
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected (F, 3), got {tuple(faces.shape)}")
    faces = faces.long()
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    pairs = torch.sort(pairs, dim=1).values
    return torch.unique(pairs, dim=0).T.contiguous()


def face_adjacency(faces: torch.Tensor) -> torch.Tensor:
    """Pairs of faces sharing an edge.

    A non-manifold edge shared by k > 2 faces contributes its k - 1 consecutive pairs.

    Args:
        faces: triangle vertex indices, shape (F, 3).

    Returns:
        face index pairs, shape (2, P) long, P the number of pairs.
    """
    faces = faces.long()
    n_faces = faces.shape[0]
    n_vertices = int(faces.max()) + 1 if faces.numel() else 1
    u = torch.cat([faces[:, 0], faces[:, 1], faces[:, 2]])
    v = torch.cat([faces[:, 1], faces[:, 2], faces[:, 0]])
    key = torch.minimum(u, v) * n_vertices + torch.maximum(u, v)
    owner = torch.arange(n_faces, device=faces.device).repeat(3)
    order = torch.argsort(key, stable=True)
    key, owner = key[order], owner[order]
    same = key[1:] == key[:-1]
    return torch.stack([owner[:-1][same], owner[1:][same]])


def normalized_adjacency(edges: torch.Tensor, n_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kipf & Welling's D^-1/2 (A + I) D^-1/2 as a sparse list.

    Args:
        edges: undirected edges, shape (2, E).
        n_vertices: number of vertices V.

    Returns:
        ``(index, weight)``: index, shape (2, 2E + V), rows [source, target]; weight, shape (2E + V,).
    """
    loops = torch.arange(n_vertices, device=edges.device)
    src = torch.cat([edges[0], edges[1], loops])
    dst = torch.cat([edges[1], edges[0], loops])
    ones = torch.ones(dst.shape[0], device=edges.device)
    degree = torch.zeros(n_vertices, device=edges.device).index_add(0, dst, ones)
    weight = degree[src].rsqrt() * degree[dst].rsqrt()
    return torch.stack([src, dst]), weight


def propagate(features: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sparse neighbourhood aggregation out[:, t] = sum_s weight[s->t] * features[:, s].

    Args:
        features: vertex features, shape (B, V, C).
        index: message pairs, shape (2, N), rows [source, target].
        weight: message weights, shape (N,).

    Returns:
        aggregated features, shape (B, V, C).
    """
    messages = features[:, index[0]] * weight.to(features.dtype)[None, :, None]
    return torch.zeros_like(features).index_add(1, index[1], messages)
