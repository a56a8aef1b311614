"""Differentiable mesh renderer in pure torch: camera -> rasterize -> fragments -> shade (pytorch3d's API shape).

``camera`` holds every camera form and conversion, ``rasterize`` turns screen-space triangles into fragments,
``shading`` lights and textures them, ``renderer.MeshRenderer`` composes the two. The conventions (frames,
screen space, fragments) are documented in :mod:`microface.render.rasterize`.
"""
from microface.render.camera import Camera, look_at_camera, project_points, weak_perspective_camera
from microface.render.rasterize import Fragments, interpolate_vertex_attributes, rasterize
from microface.render.renderer import MeshRenderer
from microface.render.shading import (
                                      SH_BASIS_CONSTANTS,
                                      RenderOutput,
                                      sample_texture,
                                      sh_basis,
                                      sh_constant,
                                      shade_mesh,
                                      shade_sh,
)

__all__ = [
    "Camera",
    "Fragments",
    "RenderOutput",
    "MeshRenderer",
    "look_at_camera",
    "weak_perspective_camera",
    "project_points",
    "rasterize",
    "interpolate_vertex_attributes",
    "sample_texture",
    "sh_basis",
    "sh_constant",
    "shade_sh",
    "shade_mesh",
    "SH_BASIS_CONSTANTS",
]
