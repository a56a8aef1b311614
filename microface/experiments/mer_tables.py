"""Settings and tables of the recognition experiment (notebook 03_mer): each model's inputs, and its sizes and
optimiser settings as the profile's ``mer:`` section gives them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from microface.utils.io import write_text_atomic

INPUTS = {"fdp": ("clips",), "mol": ("clips", "sequence_flow", "sequence_landmarks"), "trajectory": ("trajectory",)}
# keys of a model's mapping (mer[name]) that set its run or its samples rather than its model config
RUN_KEYS = ("lr", "weight_decay", "batch_size", "epochs")
SAMPLE_KEYS = ("sampling", "crop")
# the public code's settings (CYF-cuber/FDP train.py / data.py, CYF-cuber/MOL main.py / train.py / dataset.py), laid
# over the profile's model sizes (their full-size networks do not fit the CPU profiles). Both pick, per fold, the
# epoch that scores best on the test subject: run under the "test-peek" protocol. Both use 8 frames at a stride of
# T // 8 from frame 0. MOL's AdamW is Adam with the same weight decay here (microface.training.loop's optimiser).
REFERENCE = {
    "fdp": {"lr": 1e-4, "weight_decay": 1e-3, "batch_size": 36, "sampling": "stride", "n_frames": 8,
            "image_size": 64, "in_channels": 1, "recon_weight": 100.0, "rank_weight": 0.0},
    "mol": {"lr": 1e-4, "weight_decay": 1e-3, "batch_size": 32, "sampling": "stride", "n_frames": 8,
            "crop": 128 / 144, "image_size": 128, "in_channels": 1, "mer_weight": 1.0, "flow_weight": 0.5,
            "landmark_weight": 0.5, "dropout": 0.5},
}


def _setting(mer: dict, key: str, profile: str):
    """``mer[key]``, or a KeyError naming the config file and the missing key."""
    if key not in mer:
        raise KeyError(f"config/{profile}.yaml: the mer section has no {key!r} key (found {sorted(mer)}); "
                       f"config/schema.yaml lists what it needs")
    return mer[key]


def mer_model_settings(name: str, profile: str, mer: dict, run_config: bool = False, seed: int = 0, samples=None,
                       preset: str = "default"):
    """The inputs and settings of one recognition model, read from the profile's ``mer:`` section.

    Args:
        name: "fdp", "mol" or "trajectory".
        profile: the profile's name, used only to name ``config/<profile>.yaml`` in errors.
        mer: the ``mer:`` section: epochs, n_frames, batch_size, lr, and one mapping per model (``mer[name]``:
            FDPConfig / MOLConfig / TrajectoryConfig keys, its image_size also sizing the frames; optional
            ``RUN_KEYS`` lr / weight_decay / batch_size / epochs overriding the section's, and ``SAMPLE_KEYS`` sampling
            ("uniform" by default) / crop). MOL's n_frames is the section's.
        run_config: return the MERRunConfig mapping instead of the inputs.
        seed: the run's seed (run_config only).
        samples: the loaded samples (run_config of "trajectory" only: its input width is the face model's
            expression count, ``samples.inputs["trajectory"].shape[-1]``).
        preset: "default" (the profile's settings) or "reference" (``REFERENCE[name]`` laid over them: FDP, MOL).

    Returns:
        Either (input names, ``samples_from_prepared`` kwargs) or, with run_config, the MERRunConfig mapping
        {epochs, batch_size, lr, weight_decay, seed, model}.
    """
    if name not in INPUTS:
        raise ValueError(f"unknown MER model {name!r}: expected one of {', '.join(INPUTS)}")
    if preset not in ("default", "reference") or (preset == "reference" and name not in REFERENCE):
        raise ValueError(f"preset {preset!r}: expected 'default', or 'reference' for {sorted(REFERENCE)}")
    size = dict(_setting(mer, name, profile))
    n_frames = int(_setting(mer, "n_frames", profile))
    if name == "mol":
        size["n_frames"] = n_frames
    if preset == "reference":
        size.update(REFERENCE[name])
        n_frames = int(size["n_frames"])
    run = {key: size.pop(key) for key in RUN_KEYS if key in size}
    sample = {key: size.pop(key) for key in SAMPLE_KEYS if key in size}
    if name != "mol":
        size.pop("n_frames", None)
    if run_config:
        if name == "trajectory":
            if samples is None:
                raise ValueError("the trajectory classifier's settings need the samples (for n_expression)")
            size["n_expression"] = int(samples.inputs["trajectory"].shape[-1])
        return dict(epochs=int(run.get("epochs", _setting(mer, "epochs", profile))),
                    batch_size=int(run.get("batch_size", _setting(mer, "batch_size", profile))),
                    lr=float(run.get("lr", _setting(mer, "lr", profile))),
                    weight_decay=float(run.get("weight_decay", 0.0)), seed=seed, model=size)
    # the trajectory upper bound reads ground truth at the annotated key frames; FDP and MOL never see the annotation
    sampling = "keyframes" if name == "trajectory" else sample.get("sampling", "uniform")
    kwargs = dict(n_frames=n_frames, image_size=size.get("image_size"), gray=size.get("in_channels", 1) == 1,
                  sampling=sampling, crop=float(sample.get("crop", 1.0)))
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
