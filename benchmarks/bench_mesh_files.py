"""Milliseconds to write one per-frame mesh file of ``microface reconstruct`` (the open model's 468-vertex mesh, and a
FLAME-sized 5023-vertex one), per format: binary PLY (``--format ply``), ASCII PLY, OBJ (``--format obj``).
Writes benchmarks/results/mesh_files.md.

Usage: python benchmarks/bench_mesh_files.py [--repeats 200]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from microface.face.open_model import OpenFaceModel
from microface.mesh.meshio import write_obj, write_ply
from microface.utils.io import write_text_atomic

WRITERS = {
    "PLY, binary little-endian (--format ply)": lambda path, v, f: write_ply(path, v, f, "microface"),
    "PLY, ASCII": lambda path, v, f: write_ply(path, v, f, "microface", encoding="ascii"),
    "OBJ (--format obj)": lambda path, v, f: write_obj(path, v, f, "microface"),
}


def flame_sized_mesh(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random mesh of FLAME's sizes (5023 vertices, 9976 triangles): file size, not shape, sets the cost."""
    return rng.normal(0.0, 50.0, (5023, 3)), rng.integers(0, 5023, (9976, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mesh_files.md")
    args = parser.parse_args()
    model = OpenFaceModel()
    meshes = {"open model (468 v / 898 f)": (model.v_template.numpy(), model.faces.numpy()),
              "FLAME-sized (5023 v / 9976 f)": flame_sized_mesh(np.random.default_rng(0))}
    work = Path(tempfile.mkdtemp(prefix="bench_mesh_files_"))
    rows = []
    try:
        for mesh_name, (vertices, faces) in meshes.items():
            for writer_name, writer in WRITERS.items():
                times = []
                for i in range(args.repeats):
                    path = work / f"frame_{i:05d}.mesh"
                    started = time.perf_counter()
                    writer(path, vertices, faces)
                    times.append(time.perf_counter() - started)
                rows.append((mesh_name, writer_name, 1e3 * float(np.median(times)), path.stat().st_size / 1024))
    finally:
        shutil.rmtree(work)
    lines = ["# Per-frame mesh files of `microface reconstruct`: milliseconds to write one (atomically: temp file, "
             "rename)", "",
             "| mesh | format | ms per frame (median) | KiB |", "|---|---|---:|---:|"]
    lines += [f"| {mesh} | {fmt} | {ms:.3f} | {kib:.0f} |" for mesh, fmt, ms, kib in rows]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Median of {args.repeats} writes each. Machine: {platform.machine()}, {os.cpu_count()} cores "
              f"visible, Python {platform.python_version()}, load average {load:.1f} at the end (a shared machine: "
              "times are upper bounds).", "", "Command: `python benchmarks/bench_mesh_files.py`", ""]
    write_text_atomic("\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
