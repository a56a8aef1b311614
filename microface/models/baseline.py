"""The per-frame baseline: the coarse encoder applied to each frame independently."""
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

    forward(frames (B,T,3,H,W), flow (ignored), frame_times (B,T)) -> DEMOutput whose expression (B,T,E) is the
    coarse encoder's estimate from each frame alone (code = expression; motion (B,T,0)).
    """

    def __init__(self, coarse_encoder: nn.Module):
        super().__init__()
        self.config = PerFrameConfig()
        self.coarse_encoder = coarse_encoder

    def forward(self, frames: torch.Tensor, flow_onset_to_t: torch.Tensor, frame_times: torch.Tensor) -> DEMOutput:
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
    """A seeded per-frame baseline; same seed, same initial encoder weights as ``build_dem``'s."""
    torch.manual_seed(seed)
    coarse = CoarseEncoder(EncoderConfig.from_dict(
        {**(encoder or {}), "n_shape": face_model.n_shape, "n_expression": face_model.n_expression}))
    return PerFrameBaseline(coarse)
