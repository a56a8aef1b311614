"""Reconstruction outputs: the output folder, arrays, meshes and the viewer, written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microface.reconstruct.errors import ReconstructionError
from microface.utils.io import portable_path, replace_folder, write_bytes_atomic

OUTPUT_FORMAT = "microface-reconstruction-v1"


MESH_FORMATS = ("obj", "ply", "none")  # none: no per-frame files (params.npz holds every vertex)


DEFAULT_VIEWER_FRAMES = 240  # about 50 kB of HTML per frame: a whole long video would make a page of tens of MB


PARAMS_KEYS = {
    "frame_index": "(T,) int64 source frame index (0-based; the first is the start frame)",
    "time_s": "(T,) float64 seconds (frame_index / fps)",
    "fps": "() float64",
    "window_index": "(T,) int32 window of each frame",
    "window_start": "(T,) int64 onset frame (source index) of each frame's window",
    "shape": "(T, S) identity: the landmark fit's, one per video (stage 'encoder': the mean of each window's "
             "per-frame encoder shapes)",
    "expression": "(T, E) expression: the fit's AUs (stage 'fit'), fit onset + DEM's motion-driven change ('dem', "
                  "'dgmd'), the per-frame encoder's ('encoder')",
    "encoder_expression": "(T, E) per-frame coarse-encoder expression (stage 'encoder' only)",
    "pose": "(T, 6) global + jaw axis-angle (the fit's; stage 'encoder': the encoder's)",
    "camera": "(T, 3) the fit's scaled orthographic camera (scale px/mm, tx, ty px) in source pixels; stage "
              "'encoder': weak perspective (s, tx, ty) in crop NDC",
    "crop_transform": "(T, 2, 3) source pixels -> crop pixels of each frame's window",
    "image_size": "() DEM's crop size S in pixels (that of crop_transform and landmarks68_crop)",
    "refine_size": "() DGMD's crop size R in pixels (stage 'dgmd'; its crop transform is crop_transform * R / S)",
    "coarse_vertices": "(T, V, 3) mm, DGMD's input: the fit's or DEM's mesh (the encoder's for stage 'encoder')",
    "vertices": "(T, V, 3) mm, the final (refined) mesh, as in meshes/",
    "vertices_px": "(T, V, 2) every final vertex in source pixels (x right, y down), projected with `camera`",
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
        return portable_path(value)  # a record names files the same on any machine
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz: the float arrays compress by about 20 % (deflate level 1, 6.5 MB against 8.1 for 472
    frames) at 25x the time (0.19 s against 0.007, 0.4 ms per frame of a reconstruction)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


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


PREVIEW_TILE = 360  # px: the longer side of each frame in preview.png
PREVIEW_COLUMNS = 3


def preview_layout(n_frames: int, height: int, width: int, tile: int = PREVIEW_TILE) -> tuple[int, int, int, int]:
    """(rows, columns, tile height, tile width) of preview.png for n_frames frames of height x width pixels:
    each frame scaled so its longer side is ``tile`` px (never enlarged), ``PREVIEW_COLUMNS`` per row at most."""
    scale = min(1.0, tile / max(height, width))
    columns = min(n_frames, PREVIEW_COLUMNS)
    return -(-n_frames // columns), columns, max(1, round(height * scale)), max(1, round(width * scale))


def draw_mesh(image: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray, label: str,
              colour: tuple[int, int, int] = (0, 255, 120)) -> np.ndarray:
    """The mesh's triangle edges (1 px, anti-aliased, 65 % opaque) over an RGB image, with a label at the top left.

    image (H, W, 3) uint8; vertices_px (V, 2) pixels of that image; faces (F, 3) -> (H, W, 3) uint8 (a copy)."""
    import cv2

    image = np.ascontiguousarray(image)
    drawn = image.copy()
    # 2 fractional bits (shift=2): sub-pixel vertex positions
    triangles = np.round(np.asarray(vertices_px, np.float64)[np.asarray(faces)] * 4).astype(np.int32)
    cv2.polylines(drawn, list(triangles), True, colour, 1, cv2.LINE_AA, shift=2)
    canvas = cv2.addWeighted(image, 0.35, drawn, 0.65, 0.0)  # the face stays visible under the wireframe
    size = max(0.4, canvas.shape[0] / 500)
    for thickness, ink in ((3, (0, 0, 0)), (1, (255, 255, 255))):
        cv2.putText(canvas, label, (6, int(22 * size)), cv2.FONT_HERSHEY_SIMPLEX, size, ink, thickness, cv2.LINE_AA)
    return canvas


def write_preview(path: Path, images: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray,
                  frame_index: np.ndarray) -> None:
    """preview.png: the mesh drawn over K frames (each labelled with its frame number), tiled (``preview_layout``),
    written atomically.

    images (K, H, W, 3) RGB uint8; vertices_px (K, V, 2) source pixels; faces (F, 3); frame_index (K,)."""
    import cv2

    images = np.asarray(images)
    if images.ndim != 4 or len(vertices_px) != len(images) or len(frame_index) != len(images):
        raise ValueError(f"write_preview: expected images (K, H, W, 3), vertices_px (K, V, 2), frame_index (K,); got "
                         f"{images.shape}, {np.shape(vertices_px)}, {np.shape(frame_index)}")
    rows, columns, tile_h, tile_w = preview_layout(len(images), *images.shape[1:3])
    sheet = np.zeros((rows * tile_h, columns * tile_w, 3), np.uint8)
    for k, (image, points, index) in enumerate(zip(images, vertices_px, frame_index)):
        tile = cv2.resize(draw_mesh(image, points, faces, f"frame {int(index)}"), (tile_w, tile_h),
                          interpolation=cv2.INTER_AREA)
        r, c = divmod(k, columns)
        sheet[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w] = tile
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"write_preview: OpenCV could not encode {path}")
    write_bytes_atomic(encoded.tobytes(), path)
