"""The FaceModel interface shared by the open default model and FLAME.

Everything above this file (renderer, encoders, DEM, DGMD, synthetic benchmark) only sees this interface,
so a user's FLAME files and the embedded open model are interchangeable.

Conventions (both implementations):
- units are millimetres; right-handed, +x to the subject's left, +y up, +z out of the face toward a
  frontal camera (the canonical MediaPipe frame);
- ``pose`` is ``(B, 6)``: global rotation (axis-angle in radians, 3) then jaw rotation (axis-angle, 3),
  FLAME's order;
- batch size is taken from the inputs, never stored.

Shapes: B batch, V vertices, F faces, S shape (identity) size, E expression size, K vertices of a region.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FaceOutput:
    """Result of a FaceModel forward pass.

    Attributes:
        vertices: in millimetres, shape (B, V, 3).
        landmarks: iBUG-68 points in millimetres, shape (B, 68, 3).
    """

    vertices: torch.Tensor
    landmarks: torch.Tensor


class FaceModel(nn.Module):
    """Abstract parametric face: ``forward(shape (B, S), expression (B, E), pose (B, 6)) -> FaceOutput``.

    Subclasses register ``faces`` (F, 3) long, and fill ``regions`` (name -> (K,) long vertex indices),
    ``n_shape`` and ``n_expression``.
    """

    faces: torch.Tensor
    n_shape: int
    n_expression: int
    regions: dict[str, torch.Tensor]

    @property
    def n_vertices(self) -> int:
        """Number of vertices V of the template."""
        return int(self.v_template.shape[0])

    def zero_params(self, batch_size: int, device: torch.device | None = None, dtype=torch.float32):
        """Neutral parameters for ``batch_size`` faces.

        Args:
            batch_size: B.
            device: device of the parameters; the model's by default.
            dtype: dtype of the parameters.

        Returns:
            zeros ``(shape (B, S), expression (B, E), pose (B, 6))``.
        """
        device = device if device is not None else self.faces.device
        return (
            torch.zeros(batch_size, self.n_shape, device=device, dtype=dtype),
            torch.zeros(batch_size, self.n_expression, device=device, dtype=dtype),
            torch.zeros(batch_size, 6, device=device, dtype=dtype),
        )

    def check_params(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> int:
        """Validate parameter shapes up front.

        Args:
            shape: identity coefficients, shape (B, S).
            expression: expression coefficients, shape (B, E).
            pose: global then jaw axis-angle, shape (B, 6).

        Returns:
            the batch size B.

        Raises:
            ValueError: a parameter of the wrong shape, or batch sizes that differ.
        """
        if shape.ndim != 2 or shape.shape[1] != self.n_shape:
            raise ValueError(f"shape: expected (B, {self.n_shape}), got {tuple(shape.shape)}")
        if expression.ndim != 2 or expression.shape[1] != self.n_expression:
            raise ValueError(f"expression: expected (B, {self.n_expression}), got {tuple(expression.shape)}")
        if pose.ndim != 2 or pose.shape[1] != 6:
            raise ValueError(f"pose: expected (B, 6) = global (3) + jaw (3) axis-angle, got {tuple(pose.shape)}")
        if not (shape.shape[0] == expression.shape[0] == pose.shape[0]):
            raise ValueError(
                f"batch sizes differ: shape {shape.shape[0]}, expression {expression.shape[0]}, pose {pose.shape[0]}"
            )
        return int(shape.shape[0])

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> FaceOutput:
        """Vertices and landmarks of a batch of faces (implemented by subclasses).

        Args:
            shape: identity coefficients, shape (B, S).
            expression: expression coefficients, shape (B, E).
            pose: global then jaw axis-angle in radians, shape (B, 6).

        Returns:
            FaceOutput with vertices (B, V, 3) and landmarks (B, 68, 3), in mm.
        """
        raise NotImplementedError


