"""Measurements of a reconstruction on real footage, where no 3D truth exists: what the frames themselves can say.

A reconstruction of T frames is its mesh projected into the SOURCE frames, ``vertices_px (T, V, 2)`` (x right, y down,
pixel (i, j) centred at (j + 0.5, i + 0.5), the rasterizer's convention), with a depth per vertex for visibility.
Each function is pure (arrays in, numbers out); ``microface.reconstruct.real_footage`` feeds them real videos.

- re-rendering: the mesh coloured with the onset frame's colours at its projected vertices (``sample_colours``),
  rasterized into each frame (``render_vertex_colours``): its photometric L1 inside the rendered face is
  ``microface.metrics.image.photometric_l1``;
- motion fidelity: ``motion_endpoint_error`` between the mesh's projected motion onset -> t and the observed optical
  flow onset -> t at the onset's visible vertices (``visible_vertices``);
- temporal stability: ``mesh_jitter`` (second difference, px / frame^2) on still frames (``still_frames``: frames
  whose observed motion, ``step_motion``, is below a threshold);
- ``landmark_error`` of the projected mesh's 68 points against a detector's, in px and over the inter-ocular distance.
"""
from __future__ import annotations

import numpy as np
import torch

from microface.data.flow import sample_at_points
from microface.render.rasterize import interpolate_vertex_attributes, rasterize

DEPTH_OFFSET_MM = 1000.0  # screen depth = offset - z: positive, nearer (larger model z, toward the camera) = smaller


def _check_points(points, name: str, last: int = 2) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != last:
        raise ValueError(f"{name}: expected (T, V, {last}), got {points.shape}")
    return points


def screen_points(vertices_px, vertices_mm) -> torch.Tensor:
    """Screen-space points of an orthographic (or weak-perspective) projection, for ``rasterize``.

    Args:
        vertices_px: (T, V, 2) projected vertices, pixels.
        vertices_mm: (T, V, 3) the same vertices in the face-model frame (mm, +z toward a frontal camera).

    Returns:
        (T, V, 3) float32 ``(x_px, y_px, depth_mm)``, depth ``DEPTH_OFFSET_MM - z`` (nearer = smaller).
    """
    px = _check_points(vertices_px, "vertices_px")
    mm = _check_points(vertices_mm, "vertices_mm", 3)
    if mm.shape[:2] != px.shape[:2]:
        raise ValueError(f"vertices_mm: expected {px.shape[:2]} + (3,) like vertices_px, got {mm.shape}")
    return torch.from_numpy(np.concatenate([px, DEPTH_OFFSET_MM - mm[..., 2:]], axis=-1).astype(np.float32))


def visible_vertices(screen: torch.Tensor, faces, image_size: tuple[int, int]) -> np.ndarray:
    """Vertices of the faces that win at least one pixel of the image (z-test), i.e. seen by the camera.

    Args:
        screen: (V, 3) ``screen_points`` of one frame, pixels of an image of ``image_size`` (H, W).
        faces: (F, 3) triangles.

    Returns:
        (V,) bool. A vertex outside the image, behind the face or on a face thinner than a pixel is not visible.
    """
    faces = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    if screen.ndim != 2 or screen.shape[-1] != 3:
        raise ValueError(f"screen: expected (V, 3) screen points of one frame, got {tuple(screen.shape)}")
    visible = np.zeros(screen.shape[0], bool)
    # rasterize only the mesh's bounding box inside the image (an integer shift keeps the pixel centres)
    height, width = image_size
    low = np.floor(screen[:, :2].min(0).values.numpy()).clip(0, [width, height]).astype(int)
    high = np.ceil(screen[:, :2].max(0).values.numpy()).clip(0, [width, height]).astype(int)
    if np.any(high <= low):
        return visible
    origin = torch.tensor([low[0], low[1], 0.0], dtype=torch.float32)
    fragments = rasterize((screen.float() - origin)[None], faces, (int(high[1] - low[1]), int(high[0] - low[0])),
                          perspective_correct=False)
    shown = torch.unique(fragments.pix_to_face[fragments.pix_to_face >= 0])
    visible[faces[shown].reshape(-1).numpy()] = True
    return visible


def sample_colours(image, points_px) -> np.ndarray:
    """Colours of an image at sub-pixel points (bilinear; zero outside the image).

    Args:
        image: (H, W, 3) uint8 RGB (or float in [0, 1]).
        points_px: (V, 2) pixels.

    Returns:
        (V, 3) float32 in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3), got {image.shape}")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    tensor = torch.from_numpy(image.astype(np.float32) / scale).permute(2, 0, 1)[None]
    points = torch.from_numpy(np.asarray(points_px, np.float32))[None]
    return sample_at_points(tensor, points)[0].numpy()


def render_vertex_colours(screen: torch.Tensor, faces, colours, image_size: tuple[int, int],
                          blur_radius_px: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mesh rendered with fixed per-vertex colours (no shading: the colours carry the onset's lighting).

    Args:
        screen: (T, V, 3) ``screen_points`` in the image's pixels.
        faces: (F, 3) triangles.
        colours: (V, 3) in [0, 1], or (T, V, 3).
        image_size: (H, W).
        blur_radius_px: the rasterizer's anti-aliasing band.

    Returns:
        image (T, 3, H, W) in [0, 1] (zero off the face), mask (T, 1, H, W) bool (pixel centres on the face),
        alpha (T, 1, H, W) soft coverage in [0, 1] (for compositing).
    """
    faces = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    colours = torch.as_tensor(np.asarray(colours, np.float32))
    if screen.ndim != 3 or screen.shape[-1] != 3:
        raise ValueError(f"screen: expected (T, V, 3), got {tuple(screen.shape)}")
    if colours.shape[-2:] != (screen.shape[1], 3):
        raise ValueError(f"colours: expected ({screen.shape[1]}, 3) or (T, {screen.shape[1]}, 3), got "
                         f"{tuple(colours.shape)}")
    fragments = rasterize(screen.float(), faces, image_size, blur_radius_px, perspective_correct=False)
    image = interpolate_vertex_attributes(fragments, faces, colours, include_fringe=True).permute(0, 3, 1, 2)
    return image.clamp(0.0, 1.0), fragments.mask[:, None], fragments.alpha[:, None].clamp(0.0, 1.0)


def sample_flow(flow, points_px) -> np.ndarray:
    """A flow field read at sub-pixel points, for each frame.

    Args:
        flow: (T, H, W, 2) px, e.g. onset -> t.
        points_px: (V, 2) pixels of the flow's image (e.g. the onset's projected vertices).

    Returns:
        (T, V, 2) float32 px (zero for points outside the image).
    """
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow: expected (T, H, W, 2), got {flow.shape}")
    points = np.asarray(points_px, np.float32)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"points_px: expected (V, 2), got {points.shape}")
    tensor = torch.from_numpy(flow).permute(0, 3, 1, 2)
    return sample_at_points(tensor, torch.from_numpy(points)[None].expand(len(flow), -1, -1)).numpy()


def motion_endpoint_error(vertices_px, flow_at_vertices, valid) -> np.ndarray:
    """End-point error between the mesh's projected motion from frame 0 (the onset) and the observed flow.

    Args:
        vertices_px: (T, V, 2) projected vertices, frame 0 the onset.
        flow_at_vertices: (T, V, 2) observed flow onset -> t at the onset's projected vertices (``sample_flow``), px.
        valid: (V,) bool, the vertices to score (visible at the onset, inside the flow's image).

    Returns:
        (T,) mean ``||(v_t - v_0) - flow_t(v_0)||`` over the valid vertices, px; 0 at t = 0, NaN without a vertex.
    """
    vertices_px = _check_points(vertices_px, "vertices_px")
    flow = _check_points(flow_at_vertices, "flow_at_vertices")
    valid = np.asarray(valid, bool)
    if flow.shape != vertices_px.shape or valid.shape != vertices_px.shape[1:2]:
        raise ValueError(f"expected flow_at_vertices {vertices_px.shape} and valid {vertices_px.shape[1:2]}, got "
                         f"{flow.shape} and {valid.shape}")
    if not valid.any():
        return np.full(len(vertices_px), np.nan)
    motion = vertices_px - vertices_px[:1]
    return np.linalg.norm(motion[:, valid] - flow[:, valid], axis=-1).mean(axis=1)


def step_motion(flow_at_points, valid) -> np.ndarray:
    """Observed motion between consecutive frames, from the flows of one onset to each frame at the same points.

    flow_t(p) is where the point seen at p at the onset went by frame t, so flow_t(p) - flow_{t-1}(p) is its motion
    from t - 1 to t (a frame BEFORE the onset works too: its flow is onset -> that frame).

    Args:
        flow_at_points: (T, V, 2) px, flows onset -> t of consecutive frames at the onset's points.
        valid: (V,) bool, the points to use.

    Returns:
        (T - 1,) median over the valid points of ``||flow_t - flow_{t-1}||``, px per frame.
    """
    flow = _check_points(flow_at_points, "flow_at_points")
    valid = np.asarray(valid, bool)
    if valid.shape != flow.shape[1:2] or not valid.any():
        raise ValueError(f"valid: expected ({flow.shape[1]},) bool with a true entry, got {valid.shape}, "
                         f"{int(valid.sum())} true")
    return np.median(np.linalg.norm(np.diff(flow[:, valid], axis=0), axis=-1), axis=1)


def still_frames(steps, threshold_px: float) -> np.ndarray:
    """Frames in the middle of a still stretch: both the step into them and the step out are below threshold.

    Args:
        steps: (T - 1,) observed motion per step t -> t + 1 (``step_motion``), px per frame; NaN = unknown.
        threshold_px: px per frame.

    Returns:
        (T,) bool; the first and last frames (one step known) are never still.
    """
    steps = np.asarray(steps, np.float64)
    if steps.ndim != 1 or threshold_px < 0:
        raise ValueError(f"expected steps (T - 1,) and threshold_px >= 0, got {steps.shape} and {threshold_px}")
    quiet = steps < threshold_px  # NaN compares False
    still = np.zeros(len(steps) + 1, bool)
    still[1:-1] = quiet[:-1] & quiet[1:]
    return still


def mesh_jitter(vertices_px, frames) -> float:
    """Mean norm of the projected mesh's second difference over time at the given frames (px / frame^2).

    Args:
        vertices_px: (T, V, 2) projected vertices of consecutive frames.
        frames: (T,) bool, the frames t scored (each needs t - 1 and t + 1: the ends are ignored).

    Returns:
        mean over the frames and vertices of ``||v_{t+1} - 2 v_t + v_{t-1}||``; NaN when no frame is scored.
    """
    vertices_px = _check_points(vertices_px, "vertices_px")
    frames = np.asarray(frames, bool)
    if frames.shape != (len(vertices_px),):
        raise ValueError(f"frames: expected ({len(vertices_px)},) bool, got {frames.shape}")
    inner = frames[1:-1]
    if len(vertices_px) < 3 or not inner.any():
        return float("nan")
    second = vertices_px[2:] - 2.0 * vertices_px[1:-1] + vertices_px[:-2]
    return float(np.linalg.norm(second[inner], axis=-1).mean())


def inter_ocular_distance(points68) -> np.ndarray:
    """Distance between the eye centres (iBUG points 37-42 and 43-48, 1-based): (..., 68, 2) -> (...,) px."""
    points68 = np.asarray(points68, np.float64)
    if points68.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) iBUG points, got {points68.shape}")
    return np.linalg.norm(points68[..., 36:42, :].mean(-2) - points68[..., 42:48, :].mean(-2), axis=-1)


def landmark_error(predicted68, detected68, valid=None) -> tuple[float, float]:
    """Mean distance of a projected mesh's 68 landmarks from a detector's, in px and over the inter-ocular distance.

    Args:
        predicted68: (T, 68, 2) px; detected68: (T, 68, 2) px; valid: (T,) bool frames to score (None: all).

    Returns:
        (mean px, mean of each frame's mean over its detected inter-ocular distance); NaNs without a valid frame.
    """
    predicted, detected = np.asarray(predicted68, np.float64), np.asarray(detected68, np.float64)
    if predicted.shape != detected.shape or predicted.shape[-2:] != (68, 2) or predicted.ndim != 3:
        raise ValueError(f"expected predicted68 and detected68 (T, 68, 2), got {predicted.shape} and {detected.shape}")
    valid = np.ones(len(predicted), bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != (len(predicted),):
        raise ValueError(f"valid: expected ({len(predicted)},) bool, got {valid.shape}")
    if not valid.any():
        return float("nan"), float("nan")
    per_frame = np.linalg.norm(predicted[valid] - detected[valid], axis=-1).mean(axis=1)
    return float(per_frame.mean()), float((per_frame / inter_ocular_distance(detected[valid])).mean())
