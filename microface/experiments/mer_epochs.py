"""Choosing ``mer.<model>.epochs`` on training subjects only: how fast FDP or MOL fits the clips of a set of subjects.

A model is trained on the given subjects' clips alone, with the profile's settings, and its loss and accuracy on
those same clips are recorded after every epoch; nothing else is scored. The rule the cpu profile used: the first
multiple of ``every`` epochs at which the training loss is below ``threshold`` (``first_epoch_below``).
``tools/choose_mer_epochs.py`` runs it on a profile's prepared clips and writes the curve.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["training_fit_curve", "first_epoch_below"]


def training_fit_curve(name: str, samples, config, subjects: Sequence[str], device: str = "cpu",
                       desc: str | None = None) -> pd.DataFrame:
    """Train ``name`` on the clips of ``subjects`` only; its loss and accuracy on those clips after each epoch.

    Args:
        name: a MER model ("fdp", "mol", "trajectory").
        samples: ``MERSamples`` holding at least those subjects' clips (subjects as "<dataset>/<subject>").
        config: the run's ``MERRunConfig`` (epochs, batch size, optimiser, seed, model config).
        subjects: the subjects to train on, as in ``samples.subjects`` or by their last part ("sub01").
        device: torch device.

    Returns:
        One row per epoch: epoch (1-based), loss (mean over batches), train_acc.

    Raises:
        ValueError: no clip of ``subjects`` in ``samples``.
    """
    from microface.experiments.mer import MODELS, epoch_batches, model_config_for, predict_logits
    from microface.training.loop import TrainConfig, fit
    from microface.utils.runtime import seed_everything

    wanted = set(subjects)
    idx = np.array([i for i, s in enumerate(samples.subjects) if s in wanted or s.split("/")[-1] in wanted])
    if len(idx) == 0:
        raise ValueError(f"no clip of subjects {sorted(wanted)} among {sorted(set(samples.subjects))}")
    spec = MODELS[name]
    keys = tuple(k for k in (*spec.required, *spec.optional) if k in samples.inputs)
    seed_everything(config.seed)
    model = spec.build(model_config_for(name, config, samples.class_names)).to(device)

    def epoch_end(model, epoch: int) -> dict[str, float]:
        logits = predict_logits(model, spec, samples, idx, config.eval_batch_size, device)
        return {"train_acc": float((logits.argmax(1) == samples.labels[idx]).float().mean())}

    history = fit(model, lambda m, batch: spec.loss(m, batch), epoch_batches(samples, idx, keys, config, device),
                  TrainConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                              grad_clip=config.grad_clip, seed=config.seed),
                  None, epoch_end_fn=epoch_end, desc=desc or f"{name} on {len(idx)} training clips")
    return pd.DataFrame({"epoch": [h["epoch"] + 1 for h in history], "loss": [h["loss"] for h in history],
                         "train_acc": [h["train_acc"] for h in history]})


def first_epoch_below(losses: Sequence[float], threshold: float = 0.3, every: int = 50) -> int | None:
    """The first epoch count that is a multiple of ``every`` at which the loss is below ``threshold``.

    Args:
        losses: training loss after epoch 1, 2, ... (index 0 is epoch 1).
        threshold: the loss to get under; every: the epoch counts considered (50, 100, ...).

    Returns:
        That epoch count, or None when no multiple of ``every`` within ``len(losses)`` qualifies.
    """
    if every < 1:
        raise ValueError(f"every: expected >= 1 epoch, got {every}")
    for epoch in range(every, len(losses) + 1, every):
        if losses[epoch - 1] < threshold:
            return epoch
    return None
