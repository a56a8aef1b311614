"""Shared fixtures: the open face model (built once per session), the device option, the offline landmarker, and a
tiny trained chain (synthetic benchmark -> notebook 01 -> notebook 02) for the drivers of notebooks 04 and 05.

``--device cpu`` (default) or ``--device cuda``: tests that take the ``device`` fixture run on that device
(kornia style: the same test on CPU in CI and on a GPU where there is one); ``--device all`` runs them on both.
A CUDA case skips, with its reason, when torch sees no GPU.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from microface.face.open_model import OpenFaceModel

DEVICES = ("cpu", "cuda", "all")


def pytest_addoption(parser) -> None:
    parser.addoption("--device", default="cpu", choices=DEVICES,
                     help="device for tests that take the `device` fixture: cpu (default), cuda, or all (both)")


def pytest_generate_tests(metafunc) -> None:
    if "device" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--device")
    names = ("cpu", "cuda") if chosen == "all" else (chosen,)
    params = []
    for name in names:
        marks = []
        if name == "cuda" and not torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason="--device cuda: torch sees no CUDA GPU on this machine"))
        params.append(pytest.param(torch.device(name), id=name, marks=marks))
    metafunc.parametrize("device", params)


@pytest.fixture(scope="session")
def open_face_model() -> OpenFaceModel:
    """The embedded open face model (CPU, float32), built once. Treat it as read-only: a test that needs it on
    another device or dtype takes ``face_model_on`` or a ``copy.deepcopy``."""
    return OpenFaceModel()


@pytest.fixture
def face_model_on(open_face_model, device) -> OpenFaceModel:
    """The open face model on the test's ``device`` (a copy unless the device is the CPU)."""
    if device.type == "cpu":
        return open_face_model
    return copy.deepcopy(open_face_model).to(device)


@pytest.fixture(scope="session")
def face_landmarker():
    """The offline MediaPipe face landmarker, opened once; skips (with the reason) when its bundle is not built."""
    from microface.data.landmarks import FaceLandmarker, landmarker_unavailable_reason

    reason = landmarker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with FaceLandmarker() as landmarker:
        yield landmarker


# ------------------------------------------------------------------------- a tiny trained chain (notebooks 00-02)
# Four subjects (one ME and one macro clip each), the last two held out: notebook 04 scores recognition by LOSO
# over the TEST subjects, which needs at least two of them. Sizes are the smallest that run every path.
TINY_DEM = {
    "max_frames": 4, "test_fraction": 0.5, "pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 2,
    "encoder": {"channels": [8, 8], "hidden": 16},
    "model": {"code_dim": 17, "motion_dim": 8, "hidden": 16, "static_channels": [8], "motion_channels": [8],
              "solver": "rk4", "step_size": 0.25},
}
TINY_DGMD = {"moving_threshold_mm": 0.1,
             "model": {"hidden": 8, "gcn_layers": 1, "gate_floor_px": 0.05, "temporal_rank": 1, "flow_affine_free": True},
             "train": {"epochs": 1, "batch_size": 4}}
TINY_EVALUATE = {"fields": {"step1_epochs": 1, "step2_epochs": 1}, "emotion_hidden": 8,
                 "recognition": {"epochs": 1, "batch_size": 4}, "image_batch_size": 8}
TINY_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> dict:
    """A trained tiny chain: {"synth", "coarse_dir", "refine_dir"} paths and the settings it was trained with
    ("dem", "dgmd", "evaluate", "image_size"). Built once per session (about 30 s on 2 cores)."""
    from microface.data.synth import config_for_profile, generate
    from microface.experiments.coarse import run_coarse_benchmark
    from microface.experiments.refine import run_refine_benchmark

    root = tmp_path_factory.mktemp("tiny_chain")
    config = config_for_profile("smoke", subjects=4, clips=1, macro_clips=1, image_size=48,
                                micro_duration_s=(0.05, 0.07), macro_duration_s=(0.3, 0.4))
    synth = generate(root / "synth", config, show_progress=False)
    run_coarse_benchmark(synth, root / "dem", TINY_DEM, seed=0, image_size=TINY_IMAGE_SIZE, show_progress=False)
    run_refine_benchmark(synth, root / "dem", root / "dgmd", TINY_DEM, TINY_DGMD, seed=0,
                         image_size=TINY_IMAGE_SIZE, show_progress=False)
    return {"synth": Path(synth), "coarse_dir": root / "dem", "refine_dir": root / "dgmd", "dem": TINY_DEM,
            "dgmd": TINY_DGMD, "evaluate": TINY_EVALUATE, "image_size": TINY_IMAGE_SIZE}
