"""The helpers that exist once (issue 14, point 2): the moving/static scorer, flow accumulation, atomic writes,
argument checks, camera conversions. Each is checked against values worked out by hand or against an
independent computation."""
from __future__ import annotations

import math

import pytest
import torch

from microface.metrics.geometry import moving_static_errors, moving_vertices


# ------------------------------------------------------------------------------------- moving / static scorer
def test_moving_static_errors_by_hand():
    # 2 frames, 3 vertices; vertex 0 moves 2 mm along x at the apex, vertices 1 and 2 stay
    target = torch.zeros(2, 3, 3)
    target[1, 0, 0] = 2.0
    predicted = target.clone()
    predicted[:, 1, 1] = 1.0  # a static bias of 1 mm on vertex 1 in every frame
    predicted[1, 0, 0] = 1.0  # vertex 0 reaches only half its motion
    moving = moving_vertices(target, apex=1, threshold_mm=0.1)
    assert moving.tolist() == [True, False, False]
    row = moving_static_errors(predicted, target, moving, apex=1, motion=True, gate=torch.full((2, 3), 0.5))
    assert list(row)[:4] == ["moving_apex_mm", "moving_clip_mm", "motion_moving_apex_mm", "gate_moving"]
    assert row["moving_apex_mm"] == 1.0 and row["moving_clip_mm"] == 0.5
    assert row["static_apex_mm"] == 0.5 and row["static_clip_mm"] == 0.5
    assert row["all_apex_mm"] == pytest.approx(2 / 3) and row["all_clip_mm"] == 0.5
    # the static bias cancels in the motion from the onset; the missing half of the motion does not
    assert row["motion_moving_apex_mm"] == 1.0 and row["motion_static_apex_mm"] == 0.0
    assert row["gate_static"] == 0.5


def test_moving_static_errors_empty_part_is_nan_and_optional_keys():
    target = torch.randn(3, 4, 3)
    row = moving_static_errors(target + 1.0, target, torch.zeros(4, dtype=torch.bool), apex=2)
    assert math.isnan(row["moving_apex_mm"]) and math.isnan(row["moving_clip_mm"])
    assert row["static_apex_mm"] == row["all_apex_mm"] == pytest.approx(math.sqrt(3))
    assert not any(k.startswith(("motion_", "gate_")) for k in row)


def test_moving_static_errors_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(5, 200, 3, generator=generator, dtype=torch.float64)
    predicted = target + 0.1 * torch.randn(5, 200, 3, generator=generator, dtype=torch.float64)
    moving = moving_vertices(target, apex=3, threshold_mm=1.0)
    assert 0 < int(moving.sum()) < 200
    error = (predicted - target).norm(dim=-1)
    row = moving_static_errors(predicted, target, moving, apex=3)
    assert row["moving_apex_mm"] == float(error[3, moving].mean())
    assert row["static_clip_mm"] == float(error[:, ~moving].mean())
    assert row["all_clip_mm"] == float(error.mean())


@pytest.mark.parametrize("case", ["shape", "apex", "mask"])
def test_moving_static_errors_rejects_bad_arguments(case):
    target = torch.zeros(2, 4, 3)
    predicted, moving, apex = target.clone(), torch.zeros(4, dtype=torch.bool), 1
    if case == "shape":
        predicted = torch.zeros(2, 5, 3)
    elif case == "apex":
        apex = 2
    else:
        moving = torch.zeros(4)
    with pytest.raises(ValueError, match=r"expected"):
        moving_static_errors(predicted, target, moving, apex)


# ------------------------------------------------------------------------------------------- flow accumulation
def test_the_two_flow_accumulations_chain_alike_and_differ_only_by_opencv_quantisation():
    import numpy as np

    from microface.data.flow import accumulate_flow_opencv, accumulate_flow_torch, synthetic_flow

    consecutive = np.stack([synthetic_flow(32, 40, max_px=0.8, seed=s) for s in range(4)])  # (4, H, W, 2)
    opencv = accumulate_flow_opencv(consecutive, 1, np.array([1, 2, 3, 4]))
    exact = accumulate_flow_torch(torch.from_numpy(consecutive).permute(0, 3, 1, 2), 1).permute(0, 2, 3, 1).numpy()
    assert opencv.shape == exact.shape == (4, 32, 40, 2)
    assert not opencv[0].any() and not exact[0].any()
    np.testing.assert_array_equal(opencv[1], consecutive[1])  # one step samples at the pixel itself
    # OpenCV's 1/32-px bilinear weights: close (smooth field, sub-pixel motion) but not the same numbers
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.abs(opencv[inner] - exact[inner]).max() < 0.02
    assert not np.array_equal(opencv, exact)


# ---------------------------------------------------------------------------------------------- camera arrays
def test_camera_arrays_round_trip_and_project_alike():
    import numpy as np

    from microface.render.camera import camera_from_arrays, camera_to_arrays, look_at_camera, project_points

    camera = look_at_camera(520.0, 410.5, (96, 80), dtype=torch.float64)
    arrays = camera_to_arrays(camera)
    assert list(arrays) == ["camera_R", "camera_t", "focal", "principal"]
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert arrays["focal"].shape == () and arrays["principal"].tolist() == [40.0, 48.0]
    back = camera_from_arrays(arrays, dtype=torch.float64)
    assert back.is_perspective and back.batch_size == 1
    points = torch.tensor([[[10.0, -5.0, 20.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(project_points(points, back), project_points(points, camera))


def test_camera_to_arrays_rejects_batches_and_weak_cameras():
    from microface.render.camera import camera_to_arrays, expand_camera, look_at_camera, weak_perspective_camera

    with pytest.raises(ValueError, match="perspective camera of batch 1, got a perspective camera of batch 2"):
        camera_to_arrays(expand_camera(look_at_camera(500.0, 300.0, 64), 2))
    with pytest.raises(ValueError, match="weak camera"):
        camera_to_arrays(weak_perspective_camera(torch.ones(1), torch.zeros(1, 2)))
