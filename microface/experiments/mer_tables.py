"""Settings and tables of the recognition experiment (notebook 03_mer): each model's inputs, and its sizes and
optimiser settings as the profile's ``mer:`` section gives them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from microface.utils.io import write_text_atomic

INPUTS = {"fdp": ("clips",), "mol": ("pair", "flow", "landmarks"), "trajectory": ("trajectory",)}


def _setting(mer: dict, key: str, profile: str):
    """``mer[key]``, or a KeyError naming the config file and the missing key."""
    if key not in mer:
        raise KeyError(f"config/{profile}.yaml: the mer section has no {key!r} key (found {sorted(mer)}); "
                       f"config/schema.yaml lists what it needs")
    return mer[key]


def mer_model_settings(name: str, profile: str, mer: dict, run_config: bool = False, seed: int = 0, samples=None):
    """The inputs and settings of one recognition model, read from the profile's ``mer:`` section.

    Args:
        name: "fdp", "mol" or "trajectory".
        profile: the profile's name, used only to name ``config/<profile>.yaml`` in errors.
        mer: the ``mer:`` section: epochs, n_frames, batch_size, lr, and one mapping of model sizes per model
            (``mer[name]``: FDPConfig / MOLConfig / TrajectoryConfig keys; its image_size also sizes the frames).
        run_config: return the MERRunConfig mapping instead of the inputs.
        seed: the run's seed (run_config only).
        samples: the loaded samples (run_config of "trajectory" only: its input width is the face model's
            expression count, ``samples.inputs["trajectory"].shape[-1]``).

    Returns:
        Either (input names, ``samples_from_prepared`` kwargs) or, with run_config, the MERRunConfig mapping
        {epochs, batch_size, lr, seed, model}.
    """
    if name not in INPUTS:
        raise ValueError(f"unknown MER model {name!r}: expected one of {', '.join(INPUTS)}")
    size = dict(_setting(mer, name, profile))
    if run_config:
        if name == "trajectory":
            if samples is None:
                raise ValueError("the trajectory classifier's settings need the samples (for n_expression)")
            size["n_expression"] = int(samples.inputs["trajectory"].shape[-1])
        return dict(epochs=int(_setting(mer, "epochs", profile)), batch_size=int(_setting(mer, "batch_size", profile)),
                    lr=float(_setting(mer, "lr", profile)), seed=seed, model=size)
    kwargs = dict(n_frames=int(_setting(mer, "n_frames", profile)), image_size=size.get("image_size"), gray=True)
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
