"""Recognition from reconstruction on a dataset the loaders read (microface.reconstruct.dataset_recognition).

The fixture is a tiny CASME II in its real layout (coding sheet + ``subNN/<clip>/imgN.jpg``) whose frames are the
smoke synthetic benchmark's faces, prepared as notebook 00 prepares a dataset; the clips are reconstructed with the
shipped checkpoint.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from microface.data.landmarks import landmarker_unavailable_reason
from microface.reconstruct import dataset_recognition
from microface.reconstruct.dataset_recognition import (
    ROW_LABEL,
    checkpoint_caveat,
    model_frame_vertices,
    prepared_clips,
    run_mesh_recognition,
)

try:
    from tests.dataset_fixtures import CASME2_HEADER, write_sheet
except ImportError:  # pytest run from inside tests/
    from dataset_fixtures import CASME2_HEADER, write_sheet

LANDMARKER_MISSING = landmarker_unavailable_reason()
needs_landmarker = pytest.mark.skipif(LANDMARKER_MISSING is not None,
                                      reason=f"face landmarker unavailable: {LANDMARKER_MISSING}")
N_FRAMES = 4
MER = {"epochs": 2, "n_frames": N_FRAMES, "batch_size": 4, "lr": 1e-2, "trajectory": {"hidden": 8, "layers": 1},
       "mesh": {"enabled": True, "checkpoint": None}}
EMOTIONS = ("happiness", "disgust")  # both in CASME II's 5-class map


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def casme2_results(tmp_path_factory):
    """results/<profile> with ``prepared/`` made from a 2-subject, 4-clip CASME II (every 5th synthetic frame, so
    each clip holds about 10 frames numbered from 1)."""
    if LANDMARKER_MISSING is not None:
        pytest.skip(LANDMARKER_MISSING)
    from microface.data.datasets import load_dataset
    from microface.data.preprocess import prepare
    from microface.data.synth import config_for_profile, generate

    base = tmp_path_factory.mktemp("dataset_recognition")
    synth = generate(base / "synth", config_for_profile("smoke", subjects=2, clips=2, macro_clips=0),
                     show_progress=False)
    root = base / "CASME2"
    table = [CASME2_HEADER]
    for i, clip_dir in enumerate(sorted(synth.glob("sub*/EP*"))):
        frames = sorted(clip_dir.glob("img*.jpg"), key=lambda p: int(p.stem[3:]))[::5]
        target = root / clip_dir.parent.name / clip_dir.name
        target.mkdir(parents=True)
        for n, frame in enumerate(frames, start=1):
            shutil.copy(frame, target / f"img{n}.jpg")
        subject = int(clip_dir.parent.name[3:])
        table.append([subject, clip_dir.name, None, 1, len(frames) // 2, len(frames), None, "12", EMOTIONS[i % 2]])
    write_sheet(root / "CASME2-coding-20140508.xlsx", table)
    records = load_dataset("casme2", root, class_map="5class")
    assert len(records) == 4
    results = base / "results"
    prepare(records, results / "prepared", size=64, flow_method=None, landmarks="detector")
    return results


def test_model_frame_vertices_removes_the_head_rotation_and_keeps_the_offsets(open_face_model):
    """A posed mesh plus posed offsets R d comes back as the mesh at zero global rotation plus d."""
    gen = torch.Generator().manual_seed(0)
    T = 3
    shape = 0.5 * torch.randn(open_face_model.n_shape, generator=gen)
    expression = torch.rand(T, open_face_model.n_expression, generator=gen)
    pose = 0.2 * torch.randn(T, 6, generator=gen)
    coarse = open_face_model(shape[None].expand(T, -1), expression, pose).vertices
    offsets = 0.3 * torch.randn(T, coarse.shape[1], 3, generator=gen)
    from microface.mesh.geometry import axis_angle_to_matrix

    posed_offsets = torch.einsum("tij,tvj->tvi", axis_angle_to_matrix(pose[:, :3]), offsets)
    unposed = open_face_model(shape[None].expand(T, -1), expression,
                              torch.cat([torch.zeros(T, 3), pose[:, 3:]], 1)).vertices
    out = model_frame_vertices(open_face_model, shape.numpy(), expression.numpy(), pose.numpy(), coarse.numpy(),
                               (coarse + posed_offsets).numpy())
    np.testing.assert_allclose(out, (unposed + offsets).numpy(), atol=1e-4)
    # a head rotation alone (same expression, other global pose) gives the same model-frame mesh
    turned = pose.clone()
    turned[:, :3] += 0.3
    coarse_turned = open_face_model(shape[None].expand(T, -1), expression, turned).vertices
    again = model_frame_vertices(open_face_model, shape.numpy(), expression.numpy(), turned.numpy(),
                                 coarse_turned.numpy(), coarse_turned.numpy())
    np.testing.assert_allclose(again, unposed.numpy(), atol=1e-4)


def test_checkpoint_caveat_names_the_overlap(tmp_path):
    meta = {"provenance": {"profile": "cpu"}}
    assert checkpoint_caveat(meta, "casme2", "cpu", tmp_path)[1].startswith("none")
    (tmp_path / "dem").mkdir()
    (tmp_path / "dem" / "split.json").write_text(json.dumps({"train_subjects": ["sub01", "sub02"]}))
    trained_on, overlap = checkpoint_caveat(meta, "synth", "cpu", tmp_path)
    assert "cpu profile" in trained_on and overlap.startswith("yes") and "sub01, sub02" in overlap
    assert checkpoint_caveat(meta, "synth", "smoke", tmp_path)[1].startswith("no clip shared")
    assert checkpoint_caveat({}, "synth", "cpu", tmp_path) == ("unknown (the bundle records no training profile)",
                                                               "unknown")


@needs_landmarker
def test_frames_are_picked_without_the_annotation(casme2_results, tmp_path):
    """The sampled indices are uniform over the whole clip, and stay the same when the annotation is gone."""
    clips, skipped = prepared_clips(casme2_results / "prepared", N_FRAMES)
    assert len(clips) == 4 and not skipped
    for clip in clips:
        expected = np.rint(np.linspace(0, len(clip.frames) - 1, N_FRAMES)).astype(int)
        np.testing.assert_array_equal(clip.picks, expected)
    stripped = shutil.copytree(casme2_results / "prepared", tmp_path / "prepared")
    for path in stripped.glob("clips/**/*.npz"):
        with np.load(path) as arrays:
            data = dict(arrays)
        meta = json.loads(str(data["meta"]))
        for key in ("onset", "apex", "offset"):
            meta["record"].pop(key)
        data["meta"] = np.array(json.dumps(meta))
        np.savez(path, **data)
    again, _ = prepared_clips(stripped, N_FRAMES)
    assert [(c.key, c.picks.tolist()) for c in again] == [(c.key, c.picks.tolist()) for c in clips]
    short, left_out = prepared_clips(casme2_results / "prepared", 100)
    assert not short and len(left_out) == 4 and "fewer than mer.n_frames" in left_out[0]["reason"]


@needs_landmarker
def test_writes_the_table_and_resumes_from_its_cache(casme2_results, monkeypatch):
    report = run_mesh_recognition("smoke", 0, "cpu", {"dataset": "casme2"}, MER, casme2_results)
    out_dir = casme2_results / "mer" / "mesh"
    table = pd.read_csv(out_dir / "mesh_table.csv")
    assert (out_dir / "mesh_table.md").is_file()
    assert list(table["model"]) == [ROW_LABEL]
    row = table.iloc[0]
    assert row["n_clips"] == 4 and row["n_subjects"] == 2 and row["dataset"] == "casme2"
    for column in ("acc", "uf1", "uar", "chance_acc", "chance_uar"):
        assert np.isfinite(row[column]) and 0 <= row[column] <= 1, column
    assert row["chance_uar"] == 0.5
    assert row["subject_overlap"] == "none: the checkpoint never saw casme2"
    cached = sorted(out_dir.glob("vertices/casme2/*/*.npz"))
    assert len(cached) == 4
    with np.load(cached[0]) as clip:
        vertices = clip["vertices"]
        assert vertices.shape == (N_FRAMES, 468, 3) and np.isfinite(vertices).all()
    predictions = pd.read_csv(out_dir / "trajectory" / "fixed-epoch" / "predictions.csv")
    assert len(predictions) == 4

    # a rerun reads every clip from the cache (reconstructing one would fail here) and gives the same table
    def refuse(*args, **kwargs):
        raise AssertionError("a cached clip was reconstructed again")

    monkeypatch.setattr(dataset_recognition, "reconstruct_frames", refuse)
    # asked for cuda where there is none (notebook 03's Snakemake job holds no GPU), the CPU runs it and says so
    device = "cpu" if torch.cuda.is_available() else "cuda"
    again = run_mesh_recognition("smoke", 0, device, {"dataset": "casme2"}, MER, casme2_results)
    pd.testing.assert_frame_equal(again.tables["mesh_table"], report.tables["mesh_table"])
    assert report.notes["device"] == "" and (device == "cpu" or "ran on cpu" in again.notes["device"])
    pd.testing.assert_frame_equal(pd.read_csv(out_dir / "mesh_table.csv"), table)


def test_notebook_03_driver_adds_the_mesh_step_only_when_enabled(monkeypatch, tmp_path):
    """microface.reconstruct.mer.run_mer_experiment: the MER table's report, plus the mesh step's table and notes when
    mer.mesh.enabled (the two steps stubbed: their own tests run them)."""
    from microface.experiments.report import NotebookReport
    from microface.reconstruct import mer as driver

    calls = []
    monkeypatch.setattr(driver, "run_mer_table", lambda **kwargs: NotebookReport(
        tables={"mer_table": pd.DataFrame({"model": ["mol"]})}, notes={"mer_table": "|mol|", "skipped": ""}))

    def mesh_step(profile, seed, device, data, mer, results_dir, checkpoint):
        calls.append(checkpoint)
        return NotebookReport(tables={"mesh_table": pd.DataFrame({"model": [ROW_LABEL]})},
                              notes={"mesh_table": "|mesh|", "skipped": "casme2/sub01/EP01: no face",
                                     "device": "no cuda; the mesh step ran on cpu"},
                              paths={"out_dir": tmp_path / "mer" / "mesh"})

    monkeypatch.setattr(driver, "run_mesh_recognition", mesh_step)
    off = driver.run_mer_experiment(profile="smoke", seed=0, device="cpu", data={"dataset": "casme2"},
                                    mer={**MER, "mesh": {"enabled": False, "checkpoint": None}}, results_dir=tmp_path)
    assert calls == [] and off.notes["mesh_table"] == driver.MESH_OFF and "mesh_table" not in off.tables
    on = driver.run_mer_experiment(profile="smoke", seed=0, device="cpu", data={"dataset": "casme2"},
                                   mer={**MER, "mesh": {"enabled": True, "checkpoint": "mine.pt"}}, results_dir=tmp_path)
    assert calls == ["mine.pt"]
    assert list(on.tables) == ["mer_table", "mesh_table"] and on.notes["mesh_table"] == "|mesh|"
    assert on.notes["mesh_skipped"] == "no cuda; the mesh step ran on cpu\ncasme2/sub01/EP01: no face"
    assert on.paths["mesh_dir"] == tmp_path / "mer" / "mesh"
