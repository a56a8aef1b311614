"""The ablation table of notebook 05 (``run_ablations``) end to end on the tiny trained chain of ``conftest.py``.

The settings follow ``config/smoke.yaml``'s ``ablations:`` section (DEM loss term ``landmark``, no image metrics),
with one DGMD loss term instead of six and recognition off (the main-table test covers it) to keep the run short.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from microface.experiments.ablations import TABLE_NAME, dem_without_motion, dem_without_ode, run_ablations
from microface.experiments.refine import METHOD_COARSE

SETTINGS = {"dem_loss_terms": ["landmark"], "dgmd_loss_terms": ["flow"], "image_metrics": False,
            "recognition": False}
EXPECTED_ROWS = [
    ("-", "full model (DEM + DGMD)"),
    ("model", "w/o DEM (baseline-FT + DGMD)"),
    ("model", "w/o DGMD (DEM)"),
    ("model", "w/o macro pretraining"),
    ("DEM part", "DEM w/o Neural ODE (residual-fusion codes)"),
    ("DEM part", "DEM w/o motion (onset code on every frame)"),
    ("cue", "DGMD w/o geometry cue"),
    ("cue", "DGMD w/o landmarks cue"),
    ("cue", "DGMD w/o flow cue"),
    ("attention", "DGMD w/o motion attention"),
    ("denoising", "DGMD w/o temporal flow denoising"),  # the tiny DGMD has temporal_rank 1
    ("denoising", "DGMD w/o affine-free flow cues"),  # and flow_affine_free, as the profiles do
    ("mapping", "DGMD per-pixel mapping (not region-based)"),
    ("DGMD loss", "DGMD loss w/o flow"),
    ("DEM loss", "DEM loss w/o landmark"),
    ("landmarks", "oracle landmarks"),  # DEM + DGMD retrained and scored on the ground-truth landmarks
]


def test_run_ablations_writes_every_row(tiny_chain, tmp_path):
    out = tmp_path / "ablations"
    table = run_ablations(tiny_chain["synth"], tiny_chain["coarse_dir"], tiny_chain["refine_dir"], out,
                          tiny_chain["dem"], tiny_chain["dgmd"], tiny_chain["evaluate"], SETTINGS, seed=0,
                          image_size=tiny_chain["image_size"], show_progress=False)
    assert list(zip(table["group"], table["method"])) == EXPECTED_ROWS
    written = pd.read_csv(out / f"{TABLE_NAME}.csv")
    assert list(written["method"]) == [name for _, name in EXPECTED_ROWS]
    assert (out / f"{TABLE_NAME}.md").is_file() and (out / "per_clip.csv").is_file()
    assert "fid" not in table.columns and "mer_acc" not in table.columns  # image metrics and recognition off
    errors = table[["all_apex_mm", "all_clip_mm", "delta_all_apex_mm"]].to_numpy(dtype=float)
    assert np.isfinite(errors).all() and (table["all_apex_mm"] > 0).all()
    assert table["delta_all_apex_mm"].iloc[0] == 0.0
    np.testing.assert_allclose(table["delta_all_apex_mm"], table["all_apex_mm"] - table["all_apex_mm"].iloc[0])

    # "w/o DGMD" is notebook 01's DEM, scored on the same test clips as notebook 02's DEM row
    refine = pd.read_csv(tiny_chain["refine_dir"] / "refine_table.csv").set_index("method")
    rows = table.set_index("method")
    assert math.isclose(rows.loc["w/o DGMD (DEM)", "all_apex_mm"], refine.loc[METHOD_COARSE, "all_apex_mm"],
                        rel_tol=1e-4)
    # only what an ablation changes was retrained, each into its own resumable checkpoint
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert "dem_without_landmark.pt" in checkpoints and "dgmd_without_loss_flow.pt" in checkpoints
    assert {"dem_oracle_landmarks_pretrain.pt", "dem_oracle_landmarks.pt", "dgmd_oracle_landmarks.pt"} <= set(checkpoints)
    # the tiny chain's DEM and DGMD read detected landmarks; the oracle row's, the ground truth's: other models
    assert rows.loc["oracle landmarks", "all_apex_mm"] != rows.loc["full model (DEM + DGMD)", "all_apex_mm"]
    assert not any(name.startswith(("dem.pt", "dgmd.pt")) for name in checkpoints)


def test_dem_part_ablations_change_only_that_part():
    """Without the ODE: the same DEM's fusion codes; without motion: the onset code on every frame, exactly; the
    trained DEM itself is left as it was."""
    import torch

    try:
        from tests.test_encoder_dem import clip_inputs, make_dem
    except ImportError:  # tests/ is on sys.path under pytest's default import mode
        from test_encoder_dem import clip_inputs, make_dem

    dem = make_dem(solver="rk4", step_size=0.1).eval()
    with torch.no_grad():
        dem.fusion.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
        dem.vector_field.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(2))
        images, flow, times = clip_inputs(2)
        full = dem(images, flow, times)
        no_ode = dem_without_ode(dem)(images, flow, times)
        still = dem_without_motion(dem)(images, flow, times)
    assert torch.equal(no_ode.code, full.frame_code) and not torch.equal(full.code, full.frame_code)
    assert torch.equal(still.code, still.z0[:, None].expand_as(still.code))
    assert not torch.equal(still.code, full.code) and dem.config.temporal == "ode"
    assert torch.equal(dem(images, flow, times).code, full.code)


def test_run_ablations_rejects_unknown_loss_terms(tiny_chain, tmp_path):
    with pytest.raises(ValueError, match="dgmd_loss_terms"):
        run_ablations(tiny_chain["synth"], tiny_chain["coarse_dir"], tiny_chain["refine_dir"], tmp_path / "a",
                      tiny_chain["dem"], tiny_chain["dgmd"], tiny_chain["evaluate"],
                      {**SETTINGS, "dgmd_loss_terms": ["flo"]}, image_size=tiny_chain["image_size"],
                      show_progress=False)


@pytest.mark.parametrize("section, term, weights_key", [("dgmd_loss_terms", "vertex", "dgmd.train.weights"),
                                                         ("dem_loss_terms", "param", "dem.weights")])
def test_run_ablations_refuses_terms_that_already_weigh_zero(tmp_path, section, term, weights_key):
    # the main models are self-supervised: the 3D-truth terms weigh 0, so "w/o" them would be the full model.
    # The refusal comes first: the (absent) benchmark and notebooks 01 / 02 are never read.
    from tests.conftest import TINY_DEM, TINY_DGMD, TINY_EVALUATE

    with pytest.raises(ValueError, match=f"ablations.{section}: \\['{term}'\\] already weigh 0 in {weights_key}"):
        run_ablations(tmp_path / "synth", tmp_path / "dem", tmp_path / "dgmd", tmp_path / "a", TINY_DEM, TINY_DGMD,
                      TINY_EVALUATE, {**SETTINGS, section: [term]}, show_progress=False)
    assert not (tmp_path / "a").exists()  # refused before anything was written or trained
