"""What the recognisers see (microface.experiments.mer_input_motion): motion at the prepared size against a still face."""
from __future__ import annotations

import json

import numpy as np
import pytest

from microface.experiments.mer_input_motion import COLUMNS, clip_input_motion, input_motion_table


def _clip(apex_px: float, still_px: float = 0.02, T: int = 6, onset: int = 2, apex: int = 4, size: int = 32):
    """Frames, flow and landmarks of a clip whose face moves apex_px at the apex and still_px before the onset."""
    rng = np.random.default_rng(0)
    frames = np.full((T, size, size, 3), 100, np.uint8)
    frames[apex, 8:24, 8:24] = 110  # a 10-grey-level change inside the face, none outside it
    flow = np.zeros((T, size, size, 2), np.float16)
    flow[apex, ..., 0] = apex_px
    flow[:onset, ..., 1] = still_px
    ring = np.stack([16 + 10 * np.cos(np.linspace(0, 2 * np.pi, 68)), 16 + 10 * np.sin(np.linspace(0, 2 * np.pi, 68))], -1)
    landmarks = np.repeat(ring[None], T, 0).astype(np.float32) + rng.normal(0, 0.01, (T, 68, 2)).astype(np.float32)
    return frames, flow, landmarks, onset, apex


def test_clip_measures_apex_motion_against_the_still_frames():
    frames, flow, landmarks, onset, apex = _clip(0.5)
    m = clip_input_motion(frames, flow, landmarks, onset, apex)
    assert m[COLUMNS[0]] == pytest.approx(0.5, abs=1e-3) and m[COLUMNS[1]] == pytest.approx(0.5, abs=1e-3)
    assert m[COLUMNS[2]] == pytest.approx(0.02, abs=1e-3)
    # the grey change counts only the face: the changed square covers part of the hull of radius 10
    assert 0.0 < m[COLUMNS[3]] < 10.0 and m[COLUMNS[4]] == 0.0
    with pytest.raises(ValueError, match="outside"):
        clip_input_motion(frames, flow, landmarks, 0, 9)


def test_a_clip_that_starts_at_its_onset_has_no_still_floor():
    frames, flow, landmarks, _, apex = _clip(0.5)
    m = clip_input_motion(frames, flow, landmarks, 0, apex)
    assert np.isnan(m[COLUMNS[2]]) and np.isnan(m[COLUMNS[4]])


def test_table_per_class_from_a_prepared_folder(tmp_path):
    clips = {}
    for name, label, apex_px in (("a", "happiness", 0.4), ("b", "happiness", 0.2), ("c", "surprise", 1.0),
                                 ("d", "", 5.0)):
        frames, flow, landmarks, onset, apex = _clip(apex_px)
        meta = {"record": {"label": label, "onset": onset, "apex": apex}}
        np.savez(tmp_path / f"{name}.npz", frames=frames, flow=flow, landmarks68=landmarks, meta=np.array(json.dumps(meta)))
        clips[f"synth/sub01/{name}"] = {"file": f"{name}.npz"}
    (tmp_path / "manifest.json").write_text(json.dumps({"clips": clips}))
    table = input_motion_table(tmp_path).set_index("class")
    assert list(table.index) == ["happiness", "surprise", "all"]  # the unlabelled clip is left out
    assert table.loc["happiness", "clips"] == 2 and table.loc["all", "clips"] == 3
    assert table.loc["happiness", COLUMNS[0]] == pytest.approx(0.3, abs=1e-3)
    assert table.loc["all", "apex / still flow"] == pytest.approx((1.6 / 3) / 0.02, rel=1e-2)
    with pytest.raises(FileNotFoundError, match="00_data"):
        input_motion_table(tmp_path / "missing")
