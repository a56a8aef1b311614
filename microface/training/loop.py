"""One training loop for every model and notebook: seeding, progress bar, checkpoints, resume.

The loop knows nothing about models: callers pass a ``step_fn`` that returns a dict of scalar tensors with
a ``"loss"`` entry, and a ``batches_fn(epoch)`` that yields the epoch's batches (so data order can be
seeded per epoch and a resumed run sees exactly the batches an uninterrupted run would have seen).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from microface.utils.io import atomic_torch_save
from microface.utils.runtime import progress, seed_everything


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; stored in every checkpoint and checked on resume."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    grad_clip: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int,
                    history: list[dict], config: TrainConfig) -> None:
    """Write model + optimizer + RNG states after ``epoch`` (0-based, completed) atomically."""
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "epoch": epoch,
            "history": history,
            "config": asdict(config),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        },
        path,
    )


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` into ``model`` (and ``optimizer``); return its dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train it first (see the README's snakemake command)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path} could not be read ({err}); delete it and train again") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a microface checkpoint (no 'model' entry)")
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def fit(
    model: nn.Module,
    step_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
    batches_fn: Callable[[int], Iterable[Any]],
    config: TrainConfig,
    checkpoint_path: Path | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    epoch_end_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs; resume from ``checkpoint_path`` when it exists.

    step_fn(model, batch) -> {"loss": scalar tensor, other scalars...}; the loop backpropagates "loss".
    batches_fn(epoch) -> iterable of batches for that epoch (seed its order with the epoch number).
    epoch_end_fn(model, epoch) -> extra scalars logged in the history (e.g. a validation metric on training
        subjects only: the loop never sees test data).
    Returns the history: one dict of mean scalars per epoch.
    """
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    seed_everything(config.seed)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path, model, optimizer)
        if state.get("config") != asdict(config):
            raise ValueError(
                f"checkpoint {checkpoint_path} was written with a different config; "
                f"delete it or change the output folder (found {state.get('config')}, asked {asdict(config)})"
            )
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        rng = state.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
    for epoch in progress(range(start_epoch, config.epochs), desc=desc, initial=start_epoch, total=config.epochs):
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in batches_fn(epoch):
            optimizer.zero_grad(set_to_none=True)
            scalars = step_fn(model, batch)
            loss = scalars["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at epoch {epoch}: {float(loss)}")
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            for name, value in scalars.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            n_batches += 1
        if n_batches == 0:
            raise ValueError(f"{desc}: epoch {epoch} produced no batches")
        record = {name: total / n_batches for name, total in sums.items()}
        record["epoch"] = epoch
        if epoch_end_fn is not None:
            model.eval()
            record.update(epoch_end_fn(model, epoch))
        history.append(record)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, epoch, history, config)
    model.eval()
    return history


