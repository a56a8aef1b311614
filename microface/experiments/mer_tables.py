"""Settings and tables of the recognition experiment (notebook 03_mer): which inputs and model size per profile."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from microface.utils.io import write_text_atomic

# Model sizes per profile: small enough for 2 CPU cores in `smoke` and `cpu`, paper scale on GPU nodes.
MODEL_SIZES = {
    "fdp": {
        "smoke": dict(image_size=64, dims=[8, 16], depths=[1, 1], heads=[1, 2], sr_ratios=[2, 1], decoder_dim=16),
        "cpu": dict(image_size=64, dims=[16, 32, 64], depths=[1, 1, 1], heads=[1, 2, 4], sr_ratios=[4, 2, 1]),
        "full": dict(image_size=224, dims=[64, 128, 320, 512], depths=[2, 2, 2, 2], heads=[1, 2, 5, 8],
                     sr_ratios=[8, 4, 2, 1]),
    },
    "mol": {
        "smoke": dict(image_size=64, stem_channels=[8, 16], knn_k=2),
        "cpu": dict(image_size=64, stem_channels=[16, 32, 32], knn_k=4),
        "full": dict(image_size=128, stem_channels=[32, 64, 128], n_blocks=2),
    },
    "trajectory": {
        "smoke": dict(hidden=16, layers=1),
        "cpu": dict(hidden=64, layers=2),
        "full": dict(hidden=128, layers=3),
    },
}
INPUTS = {"fdp": ("clips",), "mol": ("pair", "flow", "landmarks"), "trajectory": ("trajectory",)}


def mer_model_settings(name: str, profile: str, mer: dict, run_config: bool = False, seed: int = 0, samples=None):
    """Either (inputs, samples_from_prepared kwargs) or, with run_config, the MERRunConfig mapping
    (the trajectory classifier then needs ``samples`` to size its input to the face model's expression count)."""
    if name not in MODEL_SIZES:
        raise ValueError(f"unknown MER model {name!r}: expected one of {', '.join(MODEL_SIZES)}")
    size = dict(MODEL_SIZES[name][profile])
    if run_config:
        batch = 8 if profile == "smoke" else 16
        if name == "trajectory":
            if samples is None:
                raise ValueError("the trajectory classifier's settings need the samples (for n_expression)")
            size["n_expression"] = int(samples.inputs["trajectory"].shape[-1])
        return dict(epochs=int(mer["epochs"]), batch_size=batch, lr=1e-3, seed=seed, model=size)
    image_size = size.get("image_size")
    kwargs = dict(n_frames=int(mer["n_frames"]), image_size=image_size, gray=True)
    return INPUTS[name], kwargs


def chance_level(samples) -> dict[str, float]:
    """Chance scores for the samples' labels: ACC of always predicting the majority class, UF1/UAR of a uniform guess."""
    labels = np.asarray(samples.labels)
    counts = np.bincount(labels, minlength=len(samples.class_names))
    return {"acc_majority": float(counts.max() / counts.sum()), "uar_uniform": 1.0 / len(samples.class_names),
            "n_classes": len(samples.class_names)}


TIMING_COLUMNS = ("seconds", "train_s_per_fold")


def write_mer_table(table: pd.DataFrame, chance: dict, path: str | Path) -> pd.DataFrame:
    """Add the chance level beside the scores and write CSV + Markdown atomically; wall-clock columns
    (``TIMING_COLUMNS``) go to ``<stem>_timings.csv`` instead, so two runs of one config give identical tables.
    -> the table written plus its timing columns (for display)."""
    path = Path(path)
    table = table.assign(chance_acc=round(chance["acc_majority"], 4), chance_uar=round(chance["uar_uniform"], 4))
    timing = [c for c in TIMING_COLUMNS if c in table.columns]
    scores = table.drop(columns=timing)
    write_text_atomic(scores.to_csv(index=False), path)
    write_text_atomic(scores.to_markdown(index=False), path.with_suffix(".md"))
    if timing:
        keys = [c for c in ("protocol", "model", "group") if c in table.columns]
        write_text_atomic(table[keys + timing].to_csv(index=False), path.with_name(f"{path.stem}_timings.csv"))
    return table
