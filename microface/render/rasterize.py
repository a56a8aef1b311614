"""Differentiable mesh renderer in pure torch: project -> rasterize -> fragments -> shade.

The API imitates pytorch3d (a renderer is a rasterizer plus a shader; fragments are a plain structure with
``pix_to_face``, ``bary_coords``, ``zbuf``) so code that consumes fragments (DGMD's pixel-vertex pooling)
runs unchanged on the optional pytorch3d backend.

Shapes: B batch, V vertices, F faces (per mesh), H/W image size, C channels.

Conventions
-----------
World frame: the face model's (millimetres, +x subject's left, +y up, +z out of the face toward a frontal
camera). Camera frame: OpenCV's (+x right in the image, +y down in the image, +z forward along the optical
axis, so depth is positive in front of the camera and larger farther away). A camera holds world->camera
``X_cam = X_world @ R^T + t``. The frontal camera of :func:`look_at_camera` is ``R = diag(1, -1, -1)``,
``t = (0, 0, distance)``: world +x (the subject's left) lands on the image's right, world +y on the image's
top, exactly as a camera facing the subject sees it (no mirroring).

Screen space: ``(x_px, y_px, depth)``; x to the right, y DOWN, in pixels, with pixel ``(row i, col j)``
centred at ``(j + 0.5, i + 0.5)``; depth is the camera-frame z in millimetres (also for weak perspective,
where it only serves the z-test).

Fragments (``faces_per_pixel = 1``):
- ``pix_to_face (B, H, W, 1)`` long: index into the PACKED faces, ``b * F + f`` (pytorch3d's convention),
  ``-1`` on background. Recover the per-mesh face with ``pix_to_face % F``. Only faces whose interior
  contains the pixel centre are reported (the blur radius never widens it), so it is an exact
  pixel -> face correspondence.
- ``bary_coords (B, H, W, 1, 3)``: barycentric weights of the pixel centre in that face, perspective-correct
  for perspective cameras (screen-space weights ``l_k`` become ``(l_k / z_k) / sum_j (l_j / z_j)``, which are
  the weights of the 3D surface point); zeros on background. They are differentiable w.r.t. the screen
  vertices: visibility is found without grad, the weights are then recomputed from the vertices.
- ``zbuf (B, H, W, 1)``: depth of the surface point at the pixel centre (``sum_k bary_k z_k``), ``-1`` on
  background.
- ``alpha (B, H, W)``: soft coverage in [0, 1] for anti-aliasing and silhouette gradients (see
  :func:`rasterize`).
- ``fringe_face``, ``fringe_bary``: for pixels just outside the silhouette (no face, ``alpha > 0``), the
  nearest face within the blur radius and the barycentrics of the pixel centre clipped to that triangle,
  so the anti-aliased fringe can be coloured like the surface next to it. ``-1`` / zeros elsewhere.

Example
-------
>>> import torch
>>> from microface.render import MeshRenderer, look_at_camera, sh_constant
>>> cam = look_at_camera(500.0, 300.0, (64, 64), batch_size=1)
>>> verts = torch.tensor([[[-40.0, -40.0, 0.0], [40.0, -40.0, 0.0], [0.0, 40.0, 0.0]]])
>>> faces = torch.tensor([[0, 1, 2]])
>>> out = MeshRenderer()(verts, faces, cam, torch.ones(1, 3, 3), sh_constant(1, 1.0), (64, 64))
>>> tuple(out.image.shape), bool(out.mask.any())
((1, 3, 64, 64), True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from microface.render.camera import _size_hw

__all__ = ["Fragments", "rasterize", "interpolate_vertex_attributes", "packed_pix_to_face"]

# Faces enumerated per vectorised chunk of (pixel, face) candidates: bounds peak memory at a few hundred MB.
_MAX_CANDIDATES_PER_CHUNK = 1 << 22
# Mean box row width (pixels) from which visibility visits each face's row spans instead of its whole box.
_MIN_MEAN_ROW_FOR_SPANS = 4


# ---------------------------------------------------------------------------------------- rasterizer
@dataclass
class Fragments:
    """Per-pixel rasterization result (see the module docstring for exact conventions).

    Attributes:
        pix_to_face: long, packed face index ``b * F + f``, -1 background, shape (B, H, W, 1).
        bary_coords: perspective-correct barycentrics (zeros on background), differentiable, shape (B, H, W, 1, 3).
        zbuf: depth in mm of the surface point, -1 background, differentiable, shape (B, H, W, 1).
        alpha: soft coverage in [0, 1], differentiable w.r.t. screen vertices, shape (B, H, W).
        fringe_face: long, nearest face for pixels in the anti-aliased fringe outside the mesh, else -1,
            shape (B, H, W, 1).
        fringe_bary: barycentrics clipped to that face, else zeros, shape (B, H, W, 1, 3).
    """

    pix_to_face: torch.Tensor
    bary_coords: torch.Tensor
    zbuf: torch.Tensor
    alpha: torch.Tensor
    fringe_face: torch.Tensor
    fringe_bary: torch.Tensor

    @classmethod
    def from_flat(cls, B: int, H: int, W: int, pix_to_face, bary_coords, zbuf, alpha, fringe_face, fringe_bary):
        """Fragments from per-pixel tensors over the B * H * W pixels (one face per pixel).

        Args:
            B, H, W: batch and image size.
            pix_to_face, zbuf, alpha, fringe_face: (B * H * W,) each.
            bary_coords, fringe_bary: (B * H * W, 3) each.

        Returns:
            Fragments shaped as documented on the class.
        """
        return cls(
            pix_to_face=pix_to_face.reshape(B, H, W, 1),
            bary_coords=bary_coords.reshape(B, H, W, 1, 3),
            zbuf=zbuf.reshape(B, H, W, 1),
            alpha=alpha.reshape(B, H, W),
            fringe_face=fringe_face.reshape(B, H, W, 1),
            fringe_bary=fringe_bary.reshape(B, H, W, 1, 3),
        )

    @property
    def mask(self) -> torch.Tensor:
        """Bool, pixels whose centre lies on a face, shape (B, H, W)."""
        return self.pix_to_face[..., 0] >= 0


def _check_mesh(screen_vertices: torch.Tensor, faces: torch.Tensor) -> None:
    if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        raise ValueError(f"screen_vertices: expected (B, V, 3), got {tuple(screen_vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"faces: expected (F, 3) integer tensor, got {tuple(faces.shape)} {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= screen_vertices.shape[1]):
        raise ValueError(
            f"faces: indices must lie in [0, {screen_vertices.shape[1]}), found "
            f"[{int(faces.min())}, {int(faces.max())}]"
        )


def _packed_triangles(screen_vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """screen_vertices (B, V, 3), faces (F, 3) -> packed triangles (B * F, 3 corners, 3)."""
    B = screen_vertices.shape[0]
    return screen_vertices[:, faces.long()].reshape(B * faces.shape[0], 3, 3)


def _barycentric(
    tri: torch.Tensor, px: torch.Tensor, perspective_correct: bool, clip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics of 2D points in screen triangles.

    tri: (P, 3, 3) screen corners; px: (P, 2) points -> (bary (P, 3), depth (P,)).
    ``clip`` clamps negative weights to 0 and renormalises (pytorch3d's clip_barycentric_coords).
    """
    x, y, z = tri.unbind(-1)  # each (P, 3)
    # l_k = signed area of the sub-triangle opposite corner k / signed area of the triangle
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    px_x, px_y = px.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = (x1 - px_x) * (y2 - px_y) - (x2 - px_x) * (y1 - px_y)
    w1 = (x2 - px_x) * (y0 - px_y) - (x0 - px_x) * (y2 - px_y)
    w2 = (x0 - px_x) * (y1 - px_y) - (x1 - px_x) * (y0 - px_y)
    bary = torch.stack([w0, w1, w2], dim=-1) / area[:, None]
    if clip:
        bary = bary.clamp_min(0.0)
        bary = bary / bary.sum(-1, keepdim=True).clamp_min(1e-12)
    if perspective_correct:
        # screen-linear weights interpolate 1/z; dividing by z_k turns them into 3D surface weights
        weighted = bary / z
        inv_depth = weighted.sum(-1)
        bary = weighted / inv_depth[:, None]
    depth = (bary * z).sum(-1)
    return bary, depth


def _edge_geometry(tri2d: torch.Tensor, px: torch.Tensor):
    """Distances from points to the edges of screen triangles; edge k runs from corner k to corner k+1.

    tri2d: (P, 3, 2), px: (P, 2) -> line_dist (P, 3) signed distance to each edge LINE (inside positive),
    seg_dist2 (P, 3) squared distance to each edge SEGMENT, foot (P, 3, 2) nearest point on each segment,
    outward (P, 3, 2) unit outward normal of each edge.
    """
    a = tri2d
    e = tri2d.roll(-1, dims=1) - a  # (P, 3, 2)
    rel = px[:, None, :] - a  # (P, 3, 2)
    area = e[:, 0, 0] * (-e[:, 2, 1]) - e[:, 0, 1] * (-e[:, 2, 0])  # cross(p1 - p0, p2 - p0)
    orient = torch.sign(area)[:, None]
    edge_len = (e * e).sum(-1).clamp_min(1e-24).sqrt()
    # cross(e, rel) has the sign of the triangle's area on the inner side of the edge
    line_dist = (e[..., 0] * rel[..., 1] - e[..., 1] * rel[..., 0]) * orient / edge_len
    s = ((rel * e).sum(-1) / (edge_len * edge_len)).clamp(0.0, 1.0)
    foot = a + s[..., None] * e
    seg = px[:, None, :] - foot
    seg_dist2 = (seg * seg).sum(-1)
    outward = torch.stack([e[..., 1], -e[..., 0]], dim=-1) * (orient / edge_len)[..., None]
    return line_dist, seg_dist2, foot, outward


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    # clamp keeps the gradient finite at 0 (a pixel centre exactly on an edge)
    return x.clamp_min(1e-20).sqrt()


def _signed_distance(line_dist: torch.Tensor, seg_dist2: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, inside positive) from points to screen triangles, from :func:`_edge_geometry`'s
    line_dist and seg_dist2 (P, 3) -> (P,).

    Inside: distance to the nearest edge line; outside: minus the distance to the nearest edge segment.
    Continuous and zero on the boundary.
    """
    inside = line_dist.amin(-1)
    return torch.where(inside >= 0, inside, -_safe_sqrt(seg_dist2.amin(-1)))


def _edge_twins(faces: torch.Tensor) -> torch.Tensor:
    """Neighbour across each edge. faces (F, 3) -> (F, 3) long face index, -1 on open or non-manifold edges.

    Edge k of face f runs from corner k to corner k+1 (half-edge id ``3 f + k``).
    """
    faces = faces.long()
    u, v = faces, faces.roll(-1, dims=1)
    n_vertices = int(faces.max()) + 1 if faces.numel() else 1
    key = (torch.minimum(u, v) * n_vertices + torch.maximum(u, v)).reshape(-1)
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    _, inverse, counts = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    paired = counts[inverse] == 2
    n = key.numel()
    pos = torch.arange(n, device=faces.device)
    with_next = torch.zeros(n, dtype=torch.bool, device=faces.device)
    with_next[:-1] = sorted_key[:-1] == sorted_key[1:]
    partner_pos = torch.where(with_next, pos + 1, pos - 1)
    twin_sorted = torch.where(paired, order[partner_pos.clamp(0, max(n - 1, 0))], -1)
    twin = torch.empty_like(twin_sorted)
    twin[order] = twin_sorted
    return torch.where(twin >= 0, twin // 3, -1).reshape(faces.shape)


@torch.no_grad()
def _contour_edges(
    faces: torch.Tensor, clockwise: torch.Tensor, valid: torch.Tensor, twin: torch.Tensor | None = None
) -> torch.Tensor:
    """Screen-space contour edges: open edges, or edges whose two faces face opposite ways on screen.

    faces (F, 3); clockwise, valid: (B * F,) per packed face; twin: :func:`_edge_twins` of faces when known
    -> (B * F, 3) bool.
    """
    F = faces.shape[0]
    B = clockwise.shape[0] // max(F, 1)
    if twin is None:
        twin = _edge_twins(faces)  # (F, 3)
    packed_twin = (twin[None] + F * torch.arange(B, device=faces.device)[:, None, None]).reshape(B * F, 3)
    has_twin = (twin >= 0)[None].expand(B, F, 3).reshape(B * F, 3)
    safe = torch.where(has_twin, packed_twin, 0)
    flipped = clockwise[safe] != clockwise[:, None]
    return ~has_twin | flipped | ~valid[safe]


def _smoothstep_coverage(signed_distance: torch.Tensor, radius: float) -> torch.Tensor:
    """Cubic smoothstep of the signed distance over [-radius, radius]: 0 outside, 1 deep inside, C1.

    Symmetric, S(-d) = 1 - S(d): what it adds just outside an edge it removes just inside, so the
    alpha-weighted area of a straight edge is exact. signed_distance (...) -> (...).
    """
    u = ((signed_distance + radius) / (2.0 * radius)).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _face_pixel_ranges(tri: torch.Tensor, H: int, W: int, margin: float):
    """Inclusive pixel index ranges of each packed face's bbox grown by ``margin`` px, clamped to the image.

    tri: (P, 3, 3) -> col0, row0, ncols, nrows, each (P,) long (zero counts for faces off-screen).
    """
    xmin = tri[..., 0].amin(-1) - margin
    xmax = tri[..., 0].amax(-1) + margin
    ymin = tri[..., 1].amin(-1) - margin
    ymax = tri[..., 1].amax(-1) + margin
    # pixel j has its centre at j + 0.5: j in [ceil(xmin - 0.5), floor(xmax - 0.5)]
    big = float(max(H, W) + 2)
    col0 = torch.ceil(xmin - 0.5).clamp(-1, big).long().clamp_min(0)
    col1 = torch.floor(xmax - 0.5).clamp(-1, big).long().clamp_max(W - 1)
    row0 = torch.ceil(ymin - 0.5).clamp(-1, big).long().clamp_min(0)
    row1 = torch.floor(ymax - 0.5).clamp(-1, big).long().clamp_max(H - 1)
    ncols = (col1 - col0 + 1).clamp_min(0)
    nrows = (row1 - row0 + 1).clamp_min(0)
    return col0, row0, ncols, nrows


def _box_pixels(
    face_ids: torch.Tensor,
    col0: torch.Tensor,
    row0: torch.Tensor,
    ncols: torch.Tensor,
    counts: torch.Tensor,
    payload: torch.Tensor | None = None,
):
    """Pixels of each listed box, box-major then row-major, in chunks of bounded size.

    face_ids (K,) listed boxes; col0, row0, ncols, counts (P,) per box (counts = ncols * nrows); payload (P,)
    the packed face of each box (default: the box id itself, one box per packed face).
    Yields (f, row, col), each (N,) long: the packed face and pixel of every (face, pixel) pair of a chunk.
    """
    if face_ids.numel() == 0:
        return
    device = face_ids.device
    cnt_all = counts[face_ids]
    cum = torch.cumsum(cnt_all, 0)
    owner = face_ids if payload is None else payload[face_ids]
    ints = torch.stack([owner, col0[face_ids], row0[face_ids], ncols[face_ids], cum - cnt_all], -1)  # (K, 5)
    cum_list = cum.tolist() if face_ids.numel() < 65536 else None
    start, n = 0, face_ids.numel()
    while start < n:
        # largest run of faces whose candidates fit in one chunk (at least one face)
        done_before = (cum_list[start - 1] if cum_list is not None else int(cum[start - 1])) if start > 0 else 0
        stop = int(torch.searchsorted(cum, done_before + _MAX_CANDIDATES_PER_CHUNK, right=True))
        stop = max(stop, start + 1)
        cnt = cnt_all[start:stop]
        total = (cum_list[stop - 1] if cum_list is not None else int(cum[stop - 1])) - done_before
        per = torch.repeat_interleave(ints[start:stop], cnt, dim=0, output_size=total)  # (N, 5)
        local = torch.arange(done_before, done_before + total, device=device) - per[:, 4]
        nc = per[:, 3]
        q = torch.div(local, nc, rounding_mode="floor")
        yield per[:, 0], per[:, 2] + q, per[:, 1] + (local - q * nc)
        start = stop


class _MeshConstants:
    """Topology work done once per faces tensor (edge twins), reused while the same faces come back."""

    def __init__(self) -> None:
        self._entries: list[tuple[torch.Tensor, torch.Tensor]] = []

    def twins(self, faces: torch.Tensor) -> torch.Tensor:
        """faces (F, 3) -> :func:`_edge_twins` (F, 3), cached by value (the check is one comparison)."""
        for key, twin in self._entries:
            if key.shape == faces.shape and key.device == faces.device and torch.equal(key, faces):
                return twin
        twin = _edge_twins(faces)
        self._entries = [(faces.detach().clone(), twin)] + self._entries[:3]
        return twin


_MESH_CONSTANTS = _MeshConstants()


@torch.no_grad()
def _face_tables(tri: torch.Tensor, perspective_correct: bool):
    """Per packed face: barycentric planes, corner heights, depth coefficients, validity and winding.

    tri: (P, 3, 3) detached -> a, b, c, height, depth_coef (P, 3) each, with ``l_k(p) = a_k p_x + b_k p_y + c_k``
    the barycentric k as an affine function of the pixel centre; area (P,); valid (P,) bool.
    """
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    valid = torch.isfinite(tri).all(-1).all(-1) & (area.abs() > 1e-12)
    if perspective_correct:
        valid &= (z > 0).all(-1)  # no near-plane clipping: faces touching or behind the camera are dropped
    x1, x2, y1, y2 = x.roll(-1, 1), x.roll(-2, 1), y.roll(-1, 1), y.roll(-2, 1)
    a = (y1 - y2) / area[:, None]
    b = (x2 - x1) / area[:, None]
    c = (x1 * y2 - x2 * y1) / area[:, None]
    # height of corner k over the opposite edge: turns l_k into a signed distance in pixels
    height = area.abs()[:, None] / torch.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2).clamp_min(1e-12)
    depth_coef = 1.0 / z if perspective_correct else z
    return a, b, c, height, depth_coef, area, valid


def _box_counts(tri: torch.Tensor, valid: torch.Tensor, H: int, W: int, margin: float):
    """Per packed face: its pixel box grown by ``margin`` -> col0, row0, ncols, nrows, counts (P,) long."""
    col0, row0, ncols, nrows = _face_pixel_ranges(torch.where(valid[:, None, None], tri, 0.0), H, W, margin)
    return col0, row0, ncols, nrows, torch.where(valid, ncols * nrows, 0)


@torch.no_grad()
def _row_spans(tri: torch.Tensor, planes, valid: torch.Tensor, H: int, W: int):
    """Per packed face and pixel row of its box, the columns whose centres may lie inside the face.

    A superset of the exact test ``min_k l_k >= 0`` (each edge's bound is widened by far more than the rounding
    of ``l_k``), in face-major, row-major order, so the exact test on it finds exactly the pairs of the whole box.
    tri (P, 3, 3), planes (a, b, c) each (P, 3), valid (P,) -> (ids, row0, col0, ncols, payload, counts): the
    boxes of :func:`_box_pixels` (one per span, payload its face; or, for narrow faces, one per face, payload None).
    """
    col0, row0, ncols, nrows, counts = _box_counts(tri, valid, H, W, 0.0)
    nrows = torch.where(counts > 0, nrows, 0)
    if int(counts.sum()) < _MIN_MEAN_ROW_FOR_SPANS * int(nrows.sum()):
        # narrow faces (dense meshes): whole box rows cost less than computing their spans
        face_ids = torch.nonzero(nrows, as_tuple=True)[0]
        return face_ids, row0, col0, ncols, None, counts
    face_ids = torch.nonzero(nrows, as_tuple=True)[0]
    n_rows = nrows.index_select(0, face_ids)
    total = int(n_rows.sum())
    seg_face = torch.repeat_interleave(face_ids, n_rows, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(n_rows, 0) - n_rows, n_rows, output_size=total)
    seg_row = row0.index_select(0, seg_face) + torch.arange(total, device=tri.device) - first
    a, b, c = (p.index_select(0, seg_face).double() for p in planes)  # (S, 3)
    y = seg_row.double()[:, None] + 0.5
    rest = b * y + c  # l_k = a_k x + rest_k >= 0
    bound = -rest / torch.where(a == 0, 1.0, a)
    slack = 1e-4 * ((a.abs() * (W + 1) + b.abs() * (H + 1) + c.abs()) / a.abs().clamp_min(1e-300) + 1.0)
    big = float(H + W + 4)
    lower = torch.where(a > 0, bound - slack, torch.where((a == 0) & (rest < 0), big, -big))
    upper = torch.where(a < 0, bound + slack, torch.where((a == 0) & (rest < 0), -big, big))
    x_lo = lower.clamp(-big, big).amax(-1)
    x_hi = upper.clamp(-big, big).amin(-1)
    box0 = col0.index_select(0, seg_face)
    box1 = box0 + ncols.index_select(0, seg_face) - 1
    # pixel j has its centre at j + 0.5
    start = torch.maximum(torch.ceil(x_lo - 0.5).long(), box0)
    stop = torch.minimum(torch.floor(x_hi - 0.5).long(), box1)
    ncols = (stop - start + 1).clamp_min(0)
    return torch.nonzero(ncols, as_tuple=True)[0], seg_row, start, ncols, seg_face, ncols


@torch.no_grad()
def _visible_faces(tri, planes, depth_coef, valid, H: int, W: int, faces_per_mesh: int, perspective_correct: bool):
    """Hard visibility: per pixel the nearest face whose interior holds the pixel centre -> (B*H*W,) long, -1 none.

    Only each face's own pixel box is visited (a centre inside a face lies in its box); ties in depth go to the
    largest packed face id, as when every face's grown box was visited in face order.
    """
    a, b, c = planes
    ids, box_row0, box_col0, box_ncols, payload, box_counts = _row_spans(tri, (a, b, c), valid, H, W)
    dtype = tri.dtype
    pixels, faces_out, depths = [], [], []
    table = torch.cat([a, b, c, depth_coef], -1)  # (P, 12): one gather per pair
    for f, row, col in _box_pixels(ids, box_col0, box_row0, box_ncols, box_counts, payload=payload):
        t = table.index_select(0, f)
        pcx = col.to(dtype) + 0.5
        pcy = row.to(dtype) + 0.5
        lam = t[:, 0:3] * pcx[:, None] + t[:, 3:6] * pcy[:, None] + t[:, 6:9]  # (N, 3)
        ins = torch.nonzero(lam.amin(-1) >= 0, as_tuple=True)[0]
        weighted = (lam.index_select(0, ins) * t.index_select(0, ins)[:, 9:12]).sum(-1)
        depths.append(1.0 / weighted if perspective_correct else weighted)
        fi = f.index_select(0, ins)
        pixels.append(
            torch.div(fi, faces_per_mesh, rounding_mode="floor") * (H * W)
            + row.index_select(0, ins) * W + col.index_select(0, ins)
        )
        faces_out.append(fi)
    n_pixels = (tri.shape[0] // max(faces_per_mesh, 1)) * H * W
    if not pixels:
        return torch.full((n_pixels,), -1, dtype=torch.long, device=tri.device)
    pixel, face, depth = torch.cat(pixels), torch.cat(faces_out), torch.cat(depths)
    if depth.dtype == torch.float32 and tri.shape[0] < 2**31:
        return _nearest_face_float32(pixel, face, depth, n_pixels)
    pick = _select_per_pixel(pixel, depth, n_pixels, largest=False)
    return torch.where(pick >= 0, face.index_select(0, pick.clamp_min(0)), -1)


@torch.no_grad()
def _nearest_face_float32(pixel: torch.Tensor, face: torch.Tensor, depth: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Per pixel the face of smallest float32 depth, ties -> the largest face id, in ONE scatter.

    The depth's bits, made order-preserving as a signed int32, go in the high half of an int64 key and
    ``2^31 - 1 - face`` in the low half, so the key's minimum is :func:`_select_per_pixel`'s pick.
    pixel, face (N,) long, depth (N,) float32 -> (n_pixels,) long face, -1 where none.
    """
    bits = depth.view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order
    key = (bits.to(torch.int64) << 32) | (0x7FFFFFFF - face)
    none = torch.iinfo(torch.int64).max
    best = torch.full((n_pixels,), none, dtype=torch.int64, device=pixel.device)
    best.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)
    return torch.where(best == none, -1, 0x7FFFFFFF - (best & 0xFFFFFFFF))


@torch.no_grad()
def _band_pairs(
    tri, planes, height, valid, covered, contour_face, H: int, W: int, faces_per_mesh: int, margin: float
):
    """(pixel, face) pairs whose signed distance (to the edge lines) lies in (-margin, margin) and that matter
    for the soft coverage: an uncovered pixel with any face, or a covered pixel with a face with a contour edge.

    Faces without a contour edge whose grown box holds no uncovered pixel cannot give such a pair and are skipped
    (a summed-area table of the uncovered pixels answers that per face in four look-ups). Returns pixel, face (N,)
    long, in face-major, row-major order within each face.
    """
    a, b, c = planes
    B = tri.shape[0] // max(faces_per_mesh, 1)
    col0, row0, ncols, nrows, counts = _box_counts(tri, valid, H, W, margin)
    uncovered = (~covered).reshape(B, H, W).to(torch.int32)
    sat = torch.zeros(B, H + 1, W + 1, dtype=torch.int32, device=tri.device)
    sat[:, 1:, 1:] = uncovered.cumsum(1).cumsum(2)
    batch = torch.div(torch.arange(tri.shape[0], device=tri.device), faces_per_mesh, rounding_mode="floor")
    flat = sat.reshape(-1)
    base = batch * ((H + 1) * (W + 1))
    r0, r1 = row0.clamp(0, H), (row0 + nrows).clamp(0, H)
    c0, c1 = col0.clamp(0, W), (col0 + ncols).clamp(0, W)
    n_uncovered = (
        flat[base + r1 * (W + 1) + c1] - flat[base + r0 * (W + 1) + c1]
        - flat[base + r1 * (W + 1) + c0] + flat[base + r0 * (W + 1) + c0]
    )
    face_ids = torch.nonzero((counts > 0) & (contour_face | (n_uncovered > 0)), as_tuple=True)[0]
    dtype = tri.dtype
    pixels, faces_out = [], []
    table = torch.cat([a, b, c, height], -1)  # (P, 12)
    for f, row, col in _box_pixels(face_ids, col0, row0, ncols, counts):
        t = table.index_select(0, f)
        pcx = col.to(dtype) + 0.5
        pcy = row.to(dtype) + 0.5
        lam = t[:, 0:3] * pcx[:, None] + t[:, 3:6] * pcy[:, None] + t[:, 6:9]  # (N, 3)
        dist = (lam * t[:, 9:12]).amin(-1)
        pixel = torch.div(f, faces_per_mesh, rounding_mode="floor") * (H * W) + row * W + col
        keep = (dist > -margin) & (dist < margin) & (~covered.index_select(0, pixel) | contour_face.index_select(0, f))
        keep = torch.nonzero(keep, as_tuple=True)[0]
        pixels.append(pixel.index_select(0, keep))
        faces_out.append(f.index_select(0, keep))
    if not pixels:
        empty = torch.zeros(0, dtype=torch.long, device=tri.device)
        return empty, empty
    return torch.cat(pixels), torch.cat(faces_out)


@torch.no_grad()
def _select_per_pixel(pixel: torch.Tensor, key: torch.Tensor, n_pixels: int, largest: bool) -> torch.Tensor:
    """Per pixel, the candidate with the smallest (or largest) key; ties -> the largest candidate index.

    pixel, key: (N,) -> (n_pixels,) long index into the candidates, -1 where a pixel has none.
    """
    fill = float("-inf") if largest else float("inf")
    best = torch.full((n_pixels,), fill, dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, pixel, key, reduce="amax" if largest else "amin", include_self=True)
    winner = torch.nonzero(key == best.index_select(0, pixel), as_tuple=True)[0]
    out = torch.full((n_pixels,), -1, dtype=torch.long, device=key.device)
    out.scatter_reduce_(0, pixel.index_select(0, winner), winner, reduce="amax", include_self=True)
    return out


def _pixel_centres(flat_pixels: torch.Tensor, H: int, W: int, dtype) -> torch.Tensor:
    """flat pixel ids (P,) ``b*H*W + row*W + col`` -> centres (P, 2) = (col + 0.5, row + 0.5)."""
    rem = flat_pixels % (H * W)
    return torch.stack([(rem % W).to(dtype) + 0.5, (rem // W).to(dtype) + 0.5], dim=-1)


def _pytorch3d_pix_to_face(
    screen_vertices: torch.Tensor, faces: torch.Tensor, H: int, W: int, perspective_correct: bool
):
    """Hard visibility from pytorch3d's rasterizer, converted to our screen convention. -> (B*H*W,) long."""
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError as err:
        raise ImportError(
            "backend='pytorch3d' needs pytorch3d, which is optional and not installable from pip on CPU "
            "machines. On a GPU node install it with conda (`conda install pytorch3d -c pytorch3d`) or build "
            "it from source (https://github.com/facebookresearch/pytorch3d/blob/main/INSTALL.md); otherwise use "
            "backend='torch'."
        ) from err
    s = float(min(H, W))
    # pytorch3d NDC: +x left, +y up, the shorter side spans [-1, 1]; its pixel (i, j) centre maps to our
    # (j + 0.5, i + 0.5) under ndc_x = (W - 2 x_px) / s, ndc_y = (H - 2 y_px) / s
    ndc = torch.stack(
        [(W - 2.0 * screen_vertices[..., 0]) / s, (H - 2.0 * screen_vertices[..., 1]) / s, screen_vertices[..., 2]],
        dim=-1,
    ).detach()
    B = screen_vertices.shape[0]
    meshes = Meshes(verts=list(ndc), faces=[faces.long()] * B)
    pix_to_face, _, _, _ = rasterize_meshes(
        meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1, perspective_correct=perspective_correct,
        clip_barycentric_coords=False, cull_backfaces=False,
    )
    return pix_to_face.reshape(-1)


@torch.no_grad()
def _coverage_faces(tri, planes, height, valid, covered, contour, H: int, W: int, faces_per_mesh: int, radius: float):
    """The faces that set each pixel's soft coverage, found with vectorised torch ops (any device).

    Outside the mesh: the face of largest signed distance above ``-radius``; inside: the silhouette edge (a contour
    edge whose outer side is background) nearest within ``radius``, the pixel on its inner side. Ties go to the
    largest candidate (face, then edge), as in :func:`microface.render.raster_kernel.coverage_faces`.
    tri (P, 3, 3) detached, planes (a, b, c) and height (P, 3), valid (P,), covered (N,), contour (P, 3) bool
    -> fringe_face, edge_face, edge_index, each (N,) long, -1 where none.
    """
    n_pixels = covered.shape[0]
    act_pixel, act_face = _band_pairs(
        tri, planes, height, valid, covered, contour.any(-1), H, W, faces_per_mesh, radius
    )
    line_dist, seg_dist2, foot, outward = _edge_geometry(
        tri.index_select(0, act_face)[..., :2], _pixel_centres(act_pixel, H, W, tri.dtype)
    )
    signed = _signed_distance(line_dist, seg_dist2)
    none = torch.full((n_pixels,), -1, dtype=torch.long, device=tri.device)
    # outside the mesh: the nearest face gives the exact distance to the union of all faces
    out_pair = torch.nonzero(~covered[act_pixel] & (signed > -radius), as_tuple=True)[0]
    pick = _select_per_pixel(act_pixel[out_pair], signed[out_pair], n_pixels, largest=True)
    fringe_face = torch.where(pick >= 0, act_face[out_pair[pick.clamp_min(0)]], -1) if out_pair.numel() else none
    # inside: the nearest contour edge whose outer side is background (folds such as the nose over the cheek are
    # contours too, but the surface behind them keeps those pixels covered)
    probe = foot + outward  # one pixel beyond the edge: a pixel centre on its outer side
    pcol, prow = torch.floor(probe[..., 0]), torch.floor(probe[..., 1])
    in_image = (pcol >= 0) & (pcol < W) & (prow >= 0) & (prow < H)
    batch = (act_pixel // (H * W))[:, None]
    probe_flat = batch * (H * W) + prow.clamp(0, H - 1).long() * W + pcol.clamp(0, W - 1).long()
    silhouette = contour[act_face] & ~(in_image & covered[probe_flat])
    qualifies = covered[act_pixel][:, None] & silhouette & (line_dist >= 0) & (seg_dist2 < radius**2)
    edge_pair = torch.nonzero(qualifies.reshape(-1), as_tuple=True)[0]
    if edge_pair.numel() == 0:
        return fringe_face, none, none.clone()
    pick = _select_per_pixel(act_pixel[edge_pair // 3], seg_dist2.reshape(-1)[edge_pair], n_pixels, largest=False)
    chosen = edge_pair[pick.clamp_min(0)]
    return fringe_face, torch.where(pick >= 0, act_face[chosen // 3], -1), torch.where(pick >= 0, chosen % 3, -1)


def _use_compiled_search(tri: torch.Tensor) -> bool:
    """Whether the compiled CPU search (numba) runs: CPU tensors, numba importable and not switched off with
    ``MICROFACE_RASTER_SEARCH=torch`` (the vectorised torch search then runs, as on GPUs)."""
    if tri.device.type != "cpu" or os.environ.get("MICROFACE_RASTER_SEARCH", "compiled") == "torch":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:  # a dependency, but an environment without it still renders
        return False
    return True


def warm_compiled_search() -> None:
    """Import numba and load the compiled search from its on-disk cache (compiling it the first time) by drawing a
    triangle: about 0.8 s once per process, which a caller can spend in a background thread before it renders
    (``microface reconstruct`` does, while it tracks the face)."""
    screen = torch.tensor([[[1.0, 1.0, 10.0], [6.0, 1.0, 10.0], [1.0, 6.0, 10.0]]])
    with torch.no_grad():
        rasterize(screen, torch.tensor([[0, 1, 2]]), 8)


def _centres_np(n: int, dtype: torch.dtype) -> np.ndarray:
    """Pixel-centre coordinates ``j + 0.5`` for j < n, in the tensors' dtype, as numpy."""
    return (torch.arange(n, dtype=dtype) + 0.5).numpy()


@torch.no_grad()
def _search_compiled(tri, faces, H: int, W: int, perspective_correct: bool, radius: float,
                     pix_to_face: torch.Tensor | None = None):
    """The rasterizer's discrete search by the compiled loops of :mod:`microface.render.raster_kernel`: the same
    result as :func:`_visible_faces` and :func:`_coverage_faces` bit for bit, without torch's per-op cost.

    tri (P, 3, 3) detached CPU screen triangles, faces (F, 3); pix_to_face (B*H*W,) when another rasterizer found
    visibility -> pix_to_face, fringe_face, edge_face, edge_index, each (B*H*W,) long, -1 where none.
    """
    from microface.render.raster_kernel import coverage_faces, face_setup, visible_faces

    F = max(faces.shape[0], 1)
    P = tri.shape[0]
    n_pixels = (P // F) * H * W
    scalar = np.float32 if tri.dtype == torch.float32 else np.float64
    x, y, z = (tri[..., i].contiguous().numpy() for i in range(3))
    a, b, c, height, depth_coef = (np.empty((P, 3), dtype=x.dtype) for _ in range(5))
    valid, contour, boxes = np.empty(P, dtype=bool), np.empty((P, 3), dtype=bool), np.empty((P, 8), dtype=np.int64)
    twin = _MESH_CONSTANTS.twins(faces).cpu().numpy()
    face_setup(x, y, z, twin, F, H, W, scalar(radius), perspective_correct, a, b, c, height, depth_coef, valid,
               contour, boxes)
    centres_x, centres_y = _centres_np(W, tri.dtype), _centres_np(H, tri.dtype)
    if pix_to_face is None:
        pix_to_face = torch.empty(n_pixels, dtype=torch.long)
        visible_faces(a, b, c, depth_coef, valid, boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], centres_x,
                      centres_y, F, H, W, perspective_correct, pix_to_face.numpy())
    fringe_face, edge_face, edge_index = (torch.empty(n_pixels, dtype=torch.long) for _ in range(3))
    corners2d = tri[..., :2]
    edges = corners2d.roll(-1, dims=1) - corners2d
    edge_len = (edges * edges).sum(-1).clamp_min(1e-24).sqrt().numpy()  # as _edge_geometry computes it
    coverage_faces(x, y, edge_len, a, b, c, height, valid, contour, (pix_to_face >= 0).numpy(), boxes[:, 4], boxes[:, 5],
                   boxes[:, 6], boxes[:, 7], centres_x, centres_y, F, H, W, scalar(radius), scalar(radius**2),
                   fringe_face.numpy(), edge_face.numpy(), edge_index.numpy())
    return pix_to_face, fringe_face, edge_face, edge_index


def _soft_coverage(tri, covered, fringe_face, edge_face, edge_index, H: int, W: int, radius: float) -> torch.Tensor:
    """alpha = S(signed distance to the silhouette), differentiable w.r.t. the screen triangles: outside the mesh
    from the chosen fringe face, inside from the chosen silhouette edge, 1 elsewhere on the mesh, 0 off it.

    tri (P, 3, 3), covered (N,) bool, fringe_face, edge_face, edge_index (N,) long -> alpha (N,).
    """
    near_edge = torch.nonzero(edge_face >= 0, as_tuple=True)[0]
    fr = torch.nonzero(fringe_face >= 0, as_tuple=True)[0]
    pixels = torch.cat([near_edge, fr])  # one pass over both sets: torch's per-op cost dominates at these sizes
    chosen = torch.cat([edge_face.index_select(0, near_edge), fringe_face.index_select(0, fr)])
    line_dist, seg_dist2, _, _ = _edge_geometry(tri.index_select(0, chosen)[..., :2], _pixel_centres(pixels, H, W, tri.dtype))
    n_edge = near_edge.shape[0]
    edge_dist2 = seg_dist2[:n_edge].gather(1, edge_index.index_select(0, near_edge)[:, None])[:, 0]
    signed_fr = _signed_distance(line_dist[n_edge:], seg_dist2[n_edge:])
    alpha = covered.to(tri.dtype)
    alpha = alpha.index_put((near_edge,), _smoothstep_coverage(_safe_sqrt(edge_dist2), radius))
    return alpha.index_put((fr,), _smoothstep_coverage(signed_fr, radius))


@torch.no_grad()
def _fragments_compiled(tri, pix_to_face, fringe_face, edge_face, edge_index, B: int, H: int, W: int,
                        perspective_correct: bool, radius: float) -> Fragments:
    """The fragments of the chosen faces when nothing needs their gradient: barycentrics and depth by the compiled
    loop, the soft coverage by :func:`_soft_coverage`; the values of :func:`rasterize`'s torch tail, bit for bit."""
    from microface.render.raster_kernel import fill_fragments

    n_pixels = pix_to_face.shape[0]
    bary, fringe_bary = torch.empty(n_pixels, 3, dtype=tri.dtype), torch.empty(n_pixels, 3, dtype=tri.dtype)
    zbuf = torch.empty(n_pixels, dtype=tri.dtype)
    corners = [tri[..., i].contiguous().numpy() for i in range(3)]
    fill_fragments(*corners, W, H, pix_to_face.numpy(), fringe_face.numpy(), perspective_correct, bary.numpy(),
                   zbuf.numpy(), fringe_bary.numpy())
    alpha = _soft_coverage(tri, pix_to_face >= 0, fringe_face, edge_face, edge_index, H, W, radius)
    return Fragments.from_flat(B, H, W, pix_to_face, bary, zbuf, alpha, fringe_face, fringe_bary)


def rasterize(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size,
    blur_radius_px: float = 1.0,
    perspective_correct: bool = True,
    backend: str = "torch",
) -> Fragments:
    """Rasterize screen-space meshes into :class:`Fragments` (one face per pixel, nearest depth wins).

    ``alpha = S(D)`` where D is the signed distance (pixels, inside positive) from the pixel centre to the
    silhouette and S the cubic smoothstep rising from 0 at ``D = -r`` to 1 at ``D = r`` (SoftRas-style soft
    coverage, but with compact support and symmetric, ``S(-D) = 1 - S(D)``, so the alpha-weighted area of a
    straight edge is exact). Outside the mesh D is minus the distance to the nearest face (exact for the
    union of all faces). On covered pixels D is the distance to the nearest screen-space contour edge (an open
    edge, or one between a front- and a back-facing face) whose outer side is background; internal edges and
    occluded folds never lower alpha, so there are no seams. ``alpha`` is differentiable w.r.t. the screen
    vertices.

    Args:
        screen_vertices: ``(x_px, y_px, depth)`` from :func:`project_points`, shape (B, V, 3).
        faces: long triangle vertex indices shared by the batch, shape (F, 3).
        image_size: int or (H, W).
        blur_radius_px: half-width r of the anti-aliasing band in pixels; must be > 0.
        perspective_correct: use it for perspective cameras (barycentrics weight the 3D surface point);
            False for weak perspective (depth is then interpolated linearly in screen space). With it, faces
            with a corner at depth <= 0 are dropped (no near-plane clipping).
        backend: "torch" (this file) or "pytorch3d" (hard visibility from pytorch3d's rasterizer;
            barycentrics, depth and alpha still come from here, so both backends return the same structure
            and gradients).

    Returns:
        Fragments with pix_to_face (B, H, W, 1), bary_coords (B, H, W, 1, 3), zbuf (B, H, W, 1),
        alpha (B, H, W), fringe_face (B, H, W, 1), fringe_bary (B, H, W, 1, 3).

    Raises:
        ValueError: a mesh of the wrong shape, an unknown backend or a blur radius <= 0.
    """
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
    needs_grad = torch.is_grad_enabled() and tri.requires_grad

    with torch.no_grad():
        tri_d = tri.detach()
        p2f_given = None
        if backend == "pytorch3d":
            p2f_given = _pytorch3d_pix_to_face(screen_vertices, faces, H, W, perspective_correct)
        if _use_compiled_search(tri_d):
            p2f_flat, fringe_flat, edge_face, edge_index = _search_compiled(
                tri_d, faces, H, W, perspective_correct, blur_radius_px, p2f_given
            )
            if not needs_grad:
                return _fragments_compiled(tri_d, p2f_flat, fringe_flat, edge_face, edge_index, B, H, W,
                                           perspective_correct, blur_radius_px)
        else:
            a, b, c, height, depth_coef, area, valid = _face_tables(tri_d, perspective_correct)
            contour = _contour_edges(faces, area < 0, valid, _MESH_CONSTANTS.twins(faces))
            if p2f_given is None:
                p2f_flat = _visible_faces(tri_d, (a, b, c), depth_coef, valid, H, W, F, perspective_correct)
            else:
                p2f_flat = p2f_given
            fringe_flat, edge_face, edge_index = _coverage_faces(
                tri_d, (a, b, c), height, valid, p2f_flat >= 0, contour, H, W, F, blur_radius_px
            )
        covered = p2f_flat >= 0

    # differentiable part: barycentrics and depth of the visible faces, recomputed from the vertices
    fg = torch.nonzero(covered, as_tuple=True)[0]
    bary_fg, depth_fg = _barycentric(tri.index_select(0, p2f_flat.index_select(0, fg)), _pixel_centres(fg, H, W, dtype), perspective_correct)
    bary = torch.zeros(n_pixels, 3, dtype=dtype, device=device).index_put((fg,), bary_fg)
    zbuf = torch.full((n_pixels,), -1.0, dtype=dtype, device=device).index_put((fg,), depth_fg)

    alpha = _soft_coverage(tri, covered, fringe_flat, edge_face, edge_index, H, W, blur_radius_px)

    # the fringe is shaded like the nearest face, barycentrics clipped to it
    fr = torch.nonzero(fringe_flat >= 0, as_tuple=True)[0]
    fr_bary, _ = _barycentric(tri.index_select(0, fringe_flat.index_select(0, fr)), _pixel_centres(fr, H, W, dtype),
                              perspective_correct, clip=True)
    fringe_bary = torch.zeros(n_pixels, 3, dtype=dtype, device=device).index_put((fr,), fr_bary)

    return Fragments.from_flat(B, H, W, p2f_flat, bary, zbuf, alpha, fringe_flat, fringe_bary)


def interpolate_vertex_attributes(
    fragments: Fragments, faces: torch.Tensor, vertex_attributes: torch.Tensor, include_fringe: bool = False
) -> torch.Tensor:
    """Barycentric interpolation of per-vertex attributes at each pixel.

    Args:
        fragments: from :func:`rasterize` with ``faces``.
        faces: triangle vertex indices, shape (F, 3).
        vertex_attributes: per-vertex values, shape (B, V, C), or (V, C) shared by the batch.
        include_fringe: also fill the anti-aliased fringe from ``fringe_face``.

    Returns:
        interpolated values, shape (B, H, W, C), differentiable w.r.t. the attributes and (through the
        barycentrics) the vertices; zero on background.

    Raises:
        ValueError: ``vertex_attributes`` of the wrong shape.
    """
    B, H, W, _ = fragments.pix_to_face.shape
    if vertex_attributes.ndim == 2:
        vertex_attributes = vertex_attributes.expand(B, *vertex_attributes.shape)
    if vertex_attributes.ndim != 3 or vertex_attributes.shape[0] not in (1, B):
        raise ValueError(f"vertex_attributes: expected ({B}, V, C) or (V, C), got {tuple(vertex_attributes.shape)}")
    vertex_attributes = vertex_attributes.expand(B, -1, -1)
    C = vertex_attributes.shape[-1]
    # attrs[b * F + f, k] = vertex_attributes[b, faces[f, k]]: packed like pix_to_face
    face_attrs = vertex_attributes[:, faces.long()].reshape(B * faces.shape[0], 3, C)
    p2f = fragments.pix_to_face.reshape(-1)
    bary = fragments.bary_coords.reshape(-1, 3)
    if include_fringe:
        fringe = fragments.fringe_face.reshape(-1)
        bary = torch.where((fringe >= 0)[:, None], fragments.fringe_bary.reshape(-1, 3), bary)
        p2f = torch.where(fringe >= 0, fringe, p2f)
    fg = torch.nonzero(p2f >= 0, as_tuple=True)[0]
    values = torch.einsum("pk,pkc->pc", bary[fg], face_attrs[p2f[fg]])
    out = torch.zeros(B * H * W, C, dtype=values.dtype, device=values.device).index_put((fg,), values)
    return out.reshape(B, H, W, C)


def packed_pix_to_face(pix_to_face: torch.Tensor, n_faces: int) -> torch.Tensor:
    """Re-pack per-image face indices, each image rasterized alone (b = 0), as ``b * F + f``.

    Args:
        pix_to_face: per-image face indices, -1 background, shape (B, H, W, 1).
        n_faces: faces per mesh F.

    Returns:
        packed face indices, -1 background, shape (B, H, W, 1).
    """
    offset = torch.arange(pix_to_face.shape[0], device=pix_to_face.device)[:, None, None, None] * n_faces
    return torch.where(pix_to_face >= 0, pix_to_face + offset, pix_to_face)
