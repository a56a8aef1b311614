"""Synthetic subjects: identity, skin albedo texture, lighting, camera, head motion and sensor noise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from microface.face.open_model import OpenFaceModel

# Linear-RGB skin base colours spanning light to dark skin (diffuse albedo, roughly Fitzpatrick I-VI).
SKIN_TONES = np.array(
    [[0.80, 0.62, 0.52], [0.74, 0.55, 0.43], [0.65, 0.46, 0.35], [0.55, 0.38, 0.27], [0.42, 0.28, 0.20],
     [0.30, 0.20, 0.14]]
)


@dataclass
class Subject:
    """Everything that stays fixed for one synthetic person across their clips.

    shape: (S,) identity coefficients; texture: (3, Ht, Wt) albedo in UV space (MediaPipe UVs, v down);
    sh: (9, 3) lighting; distance_mm, focal_px: frontal perspective camera; noise_sigma: sensor noise (0-1
    intensity units); head_amplitude_rad / head_frequency_hz / head_phase: small sinusoidal head motion per
    axis (3,); background: (3,) grey level of the static backdrop (version 1) or an (H, W, 3) image (version 2,
    ``appearance.appearance_v2``); principal: (2,) principal point in pixels (version 2; None: the image centre);
    texture_name: the real-face pool texture worn (version 2; None: painted).
    """

    subject_id: int
    shape: np.ndarray
    texture: np.ndarray
    sh: np.ndarray
    distance_mm: float
    focal_px: float
    noise_sigma: float
    head_amplitude_rad: np.ndarray
    head_frequency_hz: np.ndarray
    head_phase: np.ndarray
    background: np.ndarray
    principal: np.ndarray | None = None
    texture_name: str | None = None


def directional_sh(direction: np.ndarray, strength: float) -> np.ndarray:
    """The first-order SH coefficients (the renderer's order y, z, x) of a light from the unit ``direction`` (3,)
    with irradiance ``strength`` on the normal facing it. -> (3,)."""
    # 1.023328 = 2 pi / 3 x 0.488603: the clamped cosine's band-1 factor times Y_1's constant
    return strength * np.asarray(direction)[[1, 2, 0]] / 1.023328


def _smooth_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """Zero-mean multi-octave value noise on a size x size grid, unit standard deviation. -> (size, size)."""
    total = np.zeros((size, size))
    for cells in octaves:
        coarse = torch.tensor(rng.standard_normal((1, 1, cells, cells)), dtype=torch.float64)
        fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        total += fine[0, 0].numpy() / np.sqrt(cells)
    return (total - total.mean()) / (total.std() + 1e-12)


def _paint_features(texture: np.ndarray, model: OpenFaceModel, rng: np.random.Generator) -> None:
    """Darken the brow lines, tint the lips and darken the eye openings in UV space, in place. texture (3, Ht, Wt)."""
    size = texture.shape[1]
    uv = model.uvs.numpy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    brow_colour = np.array([0.12, 0.08, 0.06]) * rng.uniform(0.6, 1.4)
    lip_colour = np.array([0.62, 0.30, 0.30]) * rng.uniform(0.8, 1.1)
    brow_line = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
    lips = (61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91, 78, 81, 13, 311, 308, 402, 14, 178, 39, 269, 181, 405)
    for anchors, colour, strength, radius in (
        (brow_line, brow_colour, 0.8, 0.014),
        (lips, lip_colour, 0.6, 0.014),
    ):
        weight = np.zeros((size, size))
        for index in anchors:
            u, v = uv[index]
            weight = np.maximum(weight, np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * radius**2)))
        weight *= strength
        texture[:] = texture * (1 - weight) + colour[:, None, None] * weight
    eye_rings = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7,
                 263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
    weight = np.zeros((size, size))
    for index in eye_rings:
        u, v = uv[index]
        weight = np.maximum(weight, np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 0.01**2)))
    texture[:] = texture * (1 - 0.75 * weight)


def sample_subject(subject_id: int, rng: np.random.Generator, model: OpenFaceModel, image_size: int,
                   texture_size: int = 256) -> Subject:
    """Draw one synthetic subject; all randomness comes from ``rng``."""
    shape = rng.normal(0.0, 0.8, model.n_shape)
    base = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1, 3)
    # skin micro-texture (pores, freckles) is what optical flow locks onto; real ME flow depends on it too
    # cell sizes of 2-10 image pixels: finer detail would alias at the rendered resolution
    octaves = (max(4, image_size // 24), max(6, image_size // 10), max(8, image_size // 5))
    detail = 0.12 * _smooth_noise(rng, texture_size, octaves)
    texture = np.clip(base[:, None, None] * (1.0 + detail[None]), 0.0, 1.0)
    _paint_features(texture, model, rng)
    sh = np.zeros((9, 3))
    ambient = rng.uniform(1.0, 1.2)
    sh[0] = ambient / 0.886227  # DC term gives irradiance ~ ambient for every normal
    light_dir = rng.normal(0, 1, 3) * np.array([0.5, 0.4, 0.2]) + np.array([0.0, 0.3, 1.0])
    light_dir /= np.linalg.norm(light_dir)
    strength = rng.uniform(0.2, 0.45)
    sh[1:4] = directional_sh(light_dir, strength)[:, None]  # the same light in every colour channel
    sh *= rng.uniform(0.95, 1.05, 3)[None, :]  # slightly tinted light
    distance = rng.uniform(450.0, 650.0)
    face_fraction = rng.uniform(0.72, 0.82)  # face width as a fraction of the image width
    focal = face_fraction * image_size * distance / 150.0
    return Subject(
        subject_id=subject_id,
        shape=shape,
        texture=texture.astype(np.float32),
        sh=sh,
        distance_mm=float(distance),
        focal_px=float(focal),
        noise_sigma=float(rng.uniform(0.004, 0.012)),
        head_amplitude_rad=np.deg2rad(rng.uniform(0.1, 0.6, 3)),
        head_frequency_hz=rng.uniform(0.3, 1.2, 3),
        head_phase=rng.uniform(0, 2 * np.pi, 3),
        background=np.full(3, rng.uniform(0.15, 0.35)),
    )


def head_pose(subject: Subject, times_s: np.ndarray, clip_phase: float) -> np.ndarray:
    """Global axis-angle head rotation over time (small, smooth). times_s (T,) -> (T, 3)."""
    angle = 2 * np.pi * subject.head_frequency_hz[None, :] * times_s[:, None] + subject.head_phase[None, :] + clip_phase
    return subject.head_amplitude_rad[None, :] * (np.sin(angle) - np.sin(subject.head_phase + clip_phase)[None, :])
