"""Geometry losses of the fine stage (DGMD): Laplacian smoothness of the offsets, normal consistency between
adjacent faces relative to the coarse mesh, and the flow-guided refinement loss.

Mesh helpers (edges, face adjacency, Laplacians, flow sampling) live in ``microface.models.dgmd``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_nn

from microface.data.flow import sample_at_points
from microface.mesh.laplacian import uniform_laplacian_coordinates
from microface.mesh.topology import face_adjacency, mesh_edges
from microface.render.camera import Camera, project_points
from microface.utils.checks import check_point_pair


def laplacian_smoothness(refined: torch.Tensor, coarse: torch.Tensor, faces: torch.Tensor,
                         edges: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared norm (mm^2) of the uniform Laplacian of the offsets ``refined - coarse``.

    refined, coarse (B, V, 3); faces (F, 3); edges (2, E) (from ``mesh_edges(faces)``; pass it to skip the
    rebuild) -> scalar. Zero for identical meshes and for a rigid translation of the whole mesh; positive for
    any offset field that varies between neighbours.
    """
    check_point_pair(refined, coarse, ("refined", "coarse"), "(B, V, 3)")
    edges = mesh_edges(faces) if edges is None else edges
    return uniform_laplacian_coordinates(refined - coarse, edges.to(refined.device)).pow(2).sum(-1).mean()


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit face normals. vertices (B, V, 3), faces (F, 3) -> (B, F, 3)."""
    v0, v1, v2 = (vertices[:, faces[:, k].long()] for k in range(3))
    return F_nn.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)


def normal_consistency(vertices: torch.Tensor, faces: torch.Tensor, reference: torch.Tensor | None = None,
                       adjacency: torch.Tensor | None = None) -> torch.Tensor:
    """Agreement of the normals of faces sharing an edge.

    vertices (B, V, 3); faces (F, 3); reference (B, V, 3) or None; adjacency (2, P) from ``face_adjacency``
    (pass it to skip the rebuild) -> scalar.
    Without reference: mean ``1 - cos`` over adjacent face pairs (pytorch3d's mesh_normal_consistency).
    With reference (the coarse mesh): mean ``|cos_ref - cos|``, so the face's own curvature is not penalised,
    only the creases the refinement adds or removes; zero for identical meshes.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected (B, V, 3), got {tuple(vertices.shape)}")
    adjacency = face_adjacency(faces) if adjacency is None else adjacency
    adjacency = adjacency.to(vertices.device)

    def pair_cosines(v: torch.Tensor) -> torch.Tensor:
        n = face_normals(v, faces)
        return (n[:, adjacency[0]] * n[:, adjacency[1]]).sum(-1)  # (B, P)

    cos = pair_cosines(vertices)
    if reference is None:
        return (1.0 - cos).mean()
    check_point_pair(vertices, reference, ("vertices", "reference"), "(B, V, 3)")
    return (pair_cosines(reference) - cos).abs().mean()


def projected_displacement(vertices_t: torch.Tensor, vertices_onset: torch.Tensor, camera: Camera) -> torch.Tensor:
    """2D motion of each vertex from the onset to frame t. (B, V, 3) x2, camera (batch B) -> (B, V, 2) pixels."""
    return project_points(vertices_t, camera)[..., :2] - project_points(vertices_onset, camera)[..., :2]


def flow_guided_loss(refined_t: torch.Tensor, refined_onset: torch.Tensor, camera: Camera,
                     flow_onset_to_t: torch.Tensor, visible: torch.Tensor | None = None,
                     eps: float = 1e-3) -> torch.Tensor:
    """Projected motion of the refined mesh vs the observed flow, over visible vertices.

    refined_t, refined_onset (B, V, 3) mm; camera (batch B); flow_onset_to_t (B, 2, H, W) px, sampled at each
    vertex's onset projection (position detached: the flow is the target, not a function to climb);
    visible (B, V) bool or None (None: vertices projecting inside the image) -> scalar, the mean Charbonnier
    distance ``sqrt(|d - flow|^2 + eps^2) - eps`` in pixels: exactly zero when the motion equals the flow, robust
    to flow outliers.
    """
    check_point_pair(refined_t, refined_onset, ("refined_t", "refined_onset"), "(B, V, 3)")
    if flow_onset_to_t.ndim != 4 or flow_onset_to_t.shape[:2] != (refined_t.shape[0], 2):
        raise ValueError(f"flow_onset_to_t: expected ({refined_t.shape[0]}, 2, H, W), got "
                         f"{tuple(flow_onset_to_t.shape)}")
    onset_px = project_points(refined_onset, camera)[..., :2]
    motion = project_points(refined_t, camera)[..., :2] - onset_px
    observed = sample_at_points(flow_onset_to_t.to(motion.dtype), onset_px.detach())
    H, W = flow_onset_to_t.shape[-2:]
    if visible is None:
        x, y = onset_px.detach().unbind(-1)
        visible = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    if visible.shape != refined_t.shape[:2]:
        raise ValueError(f"visible: expected {tuple(refined_t.shape[:2])}, got {tuple(visible.shape)}")
    per_vertex = ((motion - observed).pow(2).sum(-1) + eps**2).sqrt() - eps
    weight = visible.to(per_vertex.dtype)
    return (per_vertex * weight).sum() / weight.sum().clamp_min(1.0)


def vertex_visibility(vertices: torch.Tensor, camera: Camera, zbuf: torch.Tensor,
                      tolerance_mm: float = 1.5) -> torch.Tensor:
    """Vertices that project inside the image and are not hidden in the depth buffer.

    vertices (B, V, 3) mm; camera (batch B); zbuf (B, H, W, 1) from ``rasterize`` of the same mesh -> (B, V) bool.
    """
    B, H, W, _ = zbuf.shape
    screen = project_points(vertices.detach(), camera)
    col, row = screen[..., 0].floor().long(), screen[..., 1].floor().long()
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    batch = torch.arange(B, device=vertices.device)[:, None].expand_as(col)
    depth_there = zbuf[batch, row.clamp(0, H - 1), col.clamp(0, W - 1), 0]
    return inside & (depth_there > 0) & (screen[..., 2] <= depth_there + tolerance_mm)
