"""DGMD: cue shapes, region pooling vs a brute-force pixel loop, the motion-attention gate, bounded offsets,
end-to-end gradients, geometry losses, the flow-guided loss, training / evaluation drivers and figures."""
from __future__ import annotations

import pytest
import torch

from microface.face.open_model import OpenFaceModel
from microface.losses.geometry import (flow_guided_loss, laplacian_smoothness, normal_consistency,
                                       projected_displacement)
from microface.models.dgmd import DGMDConfig, build_dgmd, per_pixel_vertex_flow, region_pool_flow
from microface.mesh.regions import face_region_map
from microface.mesh.topology import mesh_edges
from microface.data.flow import accumulate_flow_torch, remove_affine_motion, temporal_low_rank
from microface.mesh.laplacian import uniform_laplacian_coordinates, cotangent_laplacian_coordinates
from microface.training.dgmd import (DGMDTrainSettings, RefineClip, clip_from_ground_truth,
                                     evaluate_dgmd, expand_camera, flow_from_vertices, refine_clip, summarise_dgmd,
                                     train_dgmd)
from microface.render.camera import look_at_camera, project_points, weak_perspective_camera
from microface.render.rasterize import rasterize

SIZE = 48
TINY = dict(hidden=16, gcn_layers=2)


@pytest.fixture(scope="module")
def face_model(open_face_model) -> OpenFaceModel:
    return open_face_model  # built once per session (tests/conftest.py)


def camera(batch: int, size: int = SIZE):
    # a 170 mm tall face fills most of a size x size image at 600 mm
    return look_at_camera(600.0, size * 600.0 / 190.0, (size, size), batch_size=batch)


def faces_of(model, batch: int, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    expression = torch.rand(batch, model.n_expression, generator=g) * scale
    shape = torch.randn(batch, model.n_shape, generator=g) * 0.5
    return model(shape, expression, torch.zeros(batch, 6)).vertices


def projected_landmarks(model, vertices, cam):
    return project_points(vertices[:, model.landmark_indices], cam)[..., :2]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mapping", ["region", "per_pixel"])
def test_cue_and_output_shapes(face_model, batch, mapping):
    dgmd = build_dgmd(face_model, {**TINY, "mapping": mapping})
    vertices = faces_of(face_model, batch)
    cam = camera(batch)
    flow = torch.randn(batch, 2, SIZE, SIZE) * 0.3
    landmarks = projected_landmarks(face_model, vertices, cam) + 0.5
    cues = dgmd.cues(vertices, cam, flow, landmarks)
    V = face_model.n_vertices
    assert cues.geometry.shape == (batch, V, 9)
    assert cues.landmark.shape == cues.vertex_flow.shape == cues.pooled_flow.shape == (batch, V, 2)
    assert cues.motion_magnitudes().shape == (batch, V, 3)
    out = dgmd(vertices, cam, flow, landmarks)
    assert out.vertices.shape == out.offsets.shape == (batch, V, 3) and out.gate.shape == (batch, V)
    torch.testing.assert_close(out.vertices, vertices + out.offsets)
    # the onset mesh is where the flow is read; the default is the coarse mesh itself
    moved = dgmd(vertices, cam, flow, landmarks, onset_vertices=vertices + torch.tensor([3.0, 0.0, 0.0]))
    assert not torch.allclose(moved.cues.vertex_flow, cues.vertex_flow)
    with pytest.raises(ValueError, match=r"expected \(B, 2, H, W\)"):
        dgmd(vertices, cam, flow[:, :1], landmarks)
    with pytest.raises(ValueError, match="landmarks2d"):
        dgmd(vertices, cam, flow, None)


def test_ablation_switches_change_inputs(face_model):
    vertices = faces_of(face_model, 2)
    cam = camera(2)
    flow = torch.randn(2, 2, SIZE, SIZE) * 0.3
    cues = build_dgmd(face_model, {**TINY, "use_geometry": False, "use_landmarks": False}).cues(vertices, cam, flow)
    assert cues.geometry is None and cues.landmark is None and cues.vertex_flow is not None
    only_geometry = build_dgmd(face_model, {**TINY, "use_flow": False, "use_landmarks": False})
    out = only_geometry(vertices, cam)
    assert torch.equal(out.gate, torch.ones_like(out.gate))  # nothing to attend to
    with pytest.raises(ValueError, match="every cue is switched off"):
        DGMDConfig(use_geometry=False, use_flow=False, use_landmarks=False)
    with pytest.raises(ValueError, match="unknown keys"):
        DGMDConfig.from_dict({"mappping": "region"})


def test_region_pooling_matches_brute_force_pixel_loop(face_model):
    dgmd = build_dgmd(face_model, TINY)
    B, size = 2, 32
    vertices = faces_of(face_model, B, seed=1)
    cam = camera(B, size)
    p2f = rasterize(project_points(vertices, cam), face_model.faces, (size, size)).pix_to_face
    assert int((p2f >= 0).sum()) > 300  # the face covers a good part of the image
    flow = torch.randn(B, 2, size, size, generator=torch.Generator().manual_seed(3))
    F, R, V = face_model.faces.shape[0], dgmd.n_regions, face_model.n_vertices
    region_sum, region_count = torch.zeros(B, R, 2), torch.zeros(B, R)
    vertex_sum, vertex_count = torch.zeros(B, V, 2), torch.zeros(B, V)
    for b in range(B):
        for i in range(size):
            for j in range(size):
                packed = int(p2f[b, i, j, 0])
                if packed < 0:
                    continue
                assert packed // F == b  # pytorch3d's packing
                f = packed - b * F
                r = int(dgmd.face_region[f])
                region_sum[b, r] += flow[b, :, i, j]
                region_count[b, r] += 1
                for v in face_model.faces[f].tolist():
                    vertex_sum[b, v] += flow[b, :, i, j]
                    vertex_count[b, v] += 1
    expected = torch.where(region_count[..., None] > 0, region_sum / region_count.clamp_min(1)[..., None], 0.0)
    torch.testing.assert_close(region_pool_flow(flow, p2f, dgmd.face_region, R), expected, rtol=1e-5, atol=1e-6)
    expected_v = torch.where(vertex_count[..., None] > 0, vertex_sum / vertex_count.clamp_min(1)[..., None], 0.0)
    torch.testing.assert_close(per_pixel_vertex_flow(flow, p2f, face_model.faces, V), expected_v, rtol=1e-5, atol=1e-6)


def test_face_region_majority_vote():
    faces = torch.tensor([[0, 1, 2], [1, 2, 3], [3, 4, 5]])
    vertex_region = torch.tensor([0, 1, 1, 2, 0, 1])
    # face 0: {0, 1, 1} -> 1; face 1: {1, 1, 2} -> 1; face 2: {2, 0, 1} tie -> smallest index 0
    assert face_region_map(faces, vertex_region, 3).tolist() == [1, 1, 0]


def test_gate_is_zero_without_motion(face_model):
    torch.manual_seed(0)
    dgmd = build_dgmd(face_model, TINY)
    vertices = faces_of(face_model, 2)
    cam = camera(2)
    landmarks = projected_landmarks(face_model, vertices, cam)  # detections agree with the mesh
    with torch.no_grad():
        still = dgmd(vertices, cam, torch.zeros(2, 2, SIZE, SIZE), landmarks)
    assert float(still.gate.abs().max()) == 0.0
    assert float(still.offsets.abs().max()) == 0.0
    # flow in the lower half of the image only (the mouth region): the gate opens there, stays shut far above
    flow = torch.zeros(2, 2, SIZE, SIZE)
    flow[:, 1, SIZE * 2 // 3:, :] = 0.5
    with torch.no_grad():
        moving = dgmd(vertices, cam, flow, landmarks)
    mouth, forehead = face_model.regions["mouth"], face_model.regions["forehead"]
    assert float(moving.gate[:, mouth].mean()) > 0.1
    assert float(moving.gate[:, forehead].max()) < 1e-6
    no_attention = build_dgmd(face_model, {**TINY, "use_attention": False})
    assert torch.equal(no_attention(vertices, cam, flow, landmarks).gate, torch.ones(2, face_model.n_vertices))


def test_offsets_bounded_and_static_clip_stays_put(face_model):
    dgmd = build_dgmd(face_model, {**TINY, "max_offset_mm": 1.5})
    with torch.no_grad():
        dgmd.head.bias.fill_(50.0)  # saturate the output: tanh bounds it anyway
    vertices = faces_of(face_model, 2)
    cam = camera(2)
    flow = torch.randn(2, 2, SIZE, SIZE) * 5.0
    with torch.no_grad():
        out = dgmd(vertices, cam, flow, projected_landmarks(face_model, vertices, cam) + 3.0)
    assert float(out.offsets.abs().max()) <= 1.5 + 1e-6
    # saturated: each component is max_offset_mm scaled by the gate, never more
    torch.testing.assert_close(out.offsets.abs(), 1.5 * out.gate[..., None].expand_as(out.offsets))
    assert float(out.gate.max()) > 0.3
    # a static clip (no flow, landmarks on the mesh) keeps the coarse mesh exactly, even saturated
    T = 4
    static = faces_of(face_model, 1).expand(T, -1, -1).clone()
    clip = RefineClip(coarse_vertices=static, flow_onset_to_t=torch.zeros(T, 2, SIZE, SIZE), camera=camera(1),
                      landmarks2d=projected_landmarks(face_model, static, expand_camera(camera(1), T)))
    refined = refine_clip(dgmd, clip)
    assert float(refined.offsets.abs().max()) < 1e-6 and float(refined.gate.abs().max()) < 1e-6


@pytest.mark.parametrize("mapping", ["region", "per_pixel"])
def test_gradients_reach_parameters_and_flow(face_model, mapping):
    dgmd = build_dgmd(face_model, {**TINY, "mapping": mapping})
    vertices = faces_of(face_model, 2)
    cam = camera(2)
    flow = (torch.randn(2, 2, SIZE, SIZE) * 0.3).requires_grad_(True)
    out = dgmd(vertices, cam, flow, projected_landmarks(face_model, vertices, cam) + 0.2)
    target = vertices + torch.randn_like(vertices) * 0.5
    (out.vertices - target).pow(2).sum().backward()
    for name, parameter in dgmd.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name
    assert flow.grad is not None and float(flow.grad.abs().sum()) > 0


def test_laplacians_vanish_on_a_flat_regular_grid():
    # a 5 x 5 planar grid: interior Laplacian coordinates are zero for both weightings
    n = 5
    xs, ys = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(n * n)], -1)[None]
    quads = [(i * n + j, (i + 1) * n + j, (i + 1) * n + j + 1, i * n + j + 1)
             for i in range(n - 1) for j in range(n - 1)]
    faces = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    interior = torch.tensor([i * n + j for i in range(1, n - 1) for j in range(1, n - 1)])
    for delta in (uniform_laplacian_coordinates(grid, mesh_edges(faces)), cotangent_laplacian_coordinates(grid, faces)):
        assert float(delta[0, interior].abs().max()) < 1e-5
    bumped = grid.clone()
    bumped[0, 12, 2] = 1.0
    assert float(uniform_laplacian_coordinates(bumped, mesh_edges(faces))[0, 12, 2]) > 0.5


def test_geometry_losses_zero_for_identical_meshes(face_model):
    coarse = faces_of(face_model, 2)
    faces = face_model.faces
    assert float(laplacian_smoothness(coarse, coarse, faces)) == 0.0
    assert float(normal_consistency(coarse, faces, reference=coarse)) == 0.0
    assert float(laplacian_smoothness(coarse + torch.tensor([1.0, 2.0, 3.0]), coarse, faces)) < 1e-8  # translation
    g = torch.Generator().manual_seed(0)
    bumpy = coarse + torch.randn(coarse.shape, generator=g) * 0.2
    assert float(laplacian_smoothness(bumpy, coarse, faces)) > 1e-3
    assert float(normal_consistency(bumpy, faces, reference=coarse)) > 1e-4
    assert float(normal_consistency(coarse, faces)) > 0  # a curved face: absolute form is positive


def test_flow_guided_loss_zero_when_motion_equals_flow(face_model):
    # weak perspective: a translation of the mesh moves every projection by exactly scale * translation
    vertices = faces_of(face_model, 1)
    cam = weak_perspective_camera(torch.tensor([0.2]), torch.tensor([[SIZE / 2, SIZE / 2]]))
    moved = vertices + torch.tensor([1.5, -1.0, 0.4])
    displacement = projected_displacement(moved, vertices, cam)
    torch.testing.assert_close(displacement, torch.tensor([0.3, 0.2]).expand_as(displacement))
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 0], flow[:, 1] = 0.3, 0.2
    px = project_points(vertices, cam)[..., :2]
    inside = ((px > 1) & (px < SIZE - 1)).all(-1)  # away from the zero padding at the border
    assert int(inside.sum()) > 400
    assert float(flow_guided_loss(moved, vertices, cam, flow, inside)) < 1e-6
    assert float(flow_guided_loss(vertices, vertices, cam, flow, inside)) > 0.3
    assert float(flow_guided_loss(moved, vertices, cam, flow * 2.0, inside)) > 0.3


def test_accumulate_flow_chains_consecutive_flows():
    consecutive = torch.zeros(3, 2, 16, 16)
    consecutive[:, 0] = 0.25
    consecutive[:, 1] = -0.1
    total = accumulate_flow_torch(consecutive, start=1)
    assert total.shape == (3, 2, 16, 16) and torch.equal(total[0], torch.zeros(2, 16, 16))
    torch.testing.assert_close(total[2, :, 4:12, 4:12], torch.tensor([0.5, -0.2])[:, None, None].expand(2, 8, 8))


def micro_clip(model, T: int = 5, size: int = 32, peak: float = 0.6) -> RefineClip:
    """AU12 rising over T frames; the coarse mesh holds the onset (it misses the micro-motion)."""
    expression = torch.zeros(T, model.n_expression)
    expression[:, model.au_names.index("AU12")] = torch.linspace(0.0, peak, T)
    truth = model(torch.zeros(T, model.n_shape), expression, torch.zeros(T, 6)).vertices
    cam = camera(1, size)
    flow = flow_from_vertices(truth[0], truth, model.faces, cam, (size, size))
    landmarks = projected_landmarks(model, truth, expand_camera(cam, T))
    return RefineClip(coarse_vertices=truth[:1].expand(T, -1, -1).clone(), flow_onset_to_t=flow, camera=cam,
                      landmarks2d=landmarks, truth_vertices=truth, truth_motion_vertices=truth, key="au12")


def test_flow_from_vertices_matches_vertex_motion(face_model):
    clip = micro_clip(face_model)
    assert float(clip.flow_onset_to_t[0].abs().max()) == 0.0
    assert float(clip.flow_onset_to_t[-1].norm(dim=0).max()) > 0.2  # lip corners move in the image
    # the flow sampled at a lip-corner vertex agrees with that vertex's own projected motion
    cam = expand_camera(clip.camera, 1)
    corner = 61
    motion = projected_displacement(clip.truth_vertices[-1:], clip.truth_vertices[:1], cam)[0, corner]
    px = project_points(clip.truth_vertices[:1], cam)[0, corner, :2]
    from microface.data.flow import sample_at_points
    sampled = sample_at_points(clip.flow_onset_to_t[-1:], px[None, None])[0, 0]
    assert float((sampled - motion).norm()) < 0.3 * float(motion.norm()) + 0.02


def test_train_resume_and_evaluate(face_model, tmp_path):
    clip = micro_clip(face_model)
    settings = DGMDTrainSettings(epochs=2, batch_size=2, lr=3e-3, seed=0)
    dgmd = build_dgmd(face_model, TINY, seed=0)
    checkpoint = tmp_path / "dgmd.pt"
    history = train_dgmd(dgmd, [clip], settings, checkpoint)
    assert len(history) == 2 and checkpoint.is_file()
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in history)
    assert {"flow", "landmark", "laplacian", "normal", "offset"} <= set(history[0])
    # a finished run resumes to the same state without training again
    again = build_dgmd(face_model, TINY, seed=1)
    assert train_dgmd(again, [clip], settings, checkpoint) == history
    for a, b in zip(dgmd.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    rows = evaluate_dgmd(dgmd, [clip], moving_threshold_mm=0.1)
    assert len(rows) == 1 and rows[0]["n_moving"] > 0 and rows[0]["n_moving"] < face_model.n_vertices
    row = rows[0]
    # the coarse mesh holds the onset: its static vertices are exact, its moving ones are not
    assert row["coarse_static_apex_mm"] < 0.1 < row["coarse_moving_apex_mm"]
    assert set(summarise_dgmd(rows)) >= {"dgmd_moving_apex_mm", "coarse_motion_moving_apex_mm"}
    with pytest.raises(ValueError, match="unknown keys"):
        DGMDTrainSettings.from_dict({"weights": {"flo": 1.0}})


def test_viz_writes_png_and_html(face_model, tmp_path):
    from microface.viz import mesh as viz
    vertices = face_model.v_template
    values = torch.linspace(0, 1.2, face_model.n_vertices)
    figure = viz.error_heatmap_figure(vertices, face_model.faces, values, "apex error")
    png = tmp_path / "heat.png"
    figure.savefig(png, dpi=50)
    assert png.stat().st_size > 1000
    assert any("mm" in ax.get_ylabel() for ax in figure.axes)  # the colour bar is labelled in mm
    viz.attention_map_figure(vertices, face_model.faces, values / 1.2).savefig(tmp_path / "gate.png", dpi=50)
    html = viz.mesh_sequence_html(vertices[None].expand(3, -1, -1), face_model.faces, tmp_path / "seq.html",
                                  values=values[None].expand(3, -1), title="seq", include_plotlyjs="cdn")
    text = html.read_text()
    assert "Mesh3d" in text.replace("mesh3d", "Mesh3d") and "slider" in text.lower() and "seq" in text
    # every frame's coordinates ride as plotly.js typed arrays (float32, base64), as plotly itself writes numpy
    import base64

    import numpy as np
    x0 = base64.b64encode(np.ascontiguousarray(vertices[:, 0].numpy(), dtype="<f4").tobytes()).decode()
    x0 = x0.replace("/", "\\u002f")  # plotly's JSON escapes "/" in pages
    assert text.count(x0) == 4 and '"dtype":"f4"' in text.replace(" ", "")  # the first trace and 3 frames
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="values"):
        viz.error_heatmap_figure(vertices, face_model.faces, values[:10])


def test_training_recovers_micro_motion_the_coarse_mesh_misses(face_model):
    # coarse meshes hold the onset; flow and landmarks carry an AU12 micro-motion. A held-out intensity is scored.
    train_clips = [micro_clip(face_model, T=6, peak=p) for p in (0.4, 0.8)]
    held_out = micro_clip(face_model, T=6, peak=0.6)
    dgmd = build_dgmd(face_model, TINY, seed=0)
    train_dgmd(dgmd, train_clips, DGMDTrainSettings(epochs=15, batch_size=5, lr=1e-2, seed=0))
    row = evaluate_dgmd(dgmd, [held_out])[0]
    assert row["dgmd_moving_apex_mm"] < 0.75 * row["coarse_moving_apex_mm"]
    assert row["dgmd_static_apex_mm"] < 0.1  # the gate keeps still vertices (nearly) where they were


def test_clip_from_benchmark_ground_truth(face_model, tmp_path):
    from microface.data.synth.dataset import SynthConfig, generate, load_ground_truth

    config = SynthConfig(subjects=1, clips=1, macro_clips=0, image_size=48)
    root = generate(tmp_path / "synth", config, show_progress=False)
    gt = load_ground_truth(next((root / "ground_truth").glob("sub*/*.npz")))
    vertices = torch.tensor(gt["vertices"])
    onset, offset = int(gt["onset"]), int(gt["offset"])
    coarse = vertices[onset:onset + 1].expand_as(vertices).clone()
    chained = clip_from_ground_truth(gt, coarse, key="c", flow="accumulate")
    exact = clip_from_ground_truth(gt, coarse, key="c", flow="exact", faces=face_model.faces)
    assert chained.n_frames == offset - onset + 1 and chained.apex_index == int(gt["apex"]) - onset
    assert chained.flow_onset_to_t.shape == (chained.n_frames, 2, 48, 48)
    assert float(chained.flow_onset_to_t[0].abs().max()) == 0.0
    mask = torch.tensor(gt["mask"][onset])
    magnitude = float(exact.flow_onset_to_t.norm(dim=1)[:, mask].mean())
    error = float((chained.flow_onset_to_t - exact.flow_onset_to_t).norm(dim=1)[:, mask].mean())
    assert magnitude > 0.01 and error < 0.1 * magnitude  # chaining consecutive flows is a close approximation
    # the benchmark's landmarks are the projected landmark vertices of its posed meshes under its camera
    cam = expand_camera(chained.camera, chained.n_frames)
    torch.testing.assert_close(projected_landmarks(face_model, chained.truth_vertices, cam), chained.landmarks2d,
                               atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="coarse_vertices"):
        clip_from_ground_truth(gt, coarse[:-1])


def test_noise_adaptive_floor_shuts_the_gate_on_uniform_noise(face_model):
    # uniform small flow everywhere (noise) plus a strong local motion: with gate_noise_factor the floor follows the
    # frame's median motion, so only the strongly moving vertices open the gate
    dgmd = build_dgmd(face_model, {**TINY, "use_landmarks": False, "gate_noise_factor": 3.0})
    vertices = faces_of(face_model, 1)
    cam = camera(1)
    flow = torch.full((1, 2, SIZE, SIZE), 0.2)
    flow[:, 1, SIZE * 2 // 3:, :] = 3.0
    with torch.no_grad():
        out = dgmd(vertices, cam, flow)
    mouth, forehead = face_model.regions["mouth"], face_model.regions["forehead"]
    assert float(out.gate[:, forehead].max()) == 0.0
    assert float(out.gate[:, mouth].mean()) > 0.1
    plain = build_dgmd(face_model, {**TINY, "use_landmarks": False})
    with torch.no_grad():
        assert float(plain(vertices, cam, flow).gate[:, forehead].min()) > 0.0  # no floor: noise opens the gate


def test_attention_context_lets_the_gate_depend_on_where_a_vertex_is(face_model):
    vertices = faces_of(face_model, 1)
    cam = camera(1)
    landmarks = projected_landmarks(face_model, vertices, cam)
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 1] = 0.5  # the same motion everywhere
    plain = build_dgmd(face_model, {**TINY, "attention_context": False}, seed=0)
    context = build_dgmd(face_model, {**TINY, "attention_context": True}, seed=0)
    assert context.attention.mlp[0].in_features == plain.attention.mlp[0].in_features + TINY["hidden"]
    with torch.no_grad():
        gate = context(vertices, cam, flow, landmarks).gate
        still = context(vertices, cam, torch.zeros_like(flow), landmarks).gate
    assert float(still.abs().max()) == 0.0  # the magnitude term still shuts it without motion
    assert float(gate.std()) > 0  # same motion, different vertices: the learned term differs per vertex
    with pytest.raises(ValueError, match="context"):
        context.attention(torch.ones(1, 3, 3))


def test_vertex_loss_pulls_offsets_onto_ground_truth_targets(face_model):
    clip = micro_clip(face_model)
    target = clip.truth_vertices - clip.coarse_vertices  # what would take each coarse vertex to the truth
    supervised = RefineClip(**{**clip.__dict__, "target_offsets": target})
    settings = DGMDTrainSettings(epochs=6, batch_size=4, lr=3e-3, seed=0,
                                 weights={"flow": 0.0, "landmark": 0.0, "laplacian": 0.0, "normal": 0.0,
                                          "offset": 0.0, "vertex": 1.0})
    dgmd = build_dgmd(face_model, {**TINY, "gate_floor_px": 0.0}, seed=0)
    history = train_dgmd(dgmd, [supervised], settings)
    assert history[-1]["vertex"] < history[0]["vertex"]
    with pytest.raises(ValueError, match="target_offsets"):
        train_dgmd(build_dgmd(face_model, TINY), [clip], settings)
    with pytest.raises(ValueError, match="target_offsets"):
        RefineClip(**{**clip.__dict__, "target_offsets": target[:, :10]})


def test_temporal_low_rank_keeps_a_rising_motion_and_removes_frame_noise():
    g = torch.Generator().manual_seed(0)
    field = torch.randn(2, 16, 16, generator=g)
    profile = torch.tensor([0.0, 0.2, 0.6, 1.0, 0.7, 0.3])  # onset -> apex -> offset
    clean = profile[:, None, None, None] * field  # (T, 2, H, W): one displacement field scaled over time
    torch.testing.assert_close(temporal_low_rank(clean, 1), clean)  # already rank 1: unchanged
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g)
    noisy[0] = 0.0  # the onset's flow is zero by definition
    denoised = temporal_low_rank(noisy, 1)
    assert float(denoised[0].abs().max()) == 0.0  # the onset stays exactly zero
    assert float((denoised - clean).norm()) < 0.6 * float((noisy - clean).norm())
    assert torch.equal(temporal_low_rank(noisy, 6), noisy)  # rank >= T: nothing to truncate
    with pytest.raises(ValueError, match="rank"):
        temporal_low_rank(noisy, 0)
    with pytest.raises(ValueError, match=r"\(T, \.\.\.\)"):
        temporal_low_rank(torch.zeros(5), 1)


def test_clip_cues_equal_per_frame_cues_without_denoising(face_model):
    clip = micro_clip(face_model)
    clip.flow_onset_to_t[1:] += 0.05 * torch.randn(clip.flow_onset_to_t[1:].shape,
                                                    generator=torch.Generator().manual_seed(1))
    dgmd = build_dgmd(face_model, TINY)
    T = clip.n_frames
    cues = dgmd.clip_cues(clip.coarse_vertices, clip.camera, clip.flow_onset_to_t, clip.landmarks2d)
    assert cues.geometry is None and cues.landmark.shape == (T, face_model.n_vertices, 2)
    per_frame = dgmd.cues(clip.coarse_vertices, expand_camera(clip.camera, T), clip.flow_onset_to_t,
                          clip.landmarks2d, clip.coarse_vertices[:1].expand(T, -1, -1),
                          onset_landmarks2d=clip.landmarks2d[:1].expand(T, -1, -1))
    for a, b in zip(cues.motion(), per_frame.motion()):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # forward on precomputed cues == forward computing them itself
        given = dgmd(clip.coarse_vertices, expand_camera(clip.camera, T), cues=cues)
        computed = dgmd(clip.coarse_vertices, expand_camera(clip.camera, T), clip.flow_onset_to_t, clip.landmarks2d,
                        clip.coarse_vertices[:1].expand(T, -1, -1),
                        onset_landmarks2d=clip.landmarks2d[:1].expand(T, -1, -1))
    torch.testing.assert_close(given.offsets, computed.offsets)
    torch.testing.assert_close(refine_clip(dgmd, clip, batch_size=2).offsets, computed.offsets)
    with pytest.raises(ValueError, match="cues.landmark"):
        dgmd(clip.coarse_vertices, expand_camera(clip.camera, T), cues=cues.frames(slice(0, 2)))
    with pytest.raises(ValueError, match="batch 1"):
        dgmd.clip_cues(clip.coarse_vertices, expand_camera(clip.camera, T), clip.flow_onset_to_t, clip.landmarks2d)


def test_temporal_rank_denoises_the_flow_cue_of_static_vertices(face_model):
    # AU12 rises over the clip; independent flow noise in every frame. Rank-1 denoising over time keeps the lip
    # corners' motion and shrinks the noise the static forehead reads; the cues need the whole clip.
    clip = micro_clip(face_model, T=8, size=48, peak=1.0)
    noise = 0.3 * torch.randn(clip.flow_onset_to_t.shape, generator=torch.Generator().manual_seed(0))
    noise[0] = 0.0
    clip.flow_onset_to_t += noise
    config = {**TINY, "use_landmarks": False}
    raw = build_dgmd(face_model, config).clip_cues(clip.coarse_vertices, clip.camera, clip.flow_onset_to_t)
    rank1 = build_dgmd(face_model, {**config, "temporal_rank": 1})
    denoised = rank1.clip_cues(clip.coarse_vertices, clip.camera, clip.flow_onset_to_t)
    forehead, corner = face_model.regions["forehead"], 61
    assert float(denoised.vertex_flow[:, forehead].norm(dim=-1).mean()) < 0.5 * float(
        raw.vertex_flow[:, forehead].norm(dim=-1).mean())
    apex_motion = float(raw.vertex_flow[-1, corner].norm())
    assert apex_motion > 0.3 and float((denoised.vertex_flow[-1, corner] - raw.vertex_flow[-1, corner]).norm()) < (
        0.5 * apex_motion)
    assert float(denoised.vertex_flow[0].abs().max()) == 0.0
    T = clip.n_frames
    with pytest.raises(ValueError, match="temporal_rank=1"):
        rank1(clip.coarse_vertices, expand_camera(clip.camera, T), clip.flow_onset_to_t)
    assert refine_clip(rank1, clip).offsets.shape == (T, face_model.n_vertices, 3)
    with pytest.raises(ValueError, match="temporal_rank"):
        DGMDConfig(temporal_rank=-1)


def test_remove_affine_motion_keeps_only_local_motion():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 200, 2, generator=g) * 64
    A = torch.tensor([[0.02, -0.01], [0.015, 0.03]])
    affine = points @ A.T + torch.tensor([0.4, -0.3])  # shift + small rotation / scale / shear
    torch.testing.assert_close(remove_affine_motion(affine, points), torch.zeros_like(affine), atol=1e-4, rtol=0)
    bump = torch.zeros_like(points)
    near = (points - 32).norm(dim=-1) < 6  # a local motion, as a micro-expression's
    bump[near] = torch.tensor([0.0, 0.8])
    local = remove_affine_motion(affine + bump, points)
    assert float(local[near, 1].mean()) > 0.6 and float(local[~near].norm(dim=-1).mean()) < 0.1
    assert float(remove_affine_motion(torch.zeros_like(points), points).abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"\(B, V, 2\)"):
        remove_affine_motion(bump[..., :1], points)


def test_flow_affine_free_ignores_a_global_misfit_of_the_coarse_pose(face_model):
    # the whole face appears shifted by 0.6 px that the coarse mesh does not explain (a pose error): with
    # flow_affine_free the flow cues vanish and the gate stays shut; without, the shift opens it everywhere
    vertices = faces_of(face_model, 1)
    cam = look_at_camera(600.0, SIZE * 600.0 / 400.0, (SIZE, SIZE), batch_size=1)  # the whole head in the image
    assert bool(((project_points(vertices, cam)[..., :2] > 1) & (project_points(vertices, cam)[..., :2] < SIZE - 1)).all())
    landmarks = projected_landmarks(face_model, vertices, cam)
    flow = torch.zeros(1, 2, SIZE, SIZE)
    flow[:, 0] = 0.6
    config = {**TINY, "use_landmarks": False, "gate_floor_px": 0.1}
    with torch.no_grad():
        plain = build_dgmd(face_model, config)(vertices, cam, flow, landmarks)
        free = build_dgmd(face_model, {**config, "flow_affine_free": True})(vertices, cam, flow, landmarks)
    assert float(plain.gate.mean()) > 0.1
    assert float(free.cues.vertex_flow.norm(dim=-1).max()) < 1e-3
    assert float(free.gate.abs().max()) == 0.0
