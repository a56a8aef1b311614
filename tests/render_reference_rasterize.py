"""The rasterizer's visibility search as of commit c72562b (before the issue-20 speed-up), kept as the reference
that tests/test_render.py compares the current one against: same fragments, same gradients. Only what the speed-up
rewrote is here (candidate enumeration, per-pixel selection, contour edges and ``rasterize`` itself), verbatim but
for ``rasterize``'s docstring, which points at the current one; the helpers it left unchanged are imported from
``microface.render.rasterize``. Not imported by microface.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from microface.render.camera import _size_hw
from microface.render.rasterize import (  # unchanged by the speed-up
    Fragments,
    _barycentric,
    _check_mesh,
    _edge_geometry,
    _edge_twins,
    _face_pixel_ranges,
    _packed_triangles,
    _pixel_centres,
    _pytorch3d_pix_to_face,
    _safe_sqrt,
    _smoothstep_coverage,
)

_MAX_CANDIDATES_PER_CHUNK = 1 << 22


@torch.no_grad()
def _contour_edges(faces: torch.Tensor, clockwise: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Screen-space contour edges: open edges, or edges whose two faces face opposite ways on screen.

    faces (F, 3); clockwise, valid: (B * F,) per packed face -> (B * F, 3) bool.
    """
    F = faces.shape[0]
    B = clockwise.shape[0] // max(F, 1)
    twin = _edge_twins(faces)  # (F, 3)
    packed_twin = (twin[None] + F * torch.arange(B, device=faces.device)[:, None, None]).reshape(B * F, 3)
    has_twin = (twin >= 0)[None].expand(B, F, 3).reshape(B * F, 3)
    safe = torch.where(has_twin, packed_twin, 0)
    flipped = clockwise[safe] != clockwise[:, None]
    return ~has_twin | flipped | ~valid[safe]


@dataclass
class _Candidates:
    """(pixel, face) pairs found without grad. pixel: flat index ``b*H*W + row*W + col``; face: packed id."""

    pixel: torch.Tensor
    face: torch.Tensor
    depth: torch.Tensor  # (N,) depth at the pixel centre, +inf when the centre is outside the face
    approx_distance: torch.Tensor  # (N,) min signed distance to the edge LINES (exact inside, bound outside)
    clockwise: torch.Tensor  # (P,) bool per packed face: negative signed area in screen space
    valid: torch.Tensor  # (P,) bool per packed face: rasterized at all (finite, not degenerate, in front)


@torch.no_grad()
def _enumerate_candidates(
    tri: torch.Tensor, H: int, W: int, faces_per_mesh: int, margin: float, perspective_correct: bool
) -> _Candidates:
    """All (pixel, face) pairs whose pixel centre lies within ``margin`` px of the face's bbox.

    tri: (B*F, 3, 3) packed screen triangles (detached). Vectorised over faces and pixels in chunks.
    """
    device = tri.device
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    valid = torch.isfinite(tri).all(-1).all(-1) & (area.abs() > 1e-12)
    if perspective_correct:
        valid &= (z > 0).all(-1)  # no near-plane clipping: faces touching or behind the camera are dropped
    col0, row0, ncols, nrows = _face_pixel_ranges(torch.where(valid[:, None, None], tri, 0.0), H, W, margin)
    counts = torch.where(valid, ncols * nrows, 0)
    face_ids = torch.nonzero(counts, as_tuple=True)[0]
    # l_k(p) = a_k * p_x + b_k * p_y + c_k: barycentric k as an affine function of the pixel centre
    x1, x2, y1, y2 = x.roll(-1, 1), x.roll(-2, 1), y.roll(-1, 1), y.roll(-2, 1)
    a = (y1 - y2) / area[:, None]
    b = (x2 - x1) / area[:, None]
    c = (x1 * y2 - x2 * y1) / area[:, None]
    # height of corner k over the opposite edge: turns l_k into a signed distance in pixels
    height = area.abs()[:, None] / torch.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2).clamp_min(1e-12)
    depth_coef = 1.0 / z if perspective_correct else z

    # one gather per candidate instead of one per coefficient: indexing dominates the cost on CPU
    table = torch.cat(
        [a, b, c, height, depth_coef, torch.stack([col0, row0, ncols], -1).to(tri.dtype)], dim=-1
    )  # (P, 18)

    pixels, faces_out, depths, dists = [], [], [], []
    cum = torch.cumsum(counts[face_ids], 0)
    start = 0
    while start < face_ids.numel():
        # largest run of faces whose candidates fit in one chunk (at least one face)
        done_before = int(cum[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(cum, done_before + _MAX_CANDIDATES_PER_CHUNK, right=True))
        stop = max(stop, start + 1)
        fid = face_ids[start:stop]
        cnt = counts[fid]
        rep = torch.repeat_interleave(torch.arange(fid.numel(), device=device), cnt)
        offsets = torch.cumsum(cnt, 0) - cnt
        local = torch.arange(rep.numel(), device=device) - offsets[rep]
        f = fid[rep]
        t = table[f]
        nc = t[:, 17].long()
        q = local // nc
        col = t[:, 15].long() + (local - q * nc)
        row = t[:, 16].long() + q
        pcx = col.to(tri.dtype) + 0.5
        pcy = row.to(tri.dtype) + 0.5
        lam = t[:, 0:3] * pcx[:, None] + t[:, 3:6] * pcy[:, None] + t[:, 6:9]  # (N, 3)
        dist = (lam * t[:, 9:12]).amin(-1)
        inside = lam.amin(-1) >= 0
        weighted = (lam * t[:, 12:15]).sum(-1)
        depth = 1.0 / weighted if perspective_correct else weighted
        depth = torch.where(inside, depth, torch.full_like(depth, float("inf")))
        batch = f // faces_per_mesh
        pixels.append(batch * (H * W) + row * W + col)
        faces_out.append(f)
        depths.append(depth)
        dists.append(dist)
        start = stop
    if not pixels:
        empty_l = torch.zeros(0, dtype=torch.long, device=device)
        empty_f = torch.zeros(0, dtype=tri.dtype, device=device)
        return _Candidates(empty_l, empty_l, empty_f, empty_f, area < 0, valid)
    return _Candidates(torch.cat(pixels), torch.cat(faces_out), torch.cat(depths), torch.cat(dists), area < 0, valid)


@torch.no_grad()
def _select_per_pixel(pixel: torch.Tensor, key: torch.Tensor, n_pixels: int, largest: bool) -> torch.Tensor:
    """Per pixel, the candidate with the smallest (or largest) key; ties -> the largest candidate index.

    pixel, key: (N,) -> (n_pixels,) long index into the candidates, -1 where a pixel has none.
    """
    fill = float("-inf") if largest else float("inf")
    best = torch.full((n_pixels,), fill, dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, pixel, key, reduce="amax" if largest else "amin", include_self=True)
    winner = torch.nonzero(key == best[pixel], as_tuple=True)[0]
    out = torch.full((n_pixels,), -1, dtype=torch.long, device=key.device)
    out.scatter_reduce_(0, pixel[winner], winner, reduce="amax", include_self=True)
    return out


def rasterize(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size,
    blur_radius_px: float = 1.0,
    perspective_correct: bool = True,
    backend: str = "torch",
) -> Fragments:
    """The rasterizer before the speed-up: the contract (arguments, Fragments, errors) of
    ``microface.render.rasterize.rasterize``, whose docstring states it."""
    _check_mesh(screen_vertices, faces)
    if backend not in ("torch", "pytorch3d"):
        raise ValueError(f"backend: expected 'torch' or 'pytorch3d', got {backend!r}")
    if not blur_radius_px > 0:
        raise ValueError(f"blur_radius_px: expected > 0 (the anti-aliasing band), got {blur_radius_px}")
    H, W = _size_hw(image_size)
    B, F = screen_vertices.shape[0], faces.shape[0]
    dtype, device = screen_vertices.dtype, screen_vertices.device
    n_pixels = B * H * W
    tri = _packed_triangles(screen_vertices, faces)  # (B*F, 3, 3), carries grad

    cand = _enumerate_candidates(tri.detach(), H, W, F, blur_radius_px, perspective_correct)
    with torch.no_grad():
        if backend == "pytorch3d":
            p2f_flat = _pytorch3d_pix_to_face(screen_vertices, faces, H, W, perspective_correct)
        else:
            inside = torch.nonzero(torch.isfinite(cand.depth), as_tuple=True)[0]
            pick = _select_per_pixel(cand.pixel[inside], cand.depth[inside], n_pixels, largest=False)
            p2f_flat = torch.where(pick >= 0, cand.face[inside][pick.clamp_min(0)], -1)
        covered = p2f_flat >= 0
        contour = _contour_edges(faces, cand.clockwise, cand.valid)
        # a signed distance within the band (the outside bound only over-includes, never misses a pair);
        # covered pixels only need faces with a contour edge, which drops most pairs of dense meshes
        active = (cand.approx_distance > -blur_radius_px) & (cand.approx_distance < blur_radius_px)
        active &= ~covered[cand.pixel] | contour.any(-1)[cand.face]
        act_pixel, act_face = cand.pixel[active], cand.face[active]

    # differentiable part: barycentrics and depth of the visible faces, recomputed from the vertices
    fg = torch.nonzero(covered, as_tuple=True)[0]
    bary_fg, depth_fg = _barycentric(tri[p2f_flat[fg]], _pixel_centres(fg, H, W, dtype), perspective_correct)
    bary = torch.zeros(n_pixels, 3, dtype=dtype, device=device).index_put((fg,), bary_fg)
    zbuf = torch.full((n_pixels,), -1.0, dtype=dtype, device=device).index_put((fg,), depth_fg)

    # soft coverage = S(signed distance to the silhouette), from the faces near each pixel
    centres = _pixel_centres(act_pixel, H, W, dtype)
    line_dist, seg_dist2, foot, outward = _edge_geometry(tri[act_face][..., :2], centres)
    inner = line_dist.amin(-1)
    signed = torch.where(inner >= 0, inner, -_safe_sqrt(seg_dist2.amin(-1)))

    with torch.no_grad():
        # outside the mesh: the nearest face gives the exact distance to the union of all faces
        out_pair = torch.nonzero(~covered[act_pixel] & (signed > -blur_radius_px), as_tuple=True)[0]
        pick = _select_per_pixel(act_pixel[out_pair], signed.detach()[out_pair], n_pixels, largest=True)
        fr = torch.nonzero(pick >= 0, as_tuple=True)[0]
        fringe_pair = out_pair[pick[fr]]
        fringe_flat = torch.full((n_pixels,), -1, dtype=torch.long, device=device)
        fringe_flat[fr] = act_face[fringe_pair]
        # inside: distance to the nearest contour edge whose outer side is background (folds such as the
        # nose over the cheek are contours too, but the surface behind them keeps those pixels covered)
        probe = (foot + outward).detach()  # one pixel beyond the edge: a pixel centre on its outer side
        pcol, prow = torch.floor(probe[..., 0]), torch.floor(probe[..., 1])
        in_image = (pcol >= 0) & (pcol < W) & (prow >= 0) & (prow < H)
        batch = (act_pixel // (H * W))[:, None]
        probe_flat = batch * (H * W) + prow.clamp(0, H - 1).long() * W + pcol.clamp(0, W - 1).long()
        silhouette = contour[act_face] & ~(in_image & covered[probe_flat])
        qualifies = (
            covered[act_pixel][:, None] & silhouette & (line_dist >= 0) & (seg_dist2 < blur_radius_px**2)
        ).detach()
        edge_pair = torch.nonzero(qualifies.reshape(-1), as_tuple=True)[0]
        edge_key = seg_dist2.detach().reshape(-1)[edge_pair]
        pick = _select_per_pixel(act_pixel[edge_pair // 3], edge_key, n_pixels, largest=False)
        near_edge = torch.nonzero(pick >= 0, as_tuple=True)[0]
        edge_pair = edge_pair[pick[near_edge]]

    alpha = covered.to(dtype)
    alpha = alpha.index_put(
        (near_edge,), _smoothstep_coverage(_safe_sqrt(seg_dist2.reshape(-1)[edge_pair]), blur_radius_px)
    )
    alpha = alpha.index_put((fr,), _smoothstep_coverage(signed[fringe_pair], blur_radius_px))

    # the fringe is shaded like the nearest face, barycentrics clipped to it
    fr_bary, _ = _barycentric(tri[fringe_flat[fr]], _pixel_centres(fr, H, W, dtype), perspective_correct, clip=True)
    fringe_bary = torch.zeros(n_pixels, 3, dtype=dtype, device=device).index_put((fr,), fr_bary)

    return Fragments(
        pix_to_face=p2f_flat.reshape(B, H, W, 1),
        bary_coords=bary.reshape(B, H, W, 1, 3),
        zbuf=zbuf.reshape(B, H, W, 1),
        alpha=alpha.reshape(B, H, W),
        fringe_face=fringe_flat.reshape(B, H, W, 1),
        fringe_bary=fringe_bary.reshape(B, H, W, 1, 3),
    )
