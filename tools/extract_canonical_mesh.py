"""Extract MediaPipe's canonical face mesh (468 vertices, 898 triangles, UVs) into microface's package data.

Source: the npm package ``@mediapipe/face_mesh`` (Apache-2.0), file
``face_mesh_solution_packed_assets.data``, entry
``geometry_pipeline_metadata_landmarks.binarypb`` (a ``GeometryPipelineMetadata`` protobuf whose
``canonical_mesh`` holds an interleaved ``VERTEX_PT`` buffer x, y, z, u, v in centimetres and a triangle
index buffer). This script is run once by a maintainer; its output ``microface/face/assets/canonical_face_mesh.npz``
is committed with the Apache-2.0 notice beside it. Usage::

    npm pack @mediapipe/face_mesh && tar xzf mediapipe-face_mesh-*.tgz
    python tools/extract_canonical_mesh.py package/ microface/face/assets/canonical_face_mesh.npz

A tiny protobuf reader is written here because pulling in protobuf and MediaPipe's .proto files for
one 19 kB message is not worth a dependency.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ENTRY = "geometry_pipeline_metadata_landmarks.binarypb"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Decode one protobuf message level into (field number, wire type, value) triples."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def extract(package_dir: Path) -> dict[str, np.ndarray]:
    loader = (package_dir / "face_mesh_solution_packed_assets_loader.js").read_text()
    match = re.search(r'"filename": "[^"]*' + re.escape(ENTRY) + r'", "start": (\d+), "end": (\d+)', loader)
    if match is None:
        raise SystemExit(f"{ENTRY} not listed in {package_dir}/face_mesh_solution_packed_assets_loader.js")
    start, end = int(match.group(1)), int(match.group(2))
    blob = (package_dir / "face_mesh_solution_packed_assets.data").read_bytes()[start:end]
    mesh = next(v for f, w, v in _fields(blob) if f == 1)  # canonical_mesh
    floats, indices = [], []
    for field, wire, value in _fields(mesh):
        if field == 3:  # vertex_buffer, packed or not
            floats.extend(np.frombuffer(value, dtype="<f4").tolist())
        elif field == 4:  # index_buffer
            if wire == 0:
                indices.append(value)
            else:
                j = 0
                while j < len(value):
                    x, j = _varint(value, j)
                    indices.append(x)
    vertex_pt = np.asarray(floats, dtype=np.float32).reshape(-1, 5)
    triangles = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    return {"vertices_cm": vertex_pt[:, :3], "uvs": vertex_pt[:, 3:], "triangles": triangles}


if __name__ == "__main__":
    arrays = extract(Path(sys.argv[1]))
    print({k: v.shape for k, v in arrays.items()})
    np.savez_compressed(sys.argv[2], **arrays)
