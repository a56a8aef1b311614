"""Dense optical flow between face crops: OpenCV DIS (default) and Dual TV-L1 (``cv2.optflow``, MOL's choice).

Convention (OpenCV's): ``flow = compute_flow(frame_a, frame_b)`` is the forward flow from a to b in pixels,
``flow[y, x] = (dx, dy)`` with ``frame_a(x, y) ≈ frame_b(x + dx, y + dy)``. Hence ``warp_image(frame_b, flow)``
(a backward warp) reconstructs ``frame_a``: that is how flows are checked without ground truth.

DIS default: the ``medium`` preset as OpenCV ships it (finest pyramid scale 1, half resolution).
``dis_finest_scale=0`` refines down to full resolution; ``method="dis_fine"`` is DIS at full resolution with
settings tuned against Dual TV-L1 on held-out images (``DIS_FINE``, benchmarks/tune_flow.py). Measured by
``benchmarks/bench_flow.py`` (benchmarks/results/flow.md: the astronaut and a real photographed face, 224 px,
smooth known fields), mean end-point error in px, one run on a loaded 2-core machine:

- clean warps, weak motion (mean 0.07 px): zero flow 0.067; DIS medium stock 0.015-0.017; dis_fine 0.014-0.015;
  DIS medium at full resolution 0.012; Dual TV-L1 0.028, 30-50x dis_fine's time;
- clean warps, onset -> apex motion (max 0.5-3 px, mean 0.43 px): zero 0.426; DIS medium stock 0.049-0.058;
  dis_fine 0.035-0.047; TV-L1 0.053-0.066, 60x dis_fine's time;
- the same with sensor noise (Gaussian, 2 grey levels per frame): every DIS variant loses to TV-L1, and the
  full-resolution ones most (weak: dis_fine 0.17-0.24, DIS medium stock 0.05-0.14, TV-L1 0.042, zero 0.067;
  ME: dis_fine 0.15-0.23, stock 0.07-0.16, TV-L1 0.07-0.09);
- the synthetic benchmark's consecutive frames (smoke profile: 96 px, sensor noise, JPEG; true motion
  ~0.01 px): zero flow 0.009; DIS stock ultrafast / fast / medium 0.064 / 0.045 / 0.055; finest_scale=0
  0.164 / 0.105 / 0.101; TV-L1 0.016. Below the noise floor nothing beats predicting no motion.

So full resolution wins on clean sub-pixel motion and loses badly on noisy pairs, where TV-L1's global
smoothness pays; stock medium is the compromise, and the default. Measure on your own data (``--synth ROOT``)
before trusting a method.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F_nn

FLOW_METHODS = ("dis", "dis_fine", "tvl1")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
FLOW_MODES = ("onset", "consecutive")
# "dis_fine": DIS at full resolution (finest scale 0), patch 8, stride 5, 25 gradient-descent iterations, no
# variational refinement. Chosen by benchmarks/tune_flow.py on held-out images (scikit-image camera, coffee,
# chelsea; never the astronaut or the real face that benchmarks/bench_flow.py reports on), at both motion scales
# (weak: mean ~0.07 px; ME: max 0.5-3 px): among 112 candidates (stride 3-6, 8-25 descent iterations, 0-5
# refinement iterations and its weights, DIS + Farneback, DIS + a separate refinement, DIS on 2x upsampled
# frames) taking at most 1/40 of Dual TV-L1's time in the same run (twice the 1/20 target, as headroom for a
# loaded machine), the lowest mean over the two scales of EPE / TV-L1's EPE (0.59 there; refinement
# iterations lower it to 0.45-0.53 but cost 2-4x the time). Table: benchmarks/results/flow_tuning.md.
# The refinement weights are OpenCV's defaults (unused with 0 iterations; kept so dis_flow takes one dict).
DIS_FINE = dict(finest_scale=0, patch_size=8, patch_stride=5, gradient_descent_iterations=25,
                variational_refinement_iterations=0, alpha=20.0, delta=5.0, gamma=10.0)


def _check_gray_pair(frame_a: np.ndarray, frame_b: np.ndarray) -> None:
    for name, frame in (("frame_a", frame_a), ("frame_b", frame_b)):
        if frame.ndim != 2 or frame.dtype != np.uint8:
            raise ValueError(f"expected {name} as a gray uint8 image (H, W), got {frame.dtype} {frame.shape}")
    if frame_a.shape != frame_b.shape:
        raise ValueError(f"expected frames of one shape, got {frame_a.shape} and {frame_b.shape}")


def compute_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str = "dis", dis_preset: str = "medium",
                 dis_finest_scale: int | None = None) -> np.ndarray:
    """Forward optical flow from ``frame_a`` to ``frame_b``.

    frame_a, frame_b: (H, W) uint8 gray -> (H, W, 2) float32 pixels (dx, dy); see the module doc for the convention.
    method: "dis", "dis_fine" (``DIS_FINE``'s settings; dis_preset and dis_finest_scale must stay at their
    defaults) or "tvl1". dis_preset: "ultrafast" | "fast" | "medium". dis_finest_scale: pyramid level DIS
    stops at (0 = full resolution); None keeps the preset's own (1 for medium, 2 for the others).
    A fresh OpenCV object is made per call, so no state leaks between pairs (creation is cheap).
    """
    frame_a, frame_b = np.asarray(frame_a), np.asarray(frame_b)
    _check_gray_pair(frame_a, frame_b)
    if method == "dis":
        if dis_preset not in DIS_PRESETS:
            raise ValueError(f"expected dis_preset in {sorted(DIS_PRESETS)}, got {dis_preset!r}")
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[dis_preset])
        if dis_finest_scale is not None:
            dis.setFinestScale(int(dis_finest_scale))
        flow = dis.calc(frame_a, frame_b, None)
    elif method == "dis_fine":
        if dis_preset != "medium" or dis_finest_scale is not None:
            raise ValueError(f"method 'dis_fine' has its own settings (DIS_FINE): expected dis_preset 'medium' and "
                             f"dis_finest_scale None, got {dis_preset!r} and {dis_finest_scale!r}")
        flow = dis_flow(frame_a, frame_b, DIS_FINE)
    elif method == "tvl1":
        flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(frame_a, frame_b, None)
    else:
        raise ValueError(f"expected method in {FLOW_METHODS}, got {method!r}")
    return np.asarray(flow, dtype=np.float32)


def dis_flow(frame_a: np.ndarray, frame_b: np.ndarray, settings: dict) -> np.ndarray:
    """Forward DIS flow from ``frame_a`` to ``frame_b`` with explicit settings (how ``DIS_FINE`` was tuned).

    Args:
        frame_a, frame_b: gray uint8 frames.
        settings: every key of ``DIS_FINE``: finest_scale (pyramid level DIS stops at, 0 = full resolution),
            patch_size, patch_stride (px), gradient_descent_iterations, variational_refinement_iterations (0 = none),
            alpha, delta, gamma (the refinement's smoothness, colour-constancy and gradient-constancy weights).

    Returns:
        flow in pixels (dx, dy), OpenCV's convention (see the module doc). Deterministic: a fresh object per call.

    Shape:
        - frame_a, frame_b: (H, W); output: (H, W, 2) float32.
    """
    frame_a, frame_b = np.asarray(frame_a), np.asarray(frame_b)
    _check_gray_pair(frame_a, frame_b)
    if set(settings) != set(DIS_FINE):
        raise ValueError(f"settings: expected the keys {sorted(DIS_FINE)}, got {sorted(settings)}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis.setFinestScale(int(settings["finest_scale"]))
    dis.setPatchSize(int(settings["patch_size"]))
    dis.setPatchStride(int(settings["patch_stride"]))
    dis.setGradientDescentIterations(int(settings["gradient_descent_iterations"]))
    dis.setVariationalRefinementIterations(int(settings["variational_refinement_iterations"]))
    dis.setVariationalRefinementAlpha(float(settings["alpha"]))
    dis.setVariationalRefinementDelta(float(settings["delta"]))
    dis.setVariationalRefinementGamma(float(settings["gamma"]))
    return np.asarray(dis.calc(frame_a, frame_b, None), dtype=np.float32)


def clip_flow(frames: np.ndarray, mode: str = "onset", onset: int = 0, method: str = "dis", **flow_kwargs) -> np.ndarray:
    """Flow for a whole clip of gray frames.

    frames: (T, H, W) uint8. mode "onset": flow[t] = compute_flow(frames[onset], frames[t]) for every t,
    (T, H, W, 2), exactly zero at t = onset; mode "consecutive": flow[t] = compute_flow(frames[t], frames[t+1]),
    (T-1, H, W, 2). float32 pixels. flow_kwargs go to ``compute_flow``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected gray frames (T, H, W), got {frames.shape}")
    n_frames, height, width = frames.shape
    if mode == "onset":
        if not 0 <= onset < n_frames:
            raise ValueError(f"expected 0 <= onset < {n_frames}, got {onset}")
        flow = np.zeros((n_frames, height, width, 2), np.float32)
        for t in range(n_frames):
            if t != onset:
                flow[t] = compute_flow(frames[onset], frames[t], method, **flow_kwargs)
        return flow
    if mode == "consecutive":
        flow = np.zeros((max(n_frames - 1, 0), height, width, 2), np.float32)
        for t in range(n_frames - 1):
            flow[t] = compute_flow(frames[t], frames[t + 1], method, **flow_kwargs)
        return flow
    raise ValueError(f"expected mode in {FLOW_MODES}, got {mode!r}")


def _sampling_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp_image(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Backward warp: ``out(x) = image(x + flow(x))``, bilinear, borders replicated.

    image: (H, W) or (H, W, C), any dtype OpenCV remaps (uint8, float32); flow: (H, W, 2) pixels
    -> same shape and dtype as image. With ``flow = compute_flow(a, b)``, ``warp_image(b, flow) ≈ a``.
    """
    image, flow = np.asarray(image), np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or image.shape[:2] != flow.shape[:2]:
        raise ValueError(f"expected image (H, W[, C]) and flow (H, W, 2) of the same H, W, got {image.shape} and {flow.shape}")
    map_x, map_y = _sampling_grid(flow)
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)


def accumulate_flow_opencv(consecutive: np.ndarray, start: int, targets: np.ndarray) -> np.ndarray:
    """Chain consecutive flows into flows from frame ``start`` to each of ``targets``, with OpenCV's ``remap``.

    ``F(start->t)(x) = F(start->t-1)(x) + f(t-1)(x + F(start->t-1)(x))``, each step sampled bilinearly at pixel
    ``x`` (pixel centres at integer coordinates), zero outside the image. How it differs from
    :func:`accumulate_flow_torch`, which chains the same way: OpenCV quantises the bilinear weights to 1/32 px
    (fixed point), so the two differ (on the smoke benchmark's ground-truth flows: 0.0005 px mean, up to 2 px
    where a chained point lands on the other side of a flow discontinuity such as the silhouette); it takes
    NumPy channels-last flows and returns only the requested frames. The data loader's ground-truth flows use
    this one. An approximation of the true onset->t motion: the benchmark's pair flows are zero off the face (and
    where the face disoccludes), and bilinear sampling blurs them across the silhouette.

    Args:
        consecutive: ``consecutive[k]`` is the forward flow from frame k to k+1, pixels (dx, dy).
        start: the frame the chained flows start from (the onset).
        targets: increasing frame indices in ``[start, N]``.

    Returns:
        flows from ``start`` to each target, float32 pixels; zero where a target equals ``start``.

    Shape:
        - consecutive: (N, H, W, 2); targets: (K,); output: (K, H, W, 2).
    """
    consecutive = np.asarray(consecutive, dtype=np.float32)
    if consecutive.ndim != 4 or consecutive.shape[-1] != 2:
        raise ValueError(f"consecutive: expected (N, H, W, 2), got {consecutive.shape}")
    targets = np.asarray(targets)
    if targets.size and (targets[0] < start or targets[-1] > consecutive.shape[0] or np.any(np.diff(targets) < 0)):
        raise ValueError(f"targets: expected increasing indices in [{start}, {consecutive.shape[0]}], got {targets.tolist()}")
    height, width = consecutive.shape[1:3]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    total = np.zeros((height, width, 2), np.float32)
    out = np.zeros((len(targets), height, width, 2), np.float32)
    frame = start
    for k, target in enumerate(targets):
        while frame < target:
            step = cv2.remap(consecutive[frame], xs + total[..., 0], ys + total[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            total = total + step
            frame += 1
        out[k] = total
    return out


def accumulate_flow_torch(flow_consecutive: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Chain consecutive flows into onset->t flows for every frame ``start..stop``, with ``grid_sample``.

    ``F_{0->k}(x) = F_{0->k-1}(x) + f_{k-1->k}(x + F_{0->k-1}(x))`` with the next flow read bilinearly at the
    advected sub-pixel point (pixel centres at +0.5); points advected off the image read zero flow (the
    benchmark's flow is zero off the mask), and occlusion is ignored. How it differs from
    :func:`accumulate_flow_opencv`, which chains the same way: exact floating-point bilinear weights, tensors
    channels-first on any device (differentiable), and every frame from ``start`` to ``stop``. Errors are second
    order in the sub-pixel motion of micro-expressions: on 64 px synthetic micro clips the chained flow differs
    from ``microface.training.dgmd.flow_from_vertices`` by 0.0003-0.0008 px mean end-point error on the face
    (mean flow 0.05-0.12 px).

    Args:
        flow_consecutive: ``flow[k]`` is the forward flow from frame k to k+1, pixels (dx, dy).
        start: the onset.
        stop: the last frame, inclusive (default N).

    Returns:
        flows from ``start`` to each frame ``start..stop``, frame 0 zero, in the input's dtype and device.

    Shape:
        - flow_consecutive: (N, 2, H, W); output: (stop - start + 1, 2, H, W).
    """
    if flow_consecutive.ndim != 4 or flow_consecutive.shape[1] != 2:
        raise ValueError(f"flow_consecutive: expected (N, 2, H, W), got {tuple(flow_consecutive.shape)}")
    N, _, H, W = flow_consecutive.shape
    stop = N if stop is None else stop
    if not 0 <= start <= stop <= N:
        raise ValueError(f"accumulate_flow_torch: expected 0 <= start <= stop <= {N}, got start {start}, stop {stop}")
    dtype, device = flow_consecutive.dtype, flow_consecutive.device
    rows, cols = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                                torch.arange(W, device=device, dtype=dtype), indexing="ij")
    centres = torch.stack([cols + 0.5, rows + 0.5], dim=-1)  # (H, W, 2)
    total = torch.zeros(2, H, W, dtype=dtype, device=device)
    out = [total]
    for k in range(start, stop):
        where = centres + total.permute(1, 2, 0)
        grid = torch.stack([2.0 * where[..., 0] / W - 1.0, 2.0 * where[..., 1] / H - 1.0], dim=-1)
        step = F_nn.grid_sample(flow_consecutive[k: k + 1], grid[None], mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0]
        total = total + step
        out.append(total)
    return torch.stack(out)


def endpoint_error(flow: np.ndarray, flow_true: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error ``mean ||flow - flow_true||`` in pixels over the pixels where ``mask`` is true.

    flow, flow_true: (..., H, W, 2); mask: broadcastable to (..., H, W), bool (or 0/1), or None for all pixels.
    """
    flow, flow_true = np.asarray(flow, dtype=np.float64), np.asarray(flow_true, dtype=np.float64)
    if flow.shape != flow_true.shape or flow.shape[-1] != 2:
        raise ValueError(f"expected two flows of one shape (..., H, W, 2), got {flow.shape} and {flow_true.shape}")
    error = np.linalg.norm(flow - flow_true, axis=-1)
    if mask is None:
        return float(error.mean())
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), error.shape)
    if not mask.any():
        raise ValueError("expected a mask with at least one true pixel, got an empty mask")
    return float(error[mask].mean())


def synthetic_flow(height: int, width: int, max_px: float = 0.8, n_bumps: int = 4, sigma: float | None = None,
                   seed: int = 0) -> np.ndarray:
    """A smooth, local test field: a sum of ``n_bumps`` Gaussian bumps, each moving one way, scaled so the
    largest displacement is ``max_px`` (micro-expression-like: sub-pixel, in a few regions). -> (H, W, 2) float32.

    sigma defaults to 8% of the smaller side. Bump centres lie in the central 60% of the image.
    """
    if max_px <= 0 or n_bumps < 1:
        raise ValueError(f"expected max_px > 0 and n_bumps >= 1, got {max_px} and {n_bumps}")
    rng = np.random.default_rng(seed)
    sigma = sigma if sigma is not None else 0.08 * min(height, width)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    field = np.zeros((height, width, 2))
    for _ in range(n_bumps):
        cx, cy = rng.uniform(0.2, 0.8, 2) * (width, height)
        bump = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
        field += bump[..., None] * rng.standard_normal(2)
    field *= max_px / np.linalg.norm(field, axis=-1).max()
    return field.astype(np.float32)


def warp_pair(image: np.ndarray, flow_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A test pair whose true forward flow is ``flow_true``: returns (frame_a, frame_b) with
    ``frame_b = image`` and ``frame_a = warp_image(image, flow_true)``. image (H, W[, C]); flow_true (H, W, 2)."""
    return warp_image(image, flow_true), np.asarray(image)


def sample_at_points(image: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a per-pixel field at sub-pixel points, zero outside the image.

    image (B, C, H, W); points_px (B, N, 2) as (x right, y down) pixels, pixel (i, j) centred at (j+0.5, i+0.5)
    -> (B, N, C). Differentiable w.r.t. the image and the points.
    """
    if image.ndim != 4 or points_px.ndim != 3 or points_px.shape[-1] != 2 or points_px.shape[0] != image.shape[0]:
        raise ValueError(f"sample_at_points: expected image (B, C, H, W) and points (B, N, 2), got "
                         f"{tuple(image.shape)} and {tuple(points_px.shape)}")
    H, W = image.shape[-2:]
    # align_corners=False puts -1 / +1 on the outer pixel edges, i.e. x_norm = 2 x_px / W - 1
    grid = torch.stack([2.0 * points_px[..., 0] / W - 1.0, 2.0 * points_px[..., 1] / H - 1.0], dim=-1)
    sampled = F_nn.grid_sample(image, grid[:, :, None].to(image.dtype), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
    return sampled[..., 0].transpose(1, 2)


def temporal_low_rank(frames: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation over time of one clip's frames (T, ...) -> (T, ...), e.g. flows (T, 2, H, W).

    The (T, prod(...)) matrix of frames is truncated to its ``rank`` largest singular values (Eckart-Young). A
    frame that is all zeros (the onset's flow, zero by definition) is kept exactly zero, not rounded to 1e-7.
    rank >= T returns the frames unchanged.
    """
    if frames.ndim < 2:
        raise ValueError(f"temporal_low_rank: expected a clip's frames (T, ...), got {tuple(frames.shape)}")
    if rank < 1:
        raise ValueError(f"temporal_low_rank: expected rank >= 1, got {rank}")
    T = frames.shape[0]
    if rank >= T:
        return frames
    matrix = frames.reshape(T, -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    low_rank = (u[:, :rank] * s[:rank]) @ vh[:rank]
    zero_frames = (matrix == 0).all(dim=1, keepdim=True)
    return torch.where(zero_frames, torch.zeros_like(low_rank), low_rank).reshape(frames.shape)


def remove_affine_motion(field: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """field (B, V, 2) px at points (B, V, 2) px minus its least-squares affine fit ``A p + b`` per batch item.

    What is left is the non-affine (local) part: a uniform shift, rotation, scaling or shear of the field
    is removed exactly, and a field that is zero stays zero.
    """
    if field.shape != points_px.shape or field.ndim != 3 or field.shape[-1] != 2:
        raise ValueError(f"remove_affine_motion: expected field and points (B, V, 2), got {tuple(field.shape)} "
                         f"and {tuple(points_px.shape)}")
    centred = points_px - points_px.mean(dim=1, keepdim=True)
    scale = centred.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)  # conditioning only
    design = torch.cat([centred / scale, torch.ones_like(centred[..., :1])], dim=-1)  # (B, V, 3)
    coefficients = torch.linalg.lstsq(design, field).solution  # (B, 3, 2)
    return field - design @ coefficients
