"""Weighted similarity Procrustes (Umeyama 1991), batched over frames, and rotation logs."""
from __future__ import annotations

import numpy as np


def weighted_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray):
    """The scale, rotation and translation that best map ``source`` onto ``target`` in weighted least squares.

    Minimises ``sum_i w_i ||target_i - (s R source_i + t)||^2`` per frame, in closed form.

    Args:
        source: (T, N, 3) points (e.g. model points, mm).
        target: (T, N, 3) points (e.g. detected points, pixels).
        weights: (T, N) non-negative; each frame needs a positive total weight on >= 3 non-collinear points.
    Returns:
        scale (T,) (target units per source unit), rotation (T, 3, 3) proper (det +1), translation (T, 3).

    >>> x = np.random.default_rng(0).normal(size=(1, 10, 3))
    >>> s, R, t = weighted_similarity(x, 2 * x + 1, np.ones((1, 10)))
    >>> bool(np.allclose(s, 2) and np.allclose(R, np.eye(3)) and np.allclose(t, 1))
    True
    """
    w = weights / np.maximum(weights.sum(1, keepdims=True), 1e-300)
    mu_s = (w[:, None, :] @ source)[:, 0]
    mu_t = (w[:, None, :] @ target)[:, 0]
    src = source - mu_s[:, None]
    tgt = target - mu_t[:, None]
    # cov[t, i, j] = sum_n w[t, n] * tgt[t, n, i] * src[t, n, j]
    cov = np.swapaxes(tgt * w[..., None], 1, 2) @ src
    u, sing, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    sign[sign == 0] = 1.0
    d = np.ones_like(sing)
    d[:, 2] = sign
    rotation = (u * d[:, None, :]) @ vt
    var_src = (w * (src**2).sum(-1)).sum(1)
    scale = (sing * d).sum(1) / np.maximum(var_src, 1e-300)
    translation = mu_t - scale[:, None] * (rotation @ mu_s[..., None])[..., 0]
    return scale, rotation, translation


def rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Log map. rotation (..., 3, 3) proper -> axis-angle (..., 3) radians, angle in [0, pi]."""
    trace = rotation[..., 0, 0] + rotation[..., 1, 1] + rotation[..., 2, 2]
    cos = np.clip((trace - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    vee = np.stack([rotation[..., 2, 1] - rotation[..., 1, 2],
                    rotation[..., 0, 2] - rotation[..., 2, 0],
                    rotation[..., 1, 0] - rotation[..., 0, 1]], -1)
    sin = np.sin(angle)
    small = sin < 1e-6
    factor = np.where(small, 0.5 + angle**2 / 12, angle / (2 * np.where(small, 1.0, sin)))
    axis_angle = factor[..., None] * vee
    near_pi = small & (cos < 0)
    if np.any(near_pi):  # sin ~ 0 at angle ~ pi: the axis is R's +1 eigenvector
        sym = (rotation[near_pi] + np.swapaxes(rotation[near_pi], -1, -2)) / 2 + np.eye(3)  # ~ 2 n n^T
        col = np.take_along_axis(sym, np.argmax(np.diagonal(sym, axis1=-2, axis2=-1), -1)[:, None, None]
                                 .repeat(3, 1), axis=-1)[..., 0]
        axis = col / np.linalg.norm(col, axis=-1, keepdims=True)
        axis_angle[near_pi] = axis * angle[near_pi][:, None]
    return axis_angle
