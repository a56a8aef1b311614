"""Behaviour of the pure-torch differentiable renderer (microface.render)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sys
from microface import render
from microface.render.renderer import MeshRenderer
from microface.render.rasterize import interpolate_vertex_attributes, rasterize
from microface.render.camera import look_at_camera, project_points, weak_perspective_camera
from microface.render.shading import sh_basis, sh_constant, shade_sh

MESH_NPZ = Path(__file__).resolve().parents[1] / "microface" / "face" / "assets" / "canonical_face_mesh.npz"


# ------------------------------------------------------------------------------------------ helpers
def icosphere(subdivisions: int, radius: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural icosphere: vertices (V, 3), faces (F, 3), outward winding."""
    t = (1.0 + 5.0**0.5) / 2.0
    verts = [
        [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
        [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1],
    ]
    faces = [
        [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
        [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
        [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
    ]
    verts = [list(np.array(v) / np.linalg.norm(v)) for v in verts]
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def midpoint(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = (np.array(verts[i]) + np.array(verts[j])) / 2.0
                verts.append(list(m / np.linalg.norm(m)))
                cache[key] = len(verts) - 1
            return cache[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new_faces
    return torch.tensor(verts, dtype=dtype) * radius, torch.tensor(faces, dtype=torch.long)


def brute_force_fragments(screen: np.ndarray, faces: np.ndarray, H: int, W: int):
    """Per-pixel, per-face Python loop: packed pix_to_face (B,H,W), perspective-correct bary (B,H,W,3), zbuf."""
    B, F = screen.shape[0], faces.shape[0]
    p2f = -np.ones((B, H, W), dtype=np.int64)
    bary = np.zeros((B, H, W, 3))
    zbuf = -np.ones((B, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                px, py = j + 0.5, i + 0.5
                best = math.inf
                for f in range(F):
                    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = screen[b, faces[f]]
                    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
                    l0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
                    l1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
                    l2 = 1.0 - l0 - l1
                    if min(l0, l1, l2) < 0:
                        continue
                    w = np.array([l0 / z0, l1 / z1, l2 / z2])
                    depth = 1.0 / w.sum()
                    if depth < best:
                        best = depth
                        p2f[b, i, j] = b * F + f
                        bary[b, i, j] = w * depth
                        zbuf[b, i, j] = depth
    return p2f, bary, zbuf


def single_triangle_scene(dtype=torch.float64):
    verts = torch.tensor([[[-30.0, -25.0, 2.0], [35.0, -20.0, -3.0], [-5.0, 32.0, 4.0]]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2]])
    cam = look_at_camera(400.0, 100.0, (8, 8), batch_size=1, dtype=dtype)
    return verts, faces, cam


# ------------------------------------------------------------------------------------------ cameras
def test_frontal_camera_orientation_and_depth():
    cam = look_at_camera(500.0, 300.0, (64, 80), batch_size=1)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, -10.0]]])
    s = project_points(pts, cam)[0]
    assert torch.allclose(s[0], torch.tensor([40.0, 32.0, 500.0]))  # origin -> principal point (W/2, H/2)
    assert s[1, 0] > s[0, 0] and torch.isclose(s[1, 1], s[0, 1])  # subject's left -> image right
    assert s[2, 1] < s[0, 1] and torch.isclose(s[2, 0], s[0, 0])  # up -> smaller row
    assert s[3, 2] > s[0, 2]  # farther from the camera -> larger depth
    assert torch.isclose(s[1, 0] - s[0, 0], torch.tensor(300.0 * 10.0 / 500.0))


def test_weak_perspective_camera_is_affine_and_keeps_orientation():
    cam = weak_perspective_camera(torch.tensor([2.0]), torch.tensor([[16.0, 20.0]]))
    pts = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 5.0, 7.0], [0.0, 0.0, -10.0]]])
    s = project_points(pts, cam)[0]
    assert torch.allclose(s[1, :2], torch.tensor([16.0 + 6.0, 20.0 - 10.0]))
    assert torch.allclose(s[2, :2], s[0, :2]) and s[2, 2] > s[0, 2]


def test_rendered_quadrant_appears_upright_and_unmirrored():
    # a triangle in the world's +x, +y quadrant must land in the image's right, top quadrant
    verts = torch.tensor([[[10.0, 10.0, 0.0], [60.0, 10.0, 0.0], [10.0, 60.0, 0.0]]])
    cam = look_at_camera(500.0, 300.0, 64)
    frags = rasterize(project_points(verts, cam), torch.tensor([[0, 1, 2]]), 64)
    rows, cols = torch.nonzero(frags.mask[0], as_tuple=True)
    assert rows.numel() > 50
    assert (cols >= 32).all() and (rows < 32).all()


# ---------------------------------------------------------------------------------------- rasterizer
def test_fragments_match_brute_force_loop_with_z_test():
    gen = torch.Generator().manual_seed(0)
    B, H, W, F = 2, 24, 24, 5
    xy = torch.rand(B, 3 * F, 2, generator=gen, dtype=torch.float64) * 30.0 - 3.0  # some corners off-image
    depth = torch.rand(B, 3 * F, 1, generator=gen, dtype=torch.float64) * 50.0 + 20.0
    screen = torch.cat([xy, depth], -1)
    faces = torch.arange(3 * F).reshape(F, 3)
    frags = rasterize(screen, faces, (H, W), perspective_correct=True)
    p2f, bary, zbuf = brute_force_fragments(screen.numpy(), faces.numpy(), H, W)
    assert (frags.pix_to_face[..., 0].numpy() == p2f).all()
    overlap = np.zeros((B, H, W), dtype=int)  # the scene must really test the z-buffer
    for f in range(F):
        single = rasterize(screen, faces[f : f + 1], (H, W))
        overlap += single.mask.numpy()
    assert (overlap >= 2).sum() > 20
    np.testing.assert_allclose(frags.bary_coords[..., 0, :].numpy(), bary, atol=1e-9)
    np.testing.assert_allclose(frags.zbuf[..., 0].numpy(), zbuf, atol=1e-9)


def test_chunked_enumeration_matches_single_chunk(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    screen = torch.cat([torch.rand(1, 30, 2, generator=gen) * 40, torch.rand(1, 30, 1, generator=gen) + 1], -1)
    faces = torch.arange(30).reshape(10, 3)
    whole = rasterize(screen, faces, 40)
    monkeypatch.setattr(sys.modules["microface.render.rasterize"], "_MAX_CANDIDATES_PER_CHUNK", 37)
    chunked = rasterize(screen, faces, 40)
    assert torch.equal(whole.pix_to_face, chunked.pix_to_face)
    assert torch.allclose(whole.alpha, chunked.alpha)


def test_square_mask_and_alpha_area_match_projected_area():
    side, dist, focal, size = 80.0, 500.0, 300.0, 64
    h = side / 2
    verts = torch.tensor([[[-h, -h, 0.0], [h, -h, 0.0], [h, h, 0.0], [-h, h, 0.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cam = look_at_camera(dist, focal, size, dtype=torch.float64)
    frags = rasterize(project_points(verts, cam), faces, size)
    expected = (focal * side / dist) ** 2
    assert abs(frags.mask.sum().item() - expected) / expected < 0.04
    assert abs(frags.alpha.sum().item() - expected) / expected < 0.01
    # the shared diagonal must not leave a seam in the soft coverage (the square spans pixels 8..55)
    assert (frags.alpha[0, 10:54, 10:54] > 1 - 1e-9).all()


def test_icosphere_silhouette_area_matches_analytic_circle():
    radius, dist, focal, size = 50.0, 400.0, 200.0, 96
    verts, faces = icosphere(3, radius)
    cam = look_at_camera(dist, focal, size, dtype=torch.float64)
    frags = rasterize(project_points(verts[None], cam), faces, size)
    # a sphere seen in perspective: a circle of radius f r / sqrt(d^2 - r^2)
    expected = math.pi * (focal * radius / math.sqrt(dist**2 - radius**2)) ** 2
    assert abs(frags.mask.sum().item() - expected) / expected < 0.03
    # front and back layers meet at the contour: counting both would over-cover by several per cent
    assert abs(frags.alpha.sum().item() - expected) / expected < 0.01
    rows, cols = torch.nonzero(frags.mask[0], as_tuple=True)
    assert abs(rows.double().mean().item() + 0.5 - size / 2) < 0.5
    assert abs(cols.double().mean().item() + 0.5 - size / 2) < 0.5
    # the visible face is the near hemisphere: every hit face has its centroid on the camera side
    hit = frags.pix_to_face[frags.mask.unsqueeze(-1)]
    assert (verts[faces[hit]].mean(1)[:, 2] > 0).all()


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shapes_and_dtypes(batch_size, dtype, device):
    verts, faces = icosphere(1, 40.0, dtype=dtype)
    verts, faces = verts.to(device), faces.to(device)
    shift = torch.linspace(-5, 5, batch_size, dtype=dtype, device=device)[:, None, None]
    verts = verts.expand(batch_size, -1, -1) + shift
    H, W = 20, 28
    cam = look_at_camera(300.0, 60.0, (H, W), batch_size=batch_size, dtype=dtype, device=device)
    albedo = torch.full((batch_size, verts.shape[1], 3), 0.5, dtype=dtype, device=device)
    sh = sh_constant(batch_size, dtype=dtype).to(device)
    out = MeshRenderer()(verts, faces, cam, albedo, sh, (H, W), background=0.1)
    fr = out.fragments
    # every output lives on the input's device (constants are made there, kornia style)
    for tensor in (out.image, out.alpha, out.mask, fr.pix_to_face, fr.bary_coords, fr.zbuf, out.screen_vertices):
        assert tensor.device.type == device.type
    assert out.image.shape == (batch_size, 3, H, W) and out.image.dtype == dtype
    assert out.alpha.shape == (batch_size, 1, H, W) and out.mask.shape == (batch_size, 1, H, W)
    assert fr.pix_to_face.shape == (batch_size, H, W, 1) and fr.pix_to_face.dtype == torch.long
    assert fr.bary_coords.shape == (batch_size, H, W, 1, 3) and fr.bary_coords.dtype == dtype
    assert fr.zbuf.shape == (batch_size, H, W, 1) and fr.alpha.shape == (batch_size, H, W)
    assert out.screen_vertices.shape == verts.shape
    # packed indices: batch b only uses faces [b*F, (b+1)*F)
    F = faces.shape[0]
    for b in range(batch_size):
        hit = fr.pix_to_face[b][fr.pix_to_face[b] >= 0]
        assert hit.numel() > 0 and (hit // F == b).all()
    assert (fr.zbuf[~fr.mask] == -1).all() and (fr.bary_coords[~fr.mask] == 0).all()


# -------------------------------------------------------------------------------------- gradients
def test_gradcheck_image_wrt_vertex_positions():
    verts, faces, cam = single_triangle_scene()
    albedo = torch.tensor([[[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]]], dtype=torch.float64)
    sh = sh_constant(1, 0.8, dtype=torch.float64)
    sh[0, 3] = 0.3
    sh[0, 2] = 0.2
    renderer = MeshRenderer(blur_radius_px=1.0)

    def image_of(v):
        return renderer(v, faces, cam, albedo, sh, (8, 8), background=0.25).image

    v = verts.clone().requires_grad_()
    assert torch.autograd.gradcheck(image_of, (v,), eps=1e-6, atol=1e-6)
    # the interpolation path alone: pixels deep inside (alpha saturated) still depend on vertex positions
    out = renderer(v, faces, cam, albedo, sh, (8, 8))
    interior = out.alpha[0, 0] == 1
    assert interior.sum() >= 4
    (grad,) = torch.autograd.grad(out.image[0, 0][interior].sum(), v)
    assert grad.abs().sum() > 1e-6


def test_gradcheck_alpha_wrt_screen_vertices_at_edges():
    screen = torch.tensor([[[1.3, 1.7, 5.0], [8.6, 2.9, 6.0], [3.2, 8.1, 7.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    alpha = rasterize(screen, faces, 10).alpha
    assert ((alpha > 0.01) & (alpha < 0.99)).sum() >= 8  # the edge band exists
    s = screen.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: rasterize(x, faces, 10).alpha, (s,), eps=1e-6, atol=1e-6)
    # moving the whole triangle right grows coverage on its right edge, shrinks it on its left
    # row 4 (y = 4.5) crosses the left edge at x = 2.13 and the right edge at x = 6.94
    alpha = rasterize(s, faces, 10).alpha[0]
    assert 0 < alpha[4, 2] < 1 and 0 < alpha[4, 7] < 1
    (g_right,) = torch.autograd.grad(alpha[4, 7], s, retain_graph=True)
    (g_left,) = torch.autograd.grad(alpha[4, 2], s)
    assert g_right[0, :, 0].sum() > 0.1 and g_left[0, :, 0].sum() < -0.1


def test_gradcheck_image_wrt_albedo_and_sh():
    verts, faces, cam = single_triangle_scene()
    albedo = torch.rand(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sh = torch.randn(1, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    renderer = MeshRenderer()
    a = albedo.clone().requires_grad_()
    s = sh.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a_, s_: renderer(verts, faces, cam, a_, s_, 8).image, (a, s))


def test_gradcheck_texture_albedo():
    verts, faces, cam = single_triangle_scene()
    uvs = torch.tensor([[0.1, 0.9], [0.9, 0.8], [0.5, 0.1]], dtype=torch.float64)
    tex = torch.rand(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    sh = sh_constant(1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: MeshRenderer()(verts, faces, cam, t, sh, 8, uvs=uvs).image, (tex,))


def occlusion_scene(dtype=torch.float64):
    """A small FRONT triangle (z = 8..12 mm, nearer the camera) over a large BACK one (z = -20 mm) that covers the
    whole 10 x 10 image: every edge of the front triangle is an occlusion edge inside the back one, and there is
    no outer silhouette. Vertices 0-2 back, 3-5 front; the two colours differ so the edge shows in the image."""
    verts = torch.tensor([[[-90.0, -80.0, -20.0], [95.0, -75.0, -20.0], [0.0, 110.0, -20.0],
                           [-12.3, -10.1, 10.0], [14.2, -6.3, 12.0], [-2.4, 13.6, 8.0]]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    albedo = torch.tensor([[[0.2, 0.3, 0.9], [0.25, 0.35, 0.8], [0.3, 0.3, 0.85],
                            [0.9, 0.2, 0.1], [0.8, 0.7, 0.2], [0.7, 0.1, 0.3]]], dtype=dtype)
    sh = sh_constant(1, 0.8, dtype=dtype)
    sh[0, 3] = 0.3  # a directional band: normals (and so vertex positions) matter in the interior too
    cam = look_at_camera(400.0, 100.0, (10, 10), batch_size=1, dtype=dtype)
    return verts, faces, albedo, sh, cam


def test_gradients_across_an_occlusion_edge_match_finite_differences():
    verts, faces, albedo, sh, cam = occlusion_scene()
    renderer = MeshRenderer(blur_radius_px=1.0)
    out = renderer(verts, faces, cam, albedo, sh, 10)
    hit = out.fragments.pix_to_face[0, ..., 0]
    front = hit == 1
    # the scene really has an occlusion edge: front pixels next to back pixels, all fully covered (no seam there)
    assert 6 <= int(front.sum()) <= 60 and (hit >= 0).all()
    assert (out.alpha == 1).all()
    neighbour_back = torch.zeros_like(front)
    neighbour_back[1:] |= hit[:-1] == 0
    neighbour_back[:-1] |= hit[1:] == 0
    assert (front & neighbour_back).sum() >= 4

    front_vertices = verts[:, 3:].clone().requires_grad_()

    def image_of(moving_front):
        return renderer(torch.cat([verts[:, :3], moving_front], 1), faces, cam, albedo, sh, 10).image

    # autograd against central finite differences for every coordinate of the front triangle, whose three edges
    # all cross the back triangle (eps far below the distance from any pixel centre to an edge)
    assert torch.autograd.gradcheck(image_of, (front_vertices,), eps=1e-6, atol=1e-6)
    # the edge's vertex does move the front pixels beside the occlusion edge, and nothing on the back triangle:
    # visibility is a hard z-test inside the silhouette, so occlusion edges carry no soft-coverage gradient
    (grad,) = torch.autograd.grad(image_of(front_vertices)[0][:, front & neighbour_back].sum(), front_vertices)
    assert float(grad.abs().sum()) > 1e-4
    (grad_back,) = torch.autograd.grad(image_of(front_vertices)[0][:, hit == 0].sum(), front_vertices)
    assert float(grad_back.abs().max()) == 0.0


# ----------------------------------------------------------------------------------------- shading
def test_dc_only_sh_gives_uniform_shading():
    gen = torch.Generator().manual_seed(5)
    normals = torch.nn.functional.normalize(torch.randn(2, 5, 6, 3, generator=gen), dim=-1)
    albedo = torch.rand(2, 5, 6, 3, generator=gen)
    sh = torch.zeros(2, 9, 3)
    sh[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    shaded = shade_sh(normals, albedo, sh)
    constant = render.SH_BASIS_CONSTANTS[0] * torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(shaded, albedo * constant)
    assert torch.allclose(shade_sh(normals, albedo, sh_constant(2, 0.7)), albedo * 0.7)


def test_sh_basis_constants_are_lambertian_convolved_orthonormal_sh():
    # the l = 1 and l = 2 bands equal the orthonormal real SH times 2/3 and 1/4
    n = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]]), dim=-1)
    x, y, z = n[0]
    Y = torch.tensor([
        0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi)) * y, math.sqrt(3 / (4 * math.pi)) * z,
        math.sqrt(3 / (4 * math.pi)) * x, 0.5 * math.sqrt(15 / math.pi) * x * y,
        0.5 * math.sqrt(15 / math.pi) * y * z, 0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1),
        0.5 * math.sqrt(15 / math.pi) * x * z, 0.25 * math.sqrt(15 / math.pi) * (x * x - y * y),
    ])
    scale = torch.tensor([1.0] + [2 / 3] * 3 + [0.25] * 5)
    assert torch.allclose(sh_basis(n)[0], Y * scale, atol=1e-6)


def test_directional_sh_brightens_normals_facing_the_light():
    verts, faces = icosphere(3, 50.0)
    cam = look_at_camera(400.0, 200.0, 64, dtype=torch.float64)
    sh = sh_constant(1, 0.5, dtype=torch.float64)
    sh[0, 3] = 1.0  # the x band: light from world +x (the subject's left, the image's right)
    albedo = torch.full((1, verts.shape[0], 3), 0.8, dtype=torch.float64)
    out = MeshRenderer()(verts[None], faces, cam, albedo, sh, 64)
    img = out.image[0, 0]
    mask = out.fragments.mask[0]
    right = img[:, 40:][mask[:, 40:]].mean()
    left = img[:, :24][mask[:, :24]].mean()
    assert right > left + 0.2


def test_texture_uv_convention_u_right_v_down():
    # a texture whose red channel is u and green channel is v, rendered under uniform light
    verts = torch.tensor([[[-40.0, -40.0, 0.0], [40.0, -40.0, 0.0], [40.0, 40.0, 0.0], [-40.0, 40.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # v = 0 at the top of the face
    u, v = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="xy")
    tex = torch.stack([u, v, torch.zeros_like(u)])[None]
    cam = look_at_camera(500.0, 300.0, 64)
    img = MeshRenderer()(verts, faces, cam, tex, sh_constant(1), 64, uvs=uvs).image[0]
    assert img[0, 32, 44] > img[0, 32, 20] + 0.3  # u grows to the right
    assert img[1, 44, 32] > img[1, 20, 32] + 0.3  # v grows downward


def test_fringe_is_coloured_like_the_surface():
    screen = torch.tensor([[[2.2, 2.6, 5.0], [17.3, 3.1, 5.0], [6.4, 15.9, 5.0]]])
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(screen, faces, 20, perspective_correct=False)
    fringe = frags.fringe_face[..., 0] >= 0
    assert fringe.sum() > 10 and not (fringe & frags.mask).any()
    assert (frags.alpha[fringe] > 0).all()
    colour = interpolate_vertex_attributes(frags, faces, torch.ones(1, 3, 1), include_fringe=True)
    assert torch.allclose(colour[..., 0][fringe], torch.ones(()))
    hard = interpolate_vertex_attributes(frags, faces, torch.ones(1, 3, 1))
    assert (hard[..., 0][~frags.mask] == 0).all()


# ------------------------------------------------------------------------------------- interpolation
def test_interpolated_surface_point_reprojects_to_pixel_centre():
    verts, faces = icosphere(2, 45.0)
    verts = verts[None] @ torch.tensor([[0.9, 0.1, 0.0], [-0.1, 0.9, 0.3], [0.0, -0.3, 0.9]], dtype=torch.float64)
    cam = look_at_camera(250.0, 120.0, 48, dtype=torch.float64)
    screen = project_points(verts, cam)
    frags = rasterize(screen, faces, 48)
    mask = frags.mask
    depth = interpolate_vertex_attributes(frags, faces, screen[..., 2:])
    assert torch.allclose(depth[mask], frags.zbuf[mask], atol=1e-9)
    # perspective-correct barycentrics give the 3D point seen through the pixel centre
    points = interpolate_vertex_attributes(frags, faces, verts)
    reproj = project_points(points[mask][None], cam)[0]
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    assert torch.allclose(reproj[:, 0], cols.double() + 0.5, atol=1e-7)
    assert torch.allclose(reproj[:, 1], rows.double() + 0.5, atol=1e-7)
    assert (interpolate_vertex_attributes(frags, faces, verts)[~mask] == 0).all()


# ------------------------------------------------------------------------------------- real mesh
def test_render_open_model_mesh():
    data = np.load(MESH_NPZ)
    verts = torch.from_numpy(data["vertices_cm"]).float()[None] * 10.0
    faces = torch.from_numpy(data["triangles"]).long()
    cam = look_at_camera(600.0, 400.0, 128)
    albedo = torch.full((1, verts.shape[1], 3), 0.7)
    sh = sh_constant(1, 0.8)
    sh[0, 2] = 0.4
    out = MeshRenderer()(verts, faces, cam, albedo, sh, 128, background=0.0)
    mask = out.mask[0, 0]
    assert torch.isfinite(out.image).all() and torch.isfinite(out.alpha).all()
    assert 0.2 < mask.float().mean() < 0.8
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert abs(cols.float().mean() + 0.5 - 64) < 3  # the mesh is left-right symmetric
    assert abs(rows.float().mean() + 0.5 - 64) < 12
    # the subject's left (+x) half of the mesh shows on the image's right half
    hit = out.fragments.pix_to_face[0, ..., 0]
    face_x = verts[0, faces[hit[mask]]].mean(1)[:, 0]
    assert (face_x[cols >= 72] > 0).float().mean() > 0.95
    assert (out.image[0, :, mask] > 0).all()
    # soft coverage only along the outer silhouette: no seams at internal edges, no halo at folds (nose)
    partial = (out.alpha[0, 0] < 1) & mask
    assert partial.sum() > 100
    background = torch.nn.functional.pad((~mask).float()[None, None], (2, 2, 2, 2), value=1.0)  # off-image too
    near_background = torch.nn.functional.max_pool2d(background, 5, 1)[0, 0] > 0
    assert near_background[partial].all()


# ---------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors():
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"\(B, V, 3\)"):
        rasterize(torch.zeros(3, 3), faces, 8)
    with pytest.raises(ValueError, match="faces"):
        rasterize(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 5]]), 8)
    with pytest.raises(ValueError, match="sh"):
        shade_sh(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="backend"):
        MeshRenderer(backend="opengl")


def test_pytorch3d_backend_absent_gives_clear_error():
    try:
        import pytorch3d  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="optional"):
            rasterize(torch.rand(1, 3, 3) + 1, torch.tensor([[0, 1, 2]]), 8, backend="pytorch3d")
    else:
        pytest.skip("pytorch3d is installed; the agreement test covers this backend")


def test_pytorch3d_backend_agrees():
    pytest.importorskip("pytorch3d")
    verts, faces = icosphere(2, 45.0, dtype=torch.float32)
    cam = look_at_camera(250.0, 120.0, (40, 48))
    screen = project_points(verts[None], cam)
    ours = rasterize(screen, faces, (40, 48))
    theirs = rasterize(screen, faces, (40, 48), backend="pytorch3d")
    agree = (ours.pix_to_face == theirs.pix_to_face).float().mean()
    assert agree > 0.995  # only pixel centres on shared edges may differ
    same = ours.pix_to_face == theirs.pix_to_face
    assert torch.allclose(ours.zbuf[same], theirs.zbuf[same], atol=1e-3)


# ------------------------------------------------------------------------ against the reference
def _reference_rasterize():
    import importlib.util

    path = Path(__file__).resolve().parent / "render_reference_rasterize.py"
    spec = importlib.util.spec_from_file_location("render_reference_rasterize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rasterize


@pytest.mark.parametrize("mesh", ["open", "sphere", "coarse_sphere_float64"])
def test_fragments_and_gradients_match_the_reference_rasterizer(mesh):
    # the speed-up must not move DEM / DGMD training: same fragments bit for bit, same gradients to float noise
    # (small faces take the whole-box path, the coarse sphere's large faces the row-span path; float32 picks the
    # nearest face with one int64 scatter, float64 with two passes)
    gen = torch.Generator().manual_seed(7)
    if mesh == "coarse_sphere_float64":
        verts, faces = icosphere(1, 45.0)
        size, dist, focal = 64, 250.0, 200.0
        rast = sys.modules["microface.render.rasterize"]
        one_cam = look_at_camera(dist, focal, size, dtype=verts.dtype)
        tri = rast._packed_triangles(project_points(verts[None], one_cam), faces)
        planes = rast._face_tables(tri, True)
        assert rast._row_spans(tri, planes[:3], planes[-1], size, size)[4] is not None  # really the span path
    elif mesh == "open":
        data = np.load(MESH_NPZ)
        verts = torch.from_numpy(data["vertices_cm"]).float() * 10.0
        faces = torch.from_numpy(data["triangles"]).long()
        size, dist, focal = 72, 600.0, 0.85 * 72 * 600.0 / 177.0
    else:
        verts, faces = icosphere(2, 45.0, dtype=torch.float32)
        size, dist, focal = 40, 250.0, 120.0
    B = 3
    noise = torch.randn(B, verts.shape[0], 3, generator=gen, dtype=verts.dtype)
    verts = verts[None].repeat(B, 1, 1) + noise * 2.0
    cam = look_at_camera(dist, focal, size, batch_size=B, dtype=verts.dtype)
    screen = project_points(verts, cam).detach()
    weights = torch.randn(B, size, size, 1, 3, generator=gen, dtype=verts.dtype)
    results = []
    for fn in (rasterize, _reference_rasterize()):
        s = screen.clone().requires_grad_()
        fr = fn(s, faces, size)
        loss = (
            fr.alpha.square().sum() + (fr.bary_coords * weights).sum() + (fr.zbuf * fr.mask[..., None]).sum() * 1e-2
            + (fr.fringe_bary * weights).sum()
        )
        loss.backward()
        results.append((fr, s.grad))
    (new, new_grad), (ref, ref_grad) = results
    assert ((ref.alpha > 0) & (ref.alpha < 1)).sum() > 100 and (ref.fringe_face >= 0).sum() > 50
    for name in ("pix_to_face", "fringe_face", "bary_coords", "zbuf", "alpha", "fringe_bary"):
        assert torch.equal(getattr(new, name), getattr(ref, name)), name
    assert ref_grad.abs().max() > 0.1
    # only the accumulation order of gradient sums may differ
    torch.testing.assert_close(new_grad, ref_grad, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ compiled search (numba) vs torch
def _scene_for_search(kind: str, dtype):
    gen = torch.Generator().manual_seed(11)
    if kind == "open":
        data = np.load(MESH_NPZ)
        verts = torch.from_numpy(data["vertices_cm"]).to(dtype) * 10.0
        faces = torch.from_numpy(data["triangles"]).long()
        size, dist, focal = (56, 64), 600.0, 0.85 * 56 * 600.0 / 177.0
    else:
        verts, faces = icosphere(2, 45.0, dtype=dtype)
        size, dist, focal = (40, 48), 250.0, 120.0
    B = 2
    verts = verts[None].repeat(B, 1, 1) + torch.randn(B, verts.shape[0], 3, generator=gen, dtype=dtype) * 2.0
    # the second mesh runs off the image's left edge and has a vertex behind the camera (invalid faces)
    verts[1] += torch.tensor([-60.0, 0.0, 0.0], dtype=dtype)
    verts[1, 0, 2] = dist + 10.0
    cam = look_at_camera(dist, focal, size, batch_size=B, dtype=dtype)
    return project_points(verts, cam).detach(), faces, size


@pytest.mark.parametrize("kind", ["open", "sphere"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("perspective", [True, False])
def test_compiled_search_gives_the_torch_search_fragments_and_gradients(monkeypatch, kind, dtype, perspective):
    rast = sys.modules["microface.render.rasterize"]
    pytest.importorskip("numba")
    screen, faces, size = _scene_for_search(kind, dtype)
    assert rast._use_compiled_search(screen)  # the compiled loops really run below
    weights = torch.randn(*screen.shape[:1], *size, 1, 3, generator=torch.Generator().manual_seed(3), dtype=dtype)
    results = {}
    for search in ("compiled", "torch"):
        monkeypatch.setenv("MICROFACE_RASTER_SEARCH", search)
        with torch.no_grad():
            frozen = rasterize(screen, faces, size, perspective_correct=perspective)
        s = screen.clone().requires_grad_()
        fr = rasterize(s, faces, size, perspective_correct=perspective)
        (fr.alpha.square().sum() + (fr.bary_coords * weights).sum() + (fr.fringe_bary * weights).sum()
         + (fr.zbuf * fr.mask[..., None]).sum() * 1e-2).backward()
        results[search] = (frozen, fr, s.grad)
    (c_frozen, c_fr, c_grad), (t_frozen, t_fr, t_grad) = results["compiled"], results["torch"]
    assert (t_fr.fringe_face >= 0).sum() > 20 and ((t_fr.alpha > 0) & (t_fr.alpha < 1)).sum() > 40
    assert (t_fr.pix_to_face >= 0).sum() > 100
    for name in ("pix_to_face", "fringe_face", "bary_coords", "zbuf", "alpha", "fringe_bary"):
        assert torch.equal(getattr(c_fr, name), getattr(t_fr, name)), name
        assert torch.equal(getattr(c_frozen, name), getattr(t_frozen, name)), name  # the no-grad fill too
    assert t_grad.abs().max() > 0.1
    torch.testing.assert_close(c_grad, t_grad, rtol=0, atol=0)


def test_compiled_search_can_be_switched_off(monkeypatch):
    rast = sys.modules["microface.render.rasterize"]
    monkeypatch.setenv("MICROFACE_RASTER_SEARCH", "torch")
    assert not rast._use_compiled_search(torch.zeros(1, 3, 3))
    monkeypatch.setenv("MICROFACE_RASTER_SEARCH", "compiled")
    assert rast._use_compiled_search(torch.zeros(1, 3, 3)) == (importlib_util_find("numba"))


def importlib_util_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
