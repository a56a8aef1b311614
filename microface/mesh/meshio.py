"""Mesh files: OBJ and PLY writers and readers (vertices in mm, triangles).

Shapes: V vertices, F faces. Face indices are 0-based in memory.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from microface.utils.io import write_bytes_atomic, write_text_atomic

PLY_FORMATS = ("binary", "ascii")


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


# one face record of a binary PLY: the list length (uchar 3) and three int32 indices, packed
_PLY_FACE = np.dtype([("count", "u1"), ("indices", "<i4", (3,))])


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, comment: str = "",
              encoding: str = "binary") -> None:
    """Write a PLY file: binary little-endian (default; written from numpy buffers, well under a millisecond for the
    open model's mesh, since text formatting costs several) or ASCII.

    Args:
        path: file to write.
        vertices: vertex positions, shape (V, 3), written as float32.
        faces: 0-based triangle vertex indices, shape (F, 3), written as ``vertex_indices`` (uchar count, int32).
        comment: text written as ``comment`` lines in the header.
        encoding: "binary" (``binary_little_endian 1.0``) or "ascii".

    Raises:
        ValueError: an unknown ``encoding``.
    """
    if encoding not in PLY_FORMATS:
        raise ValueError(f"encoding: expected one of {PLY_FORMATS}, got {encoding!r}")
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    header = (f"ply\nformat {'binary_little_endian' if encoding == 'binary' else 'ascii'} 1.0\n"
              + "".join(f"comment {line}\n" for line in comment.splitlines())
              + f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    if encoding == "binary":
        records = np.empty(len(faces), dtype=_PLY_FACE)
        records["count"] = 3
        records["indices"] = faces
        write_bytes_atomic(header.encode("ascii") + vertices.astype("<f4").tobytes() + records.tobytes(), path)
        return
    buffer = io.StringIO()
    buffer.write(header)
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
    """Read a triangle PLY file as ``write_ply`` writes it (binary little-endian or ASCII).

    Args:
        path: PLY file.

    Returns:
        vertices, shape (V, 3) float64, and faces, shape (F, 3) int64.

    Raises:
        ValueError: the file is not PLY in one of those two layouts, has no ``end_header``, is cut short, or holds a
            face that is not a triangle.
    """
    data = Path(path).read_bytes()
    marker = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or marker < 0:
        raise ValueError(f"{path}: expected a PLY file with an end_header line")
    header = data[:marker].decode("ascii", errors="replace").splitlines()
    if header[1] == "format binary_little_endian 1.0":
        return _read_binary_ply(path, header, data[marker + len(b"end_header\n"):])
    lines = data.decode("ascii", errors="replace").splitlines()
    if "format ascii 1.0" not in lines[1]:
        raise ValueError(f"{path}: expected an ASCII or binary little-endian PLY file, found {lines[1]!r}")
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


def _read_binary_ply(path, header: list[str], body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The vertices (V, 3) float64 and faces (F, 3) int64 of a binary PLY body in ``write_ply``'s layout."""
    counts = {parts[1]: int(parts[2]) for parts in (line.split() for line in header) if parts[:1] == ["element"]}
    n_v, n_f = counts.get("vertex", 0), counts.get("face", 0)
    expected = n_v * 12 + n_f * _PLY_FACE.itemsize
    if len(body) != expected:
        raise ValueError(f"{path}: binary PLY body of {len(body)} bytes, expected {expected} for {n_v} float32 "
                         f"vertices and {n_f} triangles")
    vertices = np.frombuffer(body, dtype="<f4", count=n_v * 3).reshape(-1, 3).astype(np.float64)
    records = np.frombuffer(body, dtype=_PLY_FACE, offset=n_v * 12)
    if (records["count"] != 3).any():
        raise ValueError(f"{path}: expected triangles only")
    return vertices, records["indices"].astype(np.int64).reshape(-1, 3)
