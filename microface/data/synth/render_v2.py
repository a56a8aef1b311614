"""Version 2 clip rendering: a real-skin face composited into a CASME II-sized frame, with noise (JPEG on writing).

The clip's expression, head motion and timing are those of version 1 (``dataset._clip_parameters``). The face is
rendered only inside a window around it (the bounding box of the projected mesh over the whole clip, plus a
4 px margin) with the full frame's camera shifted to the window, over the matching crop of the subject's
background, and pasted into the frame: the same pixels as a full-frame render, at a fraction of the cost.

Ground truth is in full-frame pixels: ``camera_*`` / ``focal`` / ``principal`` describe the W x H frame,
``landmarks2d`` (T, 68, 2) are in its pixels, ``mask`` (T, H, W), ``flow`` (T - 1, H, W, 2) and ``flow_mask``
(T - 1, H, W) cover it (zero / False off the face).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from microface.data.synth.dataset import (
    ClipSpec,
    RenderedClip,
    SynthConfig,
    _clip_parameters,
    _leading_fragments,
    clip_vertices,
    finish_clip,
)
from microface.data.synth.subjects import Subject
from microface.face.open_model import OpenFaceModel
from microface.render.camera import Camera, expand_camera, look_at_camera, project_points
from microface.render.rasterize import interpolate_vertex_attributes, rasterize
from microface.render.shading import shade_mesh

WINDOW_MARGIN_PX = 4
CHUNK_FRAMES = 32  # frames rendered together: bounds memory (the output does not depend on it, bit for bit)


def frame_camera(subject: Subject, frame_size: tuple[int, int]) -> Camera:
    """The subject's full-frame perspective camera (batch 1, float64). frame_size: (W, H)."""
    width, height = frame_size
    camera = look_at_camera(subject.distance_mm, subject.focal_px, (height, width), batch_size=1, dtype=torch.float64)
    if subject.principal is not None:
        camera = replace(camera, principal=torch.tensor(subject.principal, dtype=torch.float64)[None])
    return camera


def face_window(screen: torch.Tensor, frame_size: tuple[int, int],
                margin: int = WINDOW_MARGIN_PX) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), end-exclusive, holding every projected vertex of the clip plus ``margin``,
    clipped to the frame. screen: (T, V, 3) full-frame screen points."""
    width, height = frame_size
    x0 = max(0, int(np.floor(float(screen[..., 0].min()))) - margin)
    y0 = max(0, int(np.floor(float(screen[..., 1].min()))) - margin)
    x1 = min(width, int(np.ceil(float(screen[..., 0].max()))) + margin + 1)
    y1 = min(height, int(np.ceil(float(screen[..., 1].max()))) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"synth v2: the face projects outside the {width}x{height} frame")
    return x0, y0, x1, y1


def _visible_at(points_px: torch.Tensor, zbuf: torch.Tensor, tolerance_mm: float = 1.0) -> np.ndarray:
    """Whether screen points (B, H, W, 3) land on the window and are not hidden in zbuf (B, h, w). -> bool."""
    h, w = zbuf.shape[1:]
    x = points_px[..., 0].floor().long()
    y = points_px[..., 1].floor().long()
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    xc, yc = x.clamp(0, w - 1), y.clamp(0, h - 1)
    b = torch.arange(points_px.shape[0])[:, None, None].expand_as(xc)
    depth_there = zbuf[b, yc, xc]
    return (inside & (depth_there > 0) & (points_px[..., 2] <= depth_there + tolerance_mm)).numpy()


def render_clip_v2(spec: ClipSpec, config: SynthConfig, model: OpenFaceModel, subject: Subject) -> RenderedClip:
    """Render one version 2 clip and its ground truth in memory (see the module docstring).

    Returns a RenderedClip whose frames are (T, H, W, 3) for ``config.frame_size`` (W, H).
    """
    expression, pose, translation, onset, offset, fps = _clip_parameters(spec, config, model, subject)
    n_frames = expression.shape[0]
    width, height = config.frame_size
    dtype = torch.float64
    with torch.no_grad():
        canonical, posed = clip_vertices(model, subject, expression, pose, translation)
        cam = frame_camera(subject, config.frame_size)
        screen = project_points(posed, expand_camera(cam, n_frames))
        x0, y0, x1, y1 = face_window(screen, config.frame_size)
        h, w = y1 - y0, x1 - x0
        window_cam = replace(cam, principal=cam.principal - torch.tensor([[x0, y0]], dtype=dtype))
        window_screen = project_points(posed, expand_camera(window_cam, n_frames))
        # pixels in float32 (twice as fast as float64); geometry, landmarks and cameras stay float64
        posed32, screen32 = posed.float(), window_screen.float()
        texture = torch.from_numpy(subject.texture)[None]
        sh = torch.tensor(subject.sh, dtype=torch.float32)[None]
        backdrop = torch.tensor(subject.background[y0:y1, x0:x1], dtype=torch.float32).permute(2, 0, 1)[None]
        frames_uint8 = np.empty((n_frames, height, width, 3), np.uint8)
        frames_clean = np.empty((n_frames, height, width, 3), np.float32)
        frames_clean[:] = subject.background.astype(np.float32)[None]
        window_mask = np.zeros((n_frames, h, w), bool)
        window_flow = np.zeros((n_frames - 1, h, w, 2), np.float16)
        window_flow_mask = np.zeros((n_frames - 1, h, w), bool)
        visibility = np.zeros((n_frames, posed.shape[1]), bool)
        rng = np.random.default_rng(spec.seed + 1)
        sigma = np.float32(subject.noise_sigma)
        for start in range(0, n_frames, CHUNK_FRAMES):
            stop = min(start + CHUNK_FRAMES, n_frames)
            count, pairs = stop - start, min(stop, n_frames - 1) - start
            # one frame more than the chunk: flow t -> t+1 needs frame t+1's depth
            fragments = rasterize(screen32[start:min(stop + 1, n_frames)], model.faces, (h, w), blur_radius_px=0.7,
                                  perspective_correct=True)
            shown = _leading_fragments(fragments, count)
            window = shade_mesh(shown, posed32[start:stop], model.faces, texture.expand(count, -1, -1, -1),
                                sh.expand(count, -1, -1), backdrop.expand(count, -1, -1, -1), model.uvs)
            frames_clean[start:stop, y0:y1, x0:x1] = window.permute(0, 2, 3, 1).clamp(0, 1).numpy()
            noisy = frames_clean[start:stop] + sigma * rng.standard_normal((count, height, width, 3), dtype=np.float32)
            frames_uint8[start:stop] = np.clip(np.rint(noisy * np.float32(255.0)), 0, 255).astype(np.uint8)
            window_mask[start:stop] = shown.mask.numpy()
            zbuf = fragments.zbuf[..., 0].double()
            # per-vertex visibility: in the frame and in front of the window's z-buffer
            visibility[start:stop] = _visible_at(window_screen[start:stop, :, None, :], zbuf[:count], 1.5)[:, :, 0]
            if pairs > 0:
                # ground-truth flow t -> t+1: where the surface point under each pixel at t projects at t+1
                leading = _leading_fragments(fragments, pairs)
                cam_pairs = expand_camera(window_cam, pairs)
                points_next = interpolate_vertex_attributes(leading, model.faces, posed32[start + 1:start + 1 + pairs])
                points_now = interpolate_vertex_attributes(leading, model.faces, posed32[start:start + pairs])
                next_px = project_points(points_next.reshape(pairs, -1, 3).double(), cam_pairs).reshape(pairs, h, w, 3)
                now_px = project_points(points_now.reshape(pairs, -1, 3).double(), cam_pairs).reshape(pairs, h, w, 3)
                moving = window_mask[start:start + pairs]
                flow_pairs = np.where(moving[..., None], (next_px[..., :2] - now_px[..., :2]).numpy(), 0.0)
                window_flow[start:start + pairs] = flow_pairs.astype(np.float16)
                window_flow_mask[start:start + pairs] = moving & _visible_at(next_px, zbuf[1:1 + pairs])
        landmarks2d = screen[:, model.landmark_indices, :2]
    mask = np.zeros((n_frames, height, width), bool)
    mask[:, y0:y1, x0:x1] = window_mask
    flow = np.zeros((n_frames - 1, height, width, 2), np.float16)
    flow[:, y0:y1, x0:x1] = window_flow
    flow_mask = np.zeros((n_frames - 1, height, width), bool)
    flow_mask[:, y0:y1, x0:x1] = window_flow_mask
    first_number = 1 + int(rng.integers(0, 40))
    frame_numbers = np.arange(first_number, first_number + n_frames)
    return finish_clip(spec, model, subject, frames_clean, frames_uint8, posed=posed, canonical=canonical,
                       expression=expression, pose=pose, translation=translation, landmarks2d=landmarks2d, flow=flow,
                       flow_mask=flow_mask, mask=mask, visibility=visibility, camera=cam, fps=fps,
                       frame_numbers=frame_numbers, onset=onset, offset=offset)
