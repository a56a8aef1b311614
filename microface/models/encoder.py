"""Per-frame coarse encoder (the SMIRK-style baseline): one image -> face-model parameters.

``CoarseEncoder(image (B, 3, H, W)) -> CoarseParams(shape (B, S), expression (B, E), pose (B, 6), camera (B, 3),
lighting (B, 9, 3))``. A small CNN backbone (sizes from config) feeds separate linear heads.

No pretrained weights exist for it here: SMIRK's and EMOCA's ResNet/MobileNet backbones are not obtainable
offline, so in this compendium the encoder is always trained from scratch (on the synthetic benchmark and
macro clips). It is the "per-frame baseline"; fine-tuned on micro-expression clips it is "baseline-FT".

Camera, weak perspective: ``camera = (s, tx, ty)`` with ``s`` in normalised-device units per millimetre
(positive, ``s = s0 * exp(raw)``, ``s0 = 1/90`` so a 155 mm wide face spans most of the image at start)
and ``(tx, ty)`` in normalised device units; see ``weak_perspective_project``.

Shapes: B images, H/W image size, S shape size, E expression size.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from microface.render.camera import DEFAULT_CAMERA_SCALE
from microface.utils.checks import check_images, config_from_dict


@dataclass
class CoarseParams:
    """Output of a coarse encoder.

    Attributes:
        shape: identity coefficients, shape (B, S).
        expression: expression coefficients, shape (B, E).
        pose: global + jaw axis-angle in radians, shape (B, 6).
        camera: weak perspective ``(s, tx, ty)`` (s in NDC per mm, t in NDC), shape (B, 3).
        lighting: second-order spherical-harmonic coefficients per colour channel, shape (B, 9, 3).
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    lighting: torch.Tensor

    def reshape_batch(self, *leading: int) -> "CoarseParams":
        """Split the batch dimension: (B*T, ...) -> (*leading, ...), e.g. ``reshape_batch(B, T)``.

        Args:
            leading: the sizes the batch dimension splits into.

        Returns:
            CoarseParams whose fields have the leading dimensions ``leading``.
        """
        return CoarseParams(**{f.name: getattr(self, f.name).reshape(*leading, *getattr(self, f.name).shape[1:])
                               for f in fields(self)})


@dataclass
class EncoderConfig:
    """Sizes of the coarse encoder.

    Args:
        n_shape: S, identity coefficients of the face model.
        n_expression: E, expression coefficients of the face model.
        channels: output channels of each stride-2 conv block.
        hidden: width of the trunk before the heads.
    """

    n_shape: int
    n_expression: int
    channels: tuple[int, ...] = (16, 32, 64, 64)
    hidden: int = 128

    @classmethod
    def from_dict(cls, values: dict) -> "EncoderConfig":
        """The config from a mapping (the ``encoder`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the EncoderConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "encoder")


class ConvBackbone(nn.Module):
    """Stride-2 conv blocks (conv 3x3, GroupNorm, SiLU), then global average pooling.

    GroupNorm rather than BatchNorm so batch size 1 and a frozen copy behave the same in train and eval mode.

    Args:
        in_channels: channels of the input, C.
        channels: output channels of each block (at least one block).

    Raises:
        ValueError: no block.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        if len(channels) == 0:
            raise ValueError("backbone: expected at least one conv block in 'channels', got ()")
        blocks = []
        previous = in_channels
        for out in channels:
            blocks += [nn.Conv2d(previous, out, 3, stride=2, padding=1), nn.GroupNorm(_groups(out), out), nn.SiLU()]
            previous = out
        self.blocks = nn.Sequential(*blocks)
        self.out_features = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of a batch of images.

        Args:
            images: shape (B, C, H, W).

        Returns:
            features, shape (B, channels[-1]).
        """
        return self.blocks(images).mean(dim=(2, 3))


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class CoarseEncoder(nn.Module):
    """Image -> CoarseParams. Trained from scratch (no pretrained weights offline).

    Args:
        config: the EncoderConfig.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.n_shape = config.n_shape
        self.n_expression = config.n_expression
        self.backbone = ConvBackbone(3, config.channels)
        self.trunk = nn.Sequential(nn.Linear(self.backbone.out_features, config.hidden), nn.SiLU())
        self.shape_head = nn.Linear(config.hidden, config.n_shape)
        self.expression_head = nn.Linear(config.hidden, config.n_expression)
        self.pose_head = nn.Linear(config.hidden, 6)
        self.camera_head = nn.Linear(config.hidden, 3)
        self.lighting_head = nn.Linear(config.hidden, 27)
        # Start at the neutral face, frontal pose, centred camera and ambient light: a sane first render.
        for head in (self.shape_head, self.expression_head, self.pose_head, self.camera_head, self.lighting_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.lighting_head.bias.view(9, 3)[0].fill_(1.0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Trunk features of a batch of images.

        Args:
            images: in [0, 1], shape (B, 3, H, W).

        Returns:
            features, shape (B, hidden).

        Raises:
            ValueError: ``images`` is not (B, 3, H, W).
        """
        check_images(images)
        return self.trunk(self.backbone(images * 2.0 - 1.0))

    def forward(self, images: torch.Tensor) -> CoarseParams:
        """Face-model parameters, camera and lighting of each image.

        Args:
            images: in [0, 1], shape (B, 3, H, W).

        Returns:
            CoarseParams with shape (B, S), expression (B, E), pose (B, 6), camera (B, 3), lighting (B, 9, 3).

        Raises:
            ValueError: ``images`` is not (B, 3, H, W).
        """
        h = self.features(images)
        raw_camera = self.camera_head(h)
        scale = DEFAULT_CAMERA_SCALE * torch.exp(raw_camera[:, :1])
        return CoarseParams(
            shape=self.shape_head(h),
            expression=self.expression_head(h),
            pose=self.pose_head(h),
            camera=torch.cat([scale, raw_camera[:, 1:]], dim=1),
            lighting=self.lighting_head(h).view(-1, 9, 3),
        )


