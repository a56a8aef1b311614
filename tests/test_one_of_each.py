"""The helpers that exist once (issue 14, point 2): the moving/static scorer, flow accumulation, atomic writes,
argument checks, camera conversions. Each is checked against values worked out by hand or against an
independent computation."""
from __future__ import annotations

import math
import os
import stat

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


# ----------------------------------------------------------------------------------------------- folder writes
def test_replace_folder_swaps_a_previous_folder_and_leaves_nothing_behind(tmp_path):
    from microface.utils.io import replace_folder, staging_folder

    out = tmp_path / "result"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = staging_folder(out)
    assert staging.parent == tmp_path and staging.name.startswith(".result.tmp-") and not any(staging.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(staging.stat().st_mode) == 0o777 & ~umask  # a folder like any other, not mkdtemp's 0700
    (staging / "new.txt").write_text("new")
    assert replace_folder(staging, out) == out
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_replace_folder_restores_the_previous_folder_when_the_move_fails(tmp_path):
    from microface.utils.io import replace_folder

    out = tmp_path / "result"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "missing-staging", out)
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


# ------------------------------------------------------------------------------------------------ argument checks
def test_check_point_pair_names_both_arguments_and_the_layout():
    from microface.utils.checks import check_point_pair

    check_point_pair(torch.zeros(4, 3), torch.zeros(4, 3), ("predicted", "target"))  # (..., V, 3) with no batch
    check_point_pair(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), ("refined", "coarse"), "(B, V, 3)")
    message = r"^refined and coarse: expected the same \(B, V, 3\), got \(4, 3\) and \(4, 3\)$"
    with pytest.raises(ValueError, match=message):
        check_point_pair(torch.zeros(4, 3), torch.zeros(4, 3), ("refined", "coarse"), "(B, V, 3)")
    with pytest.raises(ValueError, match=r"predicted and target: expected the same \(\.\.\., V, 3\)"):
        check_point_pair(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3), ("predicted", "target"))
    with pytest.raises(ValueError, match="expected the same"):
        check_point_pair(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), ("a", "b"))
    with pytest.raises(ValueError, match="expected the same"):
        check_point_pair(torch.zeros(3), torch.zeros(3), ("a", "b"))


def test_check_mesh_arrays_messages():
    import numpy as np

    from microface.utils.checks import check_mesh_arrays

    vertices, faces = np.zeros((4, 3)), np.array([[0, 1, 2], [1, 2, 3]])
    check_mesh_arrays(vertices, faces, np.zeros(4), check_indices=True)
    check_mesh_arrays(torch.zeros(4, 3), torch.tensor(faces), check_indices=True)
    with pytest.raises(ValueError, match=r"^vertices: expected \(V, 3\), got \(4, 2\)$"):
        check_mesh_arrays(np.zeros((4, 2)), faces)
    with pytest.raises(ValueError, match=r"^error_maps\[1\] faces: expected \(F, 3\)"):
        check_mesh_arrays(vertices, faces[:, :2], name="error_maps[1]")
    with pytest.raises(ValueError, match=r"faces: expected indices in \[0, 4\), got \[0, 4\]"):
        check_mesh_arrays(vertices, faces + np.array([0, 0, 1]), check_indices=True)
    check_mesh_arrays(vertices, faces + np.array([0, 0, 1]))  # indices unchecked unless asked
    with pytest.raises(ValueError, match=r"^m error: expected \(4,\) one value per vertex, got \(3,\)$"):
        check_mesh_arrays(vertices, faces, np.zeros(3), name="m", values_name="error")


def test_check_image_pair_names_the_argument_at_fault():
    from microface.utils.checks import check_image_pair

    check_image_pair(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), ("a", "b"))
    with pytest.raises(ValueError, match=r"^a: expected \(B, 3, H, W\), got \(2, 8, 8, 3\)$"):
        check_image_pair(torch.zeros(2, 8, 8, 3), torch.zeros(2, 3, 8, 8), ("a", "b"))
    with pytest.raises(ValueError, match=r"^b: expected the shape of a \(2, 3, 8, 8\), got \(1, 3, 8, 8\)$"):
        check_image_pair(torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 8, 8), ("a", "b"))


def test_perceptual_distances_check_their_pair():
    from microface.losses.perceptual import GradientSSIMDistance

    with pytest.raises(ValueError, match=r"b: expected the shape of a"):
        GradientSSIMDistance()(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 8))
