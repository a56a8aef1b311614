"""Speed of the pure-torch rasterizer against pytorch3d's CPU ``rasterize_meshes``, side by side in one run.

Meshes: (a) the open model (MediaPipe canonical mesh, 468 v / 898 f) and (b) a FLAME-sized procedural
face-like cap (71 x 71 grid: 5041 v / 9800 f) of the same extent, both seen by a frontal camera that makes
the face about 85 % of the image height. Batch 1, 2 torch threads. Both rasterizers get the SAME screen
vertices (pytorch3d's in its NDC convention, as ``rasterize(..., backend="pytorch3d")`` converts them), one
face per pixel, perspective-correct barycentrics; pytorch3d with ``blur_radius = 0`` so that its pix_to_face
covers the same pixels as ours (ours still computes its 1 px soft band on top); both covered-pixel counts are
in the table. "previous rasterizer" is the one before issue 20 (tests/render_reference_rasterize.py); "torch search"
is the current rasterizer with its vectorised torch search (``MICROFACE_RASTER_SEARCH=torch``, the GPU path) instead of
the numba-compiled one (microface.render.raster_kernel) that CPU tensors get.

"forward" is the rasterizer alone under no_grad; "forward+backward" also back-propagates a loss on every
differentiable output (ours: alpha, barycentrics, zbuf; pytorch3d: barycentrics, zbuf, dists) to the screen
vertices. The two rasterizers alternate inside every repeat (so machine load hits both alike); medians.
"render" columns: our whole MeshRenderer (project + rasterize + SH shade), for reference.

Without pytorch3d (it is optional: ``pip install --no-deps ../shared/wheels/pytorch3d-*.whl``) the pytorch3d
columns read "n/a".

Run: python benchmarks/bench_render.py  ->  benchmarks/results/render.md
"""
from __future__ import annotations

import os

# OpenMP's default wait policy (threads spin briefly between parallel regions), as users run torch. On a loaded
# machine, spinning threads that wait for a descheduled partner make small parallel ops 10-50x slower: run it there
# with OMP_WAIT_POLICY=PASSIVE (the header records the policy), which makes torch's small ops slower when quiet.
import importlib.util
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from microface.utils.io import write_text_atomic
from microface.render.renderer import MeshRenderer
from microface.render.camera import look_at_camera, project_points
from microface.render.rasterize import rasterize
from microface.render.shading import sh_constant

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "render.md"
THREADS = 2
WARMUP, REPEATS = 2, int(os.environ.get("BENCH_RENDER_REPEATS", "7"))
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


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def pytorch3d_rasterizer(screen: torch.Tensor, faces: torch.Tensor, size: int):
    """(forward, forward_backward, covered pixels) closures for pytorch3d's CPU rasterizer, or None without it."""
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError:
        return None
    s = float(size)
    ndc = torch.stack([(size - 2.0 * screen[..., 0]) / s, (size - 2.0 * screen[..., 1]) / s, screen[..., 2]], -1)
    blur = 0.0  # pix_to_face = faces whose interior holds the pixel centre: the same covered pixels as ours

    def run(verts):
        meshes = Meshes(verts=[verts[0]], faces=[faces])
        return rasterize_meshes(meshes, image_size=size, blur_radius=blur, faces_per_pixel=1, bin_size=0,
                                perspective_correct=True, cull_backfaces=False)

    def forward():
        with torch.no_grad():
            return run(ndc)

    def forward_backward():
        v = ndc.clone().requires_grad_()
        p2f, zbuf, bary, dists = run(v)
        hit = p2f >= 0
        (bary.square().sum() + (zbuf * hit).sum() * 1e-3 + (dists * hit).sum()).backward()

    covered = int((forward()[0] >= 0).sum())
    return forward, forward_backward, covered


def reference_rasterize():
    """The previous rasterizer (tests/render_reference_rasterize.py, commit c72562b), for before/after."""
    path = ROOT / "tests" / "render_reference_rasterize.py"
    spec = importlib.util.spec_from_file_location("render_reference_rasterize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rasterize


def torch_search(fn):
    """``fn`` run with the vectorised torch search (MICROFACE_RASTER_SEARCH=torch) instead of the compiled one."""

    def run(*args, **kwargs):
        before = os.environ.get("MICROFACE_RASTER_SEARCH")
        os.environ["MICROFACE_RASTER_SEARCH"] = "torch"
        try:
            return fn(*args, **kwargs)
        finally:
            if before is None:
                del os.environ["MICROFACE_RASTER_SEARCH"]
            else:
                os.environ["MICROFACE_RASTER_SEARCH"] = before

    return run


def ours_rasterizer(screen: torch.Tensor, faces: torch.Tensor, size: int, rasterize=rasterize):
    """(forward, forward_backward, covered pixels) closures for microface's rasterizer."""

    def forward():
        with torch.no_grad():
            return rasterize(screen, faces, size)

    def forward_backward():
        v = screen.clone().requires_grad_()
        fr = rasterize(v, faces, size)
        hit = fr.mask[..., None]
        (fr.bary_coords.square().sum() + (fr.zbuf * hit).sum() * 1e-3 + fr.alpha.sum()).backward()

    return forward, forward_backward, int(forward().mask.sum())


def renderer_closures(verts: torch.Tensor, faces: torch.Tensor, cam, size: int):
    """(forward, forward_backward) of the whole MeshRenderer (project + rasterize + shade)."""
    renderer = MeshRenderer()
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

    return forward, forward_backward


def bench(verts: torch.Tensor, faces: torch.Tensor, size: int) -> dict:
    """Median ms of every closure, all interleaved within each repeat."""
    torch.manual_seed(0)
    cam = look_at_camera(DISTANCE_MM, 0.85 * size * DISTANCE_MM / FACE_HEIGHT_MM, size)
    verts = verts[None]
    screen = project_points(verts, cam).detach()
    ours_f, ours_fb, ours_cov = ours_rasterizer(screen, faces, size)
    rend_f, rend_fb = renderer_closures(verts, faces, cam, size)
    old_f, old_fb, _ = ours_rasterizer(screen, faces, size, reference_rasterize())
    torch_f, torch_fb, _ = ours_rasterizer(screen, faces, size, torch_search(rasterize))
    fns = {"ours_f": ours_f, "ours_fb": ours_fb, "render_f": rend_f, "render_fb": rend_fb, "old_f": old_f,
           "old_fb": old_fb, "torch_f": torch_f, "torch_fb": torch_fb}
    theirs = pytorch3d_rasterizer(screen, faces, size)
    if theirs is not None:
        fns["p3d_f"], fns["p3d_fb"] = theirs[0], theirs[1]
    for _ in range(WARMUP):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cold: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = np.random.default_rng(0)
    for _ in range(REPEATS):
        rng.shuffle(order)  # no closure always runs right after the same one (caches, sleeping threads)
        for key in order:
            # the first call after another closure pays for caches and memory that one left cold (on this VM a
            # 2 ms call takes 15 ms after a long pytorch3d backward); the second is the rasterizer's own cost
            cold[key].append(_timed(fns[key]))
            times[key].append(_timed(fns[key]))
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_cold": statistics.median(v) for k, v in cold.items()})
    out["ours_cov"] = ours_cov
    out["p3d_cov"] = theirs[2] if theirs is not None else None
    return out


def _fmt(ms) -> str:
    return "n/a" if ms is None else (f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms")


def _ratio(theirs, ours) -> str:
    return "n/a" if theirs is None else f"{theirs / ours:.0f}x"


def main() -> None:
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    meshes = {"open model (468 v / 898 f)": open_mesh(), "FLAME-sized (5041 v / 9800 f)": flame_sized_mesh()}
    rows = []
    for name, (verts, faces) in meshes.items():
        for size in (128, 224):
            r = bench(verts, faces, size)
            rows.append((name, size, r))
            print(f"{name:30s} {size}x{size}: ours {r['ours_f']:.2f} / {r['ours_fb']:.2f} ms, pytorch3d "
                  f"{r.get('p3d_f')} / {r.get('p3d_fb')} ms, covered {r['ours_cov']} / {r['p3d_cov']}")
    load_after = os.getloadavg()[0]
    p3d = "pytorch3d " + __import__("pytorch3d").__version__ if importlib.util.find_spec("pytorch3d") else "no pytorch3d"
    lines = [
        "# Renderer speed: microface's rasterizer vs pytorch3d's CPU rasterize_meshes (one run)",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}, {p3d}, torch threads = {torch.get_num_threads()}, Python "
        f"{platform.python_version()}; load average (1 min) {load_before:.1f} before, {load_after:.1f} after "
        "(other jobs shared the machine: absolute times are noisy, the rasterizers alternate so ratios are fair); "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (OpenMP default)')}.",
        f"Median of {REPEATS} interleaved repeats (closures in a new random order each repeat) after {WARMUP} warm-up rounds; each closure runs twice in a "
        "row and the second call is timed (the first, after another closure, is in the 'first call' column: caches "
        "and memory left cold by the previous closure); batch 1; same screen vertices; "
        "one face per pixel; perspective-correct; ours with its 1 px soft band, pytorch3d with blur_radius 0 (same "
        "covered pixels). Command: `python benchmarks/bench_render.py`.",
        "",
        "What dominated the torch search (cProfile, quiet machine): torch's per-op cost. One forward pass issues about "
        "550 small ops (index_select, nonzero, where, sum, amin over (pixel, face) candidate lists): 9 ms on the open "
        "model at 128x128, of which the arithmetic is a fraction. The compiled search visits each face's pixel box "
        "once in a loop (microface.render.raster_kernel); torch keeps only the differentiable values of the chosen "
        "faces (about 40 ops with gradient, a dozen without).",
        "",
        "| mesh | image | covered px (ours / pytorch3d) | ours, forward | pytorch3d | ratio | ours, forward+backward "
        "| pytorch3d | ratio | previous rasterizer (c72562b), forward / forward+backward "
        "| torch search (GPU path), forward / forward+backward "
        "| our render (raster + shade), forward / forward+backward "
        "| ours, first call after another closure, forward / forward+backward |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, r in rows:
        lines.append(
            f"| {name} | {size}x{size} | {r['ours_cov']} / {r['p3d_cov'] if r['p3d_cov'] is not None else 'n/a'} "
            f"| {_fmt(r['ours_f'])} | {_fmt(r.get('p3d_f'))} | {_ratio(r.get('p3d_f'), r['ours_f'])} "
            f"| {_fmt(r['ours_fb'])} | {_fmt(r.get('p3d_fb'))} | {_ratio(r.get('p3d_fb'), r['ours_fb'])} "
            f"| {_fmt(r['old_f'])} / {_fmt(r['old_fb'])} | {_fmt(r['torch_f'])} / {_fmt(r['torch_fb'])} "
            f"| {_fmt(r['render_f'])} / {_fmt(r['render_fb'])} | {_fmt(r['ours_f_cold'])} / {_fmt(r['ours_fb_cold'])} |"
        )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic("\n".join(lines) + "\n", RESULT)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
