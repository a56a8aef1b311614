"""Per-vertex displacement from the onset frame, pooled by face region: a mesh sequence's motion as a trajectory.

Recognition from a reconstruction reads these features rather than expression parameters, so a per-vertex
refinement that no expression parameter can express (DGMD's offsets) still reaches the classifier.

Shapes: T frames, V vertices, R regions (or region sides), ``FEATURES_PER_REGION`` = 4 features per region.
"""
from __future__ import annotations

import torch

from microface.mesh.regions import vertex_region_labels

# per region: mean displacement vector (x, y, z) and mean displacement magnitude, all in mm
FEATURE_NAMES = ("dx", "dy", "dz", "magnitude")
FEATURES_PER_REGION = len(FEATURE_NAMES)


def region_side_labels(regions: dict[str, torch.Tensor], template: torch.Tensor,
                       split_sides: bool = True) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Pooling groups of the vertices: each named region, optionally split into its two sides of the x = 0 plane.

    The open model's regions hold both sides of the face (``microface.face.open_model``): pooled whole, a
    symmetric motion's sideways components cancel (lip corners pulled apart average to no x motion) and a
    one-sided motion is halved, so by default each region is split at the midline.

    Args:
        regions: region name -> vertex indices (K,) (a face model's ``regions``); vertices in none of them form
            the group "other" (``vertex_region_labels``).
        template: the vertices in the model frame, mm, (V, 3); the midline is x = 0 (x >= 0 counts as "+x").
        split_sides: split each region into "<name>/-x" and "<name>/+x".

    Returns:
        labels (V,) long in [0, R), and the R group names. Groups left empty by the split (a region on one side
        only) are dropped, so every group holds a vertex.

    Shape:
        template: (V, 3) -> labels: (V,).
    """
    if template.ndim != 2 or template.shape[-1] != 3:
        raise ValueError(f"region_side_labels: template must be (V, 3) vertices, got {tuple(template.shape)}")
    labels, names = vertex_region_labels(regions, template.shape[0])
    if not split_sides:
        return labels, names
    side = (template[:, 0].detach().cpu() >= 0).long()
    split = 2 * labels + side
    used = torch.unique(split)  # sorted
    remap = torch.full((2 * len(names),), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    split_names = tuple(f"{names[int(g) // 2]}/{'+x' if int(g) % 2 else '-x'}" for g in used)
    return remap[split], split_names


def region_displacement_features(vertices: torch.Tensor, labels: torch.Tensor, n_regions: int) -> torch.Tensor:
    """Displacement of every vertex from the onset (first) frame, pooled by region into one trajectory.

    Per region r and frame t: the mean displacement vector ``mean_{v in r} (x_tv - x_0v)`` (3, mm) and the mean
    displacement magnitude ``mean_{v in r} |x_tv - x_0v|`` (1, mm), in ``FEATURE_NAMES`` order; the output is
    region-major, ``out[..., t, FEATURES_PER_REGION * r + j]``. The onset frame's features are zero, and a
    translation of the whole sequence (identity, a constant offset) cancels; the mesh must be in a frame without
    head motion (the model frame) for the features to be expression motion alone.

    Args:
        vertices: a mesh sequence in mm, onset first, (*, T, V, 3).
        labels: each vertex's region, (V,) long in [0, n_regions) (``region_side_labels``).
        n_regions: R; every region must hold at least one vertex.

    Returns:
        features in mm, (*, T, R * FEATURES_PER_REGION).

    Shape:
        vertices: (*, T, V, 3), labels: (V,) -> (*, T, R * 4).

    Example:
        >>> mesh = torch.zeros(2, 3, 3); mesh[1, 0, 0] = 2.0  # vertex 0 moves 2 mm along x at frame 1
        >>> region_displacement_features(mesh, torch.tensor([0, 0, 1]), 2)[1].tolist()
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    if vertices.ndim < 3 or vertices.shape[-1] != 3 or vertices.shape[-3] < 1:
        raise ValueError(f"region_displacement_features: expected vertices (*, T, V, 3) in mm with T >= 1, got "
                         f"{tuple(vertices.shape)}")
    V = vertices.shape[-2]
    if labels.shape != (V,):
        raise ValueError(f"region_displacement_features: expected labels ({V},), one region per vertex, got "
                         f"{tuple(labels.shape)}")
    labels = labels.to(device=vertices.device, dtype=torch.long)
    if V and (int(labels.min()) < 0 or int(labels.max()) >= n_regions):
        raise ValueError(f"region_displacement_features: labels must lie in [0, {n_regions}), found "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    membership = torch.nn.functional.one_hot(labels, n_regions).to(vertices.dtype)  # (V, R)
    counts = membership.sum(0)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"region_displacement_features: regions {empty} hold no vertex (of {n_regions})")
    weights = membership / counts  # each region's mean
    displacement = vertices - vertices[..., :1, :, :]  # (*, T, V, 3)
    # mean_vector[..., t, r, k] = sum_v weights[v, r] * displacement[..., t, v, k]
    mean_vector = torch.einsum("vr,...tvk->...trk", weights, displacement)
    # mean_magnitude[..., t, r] = sum_v weights[v, r] * |displacement[..., t, v]|
    mean_magnitude = torch.einsum("vr,...tv->...tr", weights, displacement.norm(dim=-1))
    features = torch.cat([mean_vector, mean_magnitude[..., None]], dim=-1)  # (*, T, R, 4)
    return features.flatten(-2)
