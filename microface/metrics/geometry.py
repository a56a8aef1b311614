"""Geometry metrics for reconstructions: per-vertex error (mm) at the apex and over a clip, rigid alignment,
and temporal jitter (mm / frame^2). (Recognition metrics and FID live in ``microface.metrics.recognition``.)"""
from __future__ import annotations

import torch

from microface.utils.checks import check_point_pair


def per_vertex_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean vertex distance. predicted, target (..., V, 3) mm -> (...) mm."""
    check_point_pair(predicted, target, ("predicted", "target"))
    return (predicted - target).norm(dim=-1).mean(-1)


def rigid_align(predicted: torch.Tensor, target: torch.Tensor, with_scale: bool = False) -> torch.Tensor:
    """Kabsch (optionally Umeyama with scale) alignment of ``predicted`` onto ``target``.

    predicted, target (B, V, 3) -> aligned predicted (B, V, 3). Use it to score shape and expression apart
    from a rigid pose error.
    """
    check_point_pair(predicted, target, ("predicted", "target"))
    if predicted.ndim != 3:
        raise ValueError(f"rigid_align: expected (B, V, 3), got {tuple(predicted.shape)}")
    mu_p, mu_t = predicted.mean(1, keepdim=True), target.mean(1, keepdim=True)
    p, t = predicted - mu_p, target - mu_t
    # covariance[b, i, j] = sum_v p[b, v, i] * t[b, v, j]
    covariance = p.transpose(1, 2) @ t
    u, s, vh = torch.linalg.svd(covariance)
    d = torch.sign(torch.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    correction = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    rotation = vh.transpose(1, 2) @ correction @ u.transpose(1, 2)  # maps centred p onto centred t
    scale = torch.ones_like(d)
    if with_scale:
        scale = (s * torch.diagonal(correction, dim1=-2, dim2=-1)).sum(-1) / p.pow(2).sum(dim=(1, 2)).clamp_min(1e-12)
    return scale[:, None, None] * (p @ rotation.transpose(1, 2)) + mu_t


def clip_vertex_error(predicted: torch.Tensor, target: torch.Tensor, apex: int, align: bool = False) -> dict[str, float]:
    """Per-vertex error of one clip. predicted, target (T, V, 3) mm; apex: frame index.

    Returns {"apex_mm": error at the apex frame, "clip_mm": mean over all frames, "max_frame_mm": worst frame}.
    align: rigidly align each predicted frame to its target first.
    """
    check_point_pair(predicted, target, ("predicted", "target"))
    if predicted.ndim != 3 or not 0 <= apex < predicted.shape[0]:
        raise ValueError(f"expected (T, V, 3) and 0 <= apex < T, got {tuple(predicted.shape)} and apex {apex}")
    if align:
        predicted = rigid_align(predicted, target)
    per_frame = per_vertex_error(predicted, target)
    return {"apex_mm": float(per_frame[apex]), "clip_mm": float(per_frame.mean()), "max_frame_mm": float(per_frame.max())}


def temporal_jitter(vertices: torch.Tensor) -> torch.Tensor:
    """Mean norm of the second temporal difference of vertices, in mm / frame^2 (frame index as time).

    vertices (T, V, 3) -> scalar, or (B, T, V, 3) -> (B,). Needs T >= 3. A constant-velocity motion scores 0.
    """
    if vertices.ndim not in (3, 4) or vertices.shape[-1] != 3 or vertices.shape[-3] < 3:
        raise ValueError(f"vertices: expected (T, V, 3) or (B, T, V, 3) with T >= 3, got {tuple(vertices.shape)}")
    second = vertices[..., 2:, :, :] - 2.0 * vertices[..., 1:-1, :, :] + vertices[..., :-2, :, :]
    return second.norm(dim=-1).mean(dim=(-2, -1))


def moving_vertices(motion_vertices: torch.Tensor, apex: int, threshold_mm: float = 0.1) -> torch.Tensor:
    """Vertices whose ground-truth displacement from frame 0 (the onset) at the apex exceeds threshold_mm.

    motion_vertices (T, V, 3) mm, pose-free -> (V,) bool.
    """
    return (motion_vertices[apex] - motion_vertices[0]).norm(dim=-1) > threshold_mm


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values[..., mask]`` (mask (V,) bool over the last axis); NaN when the mask is empty."""
    return float(values[..., mask].mean()) if bool(mask.any()) else float("nan")


MOVING_STATIC_PARTS = ("moving", "static", "all")


def moving_static_errors(predicted: torch.Tensor, target: torch.Tensor, moving: torch.Tensor, apex: int,
                         motion: bool = False, gate: torch.Tensor | None = None) -> dict[str, float]:
    """Per-vertex error (mm) of one clip, split into moving, static and all vertices: the one moving/static scorer.

    Args:
        predicted: reconstructed vertices, mm.
        target: ground-truth vertices, mm, in the same frame as ``predicted``.
        moving: which vertices move (see :func:`moving_vertices`); static ones are ``~moving``.
        apex: index of the apex frame.
        motion: also score the displacement from frame 0 (the onset) at the apex, which a static bias of
            ``predicted`` does not affect.
        gate: a per-vertex value (e.g. DGMD's motion-attention gate) whose mean per part is reported.

    Returns:
        Per part in ``("moving", "static", "all")``, in this key order: ``{part}_apex_mm`` (mean error at the
        apex), ``{part}_clip_mm`` (mean over all frames and the part's vertices), ``motion_{part}_apex_mm`` when
        ``motion``, ``gate_{part}`` when a gate is given. NaN for a part without vertices.

    Shape:
        - predicted, target: (T, V, 3); moving: (V,) bool; gate: (T, V).
    """
    check_point_pair(predicted, target, ("predicted", "target"))
    if predicted.ndim != 3 or not 0 <= apex < predicted.shape[0]:
        raise ValueError(f"moving_static_errors: expected (T, V, 3) and 0 <= apex < T, got "
                         f"{tuple(predicted.shape)} and apex {apex}")
    if moving.dtype != torch.bool or moving.shape != predicted.shape[1:2]:
        raise ValueError(f"moving_static_errors: moving: expected ({predicted.shape[1]},) bool, got "
                         f"{tuple(moving.shape)} {moving.dtype}")
    error = (predicted - target).norm(dim=-1)  # (T, V)
    motion_error = None
    if motion:
        motion_error = ((predicted[apex] - predicted[0]) - (target[apex] - target[0])).norm(dim=-1)  # (V,)
    row: dict[str, float] = {}
    for part, mask in zip(MOVING_STATIC_PARTS, (moving, ~moving, torch.ones_like(moving))):
        row[f"{part}_apex_mm"] = masked_mean(error[apex], mask)
        row[f"{part}_clip_mm"] = masked_mean(error, mask)
        if motion_error is not None:
            row[f"motion_{part}_apex_mm"] = masked_mean(motion_error, mask)
        if gate is not None:
            row[f"gate_{part}"] = masked_mean(gate, mask)
    return row
