"""Records name files portably: relative to the compendium or ``~/...``, never an absolute path of the machine that
wrote them (``microface.utils.io.portable_path``; reconstruct's summary.json; the shipped checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from microface.config import project_root
from microface.data.landmarks import landmarker_unavailable_reason
from microface.utils.io import portable_path

ROOT = Path(__file__).resolve().parents[1]


def test_portable_path_inside_the_compendium_is_relative_to_it(tmp_path, monkeypatch):
    root = tmp_path / "compendium"
    (root / "results").mkdir(parents=True)
    assert portable_path(root / "results" / "cpu" / "dem.pt", root) == "results/cpu/dem.pt"
    assert portable_path(root, root) == "."
    assert portable_path(ROOT / "config" / "cpu.yaml") == "config/cpu.yaml"  # default root: project_root()
    monkeypatch.chdir(root / "results")
    assert portable_path("cpu/dem.pt", root) == "results/cpu/dem.pt"  # relative: from the current directory


def test_portable_path_in_the_home_folder_starts_with_tilde(tmp_path, monkeypatch):
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    assert portable_path(home / "videos" / "clip.mp4", tmp_path / "elsewhere") == "~/videos/clip.mp4"
    assert portable_path("~/videos/clip.mp4", tmp_path / "elsewhere") == "~/videos/clip.mp4"
    assert portable_path(home, tmp_path / "elsewhere") == "~"
    # the compendium inside the home folder: relative to the compendium wins
    assert portable_path(home / "microface" / "config" / "cpu.yaml", home / "microface") == "config/cpu.yaml"


def test_portable_path_elsewhere_keeps_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert portable_path("/data/CASME2", tmp_path / "compendium") == "/data/CASME2"
    assert portable_path(tmp_path / "compendium-other" / "x", tmp_path / "compendium") == \
        (tmp_path / "compendium-other" / "x").as_posix()  # a sibling sharing the root's prefix is not inside it


def test_portable_path_follows_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "results").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert portable_path(real / "results" / "a.csv", link) == "results/a.csv"
    assert portable_path(link / "results" / "a.csv", real) == "results/a.csv"


def absolute_strings(obj, where: str = "") -> list[tuple[str, str]]:
    """Every string in a JSON-like object that is an absolute path (or holds the machine's home or root)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += absolute_strings(value, f"{where}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found += absolute_strings(value, f"{where}/{i}")
    elif isinstance(obj, str):
        machine = [str(Path.home()), str(project_root())]
        if obj.startswith("/") or any(m in obj for m in machine):
            found.append((where, obj))
    return found


def test_shipped_checkpoint_provenance_names_no_absolute_path():
    bundle = torch.load(ROOT / "microface" / "assets" / "checkpoints" / "open_dem_dgmd.pt", map_location="cpu",
                        weights_only=True)
    meta = {key: value for key, value in bundle.items() if key not in ("dem_state", "dgmd_state")}
    assert not absolute_strings(meta), absolute_strings(meta)
    assert bundle["provenance"]["config"]["path"] == "config/cpu.yaml"
    # the shipped pair is the cpu profile's "+3D supervision" one (tests/test_shipped_checkpoint.py says why)
    assert bundle["provenance"]["dem_checkpoint"]["path"] == "results/cpu/dem/checkpoints/dem_3d.pt"
    assert bundle["provenance"]["dgmd_checkpoint"]["path"] == "results/cpu/dgmd/checkpoints/dgmd_3d.pt"


@pytest.mark.skipif(landmarker_unavailable_reason() is not None, reason=f"{landmarker_unavailable_reason()}")
def test_reconstruct_summary_names_no_absolute_path(tmp_path, monkeypatch, open_face_model):
    from microface.models.dgmd import build_dgmd
    from microface.reconstruct import pipeline as rec
    from microface.reconstruct.bundle import save_bundle
    from microface.training.dem import build_dem
    from test_reconstruct import DEM_CFG, DGMD_CFG, ENCODER, SIZE, astronaut_frames, write_video

    from microface.data.landmarks import default_task_path

    home = tmp_path / "home"  # the video, the checkpoint and the output all in the (pretend) user's home
    (home / "videos").mkdir(parents=True)
    monkeypatch.setenv("MICROFACE_ASSETS", str(default_task_path().parent))  # the real landmarker bundle
    monkeypatch.setenv("HOME", str(home))
    video = write_video(home / "videos" / "astronaut.mp4", astronaut_frames(4))
    bundle = save_bundle(home / "bundle.pt", face_model_name="open", image_size=SIZE, flow_method="dis",
                         encoder_cfg=ENCODER, dem_cfg=DEM_CFG,
                         dem_state=build_dem(open_face_model, ENCODER, DEM_CFG, seed=0).state_dict(),
                         dgmd_cfg=DGMD_CFG, dgmd_state=build_dgmd(open_face_model, DGMD_CFG, seed=0).state_dict(),
                         provenance={"config": {"path": "config/cpu.yaml"}})
    out = home / "out"
    summary = rec.reconstruct_video(video, out, checkpoint=bundle, window=4, show_progress=False)
    written = json.loads((out / "summary.json").read_text())
    assert written["video"]["path"] == summary["video"]["path"] == "~/videos/astronaut.mp4"
    assert written["checkpoint"]["path"] == "~/bundle.pt"
    assert not absolute_strings(written), absolute_strings(written)
