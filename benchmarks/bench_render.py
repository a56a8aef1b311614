"""Speed of the pure-torch renderer: median ms per frame, batch 1, 2 torch threads.

Meshes: (a) the open model (MediaPipe canonical mesh, 468 v / 898 f) and (b) a FLAME-sized procedural
face-like cap (71 x 71 grid: 5041 v / 9800 f) of the same extent, both seen by a frontal camera that makes
the face about 85 % of the image height. "forward" is rasterize + shade under no_grad; "forward+backward"
also back-propagates an image loss to vertices, albedo and SH.

Run: python benchmarks/bench_render.py  ->  benchmarks/results/render.md
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from microface.utils.io import write_text_atomic
from microface.render.renderer import MeshRenderer
from microface.render.camera import look_at_camera
from microface.render.shading import sh_constant

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "render.md"
THREADS = 2
WARMUP, REPEATS = 3, 15
DISTANCE_MM = 600.0
FACE_HEIGHT_MM = 177.0  # the open mesh's extent in y


def open_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(ROOT / "microface" / "face" / "assets" / "canonical_face_mesh.npz")
    return torch.from_numpy(data["vertices_cm"]).float() * 10.0, torch.from_numpy(data["triangles"]).long()


def flame_sized_mesh(n: int = 71) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-sized bulging grid: (n*n, 3) vertices in mm, (2 (n-1)^2, 3) faces."""
    y, x = torch.meshgrid(torch.linspace(-88.0, 88.0, n), torch.linspace(-77.0, 77.0, n), indexing="ij")
    z = 75.0 * torch.sqrt((1.0 - (x / 95.0) ** 2 - (y / 110.0) ** 2).clamp_min(0.0))
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([b, c, d], -1).reshape(-1, 3)])
    return verts, faces


def median_ms(fn) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def bench(verts: torch.Tensor, faces: torch.Tensor, size: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    renderer = MeshRenderer()
    cam = look_at_camera(DISTANCE_MM, 0.85 * size * DISTANCE_MM / FACE_HEIGHT_MM, size)
    verts = verts[None]
    albedo = torch.full_like(verts, 0.7)
    sh = sh_constant(1, 0.8)
    sh[0, 2] = 0.3

    def forward():
        with torch.no_grad():
            return renderer(verts, faces, cam, albedo, sh, size)

    def forward_backward():
        v = verts.clone().requires_grad_()
        a = albedo.clone().requires_grad_()
        s = sh.clone().requires_grad_()
        renderer(v, faces, cam, a, s, size).image.square().mean().backward()

    coverage = forward().mask.float().mean().item()
    return median_ms(forward), median_ms(forward_backward), coverage


def main() -> None:
    torch.set_num_threads(THREADS)
    meshes = {"open model": open_mesh(), "FLAME-sized grid": flame_sized_mesh()}
    rows = []
    for name, (verts, faces) in meshes.items():
        for size in (128, 224):
            fwd, fwd_bwd, coverage = bench(verts, faces, size)
            rows.append((name, verts.shape[0], faces.shape[0], size, coverage, fwd, fwd_bwd))
            print(f"{name:18s} {size}x{size}: forward {fwd:6.1f} ms, forward+backward {fwd_bwd:6.1f} ms")
    lines = [
        "# Renderer speed (pure torch, CPU)",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}, torch threads = {torch.get_num_threads()}, Python {platform.python_version()}.",
        f"Median of {REPEATS} runs after {WARMUP} warm-up runs; batch 1; rasterize + SH shade; "
        "blur radius 1 px. Command: `python benchmarks/bench_render.py`.",
        "",
        "| mesh | vertices | faces | image | face pixels | forward (ms) | forward+backward (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, nv, nf, size, coverage, fwd, fwd_bwd in rows:
        lines.append(f"| {name} | {nv} | {nf} | {size}x{size} | {coverage:.0%} | {fwd:.1f} | {fwd_bwd:.1f} |")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic("\n".join(lines) + "\n", RESULT)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
