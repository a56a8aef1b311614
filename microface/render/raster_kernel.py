"""The rasterizer's discrete decisions on the CPU, compiled with numba: which face each pixel sees, and which face or
silhouette edge shapes its anti-aliased coverage.

:func:`microface.render.rasterize.rasterize` makes these decisions without gradient and then recomputes every
differentiable quantity (barycentrics, depth, signed distances) in torch from the chosen faces only. Its vectorised
torch search pays torch's per-op cost on every (pixel, face) candidate list; a loop over each face's pixel box does
the same work in one pass (issue 20: numba, not a C++ extension, because it ships as a wheel and needs no compiler).

Every test below repeats the torch search's arithmetic in the same dtype and order (``l_k = (a_k x + b_k y) + c_k``,
the depth sum left to right, the edge geometry of ``_edge_geometry`` term by term) and breaks ties as it does (the
largest packed face id, then the largest edge), so both give the same fragments bit for bit. Square roots are the
exception: torch's are not always correctly rounded, so edge lengths come from torch, and the one root taken here
(the distance of a pixel outside the mesh to a face, which only ranks candidate faces) can break an exact tie in
distance differently, which no test scene has met.

Arrays are numpy views of the torch tensors (float32 or float64; one compiled version per dtype, cached on disk).
Shapes: P packed faces (``B * F``), N pixels (``B * H * W``).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["face_setup", "visible_faces", "coverage_faces", "fill_fragments"]


@njit(cache=True, nogil=True)
def visible_faces(a, b, c, depth_coef, valid, col0, row0, ncols, nrows, centres_x, centres_y,
                  faces_per_mesh, H, W, perspective_correct, pix_to_face):  # pragma: no cover - compiled
    """Per pixel the nearest face whose interior holds the pixel centre; ties in depth go to the largest face id.

    Args:
        a, b, c: barycentric planes, ``l_k = a_k x + b_k y + c_k`` at pixel centre (x, y), each (P, 3).
        depth_coef: 1/z per corner (perspective) or z (weak perspective), (P, 3).
        valid: faces that may be drawn, (P,) bool.
        col0, row0, ncols, nrows: each face's pixel box (no margin), (P,) int64.
        centres_x, centres_y: pixel-centre coordinates ``j + 0.5`` (W,) and ``i + 0.5`` (H,), in the planes' dtype.
        faces_per_mesh: F; H, W: image size; perspective_correct: depth is 1 / sum(l_k / z_k), else sum(l_k z_k).
        pix_to_face: output, packed face id or -1, (N,) int64, filled here.
    """
    n_pixels = pix_to_face.shape[0]
    best = np.full(n_pixels, np.inf, dtype=a.dtype)
    pix_to_face[:] = -1
    one = a.dtype.type(1.0)
    for f in range(a.shape[0]):
        if not valid[f] or ncols[f] <= 0 or nrows[f] <= 0:
            continue
        a0, a1, a2 = a[f, 0], a[f, 1], a[f, 2]
        b0, b1, b2 = b[f, 0], b[f, 1], b[f, 2]
        c0, c1, c2 = c[f, 0], c[f, 1], c[f, 2]
        d0, d1, d2 = depth_coef[f, 0], depth_coef[f, 1], depth_coef[f, 2]
        base = (f // faces_per_mesh) * (H * W)
        for row in range(row0[f], row0[f] + nrows[f]):
            y = centres_y[row]
            by0, by1, by2 = b0 * y, b1 * y, b2 * y
            for col in range(col0[f], col0[f] + ncols[f]):
                x = centres_x[col]
                l0 = (a0 * x + by0) + c0
                l1 = (a1 * x + by1) + c1
                l2 = (a2 * x + by2) + c2
                if not (l0 >= 0 and l1 >= 0 and l2 >= 0):
                    continue
                weighted = (l0 * d0 + l1 * d1) + l2 * d2
                depth = one / weighted if perspective_correct else weighted
                pixel = base + row * W + col
                if depth <= best[pixel]:  # faces come in increasing id: equal depth -> the larger id
                    best[pixel] = depth
                    pix_to_face[pixel] = f


@njit(cache=True, nogil=True)
def coverage_faces(x, y, edge_len, a, b, c, height, valid, contour, covered, col0, row0, ncols, nrows, centres_x, centres_y,
                   faces_per_mesh, H, W, radius, radius2, fringe_face, edge_face, edge_index):  # pragma: no cover - compiled
    """The faces that set each pixel's soft coverage (see ``rasterize``'s alpha).

    Outside the mesh (``covered`` false): the face of largest signed distance above ``-radius`` (the nearest face
    within the band), ties -> the largest id. Inside: among silhouette edges (contour edges whose outer side, one
    pixel beyond the edge's nearest point, is uncovered or off the image) with the pixel on their inner side and
    within ``radius`` of the segment, the one of smallest squared distance, ties -> the largest (face, edge).

    Args:
        x, y: screen corners of each face in pixels, each (P, 3).
        edge_len: length of edge k (corner k to k + 1) in px, (P, 3), from torch (whose square root is not always
            correctly rounded; taking its lengths keeps the decisions identical).
        a, b, c, height: barycentric planes and corner heights over the opposite edge (px), each (P, 3).
        valid: (P,) bool; contour: (P, 3) bool, edge k from corner k to k + 1; covered: (N,) bool.
        col0, row0, ncols, nrows: each face's pixel box grown by ``radius``, (P,) int64.
        centres_x, centres_y: pixel centres (W,), (H,) in the corners' dtype.
        faces_per_mesh: F; H, W: image size; radius, radius2: the band's half-width in px and its square, each
            rounded to the corners' dtype (as torch rounds a Python scalar against a tensor).
        fringe_face, edge_face, edge_index: outputs, (N,) int64, -1 where none, filled here.
    """
    n_pixels = covered.shape[0]
    best_signed = np.full(n_pixels, -np.inf, dtype=x.dtype)
    best_dist2 = np.full(n_pixels, np.inf, dtype=x.dtype)
    fringe_face[:] = -1
    edge_face[:] = -1
    edge_index[:] = -1
    zero, one = x.dtype.type(0.0), x.dtype.type(1.0)
    tiny_dist2 = x.dtype.type(1e-20)
    line = np.empty(3, dtype=x.dtype)
    seg2 = np.empty(3, dtype=x.dtype)
    probe_x = np.empty(3, dtype=x.dtype)
    probe_y = np.empty(3, dtype=x.dtype)
    for f in range(x.shape[0]):
        if not valid[f] or ncols[f] <= 0 or nrows[f] <= 0:
            continue
        has_contour = contour[f, 0] or contour[f, 1] or contour[f, 2]
        px0, px1, px2 = x[f, 0], x[f, 1], x[f, 2]
        py0, py1, py2 = y[f, 0], y[f, 1], y[f, 2]
        # edge k: corner k -> corner k + 1
        ex0, ex1, ex2 = px1 - px0, px2 - px1, px0 - px2
        ey0, ey1, ey2 = py1 - py0, py2 - py1, py0 - py2
        area = ex0 * (-ey2) - ey0 * (-ex2)
        orient = one if area > 0 else (-one if area < 0 else zero)
        len0, len1, len2 = edge_len[f, 0], edge_len[f, 1], edge_len[f, 2]
        base = (f // faces_per_mesh) * (H * W)
        for row in range(row0[f], row0[f] + nrows[f]):
            cy = centres_y[row]
            for col in range(col0[f], col0[f] + ncols[f]):
                pixel = base + row * W + col
                inside_mesh = covered[pixel]
                if inside_mesh and not has_contour:
                    continue
                cx = centres_x[col]
                # the band: distance to the nearest edge LINE within (-radius, radius)
                l0 = (a[f, 0] * cx + b[f, 0] * cy) + c[f, 0]
                l1 = (a[f, 1] * cx + b[f, 1] * cy) + c[f, 1]
                l2 = (a[f, 2] * cx + b[f, 2] * cy) + c[f, 2]
                dist = min(l0 * height[f, 0], min(l1 * height[f, 1], l2 * height[f, 2]))
                if not (dist > -radius and dist < radius):
                    continue
                for k in range(3):
                    if k == 0:
                        ax, ay, ex, ey, elen = px0, py0, ex0, ey0, len0
                    elif k == 1:
                        ax, ay, ex, ey, elen = px1, py1, ex1, ey1, len1
                    else:
                        ax, ay, ex, ey, elen = px2, py2, ex2, ey2, len2
                    rx, ry = cx - ax, cy - ay
                    line[k] = (ex * ry - ey * rx) * orient / elen
                    s = (rx * ex + ry * ey) / (elen * elen)
                    s = min(max(s, zero), one)
                    fx, fy = ax + s * ex, ay + s * ey
                    sx, sy = cx - fx, cy - fy
                    seg2[k] = sx * sx + sy * sy
                    scale = orient / elen
                    probe_x[k] = fx + ey * scale
                    probe_y[k] = fy + (-ex) * scale
                if not inside_mesh:
                    inner = min(line[0], min(line[1], line[2]))
                    if inner >= 0:
                        signed = inner
                    else:
                        signed = -np.sqrt(max(min(seg2[0], min(seg2[1], seg2[2])), tiny_dist2))
                    if signed > -radius and signed >= best_signed[pixel]:
                        best_signed[pixel] = signed
                        fringe_face[pixel] = f
                    continue
                for k in range(3):
                    if not contour[f, k] or not (line[k] >= 0) or not (seg2[k] < radius2):
                        continue
                    pcol, prow = np.floor(probe_x[k]), np.floor(probe_y[k])
                    if pcol >= 0 and pcol < W and prow >= 0 and prow < H:
                        if covered[base + int(prow) * W + int(pcol)]:
                            continue  # the surface goes on beyond this edge: not the silhouette
                    if seg2[k] <= best_dist2[pixel]:
                        best_dist2[pixel] = seg2[k]
                        edge_face[pixel] = f
                        edge_index[pixel] = k


@njit(cache=True, nogil=True)
def _barycentric_at(x0, y0, z0, x1, y1, z1, x2, y2, z2, px, py, perspective_correct, clip, out):
    """``rasterize._barycentric`` for one pixel, in its dtype and operation order: weights into ``out`` (3,),
    returns the depth."""  # pragma: no cover - compiled
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
    w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
    w2 = ((x0 - px) * (y1 - py) - (x1 - px) * (y0 - py)) / area
    if clip:
        zero = out.dtype.type(0.0)
        w0, w1, w2 = max(w0, zero), max(w1, zero), max(w2, zero)
        total = max((w0 + w1) + w2, out.dtype.type(1e-12))
        w0, w1, w2 = w0 / total, w1 / total, w2 / total
    if perspective_correct:
        w0, w1, w2 = w0 / z0, w1 / z1, w2 / z2
        inv_depth = (w0 + w1) + w2
        w0, w1, w2 = w0 / inv_depth, w1 / inv_depth, w2 / inv_depth
    out[0], out[1], out[2] = w0, w1, w2
    return (w0 * z0 + w1 * z1) + w2 * z2


@njit(cache=True, nogil=True)
def fill_fragments(x, y, z, W, H, pix_to_face, fringe_face, perspective_correct, bary, zbuf,
                   fringe_bary):  # pragma: no cover - compiled
    """Barycentrics and depth of the chosen faces without autograd, as ``rasterize`` computes them in torch (no
    square root is involved: torch's is not always correctly rounded, so the soft coverage stays in torch).

    Args:
        x, y, z: screen corners of each packed face, each (P, 3); W, H: image size.
        pix_to_face, fringe_face: (N,) int64 from :func:`visible_faces` and :func:`coverage_faces`.
        perspective_correct: barycentrics of the 3D surface point.
        bary (N, 3), zbuf (N,), fringe_bary (N, 3): outputs, filled here (zeros, -1 and zeros where no face).
    """
    half = x.dtype.type(0.5)
    for pixel in range(pix_to_face.shape[0]):
        rem = pixel % (H * W)
        px = x.dtype.type(rem % W) + half
        py = x.dtype.type(rem // W) + half
        f = pix_to_face[pixel]
        bary[pixel, 0], bary[pixel, 1], bary[pixel, 2] = 0.0, 0.0, 0.0
        fringe_bary[pixel, 0], fringe_bary[pixel, 1], fringe_bary[pixel, 2] = 0.0, 0.0, 0.0
        zbuf[pixel] = -1.0
        if f >= 0:
            zbuf[pixel] = _barycentric_at(x[f, 0], y[f, 0], z[f, 0], x[f, 1], y[f, 1], z[f, 1], x[f, 2], y[f, 2],
                                          z[f, 2], px, py, perspective_correct, False, bary[pixel])
        g = fringe_face[pixel]
        if g >= 0:
            _barycentric_at(x[g, 0], y[g, 0], z[g, 0], x[g, 1], y[g, 1], z[g, 1], x[g, 2], y[g, 2], z[g, 2], px, py,
                            perspective_correct, True, fringe_bary[pixel])


@njit(cache=True, nogil=True)
def _pixel_range(lo, hi, margin, half, limit, big):  # pragma: no cover - compiled
    """``rasterize._face_pixel_ranges`` on one axis: first pixel and count whose centres lie in [lo, hi] +- margin
    (``half``: 0.5 in the corners' dtype)."""
    first = int(min(max(np.ceil((lo - margin) - half), -1.0), big))
    last = int(min(max(np.floor((hi + margin) - half), -1.0), big))
    first = max(first, 0)
    last = min(last, limit - 1)
    return first, max(last - first + 1, 0)


@njit(cache=True, nogil=True)
def face_setup(x, y, z, twin, faces_per_mesh, H, W, margin, perspective_correct, a, b, c, height, depth_coef,
               valid, contour, boxes):  # pragma: no cover - compiled
    """``rasterize._face_tables``, ``_contour_edges`` and the pixel boxes of ``_box_counts`` in one pass.

    Args:
        x, y, z: screen corners of each packed face, each (P, 3).
        twin: the face across each edge of a mesh face (``_edge_twins``), -1 on open edges, (F, 3) int64.
        faces_per_mesh: F; H, W: image size; margin: the soft band's half-width (corners' dtype).
        perspective_correct: faces with a corner at depth <= 0 are invalid; depth_coef holds 1/z (else z).
        a, b, c, height, depth_coef: outputs (P, 3); valid: output (P,) bool; contour: output (P, 3) bool;
        boxes: output (P, 8) int64, (col0, row0, ncols, nrows) without and then with the margin.
    """
    P = x.shape[0]
    zero = x.dtype.type(0.0)
    tiny = x.dtype.type(1e-12)
    half = x.dtype.type(0.5)
    big = float(max(H, W) + 2)
    area = np.empty(P, dtype=x.dtype)
    for f in range(P):
        x0, x1, x2, y0, y1, y2 = x[f, 0], x[f, 1], x[f, 2], y[f, 0], y[f, 1], y[f, 2]
        ar = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        area[f] = ar
        ok = abs(ar) > tiny
        for k in range(3):
            ok = ok and np.isfinite(x[f, k]) and np.isfinite(y[f, k]) and np.isfinite(z[f, k])
            if perspective_correct:
                ok = ok and z[f, k] > zero
        valid[f] = ok
        for k in range(3):
            k1, k2 = (k + 1) % 3, (k + 2) % 3
            xa, xb, ya, yb = x[f, k1], x[f, k2], y[f, k1], y[f, k2]
            a[f, k] = (ya - yb) / ar
            b[f, k] = (xb - xa) / ar
            c[f, k] = (xa * yb - xb * ya) / ar
            dx, dy = xa - xb, ya - yb
            height[f, k] = abs(ar) / max(np.sqrt(dx * dx + dy * dy), tiny)
            depth_coef[f, k] = (zero + 1) / z[f, k] if perspective_correct else z[f, k]
        if ok:
            xlo, xhi = min(x0, min(x1, x2)), max(x0, max(x1, x2))
            ylo, yhi = min(y0, min(y1, y2)), max(y0, max(y1, y2))
        else:  # invalid faces have empty boxes (their counts are zero)
            xlo = xhi = ylo = yhi = zero
        for m in range(2):
            grow = zero if m == 0 else margin
            col0, ncols = _pixel_range(xlo, xhi, grow, half, W, big)
            row0, nrows = _pixel_range(ylo, yhi, grow, half, H, big)
            if not ok:
                ncols = nrows = 0
            boxes[f, 4 * m], boxes[f, 4 * m + 1], boxes[f, 4 * m + 2], boxes[f, 4 * m + 3] = col0, row0, ncols, nrows
    for f in range(P):
        first = (f // faces_per_mesh) * faces_per_mesh
        local = f - first
        for k in range(3):
            t = twin[local, k]
            if t < 0:
                contour[f, k] = True
            else:
                other = first + t
                contour[f, k] = ((area[other] < 0) != (area[f] < 0)) or not valid[other]
