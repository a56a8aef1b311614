"""``microface reconstruct``: checkpoint bundles, windows, mesh files, and the command end to end on short videos.

The bundle used here is written at test time from freshly SEEDED (untrained) small models: enough to test
reading, tracking, cropping, flow, the model chain and every output file, not the quality of the meshes.
Videos are written with ``cv2.VideoWriter`` (mp4v) from scikit-image's astronaut (a real face, public domain),
turned and zoomed a little per frame so the flow is not zero. Tests that need the offline landmarker skip
when it is not built (``python tools/build_face_landmarker_task.py``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from microface.cli import app
from microface.data.landmarks import FaceLandmarker, landmarker_unavailable_reason, to_ibug68
from microface.face.open_model import OpenFaceModel
from microface.models.dem_training import build_dem
from microface.models.dgmd import build_dgmd
from microface import reconstruct as rec

ROOT = Path(__file__).resolve().parents[1]
needs_landmarker = pytest.mark.skipif(landmarker_unavailable_reason() is not None,
                                      reason=f"{landmarker_unavailable_reason()}")
ENCODER = {"channels": [8, 16, 16], "hidden": 32}
DEM_CFG = {"code_dim": 24, "motion_dim": 8, "hidden": 16, "static_channels": [8, 8], "motion_channels": [8, 8],
           "solver": "rk4", "step_size": 0.25}
DGMD_CFG = {"hidden": 16, "gcn_layers": 1, "max_offset_mm": 1.5}
SIZE = 64
N_FRAMES = 7
runner = CliRunner()


@pytest.fixture(scope="module")
def face_model() -> OpenFaceModel:
    return OpenFaceModel()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, face_model) -> Path:
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=0)
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=0)
    path = tmp_path_factory.mktemp("bundle") / "seeded.pt"
    return rec.save_bundle(path, face_model_name="open", image_size=SIZE, flow_method="dis", encoder_cfg=ENCODER,
                           dem_cfg=DEM_CFG, dem_state=dem.state_dict(), dgmd_cfg=DGMD_CFG, dgmd_state=dgmd.state_dict(),
                           provenance={"note": "seeded, untrained: for I/O tests"})


def astronaut_frames(n: int, size: int = 224) -> list[np.ndarray]:
    import skimage.data

    face = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        turn = cv2.getRotationMatrix2D((size / 2, size * 0.4), 0.6 * i, 1.0 + 0.005 * i)
        frames.append(cv2.warpAffine(face, turn, (size, size), borderMode=cv2.BORDER_REPLICATE))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "astronaut.mp4", astronaut_frames(N_FRAMES))


def decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def run_cli(*args: str):
    return runner.invoke(app, ["reconstruct", *map(str, args)])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("n, window, expected", [
    (2, 16, [(0, 2)]), (17, 16, [(0, 17)]), (18, 16, [(0, 16), (16, 18)]), (32, 16, [(0, 16), (16, 32)]),
    (33, 16, [(0, 16), (16, 33)]), (7, 2, [(0, 2), (2, 4), (4, 7)]), (10, 4, [(0, 4), (4, 8), (8, 10)]),
])
def test_windows_cover_every_frame_once_with_at_least_two_frames(n, window, expected):
    bounds = rec.window_bounds(n, window)
    assert bounds == expected
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    assert all(b - a >= 2 for a, b in bounds)


def test_windows_refuse_a_single_frame_and_a_window_below_two():
    with pytest.raises(rec.ReconstructionError, match="at least 2"):
        rec.window_bounds(1, 16)
    with pytest.raises(ValueError, match="window"):
        rec.window_bounds(10, 1)


def test_select_face_follows_the_previous_face():
    a = np.zeros((468, 3), np.float32)
    b = a + np.array([100.0, 0.0, 0.0], np.float32)
    assert rec.select_face(np.zeros((0, 468, 3), np.float32), a) is None
    np.testing.assert_array_equal(rec.select_face(np.stack([a, b]), None), a)  # no previous face: the best detection
    np.testing.assert_array_equal(rec.select_face(np.stack([a, b]), b + 3.0), b)


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_mesh_files_round_trip(tmp_path, face_model, fmt):
    vertices = face_model.v_template.numpy() + np.random.default_rng(0).normal(0, 0.01, (468, 3))
    faces = face_model.faces.numpy()
    path = tmp_path / f"mesh.{fmt}"
    (rec.write_obj if fmt == "obj" else rec.write_ply)(path, vertices, faces, "a comment\non two lines")
    read_vertices, read_faces = (rec.read_obj if fmt == "obj" else rec.read_ply)(path)
    np.testing.assert_allclose(read_vertices, vertices, atol=1e-6)
    np.testing.assert_array_equal(read_faces, faces)


def test_bundle_round_trip_and_face_model_check(bundle, face_model):
    dem, dgmd, meta = rec.load_bundle(bundle, face_model)
    reference = build_dem(face_model, ENCODER, DEM_CFG, seed=0).state_dict()
    for name, value in dem.state_dict().items():
        torch.testing.assert_close(value, reference[name])
    assert not dem.training and not dgmd.training
    assert meta["face_model"] == {"name": "open", "n_shape": face_model.n_shape,
                                  "n_expression": face_model.n_expression, "n_vertices": 468}
    assert meta["image_size"] == SIZE and meta["flow"]["method"] == "dis"
    assert "dem_state" not in meta and len(meta["sha256"]) == 64
    other = SimpleNamespace(n_shape=5, n_expression=face_model.n_expression, v_template=face_model.v_template)
    with pytest.raises(rec.ReconstructionError, match=r"n_shape 12 in the checkpoint vs 5"):
        rec.load_bundle(bundle, other)


def test_bundle_errors_name_the_file(tmp_path, face_model):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*export_checkpoint"):
        rec.read_bundle(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(rec.ReconstructionError, match=r"garbage\.pt could not be read"):
        rec.read_bundle(garbage)
    training = tmp_path / "dem.pt"
    torch.save({"model": {}, "epoch": 3}, training)
    with pytest.raises(rec.ReconstructionError, match=r"dem\.pt is not a reconstruction bundle.*export_checkpoint"):
        rec.read_bundle(training)


def test_export_tool_writes_a_bundle_that_loads(tmp_path, face_model):
    from microface.train import TrainConfig, save_checkpoint

    spec = importlib.util.spec_from_file_location("export_checkpoint", ROOT / "tools" / "export_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "tiny.yaml").write_text(json.dumps(
        {"data": {"size": SIZE, "flow_method": "dis"}, "dem": {"encoder": ENCODER, "model": DEM_CFG}}))
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=3)
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=3)
    dem_path = tmp_path / "results" / "tiny" / "dem" / "checkpoints" / "dem.pt"
    save_checkpoint(dem_path, dem, None, 4, [], TrainConfig(epochs=5))
    save_checkpoint(tmp_path / "dgmd.pt", dgmd, None, 1, [], TrainConfig(epochs=2, extra={"dgmd": DGMD_CFG}))
    out = tmp_path / "bundle.pt"
    code = tool.main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(tmp_path / "dgmd.pt"),
                      "--out", str(out)])
    assert code == 0
    loaded_dem, loaded_dgmd, meta = rec.load_bundle(out, face_model)
    for name, value in dgmd.state_dict().items():
        torch.testing.assert_close(loaded_dgmd.state_dict()[name], value)
    torch.testing.assert_close(loaded_dem.state_dict()["decoder.weight"], dem.state_dict()["decoder.weight"])
    assert meta["provenance"]["dem_checkpoint"]["epoch"] == 4
    assert meta["provenance"]["dgmd_config_source"] == "recorded in the DGMD checkpoint"
    wrong = tool.main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(tmp_path / "none.pt"),
                       "--out", str(tmp_path / "b2.pt")])
    assert wrong == 1 and not (tmp_path / "b2.pt").exists()


# ----------------------------------------------------------------------------------------------- end to end
@needs_landmarker
def test_reconstruct_writes_every_output(tmp_path, bundle, face_video, face_model):
    out = tmp_path / "recon"
    result = run_cli(face_video, "--out", out, "--checkpoint", bundle, "--window", 4)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output

    meshes = sorted((out / "meshes").glob("*.obj"))
    assert [p.name for p in meshes] == [f"frame_{i:05d}.obj" for i in range(N_FRAMES)]
    params = np.load(out / "params.npz")
    T, V, E, S = N_FRAMES, 468, face_model.n_expression, face_model.n_shape
    expected = {"frame_index": (T,), "time_s": (T,), "window_index": (T,), "shape": (T, S), "expression": (T, E),
                "encoder_expression": (T, E), "pose": (T, 6), "camera": (T, 3), "crop_transform": (T, 2, 3),
                "coarse_vertices": (T, V, 3), "vertices": (T, V, 3), "dgmd_gate": (T, V), "faces": (898, 3)}
    assert {k: params[k].shape for k in expected} == expected
    assert float(params["fps"]) == pytest.approx(25.0)
    np.testing.assert_allclose(params["time_s"], np.arange(T) / 25.0)
    np.testing.assert_array_equal(params["window_start"], [0, 0, 0, 0, 4, 4, 4])
    for t in (0, 5):  # the files hold the refined meshes of params.npz
        vertices, faces = rec.read_obj(meshes[t])
        np.testing.assert_allclose(vertices, params["vertices"][t], atol=1e-5)
        np.testing.assert_array_equal(faces, face_model.faces.numpy())

    # DGMD moves vertices a little, within its bound, and only where its gate is open
    offsets = params["vertices"] - params["coarse_vertices"]
    assert 0.0 < np.abs(offsets).max() <= DGMD_CFG["max_offset_mm"] + 1e-6
    gate = params["dgmd_gate"]
    assert gate.min() >= 0.0 and gate.max() < 1.0
    assert np.all(np.linalg.norm(offsets, axis=-1)[gate == 0] == 0)

    # landmarks are in the ORIGINAL video's pixels: the detector on the decoded first frame agrees
    landmarks = np.load(out / "landmarks.npz")
    assert landmarks["landmarks68"].shape == (T, 68, 2) and landmarks["landmarks_mesh"].shape == (T, 468, 3)
    assert landmarks["detected"].all()
    with FaceLandmarker() as landmarker:
        first = rec.select_face(landmarker.detect_all(decoded_frames(face_video)[0]), None)
    np.testing.assert_allclose(landmarks["landmarks68"][0], to_ibug68(first)[:, :2], atol=1e-3)
    # and the crop landmarks are those mapped by each window's transform
    t = 5
    mapped = landmarks["landmarks68"][t] @ params["crop_transform"][t][:, :2].T + params["crop_transform"][t][:, 2]
    np.testing.assert_allclose(landmarks["landmarks68_crop"][t], mapped, atol=1e-3)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == T and summary["frames_without_face"]["count"] == 0
    assert summary["windows"]["starts_and_lengths"] == [[0, 4], [4, 3]]
    assert summary["checkpoint"]["sha256"] == rec.read_bundle(bundle)["sha256"]
    assert summary["checkpoint"]["provenance"]["note"].startswith("seeded")
    assert "plotly" in (out / "viewer.html").read_text()[:200000].lower()
    assert leftovers(tmp_path) == []


@needs_landmarker
def test_coarse_stage_as_ply_and_a_replaced_previous_run(tmp_path, bundle, face_video):
    out = tmp_path / "recon"
    rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, show_progress=False)
    summary = rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, max_frames=5, stage="coarse",
                                    mesh_format="ply", show_progress=False)
    assert summary["frames"] == 5 and summary["stage"] == "coarse"
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"frame_{i:05d}.ply" for i in range(5)]
    params = np.load(out / "params.npz")
    assert "dgmd_gate" not in params.files
    np.testing.assert_array_equal(params["vertices"], params["coarse_vertices"])
    np.testing.assert_array_equal(params["expression"], params["encoder_expression"])
    vertices, _ = rec.read_ply(out / "meshes" / "frame_00004.ply")
    np.testing.assert_allclose(vertices, params["vertices"][4], atol=1e-5)
    assert leftovers(tmp_path) == []


@needs_landmarker
def test_frames_without_a_face_hold_the_previous_landmarks(tmp_path, bundle):
    frames = astronaut_frames(6)
    frames[3] = np.full_like(frames[3], 128)
    video = write_video(tmp_path / "gap.mp4", frames)
    summary = rec.reconstruct_video(video, tmp_path / "out", checkpoint=bundle, window=3, show_progress=False)
    assert summary["frames_without_face"]["count"] == 1 and summary["frames_without_face"]["frames"] == [3]
    landmarks = np.load(tmp_path / "out" / "landmarks.npz")
    np.testing.assert_array_equal(landmarks["detected"], [True, True, True, False, True, True])
    np.testing.assert_array_equal(landmarks["landmarks68"][3], landmarks["landmarks68"][2])


@needs_landmarker
def test_no_face_in_the_video_fails_naming_it(tmp_path, bundle):
    video = write_video(tmp_path / "grey_wall.mp4", [np.full((128, 128, 3), 120, np.uint8)] * 4)
    out = tmp_path / "out"
    result = run_cli(video, "--out", out, "--checkpoint", bundle)
    assert result.exit_code != 0
    assert "no face found in the first frame" in result.output and "grey_wall.mp4" in result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_corrupt_video_fails_naming_it(tmp_path, bundle):
    video = tmp_path / "broken.mp4"
    video.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    result = run_cli(video, "--out", out, "--checkpoint", bundle)
    assert result.exit_code != 0
    assert "corrupt or unreadable video" in result.output and "broken.mp4" in result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_video_and_missing_checkpoint_fail_clearly(tmp_path, bundle, face_video, monkeypatch):
    result = run_cli(tmp_path / "absent.mp4", "--out", tmp_path / "out", "--checkpoint", bundle)
    assert result.exit_code != 0 and "absent.mp4 does not exist" in result.output
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", tmp_path / "no_such.pt")
    assert result.exit_code != 0 and "no_such.pt" in result.output and "export_checkpoint" in result.output
    monkeypatch.setattr(rec, "default_checkpoint_path", lambda: tmp_path / "assets" / "open_dem_dgmd.pt")
    result = run_cli(face_video, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "open_dem_dgmd.pt" in result.output and "snakemake" in result.output
    assert not (tmp_path / "out").exists()


def test_face_model_choice_is_checked(tmp_path, bundle, face_video):
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--face-model", "flame")
    assert result.exit_code != 0 and "needs --flame" in result.output
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--face-model", "flame",
                     "--flame", tmp_path / "flame.pkl")
    assert result.exit_code != 0 and "trained for the 'open' face model" in result.output


def test_foreign_output_folder_is_left_alone(tmp_path, bundle, face_video):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli(face_video, "--out", out, "--checkpoint", bundle)
    assert result.exit_code != 0 and "is not a previous reconstruction" in result.output
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@needs_landmarker
def test_an_interrupted_run_leaves_no_half_written_folder(tmp_path, bundle, face_video, monkeypatch):
    out = tmp_path / "recon"
    rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, max_frames=4, show_progress=False)
    before = (out / "summary.json").read_text()
    calls = []

    def interrupted_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    original = rec.write_obj
    monkeypatch.setattr(rec, "write_obj", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, show_progress=False)
    assert len(calls) == 3
    # the previous reconstruction is untouched and no staging folder is left behind
    assert (out / "summary.json").read_text() == before
    assert len(list((out / "meshes").iterdir())) == 4
    assert leftovers(tmp_path) == []
    calls.clear()
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        rec.reconstruct_video(face_video, fresh, checkpoint=bundle, window=3, show_progress=False)
    assert len(calls) == 3 and not fresh.exists() and leftovers(tmp_path) == []


@needs_landmarker
def test_flame_route_builds_flame_with_the_checkpoint_sizes(tmp_path, face_video):
    try:
        from tests.fixtures_flame import write_tiny_flame
    except ImportError:  # tests/ is on sys.path under pytest's default import mode
        from fixtures_flame import write_tiny_flame
    from microface.face.flame import FlameFaceModel

    flame_path = write_tiny_flame(tmp_path / "flame")  # a procedural 60-vertex stand-in, no FLAME data
    flame = FlameFaceModel(flame_path, n_shape=4, n_expression=3)
    encoder = {"channels": [8, 16], "hidden": 16}
    dem_cfg = {"code_dim": 8, "motion_dim": 4, "hidden": 8, "static_channels": [4], "motion_channels": [4],
               "solver": "euler", "step_size": 0.5}
    dgmd_cfg = {"hidden": 8, "gcn_layers": 1}
    bundle = rec.save_bundle(tmp_path / "flame_bundle.pt", face_model_name="flame", image_size=48, flow_method="dis",
                             encoder_cfg=encoder, dem_cfg=dem_cfg,
                             dem_state=build_dem(flame, encoder, dem_cfg).state_dict(), dgmd_cfg=dgmd_cfg,
                             dgmd_state=build_dgmd(flame, dgmd_cfg).state_dict(), provenance={"note": "seeded"})
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--face-model", "flame",
                     "--flame", flame_path, "--window", 3, "--max-frames", 4)
    assert result.exit_code == 0, result.output
    params = np.load(tmp_path / "out" / "params.npz")
    assert params["vertices"].shape == (4, 60, 3) and params["expression"].shape == (4, 3)
    assert params["shape"].shape == (4, 4)
    # the open model cannot run a FLAME checkpoint
    result = run_cli(face_video, "--out", tmp_path / "out2", "--checkpoint", bundle)
    assert result.exit_code != 0 and "trained for the 'flame' face model" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this build has CUDA: the device is valid here")
def test_unavailable_device_fails_clearly(tmp_path, bundle, face_video):
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--device", "cuda")
    assert result.exit_code != 0 and "has no cuda device" in result.output and "--device cpu" in result.output
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--device", "gpu")
    assert result.exit_code != 0 and "'gpu' is not a torch device" in result.output
    assert not (tmp_path / "out").exists()
