"""Cameras: perspective and weak-perspective, projection, and every conversion between camera forms.

Frames and screen space are those of :mod:`microface.render.rasterize`. Shapes: B batch, N points,
H/W image size.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Camera:
    """A batch of pinhole (``kind="perspective"``) or weak-perspective (``kind="weak"``) cameras.

    ``X_cam = X_world @ R^T + t`` in the OpenCV camera frame (+x right, +y down, +z forward).
    perspective: ``x_px = focal * x_cam / z_cam + principal_x``, same for y.
    weak: ``x_px = scale * x_cam + principal_x`` (``principal`` acts as the 2D translation in pixels);
    ``focal`` is unused.

    Args:
        R: world->camera rotation, shape (B, 3, 3).
        t: translation in mm, shape (B, 3).
        focal: focal length in pixels, shape (B,).
        principal: principal point ``(x, y)`` in pixels, shape (B, 2).
        kind: "perspective" or "weak".
        scale: px/mm, shape (B,); weak cameras only.

    Raises:
        ValueError: an unknown ``kind`` or a field of the wrong shape.
    """

    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    kind: str = "perspective"
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("perspective", "weak"):
            raise ValueError(f"Camera.kind: expected 'perspective' or 'weak', got {self.kind!r}")
        if self.R.ndim != 3 or self.R.shape[1:] != (3, 3):
            raise ValueError(f"Camera.R: expected (B, 3, 3), got {tuple(self.R.shape)}")
        B = self.R.shape[0]
        if self.t.shape != (B, 3):
            raise ValueError(f"Camera.t: expected ({B}, 3), got {tuple(self.t.shape)}")
        if self.focal.shape != (B,):
            raise ValueError(f"Camera.focal: expected ({B},), got {tuple(self.focal.shape)}")
        if self.principal.shape != (B, 2):
            raise ValueError(f"Camera.principal: expected ({B}, 2), got {tuple(self.principal.shape)}")
        if self.kind == "weak" and (self.scale is None or self.scale.shape != (B,)):
            found = None if self.scale is None else tuple(self.scale.shape)
            raise ValueError(f"Camera.scale: a weak camera needs scale ({B},) px/mm, got {found}")

    @property
    def batch_size(self) -> int:
        """Number of cameras B."""
        return int(self.R.shape[0])

    @property
    def is_perspective(self) -> bool:
        """Whether the cameras are pinhole (perspective) cameras."""
        return self.kind == "perspective"


def _size_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
        raise ValueError(f"image_size: expected an int or (H, W) of positive ints, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _frontal_rotation(batch_size: int, device, dtype) -> torch.Tensor:
    # world +x -> camera +x (right), world +y -> camera -y (up in the image), world +z -> camera -z (toward us)
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=device, dtype=dtype))
    return R.expand(batch_size, 3, 3).clone()


def look_at_camera(
    distance_mm: float,
    focal_px: float,
    image_size,
    batch_size: int = 1,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Camera:
    """Frontal perspective camera on the world +z axis, ``distance_mm`` from the origin, looking at it.

    Args:
        distance_mm: distance from the world origin in mm, > 0.
        focal_px: focal length in pixels, > 0.
        image_size: int or (H, W); the principal point is the image centre ``(W / 2, H / 2)``.
        batch_size: number of (identical) cameras B.
        device: device of the camera tensors.
        dtype: dtype of the camera tensors.

    Returns:
        a perspective Camera with R = diag(1, -1, -1), shape (B, 3, 3), and t = (0, 0, distance_mm),
        shape (B, 3).

    Example:
        >>> look_at_camera(500.0, 300.0, (64, 48), batch_size=2).principal[0].tolist()
        [24.0, 32.0]
    """
    H, W = _size_hw(image_size)
    if distance_mm <= 0 or focal_px <= 0:
        raise ValueError(f"look_at_camera: expected positive distance and focal, got {distance_mm}, {focal_px}")
    R = _frontal_rotation(batch_size, device, dtype)
    t = torch.tensor([0.0, 0.0, float(distance_mm)], device=device, dtype=dtype).expand(batch_size, 3).clone()
    focal = torch.full((batch_size,), float(focal_px), device=device, dtype=dtype)
    principal = torch.tensor([W / 2.0, H / 2.0], device=device, dtype=dtype).expand(batch_size, 2).clone()
    return Camera(R=R, t=t, focal=focal, principal=principal, kind="perspective")


def weak_perspective_camera(
    scale: torch.Tensor, translation: torch.Tensor, R: torch.Tensor | None = None, depth_offset_mm: float = 1000.0
) -> Camera:
    """Weak-perspective camera: ``x_px = scale * x_cam + translation``.

    Args:
        scale: px/mm, shape (B,).
        translation: 2D translation in pixels, shape (B, 2).
        R: world->camera rotation, shape (B, 3, 3), or None for the frontal rotation diag(1, -1, -1).
        depth_offset_mm: only shifts depth so it stays positive for the z-test.

    Returns:
        a weak Camera.
    """
    if scale.ndim != 1 or translation.shape != (scale.shape[0], 2):
        raise ValueError(
            f"weak_perspective_camera: expected scale (B,) and translation (B, 2), got "
            f"{tuple(scale.shape)} and {tuple(translation.shape)}"
        )
    B = scale.shape[0]
    R = _frontal_rotation(B, scale.device, scale.dtype) if R is None else R
    t = torch.zeros(B, 3, device=scale.device, dtype=scale.dtype)
    t[:, 2] = depth_offset_mm
    return Camera(R=R, t=t, focal=torch.ones_like(scale), principal=translation, kind="weak", scale=scale)


def project_points(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Project world points to screen space.

    Args:
        points: world points in mm, shape (B, N, 3).
        camera: a batch of B cameras.

    Returns:
        screen points ``(x_px (right), y_px (down), depth_mm (farther = larger))``, shape (B, N, 3).

    Raises:
        ValueError: ``points`` is not (B, N, 3) or its batch differs from the camera's.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected (B, N, 3), got {tuple(points.shape)}")
    if points.shape[0] != camera.batch_size:
        raise ValueError(f"points batch {points.shape[0]} != camera batch {camera.batch_size}")
    cam = points @ camera.R.transpose(1, 2) + camera.t[:, None, :]
    depth = cam[..., 2]
    if camera.is_perspective:
        xy = camera.focal[:, None, None] * cam[..., :2] / depth[..., None]
    else:
        xy = camera.scale[:, None, None] * cam[..., :2]
    xy = xy + camera.principal[:, None, :]
    return torch.cat([xy, depth[..., None]], dim=-1)


def expand_camera(camera: Camera, n: int) -> Camera:
    """A batch-1 camera repeated n times (or a batch-n camera unchanged).

    Args:
        camera: a Camera of batch 1 or n.
        n: batch size wanted.

    Returns:
        a Camera with batch n (expanded views of the batch-1 tensors, not copies).

    Raises:
        ValueError: the camera's batch is neither 1 nor n.
    """
    if camera.batch_size == n:
        return camera
    if camera.batch_size != 1:
        raise ValueError(f"camera: expected batch 1 or {n}, got {camera.batch_size}")
    scale = None if camera.scale is None else camera.scale.expand(n)
    return Camera(R=camera.R.expand(n, 3, 3), t=camera.t.expand(n, 3), focal=camera.focal.expand(n),
                  principal=camera.principal.expand(n, 2), kind=camera.kind, scale=scale)


def concat_cameras(cameras: list[Camera]) -> Camera:
    """Cameras of one kind concatenated along the batch.

    Args:
        cameras: cameras of the same kind.

    Returns:
        a Camera whose batch is the sum of theirs.

    Raises:
        ValueError: the cameras are of more than one kind.
    """
    kinds = {c.kind for c in cameras}
    if len(kinds) != 1:
        raise ValueError(f"concat_cameras: expected one camera kind, found {sorted(kinds)}")
    scale = None if cameras[0].scale is None else torch.cat([c.scale for c in cameras])
    return Camera(R=torch.cat([c.R for c in cameras]), t=torch.cat([c.t for c in cameras]),
                  focal=torch.cat([c.focal for c in cameras]), principal=torch.cat([c.principal for c in cameras]),
                  kind=kinds.pop(), scale=scale)


def camera_to_arrays(camera: Camera) -> dict[str, np.ndarray]:
    """A batch-1 perspective camera as the synthetic benchmark's ground-truth arrays (float32).

    Args:
        camera: a perspective Camera of batch 1.

    Returns:
        ``{"camera_R" (3, 3), "camera_t" (3,) mm, "focal" () px, "principal" (2,) px}``, the keys of the
        benchmark's npz; :func:`camera_from_arrays` reads them back.

    Raises:
        ValueError: the camera is weak or its batch is not 1.
    """
    if camera.batch_size != 1 or not camera.is_perspective:
        raise ValueError(f"camera_to_arrays: expected a perspective camera of batch 1, got a {camera.kind} camera "
                         f"of batch {camera.batch_size}")
    return {"camera_R": camera.R[0].cpu().numpy().astype(np.float32),
            "camera_t": camera.t[0].cpu().numpy().astype(np.float32),
            "focal": np.float32(camera.focal[0].item()),
            "principal": camera.principal[0].cpu().numpy().astype(np.float32)}


def camera_from_arrays(arrays: Mapping, dtype: torch.dtype = torch.float32) -> Camera:
    """The synthetic benchmark's camera arrays (:func:`camera_to_arrays`, e.g. a ground-truth npz) as a Camera.

    Args:
        arrays: a mapping with ``camera_R`` (3, 3), ``camera_t`` (3,) mm, ``focal`` () px, ``principal`` (2,) px.
        dtype: dtype of the camera tensors.

    Returns:
        a perspective Camera of batch 1.
    """
    return Camera(R=torch.as_tensor(np.asarray(arrays["camera_R"]), dtype=dtype)[None],
                  t=torch.as_tensor(np.asarray(arrays["camera_t"]), dtype=dtype)[None],
                  focal=torch.as_tensor(np.asarray(arrays["focal"]), dtype=dtype).reshape(1),
                  principal=torch.as_tensor(np.asarray(arrays["principal"]), dtype=dtype)[None], kind="perspective")


DEFAULT_CAMERA_SCALE = 1.0 / 90.0  # NDC per millimetre: a 155 mm face covers ~1.7 of the [-1, 1] range


def weak_perspective_project(points: torch.Tensor, camera: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Project model-frame points to pixels with a weak-perspective camera.

    Origin at the top-left pixel corner, y down: ``ndc = s * X[:, :, :2] + t``, ``x_px = (ndc_x + 1) W / 2``,
    ``y_px = (1 - ndc_y) H / 2``.

    Args:
        points: model-frame points in mm (+y up), shape (B, N, 3).
        camera: ``(s, tx, ty)``, shape (B, 3): s in NDC per mm, (tx, ty) in NDC.
        image_size: (H, W).

    Returns:
        pixel coordinates ``(x, y)``, shape (B, N, 2).

    Raises:
        ValueError: ``points`` or ``camera`` has the wrong shape.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected (B, N, 3), got {tuple(points.shape)}")
    if camera.ndim != 2 or camera.shape[1] != 3 or camera.shape[0] != points.shape[0]:
        raise ValueError(f"camera: expected ({points.shape[0]}, 3) = (s, tx, ty), got {tuple(camera.shape)}")
    height, width = image_size
    ndc = camera[:, None, :1] * points[..., :2] + camera[:, None, 1:]
    x = (ndc[..., 0] + 1.0) * (width / 2.0)
    y = (1.0 - ndc[..., 1]) * (height / 2.0)
    return torch.stack([x, y], dim=-1)


def to_render_camera(camera: torch.Tensor, image_size: tuple[int, int]):
    """The encoder's weak-perspective camera as a renderer :class:`Camera`.

    Same projection as ``weak_perspective_project`` (for square images; the renderer's weak camera has one
    px/mm scale, so H != W raises ValueError).

    Args:
        camera: ``(s, tx, ty)``, shape (B, 3), as in ``weak_perspective_project``.
        image_size: (H, W), with H == W.

    Returns:
        a weak Camera of batch B.

    Raises:
        ValueError: the image is not square or ``camera`` is not (B, 3).
    """
    from microface.render.camera import weak_perspective_camera

    height, width = image_size
    if height != width:
        raise ValueError(f"to_render_camera: expected a square image, got (H, W) = {image_size}; crop faces square")
    if camera.ndim != 2 or camera.shape[1] != 3:
        raise ValueError(f"camera: expected (B, 3) = (s, tx, ty), got {tuple(camera.shape)}")
    scale_px = camera[:, 0] * (width / 2.0)
    principal = torch.stack([(camera[:, 1] + 1.0) * (width / 2.0), (1.0 - camera[:, 2]) * (height / 2.0)], dim=-1)
    return weak_perspective_camera(scale_px, principal)


def orthographic_to_crop_camera(camera: torch.Tensor, transform: torch.Tensor) -> Camera:
    """A source-image scaled-orthographic camera seen through a similarity crop, as a renderer :class:`Camera`.

    The landmark fit's camera maps model points (mm, +y up) to source pixels:
    ``p = scale * (X_x, -X_y) + (tx, ty)``; the crop maps source pixels to crop pixels: ``q = A p + b`` with
    ``A = lambda * Rot(theta)`` (an eye-aligned crop: scale and in-plane rotation, no shear or reflection). So
    ``q = lambda scale Rot(theta) (X_x, -X_y) + A (tx, ty) + b``: a weak camera of scale ``lambda * scale`` px/mm,
    principal ``A (tx, ty) + b`` and rotation ``Rot(theta)`` (about the view axis) after the frontal one. The
    in-plane rotation is why this is a :class:`Camera`, not the encoder's rotation-free ``(s, tx, ty)``.

    Args:
        camera: ``(scale px/mm, tx px, ty px)`` in the source image, shape (B, 3).
        transform: source pixels -> crop pixels, shape (2, 3) (one crop for all) or (B, 2, 3).

    Returns:
        a weak Camera of batch B whose ``project_points`` gives crop pixels.

    Raises:
        ValueError: wrong shapes, or a transform that is not a similarity (shear, reflection, zero scale).
    """
    if camera.ndim != 2 or camera.shape[1] != 3:
        raise ValueError(f"camera: expected (B, 3) = (scale px/mm, tx, ty), got {tuple(camera.shape)}")
    B = camera.shape[0]
    transform = torch.as_tensor(transform, dtype=camera.dtype, device=camera.device)
    if transform.shape == (2, 3):
        transform = transform.expand(B, 2, 3)
    if transform.shape != (B, 2, 3):
        raise ValueError(f"transform: expected (2, 3) or ({B}, 2, 3) source -> crop pixels, got {tuple(transform.shape)}")
    A, b = transform[:, :, :2], transform[:, :, 2]
    lam = torch.sqrt(torch.linalg.det(A).clamp_min(0.0))
    similarity = torch.stack([A[:, 0, 0] - A[:, 1, 1], A[:, 0, 1] + A[:, 1, 0]], dim=-1).abs().amax(-1)
    if bool((lam <= 0).any()) or bool((similarity > 1e-6 * lam.clamp_min(1e-12) + 1e-9).any()):
        raise ValueError("transform: expected a similarity (rotation and positive scale), found shear, reflection or "
                         "zero scale")
    in_plane = torch.zeros(B, 3, 3, dtype=camera.dtype, device=camera.device)
    in_plane[:, :2, :2] = A / lam[:, None, None]
    in_plane[:, 2, 2] = 1.0
    R = in_plane @ _frontal_rotation(B, camera.device, camera.dtype)
    principal = (A @ camera[:, 1:, None])[..., 0] + b
    return weak_perspective_camera(lam * camera[:, 0], principal, R=R)


def orthographic_to_pixels(vertices: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Scaled-orthographic projection into the source image (the camera of ``microface.fit.LandmarkFit``).

    Args:
        vertices: (T, V, 3) mm in the FaceModel frame (+y up).
        camera: (T, 3) scale (px/mm), tx, ty (px).

    Returns:
        (T, V, 2) pixels, x right, y down.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected (T, V, 3), got {tuple(vertices.shape)}")
    if camera.shape != (vertices.shape[0], 3):
        raise ValueError(f"camera: expected ({vertices.shape[0]}, 3), got {tuple(camera.shape)}")
    camera = camera.to(vertices.dtype)
    flip = torch.tensor([1.0, -1.0], dtype=vertices.dtype, device=vertices.device)
    return camera[:, None, :1] * vertices[..., :2] * flip + camera[:, None, 1:]
