"""Face regions: per-vertex region labels and per-face region maps.

Shapes: V vertices, F faces, R regions, K vertices of one region.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_nn


def vertex_region_labels(regions: dict[str, torch.Tensor], n_vertices: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Region index of every vertex.

    Vertices in no region get an extra last region "other" (only added when some vertex needs it); a vertex
    listed in several regions keeps the first.

    Args:
        regions: region name -> vertex indices, shape (K,).
        n_vertices: number of vertices V.

    Returns:
        labels, shape (V,) long, and the region names, R of them (``labels`` indexes them).

    Raises:
        ValueError: a region holds an index outside [0, n_vertices).
    """
    labels = torch.full((n_vertices,), -1, dtype=torch.long)
    names = list(regions)
    for r, name in enumerate(names):
        idx = torch.as_tensor(regions[name], dtype=torch.long).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_vertices):
            raise ValueError(f"region {name!r}: indices must lie in [0, {n_vertices}), found "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        free = idx[labels[idx] < 0]
        labels[free] = r
    if bool((labels < 0).any()):
        labels[labels < 0] = len(names)
        names.append("other")
    return labels, tuple(names)


def face_region_map(faces: torch.Tensor, vertex_region: torch.Tensor, n_regions: int) -> torch.Tensor:
    """Region of each face by majority vote of its three vertices, ties to the smallest region index.

    Args:
        faces: triangle vertex indices, shape (F, 3).
        vertex_region: region index of each vertex, shape (V,) long in [0, n_regions).
        n_regions: number of regions R.

    Returns:
        region index of each face, shape (F,) long.
    """
    labels = vertex_region.to(faces.device)[faces.long()]  # (F, 3)
    votes = F_nn.one_hot(labels, n_regions).sum(1)  # (F, R)
    return votes.argmax(dim=1)  # argmax returns the first maximum: the smallest region index on ties
