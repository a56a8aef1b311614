"""Shading: spherical-harmonics lighting, texture sampling, and fragment -> image shading.

Shapes: B batch, V vertices, F faces, H/W image size, Ht/Wt texture size, C channels; ``...`` any
leading dimensions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn

from microface.mesh.geometry import vertex_normals
from microface.render.rasterize import Fragments, interpolate_vertex_attributes

# Real SH basis up to l = 2 in the order (l, m) = (0,0) (1,-1) (1,0) (1,1) (2,-2) (2,-1) (2,0) (2,1) (2,2):
#   Y = [c0, c1 y, c1 z, c1 x, c2 xy, c2 yz, c3 (3z^2 - 1), c2 xz, c4 (x^2 - y^2)]
#   c0 = 1 / (2 sqrt(pi)), c1 = sqrt(3 / (4 pi)), c2 = sqrt(15 / (4 pi)), c3 = sqrt(5 / (16 pi)),
#   c4 = sqrt(15 / (16 pi)) (orthonormal on the sphere).
# Lambertian convolution (Ramamoorthi & Hanrahan 2001) scales band l by A_l / pi with A_0 = pi,
# A_1 = 2 pi / 3, A_2 = pi / 4, so the outgoing radiance is albedo * sum_k sh_k * (A_l / pi) * Y_k(n),
# where sh_k are the SH coefficients of the incoming radiance. SH_BASIS_CONSTANTS are c * A_l / pi.
_C0 = 1.0 / (2.0 * math.sqrt(math.pi))


_C1 = math.sqrt(3.0 / (4.0 * math.pi))


_C2 = math.sqrt(15.0 / (4.0 * math.pi))


_C3 = math.sqrt(5.0 / (16.0 * math.pi))


_C4 = math.sqrt(15.0 / (16.0 * math.pi))


SH_BASIS_CONSTANTS = (
    _C0,
    _C1 * 2 / 3,
    _C1 * 2 / 3,
    _C1 * 2 / 3,
    _C2 / 4,
    _C2 / 4,
    _C3 / 4,
    _C2 / 4,
    _C4 / 4,
)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Lambertian-convolved SH basis (see SH_BASIS_CONSTANTS).

    Args:
        normals: unit normals in the world frame, shape (..., 3).

    Returns:
        basis values, shape (..., 9).
    """
    x, y, z = normals.unbind(-1)
    k = SH_BASIS_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, k[0]),
            k[1] * y,
            k[2] * z,
            k[3] * x,
            k[4] * x * y,
            k[5] * y * z,
            k[6] * (3.0 * z * z - 1.0),
            k[7] * x * z,
            k[8] * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_constant(batch_size: int, irradiance: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """DC-only SH whose shading is exactly ``albedo * irradiance`` for every normal.

    Args:
        batch_size: B.
        irradiance: the constant shading factor.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        SH coefficients, shape (B, 9, 3).
    """
    sh = torch.zeros(batch_size, 9, 3, device=device, dtype=dtype)
    sh[:, 0, :] = irradiance / SH_BASIS_CONSTANTS[0]
    return sh


def shade_sh(normals: torch.Tensor, albedo: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Lambertian shading under 2nd-order SH lighting, in the world frame.

    Args:
        normals: unit normals, shape (B, H, W, 3) (any (B, ..., 3) works).
        albedo: colours, same shape as ``normals``.
        sh: coefficients of the incoming radiance per colour channel, shape (B, 9, 3).

    Returns:
        ``albedo * (sh_basis(normals) @ sh)``, shape (B, H, W, 3).

    Raises:
        ValueError: shapes that do not match.
    """
    if normals.shape != albedo.shape or normals.shape[-1] != 3:
        raise ValueError(
            f"normals and albedo: expected the same (B, H, W, 3), got {tuple(normals.shape)} and {tuple(albedo.shape)}"
        )
    if sh.ndim != 3 or sh.shape[1:] != (9, 3) or sh.shape[0] != normals.shape[0]:
        raise ValueError(f"sh: expected ({normals.shape[0]}, 9, 3), got {tuple(sh.shape)}")
    # shading[b, ..., c] = sum_k basis[b, ..., k] * sh[b, k, c]
    basis = sh_basis(normals)
    flat = basis.reshape(basis.shape[0], -1, 9)
    shading = torch.bmm(flat, sh).reshape(normals.shape)
    return albedo * shading


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup.

    UV convention (MediaPipe's canonical UVs): u in [0, 1] left -> right, v in [0, 1] TOP -> bottom of the
    texture image. For OBJ / pytorch3d UVs (v up) pass ``1 - v``.

    Args:
        texture: texture images, shape (B, C, Ht, Wt).
        uv: lookup coordinates, shape (B, H, W, 2).

    Returns:
        sampled values, shape (B, H, W, C).

    Raises:
        ValueError: shapes that do not match.
    """
    if texture.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2 or texture.shape[0] != uv.shape[0]:
        raise ValueError(
            f"sample_texture: expected texture (B, C, Ht, Wt) and uv (B, H, W, 2), got "
            f"{tuple(texture.shape)} and {tuple(uv.shape)}"
        )
    grid = uv * 2.0 - 1.0
    sampled = F_nn.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.permute(0, 2, 3, 1)


@dataclass
class RenderOutput:
    """What :class:`MeshRenderer` returns.

    Attributes:
        image: composited over the background, shape (B, 3, H, W).
        alpha: soft coverage, shape (B, 1, H, W).
        mask: bool hard coverage, shape (B, 1, H, W).
        fragments: the Fragments.
        screen_vertices: ``(x_px, y_px, depth_mm)``, shape (B, V, 3).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    fragments: Fragments
    screen_vertices: torch.Tensor


def _background_image(background, B: int, H: int, W: int, ref: torch.Tensor) -> torch.Tensor:
    if background is None:
        return torch.zeros(B, H, W, 3, dtype=ref.dtype, device=ref.device)
    bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device)
    if bg.ndim <= 1:  # scalar or (3,) colour
        return bg.expand(B, H, W, 3)
    if bg.ndim == 4 and bg.shape[1] == 3 and bg.shape[2:] == (H, W):
        return bg.permute(0, 2, 3, 1).expand(B, H, W, 3)
    raise ValueError(f"background: expected None, a scalar, (3,) or (B, 3, {H}, {W}), got {tuple(bg.shape)}")


def shade_mesh(
    fragments: Fragments,
    vertices_world: torch.Tensor,
    faces: torch.Tensor,
    albedo: torch.Tensor,
    sh: torch.Tensor,
    background=None,
    uvs: torch.Tensor | None = None,
) -> torch.Tensor:
    """SH-Lambertian shading of fragments, composited with alpha over the background.

    Args:
        fragments: from :func:`rasterize`.
        vertices_world: world vertices in mm, shape (B, V, 3) (normals come from them, world frame).
        faces: triangle vertex indices, shape (F, 3).
        albedo: per-vertex colours, shape (B, V, 3), or a texture, shape (B, 3, Ht, Wt), sampled at ``uvs``.
        sh: SH lighting coefficients, shape (B, 9, 3).
        background: None (black), a float, a colour of shape (3,) or an image of shape (B, 3, H, W).
        uvs: per-vertex texture coordinates, shape (V, 2); needed with a texture albedo.

    Returns:
        the image, shape (B, 3, H, W).

    Raises:
        ValueError: an albedo, uvs or background of the wrong shape.
    """
    B, H, W, _ = fragments.pix_to_face.shape
    normals = vertex_normals(vertices_world, faces)
    pixel_normals = F_nn.normalize(
        interpolate_vertex_attributes(fragments, faces, normals, include_fringe=True), dim=-1, eps=1e-12
    )
    if albedo.ndim == 3 and albedo.shape[-1] == 3 and albedo.shape[1] == vertices_world.shape[1]:
        pixel_albedo = interpolate_vertex_attributes(fragments, faces, albedo, include_fringe=True)
    elif albedo.ndim == 4 and albedo.shape[1] == 3:
        if uvs is None or uvs.shape != (vertices_world.shape[1], 2):
            found = None if uvs is None else tuple(uvs.shape)
            raise ValueError(f"a texture albedo needs uvs ({vertices_world.shape[1]}, 2), got {found}")
        pixel_uv = interpolate_vertex_attributes(fragments, faces, uvs.to(albedo.dtype), include_fringe=True)
        pixel_albedo = sample_texture(albedo.expand(B, -1, -1, -1), pixel_uv)
    else:
        raise ValueError(
            f"albedo: expected per-vertex (B, {vertices_world.shape[1]}, 3) or a texture (B, 3, Ht, Wt), "
            f"got {tuple(albedo.shape)}"
        )
    colour = shade_sh(pixel_normals, pixel_albedo, sh)
    alpha = fragments.alpha[..., None]
    image = alpha * colour + (1.0 - alpha) * _background_image(background, B, H, W, colour)
    return image.permute(0, 3, 1, 2)
