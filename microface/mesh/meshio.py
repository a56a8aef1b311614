"""Mesh files: OBJ and PLY writers and readers (vertices in mm, triangles).

Shapes: V vertices, F faces. Face indices are 0-based in memory.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from microface.utils.io import write_text_atomic


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> None:
    """Write a Wavefront OBJ file.

    Args:
        path: file to write.
        vertices: vertex positions, shape (V, 3).
        faces: 0-based triangle vertex indices, shape (F, 3) (written 1-based, as OBJ wants).
        comment: text written as ``#`` lines at the top; one line per line of text.
    """
    buffer = io.StringIO()
    if comment:
        buffer.write("".join(f"# {line}\n" for line in comment.splitlines()))
    np.savetxt(buffer, np.asarray(vertices, dtype=np.float64), fmt="v %.6f %.6f %.6f")
    np.savetxt(buffer, np.asarray(faces, dtype=np.int64) + 1, fmt="f %d %d %d")
    write_text_atomic(buffer.getvalue(), path)


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> None:
    """Write an ASCII PLY file.

    Args:
        path: file to write.
        vertices: vertex positions, shape (V, 3), written as float.
        faces: 0-based triangle vertex indices, shape (F, 3), written as ``vertex_indices``.
        comment: text written as ``comment`` lines in the header.
    """
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    buffer = io.StringIO()
    buffer.write("ply\nformat ascii 1.0\n")
    buffer.write("".join(f"comment {line}\n" for line in comment.splitlines()))
    buffer.write(f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
                 f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    np.savetxt(buffer, vertices, fmt="%.6f %.6f %.6f")
    np.savetxt(buffer, faces, fmt="3 %d %d %d")
    write_text_atomic(buffer.getvalue(), path)


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle OBJ file (``f a/b/c`` forms accepted).

    Args:
        path: OBJ file.

    Returns:
        vertices, shape (V, 3) float64, and 0-based faces, shape (F, 3) int64.

    Raises:
        ValueError: a face is not a triangle.
    """
    vertices, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vertices.append([float(p) for p in parts[1:4]])
        elif parts[0] == "f":
            if len(parts) != 4:
                raise ValueError(f"{path}: expected triangles, found a face with {len(parts) - 1} corners")
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:]])
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ASCII triangle PLY file as ``write_ply`` writes it.

    Args:
        path: PLY file.

    Returns:
        vertices, shape (V, 3) float64, and faces, shape (F, 3) int64.

    Raises:
        ValueError: the file is not ASCII PLY, has no ``end_header``, or holds a face that is not a triangle.
    """
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != "ply" or "format ascii 1.0" not in lines[1]:
        raise ValueError(f"{path}: expected an ASCII PLY file")
    counts, end = {}, None
    for i, line in enumerate(lines):
        parts = line.split()
        if parts[:1] == ["element"]:
            counts[parts[1]] = int(parts[2])
        if line == "end_header":
            end = i + 1
            break
    if end is None:
        raise ValueError(f"{path}: no end_header")
    n_v, n_f = counts.get("vertex", 0), counts.get("face", 0)
    vertices = np.array([[float(p) for p in lines[end + i].split()[:3]] for i in range(n_v)]).reshape(-1, 3)
    rows = [lines[end + n_v + i].split() for i in range(n_f)]
    if any(r[0] != "3" for r in rows):
        raise ValueError(f"{path}: expected triangles only")
    return vertices, np.array([[int(p) for p in r[1:4]] for r in rows], dtype=np.int64).reshape(-1, 3)
