"""Optical flow: shapes, accuracy on a known sub-pixel warp of a real face, warping, end-point error."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.ndimage
import skimage.data

from microface.data.flow import (DIS_FINE, clip_flow, compute_flow, dis_flow, endpoint_error, synthetic_flow, warp_image,
                                  warp_pair)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The astronaut's face, 128 x 128 gray uint8."""
    rgb = cv2.resize(skimage.data.astronaut()[20:240, 120:330], (128, 128), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(scope="module")
def subtle_pair(face):
    flow_true = synthetic_flow(*face.shape, max_px=0.8, seed=3)
    frame_a, frame_b = warp_pair(face, flow_true)
    return frame_a, frame_b, flow_true


@pytest.mark.parametrize("method", ["dis", "dis_fine", "tvl1"])
def test_flow_shape_and_beats_zero_flow_on_a_subtle_warp(subtle_pair, method):
    frame_a, frame_b, flow_true = subtle_pair
    flow = compute_flow(frame_a, frame_b, method)
    assert flow.shape == (*frame_a.shape, 2) and flow.dtype == np.float32
    zero = endpoint_error(np.zeros_like(flow_true), flow_true)
    assert endpoint_error(flow, flow_true) < 0.7 * zero


def test_full_resolution_dis_beats_the_stock_preset(subtle_pair):
    frame_a, frame_b, flow_true = subtle_pair
    stock = endpoint_error(compute_flow(frame_a, frame_b, "dis", dis_preset="fast", dis_finest_scale=None), flow_true)
    full = endpoint_error(compute_flow(frame_a, frame_b, "dis", dis_preset="fast", dis_finest_scale=0), flow_true)
    assert full < stock


def test_dis_fine_recovers_an_me_scale_field_deterministically(face):
    """Onset -> apex scale (a smooth field of at most 2 px): dis_fine lands far closer than no flow, and a second
    call gives the same bytes."""
    flow_true = synthetic_flow(*face.shape, max_px=2.0, sigma=0.15 * face.shape[0], seed=5)
    frame_a, frame_b = warp_pair(face, flow_true)
    flow = compute_flow(frame_a, frame_b, "dis_fine")
    assert flow.shape == (*face.shape, 2) and flow.dtype == np.float32
    inner = (slice(8, -8), slice(8, -8))
    zero = endpoint_error(np.zeros_like(flow_true[inner]), flow_true[inner])
    assert endpoint_error(flow[inner], flow_true[inner]) < 0.3 * zero
    np.testing.assert_array_equal(flow, compute_flow(frame_a, frame_b, "dis_fine"))
    np.testing.assert_array_equal(flow, dis_flow(frame_a, frame_b, DIS_FINE))


def test_dis_fine_settings_matter_and_are_checked(subtle_pair):
    """dis_flow applies its settings (stopping at a coarse level changes the flow) and names a wrong key set."""
    frame_a, frame_b, _ = subtle_pair
    coarse = dis_flow(frame_a, frame_b, dict(DIS_FINE, finest_scale=2))
    assert not np.array_equal(coarse, dis_flow(frame_a, frame_b, DIS_FINE))
    with pytest.raises(ValueError, match="settings: expected the keys"):
        dis_flow(frame_a, frame_b, {"finest_scale": 0})
    with pytest.raises(ValueError, match="dis_fine"):
        compute_flow(frame_a, frame_b, "dis_fine", dis_finest_scale=1)


def test_flow_input_checks(face):
    with pytest.raises(ValueError, match="gray uint8"):
        compute_flow(face.astype(np.float32), face)
    with pytest.raises(ValueError, match="one shape"):
        compute_flow(face, face[:64])
    with pytest.raises(ValueError, match="method"):
        compute_flow(face, face, "raft")
    with pytest.raises(ValueError, match="dis_preset"):
        compute_flow(face, face, "dis", dis_preset="slow")


def test_warp_with_the_true_flow_reconstructs_a_subpixel_translation(face):
    """frame_a(x) = frame_b(x + d), made by spline interpolation (scipy), independent of cv2.remap.
    The face is blurred a little (sigma 1 px, like a camera's optics) so bilinear interpolation can follow it."""
    frame_b = cv2.GaussianBlur(face.astype(np.float32), (0, 0), 1.0)
    d = np.array([0.4, -0.3], np.float32)  # (dx, dy)
    frame_a = scipy.ndimage.shift(frame_b, shift=(-d[1], -d[0]), order=3, mode="nearest")
    flow_true = np.broadcast_to(d, (*face.shape, 2)).copy()
    inner = (slice(4, -4), slice(4, -4))
    before = np.abs(frame_b - frame_a)[inner].mean()
    after = np.abs(warp_image(frame_b, flow_true) - frame_a)[inner].mean()
    wrong_way = np.abs(warp_image(frame_b, -flow_true) - frame_a)[inner].mean()
    assert after < 0.3 * before and after < 1.0 < before < wrong_way  # grey levels
    to_uint8 = lambda image: np.clip(image + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
    estimated = compute_flow(to_uint8(frame_a), to_uint8(frame_b))
    assert endpoint_error(estimated[inner], flow_true[inner]) < 0.1


def test_warp_image_keeps_shape_and_dtype(face):
    rgb = np.repeat(face[..., None], 3, axis=2)
    out = warp_image(rgb, np.zeros((*face.shape, 2), np.float32))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    with pytest.raises(ValueError, match="same H, W"):
        warp_image(rgb, np.zeros((10, 10, 2), np.float32))


def test_clip_flow_modes(face):
    frames = np.stack([warp_image(face, synthetic_flow(*face.shape, max_px=0.5 * t + 0.1, seed=t)) for t in range(4)])
    onset = clip_flow(frames, "onset", onset=1, method="dis", dis_preset="ultrafast")
    assert onset.shape == (4, 128, 128, 2) and not onset[1].any()
    np.testing.assert_array_equal(onset[3], compute_flow(frames[1], frames[3], "dis", dis_preset="ultrafast"))
    consecutive = clip_flow(frames, "consecutive", method="dis", dis_preset="ultrafast")
    assert consecutive.shape == (3, 128, 128, 2)
    np.testing.assert_array_equal(consecutive[2], compute_flow(frames[2], frames[3], "dis", dis_preset="ultrafast"))
    with pytest.raises(ValueError, match="onset"):
        clip_flow(frames, "onset", onset=4)
    with pytest.raises(ValueError, match="mode"):
        clip_flow(frames, "apex")


def test_endpoint_error_with_and_without_mask():
    flow_true = np.zeros((4, 6, 2))
    flow = flow_true.copy()
    flow[:2] = (3.0, 4.0)  # error 5 on the top half
    mask = np.zeros((4, 6), bool)
    mask[:2] = True
    assert endpoint_error(flow, flow_true) == pytest.approx(2.5)
    assert endpoint_error(flow, flow_true, mask) == pytest.approx(5.0)
    assert endpoint_error(flow, flow_true, ~mask) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="empty mask"):
        endpoint_error(flow, flow_true, np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="one shape"):
        endpoint_error(flow, flow_true[:2])


def test_synthetic_flow_is_seeded_and_bounded():
    a = synthetic_flow(50, 60, max_px=0.8, seed=1)
    assert a.shape == (50, 60, 2) and a.dtype == np.float32
    assert np.linalg.norm(a, axis=-1).max() == pytest.approx(0.8, rel=1e-5)
    np.testing.assert_array_equal(a, synthetic_flow(50, 60, max_px=0.8, seed=1))
    assert not np.array_equal(a, synthetic_flow(50, 60, max_px=0.8, seed=2))
