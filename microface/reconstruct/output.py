"""Reconstruction outputs: the output folder, arrays, meshes and the viewer, written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microface.reconstruct.errors import ReconstructionError
from microface.utils.io import replace_folder

OUTPUT_FORMAT = "microface-reconstruction-v1"


MESH_FORMATS = ("obj", "ply")


DEFAULT_VIEWER_FRAMES = 240  # about 50 kB of HTML per frame: a whole long video would make a page of tens of MB


PARAMS_KEYS = {
    "frame_index": "(T,) int64 video frame index (0-based)",
    "time_s": "(T,) float64 seconds (frame_index / fps)",
    "fps": "() float64",
    "window_index": "(T,) int32 window of each frame",
    "window_start": "(T,) int64 onset frame (video index) of each frame's window",
    "shape": "(T, S) identity of each frame's window (mean of its per-frame encoder shapes)",
    "expression": "(T, E) DEM expression (the encoder's for stage 'coarse')",
    "encoder_expression": "(T, E) per-frame coarse-encoder expression",
    "pose": "(T, 6) global + jaw axis-angle (coarse encoder)",
    "camera": "(T, 3) weak perspective (s, tx, ty) in crop NDC (coarse encoder)",
    "crop_transform": "(T, 2, 3) video pixels -> crop pixels of each frame's window",
    "image_size": "() DEM's crop size S in pixels (that of crop_transform and landmarks68_crop)",
    "refine_size": "() DGMD's crop size R in pixels (stage 'dgmd'; its crop transform is crop_transform * R / S)",
    "coarse_vertices": "(T, V, 3) mm, DGMD's input: DEM's mesh (the encoder's for stage 'coarse')",
    "vertices": "(T, V, 3) mm, the final (refined) mesh, as in meshes/",
    "dgmd_gate": "(T, V) DGMD motion-attention gate in [0, 1) (stage 'dgmd' only)",
    "faces": "(F, 3) int64 triangles",
}


def _is_reconstruction(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text()).get("format") == OUTPUT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out: Path) -> None:
    """Refuse an ``out`` that exists and is neither an empty folder nor a previous reconstruction."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_reconstruction(out))):
        raise ReconstructionError(f"output {out} exists and is not a previous reconstruction; choose another --out "
                                  "or remove it (only an empty folder or a reconstruction is replaced)")


def commit_folder(staging: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``; a previous reconstruction there is swapped out, then removed."""
    check_output_folder(out)
    replace_folder(staging, out)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def write_arrays(folder: Path, arrays: dict[str, np.ndarray], fps: float, image_size: int, faces: np.ndarray,
                 refine_size: int | None = None) -> None:
    """params.npz and landmarks.npz from the per-frame columns (T leading) gathered by ``reconstruct_video``;
    image_size S and refine_size R (None: S) as in ``PARAMS_KEYS``."""
    from microface.data.landmarks import to_ibug68

    params = {k: arrays[k] for k in PARAMS_KEYS if k in arrays}
    params.update(time_s=arrays["frame_index"] / fps, fps=np.float64(fps), image_size=np.int64(image_size),
                  refine_size=np.int64(image_size if refine_size is None else refine_size), faces=faces)
    _save_npz(folder / "params.npz", params)
    _save_npz(folder / "landmarks.npz", {
        "frame_index": arrays["frame_index"], "landmarks68": to_ibug68(arrays["mesh"])[..., :2],
        "landmarks_mesh": arrays["mesh"], "detected": arrays["detected"], "landmarks68_crop": arrays["landmarks68_crop"]})


def write_viewer(path: Path, arrays: dict[str, np.ndarray], shown: np.ndarray, faces: np.ndarray, title: str,
                 with_offsets: bool) -> None:
    """viewer.html of the frames ``shown`` (indices into T), coloured by |refined - coarse| (mm) when with_offsets."""
    from microface.viz.mesh import mesh_sequence_html

    offsets = (np.linalg.norm(arrays["vertices"][shown] - arrays["coarse_vertices"][shown], axis=-1)
               if with_offsets else None)
    mesh_sequence_html(arrays["vertices"][shown], faces, path, values=offsets, title=title,
                       value_label="DGMD offset (mm)")
