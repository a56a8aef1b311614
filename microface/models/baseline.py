"""The per-frame baseline: the coarse encoder applied to each frame independently.

Shapes: B clips, T frames, H/W image size, E expression size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from microface.models.dem import DEMOutput, normalise_times
from microface.models.encoder import CoarseEncoder, EncoderConfig
from microface.utils.checks import check_images


@dataclass(frozen=True)
class PerFrameConfig:
    """Stands where ``DEMConfig`` stands for the loss code: no ODE, so no ODE/per-frame consistency term."""

    temporal: str = "per-frame"


class PerFrameBaseline(nn.Module):
    """The per-frame coarse encoder behind DEM's interface, so one training and evaluation path serves both.

    Args:
        coarse_encoder: the per-frame encoder (a CoarseEncoder).
    """

    def __init__(self, coarse_encoder: nn.Module):
        super().__init__()
        self.config = PerFrameConfig()
        self.coarse_encoder = coarse_encoder

    def forward(self, frames: torch.Tensor, flow_onset_to_t: torch.Tensor, frame_times: torch.Tensor) -> DEMOutput:
        """Per-frame expression estimates of a batch of clips.

        Args:
            frames: images, shape (B, T, 3, H, W).
            flow_onset_to_t: ignored (DEM's interface).
            frame_times: frame times, shape (B, T).

        Returns:
            DEMOutput whose expression (B, T, E) is the coarse encoder's estimate from each frame alone
            (code = expression; motion (B, T, 0)).

        Raises:
            ValueError: ``frames`` of the wrong shape.
        """
        if frames.ndim != 5:
            raise ValueError(f"frames: expected (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch, n_frames = frames.shape[:2]
        check_images(frames.flatten(0, 1), name="frames")
        coarse = self.coarse_encoder(frames.flatten(0, 1)).reshape_batch(batch, n_frames)
        expression = coarse.expression
        return DEMOutput(code=expression, expression=expression, frame_code=expression, frame_expression=expression,
                         z0=expression[:, 0], motion=expression.new_zeros(batch, n_frames, 0),
                         tau=normalise_times(frame_times.to(frames.dtype)), coarse=coarse)


def build_baseline(face_model, encoder: dict | None = None, seed: int = 0) -> PerFrameBaseline:
    """A seeded per-frame baseline; same seed, same initial encoder weights as ``build_dem``'s.

    Args:
        face_model: gives the encoder its ``n_shape`` and ``n_expression``.
        encoder: EncoderConfig fields (the profile's encoder section), or None for the defaults.
        seed: seeds ``torch`` before the weights are drawn.

    Returns:
        the PerFrameBaseline.
    """
    torch.manual_seed(seed)
    coarse = CoarseEncoder(EncoderConfig.from_dict(
        {**(encoder or {}), "n_shape": face_model.n_shape, "n_expression": face_model.n_expression}))
    return PerFrameBaseline(coarse)
