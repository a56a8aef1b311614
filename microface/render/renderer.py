"""MeshRenderer: a rasterizer plus a shader, pytorch3d style."""
from __future__ import annotations

from torch import nn

from microface.render.camera import Camera, project_points
from microface.render.rasterize import rasterize
from microface.render.shading import RenderOutput, shade_mesh


class MeshRenderer(nn.Module):
    """Projection + rasterization + SH shading (pytorch3d-style composition; holds only settings).

    forward(vertices_world (B, V, 3) mm, faces (F, 3), camera, albedo (B, V, 3) | (B, 3, Ht, Wt),
    sh (B, 9, 3), image_size int | (H, W), background None | float | (3,) | (B, 3, H, W), uvs (V, 2) | None)
    -> RenderOutput. Perspective-correct barycentrics follow the camera kind.
    """

    def __init__(self, blur_radius_px: float = 1.0, backend: str = "torch") -> None:
        super().__init__()
        if backend not in ("torch", "pytorch3d"):
            raise ValueError(f"backend: expected 'torch' or 'pytorch3d', got {backend!r}")
        self.blur_radius_px = float(blur_radius_px)
        self.backend = backend

    def forward(self, vertices_world, faces, camera: Camera, albedo, sh, image_size, background=None, uvs=None):
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
