"""MeshRenderer: a rasterizer plus a shader, pytorch3d style.

Shapes: B batch, V vertices, F faces, H/W image size, Ht/Wt texture size.
"""
from __future__ import annotations

from torch import nn

from microface.render.camera import Camera, project_points
from microface.render.rasterize import rasterize
from microface.render.shading import RenderOutput, shade_mesh


class MeshRenderer(nn.Module):
    """Projection + rasterization + SH shading (pytorch3d-style composition; holds only settings).

    Perspective-correct barycentrics follow the camera kind.

    Args:
        blur_radius_px: half-width of the anti-aliasing band in pixels (see :func:`rasterize`).
        backend: "torch" or "pytorch3d" (visibility only; see :func:`rasterize`).

    Raises:
        ValueError: an unknown backend.
    """

    def __init__(self, blur_radius_px: float = 1.0, backend: str = "torch") -> None:
        super().__init__()
        if backend not in ("torch", "pytorch3d"):
            raise ValueError(f"backend: expected 'torch' or 'pytorch3d', got {backend!r}")
        self.blur_radius_px = float(blur_radius_px)
        self.backend = backend

    def forward(self, vertices_world, faces, camera: Camera, albedo, sh, image_size, background=None, uvs=None):
        """Render meshes.

        Args:
            vertices_world: world vertices in mm, shape (B, V, 3).
            faces: triangle vertex indices, shape (F, 3).
            camera: a batch of B cameras.
            albedo: per-vertex colours, shape (B, V, 3), or a texture, shape (B, 3, Ht, Wt).
            sh: SH lighting coefficients, shape (B, 9, 3).
            image_size: int or (H, W).
            background: None (black), a float, a colour of shape (3,) or an image of shape (B, 3, H, W).
            uvs: per-vertex texture coordinates, shape (V, 2), when ``albedo`` is a texture.

        Returns:
            a RenderOutput.
        """
        screen = project_points(vertices_world, camera)
        fragments = rasterize(screen, faces, image_size, self.blur_radius_px, camera.is_perspective, self.backend)
        image = shade_mesh(fragments, vertices_world, faces, albedo, sh, background, uvs)
        return RenderOutput(
            image=image,
            alpha=fragments.alpha[:, None],
            mask=fragments.mask[:, None],
            fragments=fragments,
            screen_vertices=screen,
        )
