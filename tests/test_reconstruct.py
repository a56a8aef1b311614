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
from microface.data.landmarks import landmarker_unavailable_reason, select_face, to_ibug68
from microface.face.open_model import OpenFaceModel
from microface.mesh.meshio import read_obj, read_ply
from microface.models.dgmd import build_dgmd
from microface.reconstruct import pipeline as rec
from microface.reconstruct.bundle import load_bundle, save_bundle
from microface.reconstruct.video import frames_to_video
from microface.training.dem import build_dem

ROOT = Path(__file__).resolve().parents[1]
needs_landmarker = pytest.mark.skipif(landmarker_unavailable_reason() is not None,
                                      reason=f"{landmarker_unavailable_reason()}")
ENCODER = {"channels": [8, 16, 16], "hidden": 32}
DEM_CFG = {"code_dim": 24, "motion_dim": 8, "hidden": 16, "static_channels": [8, 8], "motion_channels": [8, 8],
           "solver": "rk4", "step_size": 0.25}
DGMD_CFG = {"hidden": 16, "gcn_layers": 1, "max_offset_mm": 1.5}
SIZE = 64
REFINE = 2 * SIZE  # DGMD at its own, higher resolution
N_FRAMES = 7
runner = CliRunner()


@pytest.fixture(scope="module")
def face_model(open_face_model) -> OpenFaceModel:
    return open_face_model  # built once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, face_model) -> Path:
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=0)
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=0)
    path = tmp_path_factory.mktemp("bundle") / "seeded.pt"
    return save_bundle(path, face_model_name="open", image_size=SIZE, flow_method="dis", encoder_cfg=ENCODER,
                           dem_cfg=DEM_CFG, dem_state=dem.state_dict(), dgmd_cfg=DGMD_CFG, dgmd_state=dgmd.state_dict(),
                           provenance={"note": "seeded, untrained: for I/O tests"})


@pytest.fixture(scope="module")
def refine_bundle(tmp_path_factory, face_model) -> Path:
    """A seeded bundle whose DGMD runs at REFINE x REFINE while DEM takes SIZE x SIZE crops."""
    path = tmp_path_factory.mktemp("bundle") / "seeded_refine.pt"
    return save_bundle(path, face_model_name="open", image_size=SIZE, flow_method="dis", encoder_cfg=ENCODER,
                           dem_cfg=DEM_CFG, dem_state=build_dem(face_model, ENCODER, DEM_CFG, seed=0).state_dict(),
                           dgmd_cfg=DGMD_CFG, dgmd_state=build_dgmd(face_model, DGMD_CFG, seed=0).state_dict(),
                           provenance={"note": "seeded, untrained, DGMD at 2x"}, refine_size=REFINE)


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
    assert select_face(np.zeros((0, 468, 3), np.float32), a) is None
    np.testing.assert_array_equal(select_face(np.stack([a, b]), None), a)  # no previous face: the best detection
    np.testing.assert_array_equal(select_face(np.stack([a, b]), b + 3.0), b)


@pytest.mark.parametrize("fmt,encoding", [("obj", None), ("ply", "binary"), ("ply", "ascii")])
def test_mesh_files_round_trip(tmp_path, face_model, fmt, encoding):
    vertices = face_model.v_template.numpy() + np.random.default_rng(0).normal(0, 0.01, (468, 3))
    faces = face_model.faces.numpy()
    path = tmp_path / f"mesh.{fmt}"
    if fmt == "obj":
        rec.write_obj(path, vertices, faces, "a comment\non two lines")
    else:
        rec.write_ply(path, vertices, faces, "a comment\non two lines", encoding=encoding)
    read_vertices, read_faces = (read_obj if fmt == "obj" else read_ply)(path)
    # OBJ and ASCII PLY: 6 decimals; binary PLY: float32 (7 significant digits of values up to ~100 mm)
    np.testing.assert_allclose(read_vertices, vertices, atol=1e-6 if encoding != "binary" else 2e-5)
    np.testing.assert_array_equal(read_faces, faces)
    if encoding == "binary":
        data = path.read_bytes()
        assert data.startswith(b"ply\nformat binary_little_endian 1.0\ncomment a comment\n")
        assert len(data) == data.index(b"end_header\n") + 11 + 468 * 12 + len(faces) * 13
        path.write_bytes(data[:-5])  # a file cut short names itself
        with pytest.raises(ValueError, match="mesh.ply: binary PLY body"):
            read_ply(path)
    with pytest.raises(ValueError, match="encoding"):
        rec.write_ply(tmp_path / "x.ply", vertices, faces, encoding="utf8")


def test_bundle_round_trip_and_face_model_check(bundle, face_model):
    dem, dgmd, meta = load_bundle(bundle, face_model)
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
        load_bundle(bundle, other)


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


def test_bundle_with_its_own_refine_size_round_trips(refine_bundle, bundle, face_model):
    raw = rec.read_bundle(refine_bundle)
    assert raw["image_size"] == SIZE and raw["refine_size"] == REFINE
    _, _, meta = load_bundle(refine_bundle, face_model)
    assert meta["image_size"] == SIZE and meta["refine_size"] == REFINE
    _, _, meta = load_bundle(bundle, face_model)  # refine_size=None: DGMD at the crop size
    assert meta["refine_size"] == SIZE


def test_refine_size_below_eight_is_refused(tmp_path, face_model):
    dem, dgmd = build_dem(face_model, ENCODER, DEM_CFG), build_dgmd(face_model, DGMD_CFG)
    with pytest.raises(ValueError, match="refine_size: expected >= 8"):
        save_bundle(tmp_path / "b.pt", face_model_name="open", image_size=SIZE, flow_method="dis",
                        encoder_cfg=ENCODER, dem_cfg=DEM_CFG, dem_state=dem.state_dict(), dgmd_cfg=DGMD_CFG,
                        dgmd_state=dgmd.state_dict(), provenance={}, refine_size=4)
    assert not (tmp_path / "b.pt").exists()


def test_old_bundle_without_refine_size_loads_at_the_crop_size(tmp_path, refine_bundle, face_model):
    old = torch.load(refine_bundle, map_location="cpu", weights_only=True)
    del old["refine_size"]  # as written before DGMD had its own resolution
    torch.save(old, tmp_path / "old.pt")
    assert rec.read_bundle(tmp_path / "old.pt")["refine_size"] == SIZE
    _, _, meta = load_bundle(tmp_path / "old.pt", face_model)
    assert meta["refine_size"] == SIZE == meta["image_size"]
    _, _, meta = rec.models_from_bundle(old, face_model)  # a dict that did not go through read_bundle
    assert meta["refine_size"] == SIZE
    torch.save({**old, "refine_size": 2}, tmp_path / "bad.pt")
    with pytest.raises(rec.ReconstructionError, match=r"bad\.pt has refine_size 2"):
        rec.read_bundle(tmp_path / "bad.pt")


def window_inputs(n: int = 3, size: int = SIZE, refine: int = REFINE, seed: int = 0) -> dict:
    """Random run_window inputs of n frames: crops and flow at size, refine flow and landmarks at refine."""
    rng = np.random.default_rng(seed)
    landmarks = rng.uniform(0.25, 0.75, (n, 68, 2)).astype(np.float32)
    return {"crops": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "flow": rng.normal(0, 0.5, (n, size, size, 2)).astype(np.float32),
            "times": np.arange(n) / 25.0, "landmarks_crop": landmarks * size,
            "refine_flow": rng.normal(0, 1.0, (n, refine, refine, 2)).astype(np.float32),
            "refine_landmarks": landmarks * refine}


def test_run_window_refines_at_its_own_resolution(face_model):
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=0).eval()
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=0).eval()
    x = window_inputs()
    base = (dem, dgmd, face_model, x["crops"], x["flow"], x["times"], x["landmarks_crop"])
    result = rec.run_window(*base, "dgmd", refine_flow=x["refine_flow"], refine_landmarks=x["refine_landmarks"])
    n, V = 3, face_model.v_template.shape[0]
    assert result.vertices.shape == result.coarse_vertices.shape == (n, V, 3) and result.gate.shape == (n, V)
    assert np.isfinite(result.vertices).all()
    assert np.abs(result.vertices - result.coarse_vertices).max() <= DGMD_CFG["max_offset_mm"] + 1e-6
    # DEM sees the SIZE inputs either way: only DGMD's part depends on the refine inputs
    dem_only = rec.run_window(*base, "dem")
    np.testing.assert_allclose(result.coarse_vertices, dem_only.coarse_vertices, atol=1e-5)
    at_crop_size = rec.run_window(*base, "dgmd")
    np.testing.assert_allclose(at_crop_size.coarse_vertices, dem_only.coarse_vertices, atol=1e-5)
    assert not np.allclose(at_crop_size.vertices, result.vertices)  # DGMD did take the refine inputs


@pytest.mark.parametrize("change, message", [
    ({"refine_flow": np.zeros((3, REFINE, SIZE, 2), np.float32)}, r"refine_flow: expected \(3, R, R, 2\)"),
    ({"refine_flow": np.zeros((3, 2, REFINE, REFINE), np.float32)}, r"refine_flow: expected \(3, R, R, 2\)"),
    ({"refine_flow": np.zeros((2, REFINE, REFINE, 2), np.float32)}, r"refine_flow: expected \(3, R, R, 2\)"),
    ({"refine_landmarks": None}, "refine_landmarks: needed with refine_flow"),
    ({"refine_flow": None}, "refine_landmarks given without refine_flow"),
    ({"refine_landmarks": np.zeros((3, 68), np.float32)}, r"refine_landmarks: expected \(3, 68, 2\)"),
])
def test_run_window_refuses_wrong_refine_inputs(face_model, change, message):
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=0).eval()
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=0).eval()
    x = {**window_inputs(), **change}
    with pytest.raises(ValueError, match=message):
        rec.run_window(dem, dgmd, face_model, x["crops"], x["flow"], x["times"], x["landmarks_crop"], "dgmd",
                       refine_flow=x["refine_flow"], refine_landmarks=x["refine_landmarks"])


def fake_landmarks(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 68, 2) video pixels with the eyes where a 224 x 224 astronaut frame has them, more or less."""
    points = rng.uniform(60, 160, (n, 68, 2))
    points[:, 36:42] = np.array([90.0, 70.0]) + rng.normal(0, 1, (n, 6, 2))
    points[:, 42:48] = np.array([130.0, 70.0]) + rng.normal(0, 1, (n, 6, 2))
    return points


def test_prepare_window_crops_and_flows_each_model_at_its_size():
    images = np.stack(astronaut_frames(4))
    landmarks = fake_landmarks(4, np.random.default_rng(0))
    timings: dict = {}
    x = rec.prepare_window(images, landmarks, SIZE, "dgmd", refine_size=REFINE, timings=timings)
    assert x.crops.shape == (4, SIZE, SIZE, 3) and x.flow.shape == (4, SIZE, SIZE, 2)
    assert x.landmarks_crop.shape == (4, 68, 2)
    assert x.refine_flow.shape == (4, REFINE, REFINE, 2)
    # the same eye-aligned framing, only at the larger size
    np.testing.assert_allclose(x.refine_landmarks, x.landmarks_crop * REFINE / SIZE, atol=1e-3)
    same = rec.crop_window(images, landmarks, SIZE)
    np.testing.assert_array_equal(x.crops, same[0])
    np.testing.assert_allclose(x.transform, same[1])
    assert set(timings) == {"crop", "flow"}
    for stage, refine in (("dgmd", SIZE), ("dgmd", None), ("dem", REFINE), ("coarse", REFINE)):
        other = rec.prepare_window(images, landmarks, SIZE, stage, refine_size=refine)
        assert other.refine_flow is None and other.refine_landmarks is None
        assert (other.flow is None) == (stage == "coarse")


def export_tool():
    spec = importlib.util.spec_from_file_location("export_checkpoint", ROOT / "tools" / "export_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def write_training_run(root: Path, face_model, config: dict, profile: str = "tiny") -> tuple:
    """A profile config and seeded DEM / DGMD training checkpoints under root -> (dem, dgmd, dgmd checkpoint)."""
    from microface.training.loop import TrainConfig, save_checkpoint

    (root / "config").mkdir(exist_ok=True)
    (root / "config" / f"{profile}.yaml").write_text(json.dumps(config))
    dem = build_dem(face_model, ENCODER, DEM_CFG, seed=3)
    dgmd = build_dgmd(face_model, DGMD_CFG, seed=3)
    dem_path = root / "results" / profile / "dem" / "checkpoints" / "dem.pt"
    save_checkpoint(dem_path, dem, None, 4, [], TrainConfig(epochs=5))
    save_checkpoint(root / "dgmd.pt", dgmd, None, 1, [], TrainConfig(epochs=2, extra={"dgmd": DGMD_CFG}))
    return dem, dgmd, root / "dgmd.pt"


def test_export_tool_writes_a_bundle_that_loads(tmp_path, face_model):
    tool = export_tool()
    dem, dgmd, _ = write_training_run(tmp_path, face_model, {"data": {"size": SIZE, "flow_method": "dis"},
                                                             "dem": {"encoder": ENCODER, "model": DEM_CFG}})
    out = tmp_path / "bundle.pt"
    code = tool.main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(tmp_path / "dgmd.pt"),
                      "--out", str(out)])
    assert code == 0
    loaded_dem, loaded_dgmd, meta = load_bundle(out, face_model)
    for name, value in dgmd.state_dict().items():
        torch.testing.assert_close(loaded_dgmd.state_dict()[name], value)
    torch.testing.assert_close(loaded_dem.state_dict()["decoder.weight"], dem.state_dict()["decoder.weight"])
    assert meta["provenance"]["dem_checkpoint"]["epoch"] == 4
    assert meta["provenance"]["dgmd_config_source"] == "recorded in the DGMD checkpoint"
    assert meta["refine_size"] == SIZE  # no dgmd.image_size in the profile: DGMD at data.size
    wrong = tool.main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(tmp_path / "none.pt"),
                       "--out", str(tmp_path / "b2.pt")])
    assert wrong == 1 and not (tmp_path / "b2.pt").exists()


@pytest.mark.parametrize("dgmd_section, expected", [({"image_size": REFINE}, REFINE), ({"image_size": None}, SIZE),
                                                     ({"moving_threshold_mm": 0.1}, SIZE)])
def test_export_tool_reads_dgmd_image_size(tmp_path, face_model, dgmd_section, expected):
    config = {"data": {"size": SIZE, "flow_method": "dis"}, "dem": {"encoder": ENCODER, "model": DEM_CFG},
              "dgmd": dgmd_section}
    _, _, dgmd_path = write_training_run(tmp_path, face_model, config)
    out = tmp_path / "bundle.pt"
    assert export_tool().main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(dgmd_path),
                               "--out", str(out)]) == 0
    _, _, meta = load_bundle(out, face_model)
    assert meta["image_size"] == SIZE and meta["refine_size"] == expected


def test_export_tool_refuses_a_bad_dgmd_image_size(tmp_path, face_model, capsys):
    config = {"data": {"size": SIZE, "flow_method": "dis"}, "dem": {"encoder": ENCODER, "model": DEM_CFG},
              "dgmd": {"image_size": "large"}}
    _, _, dgmd_path = write_training_run(tmp_path, face_model, config)
    assert export_tool().main(["--profile", "tiny", "--root", str(tmp_path), "--dgmd-checkpoint", str(dgmd_path),
                               "--out", str(tmp_path / "bundle.pt")]) == 1
    assert "tiny.yaml: dgmd.image_size must be an int >= 8" in capsys.readouterr().err
    assert not (tmp_path / "bundle.pt").exists()


# ----------------------------------------------------------------------------------------------- end to end
@needs_landmarker
def test_reconstruct_writes_every_output(tmp_path, bundle, face_video, face_model, face_landmarker):
    out = tmp_path / "recon"
    result = run_cli(face_video, "--out", out, "--checkpoint", bundle, "--window", 4, "--stage", "dgmd")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output

    meshes = sorted((out / "meshes").glob("*.obj"))
    assert [p.name for p in meshes] == [f"frame_{i:05d}.obj" for i in range(N_FRAMES)]
    params = np.load(out / "params.npz")
    T, V, E, S = N_FRAMES, 468, face_model.n_expression, face_model.n_shape
    expected = {"frame_index": (T,), "time_s": (T,), "window_index": (T,), "shape": (T, S), "expression": (T, E),
                "pose": (T, 6), "camera": (T, 3), "crop_transform": (T, 2, 3), "coarse_vertices": (T, V, 3),
                "vertices": (T, V, 3), "vertices_px": (T, V, 2), "dgmd_gate": (T, V), "faces": (898, 3)}
    assert {k: params[k].shape for k in expected} == expected
    assert "encoder_expression" not in params.files  # the per-frame encoder does not run beside the fit
    assert float(params["fps"]) == pytest.approx(25.0)
    np.testing.assert_allclose(params["time_s"], np.arange(T) / 25.0)
    np.testing.assert_array_equal(params["window_start"], [0, 0, 0, 0, 4, 4, 4])
    for t in (0, 5):  # the files hold the refined meshes of params.npz
        vertices, faces = read_obj(meshes[t])
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
    first = select_face(face_landmarker.detect_all(decoded_frames(face_video)[0]), None)
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
def test_reconstruct_runs_dgmd_at_the_bundles_refine_size(tmp_path, refine_bundle, face_video, monkeypatch):
    calls = []
    original = rec.run_window

    def spy(dem, dgmd, face_model, crops, flow, times, landmarks_crop, stage="dgmd", **refine):
        calls.append({"crops": crops.shape, "flow": None if flow is None else flow.shape, "stage": stage,
                      "landmarks_crop": landmarks_crop, **refine})
        return original(dem, dgmd, face_model, crops, flow, times, landmarks_crop, stage, **refine)

    monkeypatch.setattr(rec, "run_window", spy)
    summary = rec.reconstruct_video(face_video, tmp_path / "out", checkpoint=refine_bundle, window=4, stage="dgmd",
                                    show_progress=False)
    assert [c["crops"] for c in calls] == [(4, SIZE, SIZE, 3), (3, SIZE, SIZE, 3)]
    assert [c["flow"] for c in calls] == [(4, SIZE, SIZE, 2), (3, SIZE, SIZE, 2)]
    assert [c["refine_flow"].shape for c in calls] == [(4, REFINE, REFINE, 2), (3, REFINE, REFINE, 2)]
    for call in calls:  # the same crop framing at twice the size
        np.testing.assert_allclose(call["refine_landmarks"], call["landmarks_crop"] * REFINE / SIZE, atol=1e-3)
    params = np.load(tmp_path / "out" / "params.npz")
    assert int(params["image_size"]) == SIZE and int(params["refine_size"]) == REFINE
    assert params["vertices"].shape == (N_FRAMES, 468, 3)
    assert summary["image_size"] == SIZE and summary["refine_size"] == REFINE
    assert summary["checkpoint"]["refine_size"] == REFINE
    assert {"crop", "flow", "coarse_dem", "dgmd"} <= set(summary["timings_s"])

    calls.clear()  # DEM alone needs no refine crops
    rec.reconstruct_video(face_video, tmp_path / "dem", checkpoint=refine_bundle, window=4, stage="dem",
                          show_progress=False)
    assert all(c["refine_flow"] is None and c["refine_landmarks"] is None for c in calls)


@needs_landmarker
def test_encoder_stage_as_ply_and_a_replaced_previous_run(tmp_path, bundle, face_video):
    out = tmp_path / "recon"
    rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, show_progress=False)
    summary = rec.reconstruct_video(face_video, out, checkpoint=bundle, window=3, max_frames=5, stage="encoder",
                                    mesh_format="ply", show_progress=False)
    assert summary["frames"] == 5 and summary["stage"] == "encoder"
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"frame_{i:05d}.ply" for i in range(5)]
    params = np.load(out / "params.npz")
    assert "dgmd_gate" not in params.files
    np.testing.assert_array_equal(params["vertices"], params["coarse_vertices"])
    np.testing.assert_array_equal(params["expression"], params["encoder_expression"])
    vertices, _ = read_ply(out / "meshes" / "frame_00004.ply")
    np.testing.assert_allclose(vertices, params["vertices"][4], atol=1e-5)
    assert leftovers(tmp_path) == []


@needs_landmarker
def test_format_none_writes_no_mesh_files_and_the_same_params(tmp_path, bundle, face_video):
    # the decoding / crop / flow thread and the split thread budget change no number: params equal a ply run's
    runs = {}
    for fmt in ("ply", "none"):
        summary = rec.reconstruct_video(face_video, tmp_path / fmt, checkpoint=bundle, window=3, max_frames=5,
                                        stage="dgmd", mesh_format=fmt, show_progress=False)
        runs[fmt] = (summary, np.load(tmp_path / fmt / "params.npz"))
    assert not (tmp_path / "none" / "meshes").exists() and runs["none"][0]["outputs"]["meshes"] is None
    assert len(list((tmp_path / "ply" / "meshes").iterdir())) == 5
    for key in ("vertices", "vertices_px", "expression", "dgmd_gate"):
        np.testing.assert_array_equal(runs["none"][1][key], runs["ply"][1][key])
    assert "meshes/" not in " ".join(rec.summary_lines(runs["none"][0], tmp_path / "none"))
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
    bundle = save_bundle(tmp_path / "flame_bundle.pt", face_model_name="flame", image_size=48, flow_method="dis",
                             encoder_cfg=encoder, dem_cfg=dem_cfg,
                             dem_state=build_dem(flame, encoder, dem_cfg).state_dict(), dgmd_cfg=dgmd_cfg,
                             dgmd_state=build_dgmd(flame, dgmd_cfg).state_dict(), provenance={"note": "seeded"})
    result = run_cli(face_video, "--out", tmp_path / "out", "--checkpoint", bundle, "--face-model", "flame",
                     "--flame", flame_path, "--window", 3, "--max-frames", 4, "--stage", "encoder")
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


# --------------------------------------------------------------------- the landmark fit as the coarse stage
NOSE_TIP = 1  # MediaPipe's nose-tip landmark, and the same vertex of the open model (the canonical mesh topology)


def write_frames(folder: Path, frames: list[np.ndarray], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path, frame in zip(paths, frames):
        assert cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return paths


def turning_frames(n: int, degrees_per_frame: float, size: int = 224) -> list[np.ndarray]:
    import skimage.data

    face = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    return [cv2.warpAffine(face, cv2.getRotationMatrix2D((size / 2, size * 0.4), degrees_per_frame * i, 1.0),
                           (size, size), borderMode=cv2.BORDER_REPLICATE) for i in range(n)]


def roll_degrees(landmarks68: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) angle of the line between the eye centres, degrees (image y down)."""
    left, right = landmarks68[:, 36:42].mean(1), landmarks68[:, 42:48].mean(1)
    return np.degrees(np.arctan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0]))


def check_preview(out: Path, n_frames: int, height: int, width: int) -> None:
    from microface.reconstruct.output import preview_layout

    data = (out / "preview.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(out / "preview.png"), cv2.IMREAD_COLOR)
    rows, columns, tile_h, tile_w = preview_layout(min(n_frames, 6), height, width)
    assert image.shape == (rows * tile_h, columns * tile_w, 3)
    assert image.std() > 5  # frames, not a blank sheet


def test_orthographic_to_crop_camera_matches_projecting_then_cropping():
    from microface.render.camera import orthographic_to_crop_camera, orthographic_to_pixels, project_points

    points = torch.randn(2, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    camera = torch.tensor([[2.0, 300.0, 200.0], [1.5, 310.0, 190.0]], dtype=torch.float64)
    angle, scale = 0.3, 0.4
    A = scale * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    transform = torch.cat([A, torch.tensor([[5.0], [-7.0]], dtype=torch.float64)], dim=1)
    expected = orthographic_to_pixels(points, camera) @ A.T + transform[:, 2]
    crop_camera = orthographic_to_crop_camera(camera, transform)
    torch.testing.assert_close(project_points(points, crop_camera)[..., :2], expected)
    assert torch.allclose(torch.linalg.det(crop_camera.R), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="similarity"):
        orthographic_to_crop_camera(camera, torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64))


def test_folder_frames_sort_numerically(tmp_path):
    from microface.reconstruct.video import folder_frames

    for name in ["img10.jpg", "img2.jpg", "img1.jpg", "notes.txt", "img9.png"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in folder_frames(tmp_path)] == ["img1.jpg", "img2.jpg", "img9.png", "img10.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(rec.ReconstructionError, match="empty holds no image"):
        folder_frames(tmp_path / "empty")


@needs_landmarker
def test_fit_stage_projects_onto_the_detected_face_and_draws_a_preview(tmp_path, bundle, face_video, face_model):
    out = tmp_path / "fit"
    summary = rec.reconstruct_video(face_video, out, checkpoint=bundle, window=4, show_progress=False)
    assert summary["stage"] == "fit" and summary["fit"]["frames_fitted"] == N_FRAMES
    params, landmarks = np.load(out / "params.npz"), np.load(out / "landmarks.npz")
    assert params["vertices_px"].shape == (N_FRAMES, 468, 2)
    # the fitted mesh lands on the face: projected nose tip within a few px of the detected one (224 px frames)
    error = np.linalg.norm(params["vertices_px"][:, NOSE_TIP] - landmarks["landmarks_mesh"][:, NOSE_TIP, :2], axis=-1)
    assert error.max() < 4.0, error
    inner = np.linalg.norm(params["vertices_px"] - landmarks["landmarks_mesh"][..., :2], axis=-1)
    assert np.median(inner) < 3.0
    assert np.ptp(params["shape"], axis=0).max() == 0  # one identity for the video
    check_preview(out, N_FRAMES, 224, 224)
    assert summary["preview_frames"] == [0, 1, 2, 4, 5, 6]  # 6 frames spread over 7, ends included

    # DEM and DGMD start from the fit: same identity and pose, the fit's expression at every window onset, and
    # vertices_px the final mesh through the fit's camera
    dgmd = rec.reconstruct_video(face_video, tmp_path / "dgmd", checkpoint=bundle, window=4, stage="dgmd",
                                 show_progress=False)
    refined = np.load(tmp_path / "dgmd" / "params.npz")
    np.testing.assert_allclose(refined["pose"], params["pose"], atol=1e-6)
    np.testing.assert_allclose(refined["shape"], params["shape"], atol=1e-6)
    onsets = np.flatnonzero(refined["frame_index"] == refined["window_start"])
    np.testing.assert_allclose(refined["expression"][onsets], params["expression"][onsets], atol=1e-6)
    from microface.render.camera import orthographic_to_pixels
    expected = orthographic_to_pixels(torch.from_numpy(refined["vertices"]).double(), torch.from_numpy(refined["camera"]))
    np.testing.assert_allclose(refined["vertices_px"], expected.numpy(), atol=1e-3)
    assert dgmd["dem"]["still_field"] is True and 0 < np.abs(refined["vertices"] - refined["coarse_vertices"]).max()


@needs_landmarker
def test_still_video_does_not_drift(tmp_path, bundle):
    """No motion, no change: one frame repeated exactly (a folder of copies: an mp4 codec would make the copies
    differ by a few grey levels, i.e. real motion for the tracker), through DEM (still_field on) and DGMD, moves no
    vertex more than 0.05 mm."""
    video = tmp_path / "still"
    write_frames(video, turning_frames(1, 0.0) * 8, [f"img{i + 1}.png" for i in range(8)])
    for stage in ("dem", "dgmd"):
        summary = rec.reconstruct_video(video, tmp_path / stage, checkpoint=bundle, window=8, stage=stage,
                                        show_progress=False)
        vertices = np.load(tmp_path / stage / "params.npz")["vertices"]
        drift = np.linalg.norm(vertices - vertices[:1], axis=-1).max()
        assert drift <= 0.05, f"stage {stage}: a still video drifts {drift:.4f} mm"
        assert summary["dem"]["still_field"] is True


@needs_landmarker
def test_a_photo_is_one_frame(tmp_path, bundle, face_model):
    photo = write_frames(tmp_path, turning_frames(1, 0.0, size=200), ["portrait.jpg"])[0]
    out = tmp_path / "out"
    result = run_cli(photo, "--out", out, "--checkpoint", bundle)
    assert result.exit_code == 0, result.output
    params = np.load(out / "params.npz")
    assert params["vertices"].shape == (1, 468, 3) and params["vertices_px"].shape == (1, 468, 2)
    assert params["expression"].shape == (1, face_model.n_expression)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"]["kind"] == "photo" and summary["frames"] == 1
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["frame_00000.obj"]
    check_preview(out, 1, 200, 200)
    result = run_cli(photo, "--out", tmp_path / "dem", "--checkpoint", bundle, "--stage", "dem")
    assert result.exit_code != 0 and "--stage fit" in result.output and "portrait.jpg" in result.output


@needs_landmarker
def test_a_frame_folder_is_read_in_numeric_order(tmp_path, bundle):
    frames = turning_frames(12, 2.0)  # the head rolls 2 degrees per frame: the order shows in the landmarks
    write_frames(tmp_path / "clip", frames, [f"img{i + 1}.jpg" for i in range(12)])
    out = tmp_path / "out"
    result = run_cli(tmp_path / "clip", "--out", out, "--checkpoint", bundle, "--window", 6)
    assert result.exit_code == 0, result.output
    landmarks, params = np.load(out / "landmarks.npz"), np.load(out / "params.npz")
    roll = roll_degrees(landmarks["landmarks68"])
    assert np.all(np.diff(roll) < -1.0), roll  # img10 after img9, not after img1
    assert float(params["fps"]) == 200.0  # the ME datasets' rate, a folder's default
    np.testing.assert_allclose(params["time_s"], np.arange(12) / 200.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"]["kind"] == "frames" and summary["frames"] == 12
    check_preview(out, 12, 224, 224)
    result = run_cli(tmp_path / "clip", "--out", tmp_path / "out30", "--checkpoint", bundle, "--fps", 30,
                     "--max-frames", 3)
    assert result.exit_code == 0, result.output
    assert float(np.load(tmp_path / "out30" / "params.npz")["fps"]) == 30.0


@needs_landmarker
def test_start_auto_skips_the_frames_before_the_face(tmp_path, bundle):
    blank = [np.full((224, 224, 3), 90, np.uint8)] * 3
    paths = write_frames(tmp_path / "frames", blank + astronaut_frames(5), [f"f{i}.png" for i in range(8)])
    video = frames_to_video(paths, tmp_path / "late_face.mp4", fps=25.0)
    refused = run_cli(video, "--out", tmp_path / "refused", "--checkpoint", bundle)
    assert refused.exit_code != 0 and "no face found in the first frame" in refused.output
    assert "--start auto" in refused.output and "late_face.mp4" in refused.output
    out = tmp_path / "out"
    result = run_cli(video, "--out", out, "--checkpoint", bundle, "--start", "auto", "--stage", "dem", "--window", 3)
    assert result.exit_code == 0, result.output
    params = np.load(out / "params.npz")
    np.testing.assert_array_equal(params["frame_index"], np.arange(3, 8))
    np.testing.assert_allclose(params["time_s"], np.arange(3, 8) / 25.0)
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"frame_{i:05d}.obj" for i in range(3, 8)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start"] == {"mode": "auto", "frame": 3} and summary["frames_without_face"]["count"] == 0
    assert summary["preview_frames"] == [3, 4, 5, 6, 7]
    blank_video = frames_to_video(paths[:3], tmp_path / "no_face.mp4")
    result = run_cli(blank_video, "--out", tmp_path / "none", "--checkpoint", bundle, "--start", "auto")
    assert result.exit_code != 0 and "no face found in any of the 3 frames" in result.output
