"""Leave-one-subject-out (LOSO) training and evaluation of the MER models (FDP, MOL, trajectory classifier).

``run_loso(model_name, samples, config, out_dir, protocol="fixed-epoch")`` trains one model per fold with
:func:`microface.training.loop.fit` (seeded, checkpointed, resumable), predicts the held-out subject, pools the
predictions over folds and scores them with :mod:`microface.metrics.recognition`. Folds and the epoch-selection protocols
come from :mod:`microface.data.folds`:

- "fixed-epoch" (default): train ``epochs`` epochs and report the last; the test subject is touched only
  once, after training.
- "test-peek": evaluate the test subject after every epoch and report its best epoch, as FDP's and MOL's
  public code do (a leak of test labels into model selection). Only when asked by name; every table carries
  its protocol.

Outputs, under ``out_dir/<model>/<protocol>/`` (each written to a temporary file, then renamed):
``predictions.csv`` (one row per clip), ``folds.csv`` (per fold: sizes, selected epoch, training seconds),
``metrics.csv`` (ACC/UF1/UAR/WF1 per source dataset and pooled over all), ``confusion.csv``, ``run.json``;
per fold, ``folds/<subject>.json`` (its prediction rows and fold row: :func:`run_loso_fold`, which the workflow
runs as one job per fold, writes it and :func:`run_loso` reads it back instead of training again), checkpoints in
``checkpoints/<subject>.pt`` (an interrupted run resumes from them) and, under test-peek, the per-epoch test logits
in ``peek/<subject>/epoch_XXXX.pt``.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from microface.data.folds import check_protocol, label_table, loso_folds, select_epoch
from microface.experiments.mer_plan import (PROTOCOL, REFERENCE_DIR, REFERENCE_PROTOCOL, fold_file_name, fold_path,
                                            mer_models)
from microface.experiments.report import NotebookReport
from microface.metrics.recognition import confusion_table, mer_breakdown, mer_scores
from microface.models.fdp import FDP, FDPConfig, fdp_loss
from microface.models.mol import MOL, MOLConfig, mol_loss
from microface.models.trajectory import TrajectoryClassifier, TrajectoryConfig, trajectory_loss
from microface.training.loop import TrainConfig, fit
from microface.utils.checks import config_from_dict
from microface.utils.io import (atomic_torch_save, write_bytes_atomic, write_csv_atomic, write_json_atomic,
                                write_text_atomic)
from microface.utils.runtime import progress, seed_everything

# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class MERSamples:
    """The clips a LOSO run sees, as tensors (N clips).

    inputs: name -> tensor with N first. Keys the models read:
        "clips" (N, T, C, H, W) frames in time order (FDP, MOL), with MOL's optional targets "sequence_flow"
        (N, T-1, 2, H, W) flow t -> t+1 of consecutive sampled frames in pixels of its grid and
        "sequence_landmarks" (N, T, 68, 2) landmarks of every sampled frame in pixels of the frames;
        "trajectory" (N, T, E) expression parameters per frame (trajectory classifier).
    labels: (N,) long, indices into ``class_names``.
    subjects, datasets, clip_ids: N strings each; subjects should be unique across datasets (e.g. "casme2/sub01").
    class_names: the fixed label order (K,), e.g. ("negative", "positive", "surprise").
    """

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    subjects: list[str]
    datasets: list[str]
    clip_ids: list[str]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        self.class_names = tuple(self.class_names)
        n = self.labels.shape[0]
        if self.labels.ndim != 1:
            raise ValueError(f"labels: expected (N,), got {tuple(self.labels.shape)}")
        for name, values in (("subjects", self.subjects), ("datasets", self.datasets), ("clip_ids", self.clip_ids)):
            if len(values) != n:
                raise ValueError(f"{name}: expected {n} entries (one per label), got {len(values)}")
        for name, tensor in self.inputs.items():
            if not isinstance(tensor, torch.Tensor) or tensor.ndim < 1 or tensor.shape[0] != n:
                found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"inputs[{name!r}]: expected a tensor with {n} rows first, got {found}")
        if len(set(self.class_names)) != len(self.class_names) or len(self.class_names) < 2:
            raise ValueError(f"class_names: expected >= 2 distinct names, got {self.class_names}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise ValueError(
                f"labels must index class_names (0..{len(self.class_names) - 1}), found {int(self.labels.min())}.."
                f"{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray | torch.Tensor, keys: Sequence[str], device: torch.device | str = "cpu"
              ) -> dict[str, torch.Tensor]:
        """Rows ``indices`` of the inputs named ``keys`` plus "labels", moved to ``device``."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        out = {key: self.inputs[key][idx].to(device) for key in keys}
        out["labels"] = self.labels[idx].to(device)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelSpec:
    """How the driver builds, trains and queries one model.

    build(model_config dict) -> nn.Module; required / optional: input keys (see MERSamples);
    loss(model, batch) -> {"loss", ...} scalars; logits(model, batch) -> (B, K).
    """

    build: Callable[[Mapping[str, Any]], nn.Module]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    loss: Callable[[nn.Module, dict], dict[str, torch.Tensor]]
    logits: Callable[[nn.Module, dict], torch.Tensor]


def _fdp_loss(model: FDP, batch: dict) -> dict[str, torch.Tensor]:
    return fdp_loss(model(batch["clips"]), batch["clips"], batch["labels"], model.config)


def _mol_loss(model: MOL, batch: dict) -> dict[str, torch.Tensor]:
    return mol_loss(model(batch["clips"]), batch["labels"], model.config, batch.get("sequence_flow"),
                    batch.get("sequence_landmarks"))


MODELS: dict[str, ModelSpec] = {
    "fdp": ModelSpec(
        build=lambda cfg: FDP(FDPConfig.from_dict(cfg)),
        required=("clips",), optional=(),
        loss=_fdp_loss,
        logits=lambda model, batch: model(batch["clips"]).logits,
    ),
    "mol": ModelSpec(
        build=lambda cfg: MOL(MOLConfig.from_dict(cfg)),
        required=("clips",), optional=("sequence_flow", "sequence_landmarks"),
        loss=_mol_loss,
        logits=lambda model, batch: model(batch["clips"]).logits,
    ),
    "trajectory": ModelSpec(
        build=lambda cfg: TrajectoryClassifier(TrajectoryConfig.from_dict(cfg)),
        required=("trajectory",), optional=(),
        loss=lambda model, batch: trajectory_loss(model(batch["trajectory"]), batch["labels"]),
        logits=lambda model, batch: model(batch["trajectory"]),
    ),
}


@dataclass(frozen=True)
class MERRunConfig:
    """One LOSO run: optimisation settings shared by every fold, and the model's own config.

    epochs (>= 1), batch_size, eval_batch_size, lr, weight_decay, grad_clip (None for none), seed: as in
    TrainConfig; the model is initialised from ``seed`` in every fold, and epoch e's batch order from
    ``(seed, e)``. model: the model config mapping (FDPConfig / MOLConfig / TrajectoryConfig keys); its
    n_classes, when absent, is taken from the samples' class names.
    """

    epochs: int = 10
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    model: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"MER run config: epochs, batch_size, eval_batch_size must be >= 1, got "
                f"{self.epochs}, {self.batch_size}, {self.eval_batch_size}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "MERRunConfig":
        return config_from_dict(cls, values, "MER run")


def model_config_for(spec_name: str, config: MERRunConfig, class_names: Sequence[str]) -> dict[str, Any]:
    """The model config with ``n_classes`` filled from ``class_names`` (checked when given)."""
    model_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config.model).items()}
    n_classes = len(class_names)
    if model_cfg.setdefault("n_classes", n_classes) != n_classes:
        raise ValueError(f"{spec_name} config: n_classes={model_cfg['n_classes']} but the samples have "
                         f"{n_classes} classes {tuple(class_names)}")
    return model_cfg


# ----------------------------------------------------------------------------------------------------------------
# LOSO


@dataclass
class LOSOResult:
    """Tables of one LOSO run (all carry a ``protocol`` column) and the folder they were written to.

    predictions: one row per clip; folds: one row per fold; metrics: one row per source dataset + "all";
    confusion: (K, K) pooled counts, truth x prediction.
    """

    protocol: str
    predictions: pd.DataFrame
    folds: pd.DataFrame
    metrics: pd.DataFrame
    confusion: pd.DataFrame
    out_dir: Path


@torch.no_grad()
def predict_logits(model: nn.Module, spec: ModelSpec, samples: MERSamples, indices: np.ndarray,
                   batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Logits ``(len(indices), K)`` of ``model`` in eval mode, on CPU (no autograd graph)."""
    model.eval()
    keys = [k for k in spec.required]
    with torch.no_grad():
        chunks = [spec.logits(model, samples.batch(indices[i:i + batch_size], keys, device)).float().cpu()
                  for i in range(0, len(indices), batch_size)]
    return torch.cat(chunks)


def _check_inputs(model_name: str, spec: ModelSpec, samples: MERSamples) -> tuple[str, ...]:
    missing = [k for k in spec.required if k not in samples.inputs]
    if missing:
        raise ValueError(f"model {model_name!r} needs samples.inputs {list(spec.required)}; missing {missing} "
                         f"(found {sorted(samples.inputs)})")
    return spec.required + tuple(k for k in spec.optional if k in samples.inputs)


def _loso_setup(model_name: str, samples: MERSamples, config: MERRunConfig | Mapping[str, Any], protocol: str
                ) -> tuple[ModelSpec, MERRunConfig, tuple[str, ...], dict, list]:
    """The checks and settings shared by :func:`run_loso` and :func:`run_loso_fold`.

    Returns:
        (model spec, run config, input keys, model config with n_classes, LOSO folds in natural subject order).
    """
    if model_name not in MODELS:
        raise ValueError(f"model_name must be one of {sorted(MODELS)}, got {model_name!r}")
    check_protocol(protocol)
    spec = MODELS[model_name]
    config = config if isinstance(config, MERRunConfig) else MERRunConfig.from_dict(config)
    keys = _check_inputs(model_name, spec, samples)
    model_cfg = model_config_for(model_name, config, samples.class_names)
    folds = loso_folds(samples.subjects)
    file_names = [fold_file_name(fold.test_subject) for fold in folds]
    if len(set(file_names)) != len(file_names):
        raise ValueError(f"subjects {[f.test_subject for f in folds]} collide as file names {file_names}; rename them")
    return spec, config, keys, model_cfg, folds


def run_loso(model_name: str, samples: MERSamples, config: MERRunConfig | Mapping[str, Any], out_dir: Path | str,
             protocol: str = "fixed-epoch", device: torch.device | str = "cpu") -> LOSOResult:
    """Train and test ``model_name`` ("fdp", "mol" or "trajectory") over LOSO folds of ``samples``.

    config: MERRunConfig or its mapping. protocol: "fixed-epoch" (default) or "test-peek" (reproduces the
    published code's best-epoch-on-test selection; labelled everywhere). Returns the pooled tables, also
    written under ``out_dir/<model_name>/<protocol>/``. A fold whose file :func:`run_loso_fold` already wrote
    (e.g. as a workflow job of its own) is read back, not trained again; the others are trained here, in turn.
    Rerunning with the same arguments resumes from the per-fold files and checkpoints; a changed config raises
    rather than mixing runs.
    """
    spec, config, keys, model_cfg, folds = _loso_setup(model_name, samples, config, protocol)
    run_dir = Path(out_dir) / model_name / protocol
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"model": model_name, "protocol": protocol, "config": asdict(config) | {"model": model_cfg},
                       "n_clips": len(samples), "class_names": list(samples.class_names)}, run_dir / "run.json")
    prediction_rows, fold_rows = [], []
    for fold in progress(folds, desc=f"{model_name} LOSO ({protocol})", unit="fold"):
        rows, fold_row = _fold_rows(model_name, spec, samples, fold, config, model_cfg, keys, protocol, out_dir, device)
        prediction_rows += rows
        fold_rows.append(fold_row)

    class_names = list(samples.class_names)
    predictions = label_table(pd.DataFrame(prediction_rows), protocol)
    fold_table = label_table(pd.DataFrame(fold_rows), protocol)
    metrics = mer_breakdown(predictions["truth"].to_numpy(), predictions["predicted"].to_numpy(),
                            predictions["dataset"].to_numpy(), class_names)
    metrics.insert(0, "model", model_name)
    metrics = label_table(metrics, protocol)
    scores = mer_scores(predictions["truth"].to_numpy(), predictions["predicted"].to_numpy(), class_names)
    confusion = label_table(confusion_table(scores).reset_index(), protocol)
    write_csv_atomic(predictions, run_dir / "predictions.csv")
    write_csv_atomic(fold_table, run_dir / "folds.csv")
    write_csv_atomic(metrics, run_dir / "metrics.csv")
    write_csv_atomic(confusion, run_dir / "confusion.csv")
    return LOSOResult(protocol, predictions, fold_table, metrics, confusion, run_dir)


LEARNING_CURVE_KEYS = ("epoch", "loss", "train_acc")


def learning_curves(run_dir: Path | str) -> pd.DataFrame:
    """The training subjects' learning curve of one LOSO run, averaged over its folds: per epoch, the training loss
    and the accuracy on the fold's own training clips (never a test clip).

    Args:
        run_dir: ``<out_dir>/<model>/<protocol>`` (its ``folds/*.json``, written by ``run_loso`` / ``run_loso_fold``).

    Returns:
        One row per epoch: ``epoch``, ``train_loss`` and ``train_acc`` (means over folds), ``n_folds``; empty when
        no fold file holds a curve (fold files written before curves were recorded).
    """
    records = []
    for path in sorted(Path(run_dir, "folds").glob("*.json")):
        records += json.loads(path.read_text(encoding="utf-8")).get("learning_curve", [])
    if not records:
        return pd.DataFrame(columns=["epoch", "train_loss", "train_acc", "n_folds"])
    frame = pd.DataFrame(records).astype({"epoch": int})
    curve = frame.groupby("epoch").agg(train_loss=("loss", "mean"), train_acc=("train_acc", "mean"),
                                       n_folds=("loss", "size"))
    return curve.reset_index()


def run_loso_fold(model_name: str, samples: MERSamples, config: MERRunConfig | Mapping[str, Any],
                  out_dir: Path | str, test_subject: str, protocol: str = "fixed-epoch",
                  device: torch.device | str = "cpu") -> Path:
    """Train and test ONE fold of :func:`run_loso`: ``test_subject`` held out, the other subjects trained on.

    A fold's numbers do not depend on the folds run before it: each fold seeds its model's initialisation and
    training from ``config.seed`` (and epoch e's batch order from ``(seed, e)``), so this gives the very rows
    :func:`run_loso` computes for that fold inside its loop, and run_loso reads the file back instead.

    Args:
        model_name, samples, config, out_dir, protocol, device: as for :func:`run_loso` (the same samples: a fold's
            training set is every other subject's clips).
        test_subject: the held-out subject, its id (``"synth/sub01"``) or its file name (``"synth_sub01"``).

    Returns:
        The fold file written, ``out_dir/<model_name>/<protocol>/folds/<subject>.json``: the config and test clips
        it was made for, its prediction rows (one per test clip) and its fold row. An existing file made with
        this config for these clips is kept as it is.
    """
    spec, config, keys, model_cfg, folds = _loso_setup(model_name, samples, config, protocol)
    chosen = [fold for fold in folds if test_subject in (fold.test_subject, fold_file_name(fold.test_subject))]
    if not chosen:
        raise ValueError(f"test_subject {test_subject!r} is none of the samples' subjects "
                         f"{[fold.test_subject for fold in folds]} (nor their file names)")
    _fold_rows(model_name, spec, samples, chosen[0], config, model_cfg, keys, protocol, out_dir, device)
    return fold_path(out_dir, model_name, protocol, chosen[0].test_subject)


def _train_config(model_name: str, fold, config: MERRunConfig, model_cfg: dict, keys: tuple[str, ...],
                  protocol: str) -> TrainConfig:
    """The TrainConfig of one fold (what its checkpoint and fold file are checked against)."""
    return TrainConfig(
        epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay, seed=config.seed,
        grad_clip=config.grad_clip,
        extra={"model": model_name, "model_config": model_cfg, "protocol": protocol, "batch_size": config.batch_size,
               "test_subject": fold.test_subject, "n_train": len(fold.train_idx), "inputs": list(keys)},
    )


def _fold_rows(model_name: str, spec: ModelSpec, samples: MERSamples, fold, config: MERRunConfig, model_cfg: dict,
               keys: tuple[str, ...], protocol: str, out_dir: Path | str, device) -> tuple[list[dict], dict]:
    """One fold's prediction rows (one per test clip) and fold row: read back from its fold file when that was
    written with this config for these test clips, else trained (resuming from its checkpoint) and written there.
    JSON keeps every number exactly (floats as their shortest repr), so a read-back row equals the computed one."""
    path = fold_path(out_dir, model_name, protocol, fold.test_subject)
    train_config = _train_config(model_name, fold, config, model_cfg, keys, protocol)
    made_for = {"config": json.loads(json.dumps(asdict(train_config))),
                "test_clips": [samples.clip_ids[clip] for clip in fold.test_idx.tolist()]}
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("config") != made_for["config"]:
            raise ValueError(f"fold file {path} was written with a different config; delete it (and "
                             f"{path.parent.parent / 'checkpoints'}) or change the output folder (found "
                             f"{stored.get('config')}, asked {made_for['config']})")
        if stored.get("test_clips") != made_for["test_clips"]:
            raise ValueError(f"fold file {path} holds the clips {stored.get('test_clips')}, but the samples' "
                             f"{fold.test_subject} has {made_for['test_clips']}; delete it to run the fold again")
        return stored["predictions"], stored["fold"]

    selected_epoch, logits, history = _run_fold(model_name, spec, samples, fold, config, model_cfg, keys, protocol,
                                                path.parent.parent, device, train_config)
    selected_epoch = int(selected_epoch)
    class_names = list(samples.class_names)
    probabilities = torch.softmax(logits, dim=1).numpy()
    predicted = probabilities.argmax(1)
    rows = []
    for row, clip in enumerate(fold.test_idx.tolist()):
        truth = int(samples.labels[clip])
        rows.append({
            "model": model_name, "fold": fold.test_subject, "dataset": samples.datasets[clip],
            "subject": samples.subjects[clip], "clip_id": samples.clip_ids[clip],
            "truth": class_names[truth], "predicted": class_names[int(predicted[row])],
            "truth_index": truth, "predicted_index": int(predicted[row]), "epoch": selected_epoch,
            **{f"p_{name}": float(probabilities[row, k]) for k, name in enumerate(class_names)},
        })
    fold_row = {
        "model": model_name, "test_subject": fold.test_subject, "n_train": len(fold.train_idx),
        "n_test": len(fold.test_idx), "epochs": config.epochs, "selected_epoch": selected_epoch,
        "train_seconds": float(sum(h["epoch_seconds"] for h in history)),
        "final_train_loss": float(history[-1]["loss"]),
        "final_train_acc": float(history[-1]["train_acc"]),
        "fold_acc": float((predicted == samples.labels[fold.test_idx].numpy()).mean()),
    }
    curve = [{key: float(record[key]) for key in LEARNING_CURVE_KEYS} for record in history]
    write_text_atomic(json.dumps({**made_for, "predictions": rows, "fold": fold_row, "learning_curve": curve},
                                 indent=1), path)
    return rows, fold_row


def epoch_batches(samples: MERSamples, indices: np.ndarray, keys: tuple[str, ...], config: MERRunConfig, device):
    """batches(epoch) for ``training.loop.fit``: the clips ``indices`` in an order seeded by (config.seed, epoch),
    ``config.batch_size`` at a time. Every LOSO fold trains this way (and ``mer_epochs`` when it chooses epochs)."""

    def batches(epoch: int):
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        for start in range(0, len(indices), config.batch_size):
            yield samples.batch(indices[order[start:start + config.batch_size].numpy()], keys, device)

    return batches


def _run_fold(model_name: str, spec: ModelSpec, samples: MERSamples, fold, config: MERRunConfig,
              model_cfg: dict, keys: tuple[str, ...], protocol: str, run_dir: Path, device,
              train_config: TrainConfig) -> tuple[int, torch.Tensor, list[dict]]:
    """Train one fold (resuming from its checkpoint); return (selected epoch, test logits (N_test, K), history)."""
    subject_name = fold_file_name(fold.test_subject)
    checkpoint = run_dir / "checkpoints" / f"{subject_name}.pt"
    peek_dir = run_dir / "peek" / subject_name
    seed_everything(config.seed)
    model = spec.build(model_cfg).to(device)
    train_idx, test_idx = fold.train_idx, fold.test_idx
    epoch_start: dict[str, float] = {}

    train_batches = epoch_batches(samples, train_idx, keys, config, device)

    def batches(epoch: int):
        epoch_start["t"] = time.perf_counter()
        yield from train_batches(epoch)

    def epoch_end(model: nn.Module, epoch: int) -> dict[str, float]:
        record = {"epoch_seconds": time.perf_counter() - epoch_start["t"]}
        # the learning curve on the TRAINING subjects (no test clip: choosing nothing, it leaks nothing)
        train_logits = predict_logits(model, spec, samples, train_idx, config.eval_batch_size, device)
        record["train_acc"] = float((train_logits.argmax(1) == samples.labels[train_idx]).float().mean())
        if protocol == "test-peek":  # the leak this protocol is named for: test-subject scores every epoch
            logits = predict_logits(model, spec, samples, test_idx, config.eval_batch_size, device)
            atomic_torch_save(logits, peek_dir / f"epoch_{epoch:04d}.pt")
            record["test_acc"] = float((logits.argmax(1) == samples.labels[test_idx]).float().mean())
        return record

    history = fit(model, lambda m, batch: spec.loss(m, batch), batches, train_config, checkpoint,
                  epoch_end_fn=epoch_end, desc=f"fold {fold.test_subject}")
    if protocol == "fixed-epoch":
        epoch = select_epoch(protocol, fixed_epoch=config.epochs - 1)
        return epoch, predict_logits(model, spec, samples, test_idx, config.eval_batch_size, device), history
    per_epoch = []
    for e in range(config.epochs):
        path = peek_dir / f"epoch_{e:04d}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: delete {checkpoint} and run the fold again")
        per_epoch.append(torch.load(path, map_location="cpu"))
    predictions = torch.stack([logits.argmax(1) for logits in per_epoch]).numpy()
    epoch = select_epoch(protocol, per_epoch_test_predictions=predictions,
                         test_labels=samples.labels[test_idx].numpy())
    return epoch, per_epoch[epoch], history


# ----------------------------------------------------------------------------------------------------------------
# Samples from the prepared cache (``microface prepare``)

INPUT_KINDS = ("clips", "sequence_flow", "sequence_landmarks", "trajectory")
SAMPLINGS = ("uniform", "stride", "keyframes")


def sample_frame_indices(onset: int, apex: int, offset: int, n_frames: int) -> np.ndarray:
    """``n_frames`` indices (n,) from onset up to apex, then down to offset, evenly spaced in each phase.

    The first half (rounded up) spans onset..apex inclusive, the rest spans apex..offset excluding the apex;
    with offset == apex every frame comes from the rise. Indices are non-decreasing. Uses the annotation, so only
    the trajectory upper bound samples this way ("keyframes").
    """
    if not 0 <= onset <= apex <= offset:
        raise ValueError(f"expected 0 <= onset <= apex <= offset, got {onset}, {apex}, {offset}")
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    n_rise = n_frames if offset == apex else (n_frames + 1) // 2
    rise = np.linspace(onset, apex, n_rise)
    fall = np.linspace(apex, offset, n_frames - n_rise + 1)[1:]
    return np.rint(np.concatenate([rise, fall])).astype(np.int64)


def clip_frame_indices(n_total: int, n_frames: int, sampling: str = "uniform") -> np.ndarray:
    """``n_frames`` indices (n,) over a whole clip of ``n_total`` frames, without the annotation.

    "uniform": evenly spaced from the first to the last frame (rounded). "stride": ``i * (n_total // n_frames)``
    from frame 0, as the public FDP and MOL code sample (the clip's tail is never seen).

    Raises:
        ValueError: an unknown sampling, n_frames < 2, or a clip shorter than n_frames.
    """
    if sampling not in ("uniform", "stride"):
        raise ValueError(f"sampling must be 'uniform' or 'stride' for a whole clip, got {sampling!r}")
    if n_frames < 2 or n_total < n_frames:
        raise ValueError(f"need 2 <= n_frames <= the clip's {n_total} frames, got n_frames={n_frames}")
    if sampling == "stride":
        return np.arange(n_frames, dtype=np.int64) * (n_total // n_frames)
    return np.rint(np.linspace(0, n_total - 1, n_frames)).astype(np.int64)


def _frames_to_tensor(frames: np.ndarray, gray: bool | None) -> torch.Tensor:
    """uint8 frames (T, S, S) or (T, S, S, 3) -> float (T, C, S, S) in [0, 1]; ``gray`` converts RGB (ITU-R 601)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if gray and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if gray is False and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def crop_and_resize(frames: torch.Tensor, crop: float, size: int) -> tuple[torch.Tensor, int, float]:
    """Centre-crop a fraction ``crop`` of the side of aligned frames, then resize to ``size``.

    Args:
        frames: shape (T, C, S, S) in [0, 1].
        crop: kept fraction of the side, in (0, 1] (MOL's public code: 128 of a 144 px alignment).
        size: output side.

    Returns:
        (frames (T, C, size, size), the crop's first pixel, the scale from cropped to output pixels); a point p of
        the input maps to ``(p - first) * scale``.
    """
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    side = frames.shape[-1]
    kept = int(round(side * crop))
    first = (side - kept) // 2
    frames = frames[..., first:first + kept, first:first + kept]
    if size != kept:
        mode = {"mode": "area"} if size < kept else {"mode": "bilinear", "align_corners": False}
        frames = torch.nn.functional.interpolate(frames, size=(size, size), **mode)
    return frames, first, size / kept


def sequence_flow(frames: torch.Tensor, method: str = "tvl1", cache_dir: str | Path | None = None) -> torch.Tensor:
    """Optical flow t -> t+1 of consecutive frames (MOL's targets), cached by the frames' content.

    Args:
        frames: shape (T, C, S, S) in [0, 1] (RGB is turned gray).
        method: a ``microface.data.flow`` method ("tvl1": Dual TV-L1, as MOL's public code).
        cache_dir: folder of the cache (one .npy per distinct frame sequence); None computes every time.

    Returns:
        flow in pixels, shape (T-1, 2, S, S).
    """
    from microface.data.flow import compute_flow

    gray = frames if frames.shape[1] == 1 else (frames * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(
        1, keepdim=True)
    images = (gray[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()  # (T, S, S)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(images.tobytes() + repr((images.shape, method)).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"flow_{method}_{digest}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
    flow = np.stack([compute_flow(images[t], images[t + 1], method=method) for t in range(len(images) - 1)])
    flow = np.ascontiguousarray(flow.transpose(0, 3, 1, 2).astype(np.float32))  # (T-1, 2, S, S)
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, flow)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(buffer.getvalue(), path)
    return torch.from_numpy(flow)


def samples_from_prepared(prepared_dir: str | Path, inputs: Sequence[str] = ("clips",), *, n_frames: int = 8,
                          image_size: int | None = None, gray: bool | None = True,
                          class_names: Sequence[str] | None = None, sampling: str = "uniform", crop: float = 1.0,
                          flow_method: str = "tvl1", cache_dir: str | Path | None = None) -> MERSamples:
    """Build MERSamples from a ``microface prepare`` cache (``prepared_dir/manifest.json`` + one .npz per clip).

    inputs: any of "clips" (n_frames sampled frames, (N, n_frames, C, S, S)), "sequence_flow" (flow between
    consecutive sampled frames, ``flow_method`` on the input frames, (N, n_frames - 1, 2, S, S), cached in
    ``cache_dir``), "sequence_landmarks" (iBUG-68 of the sampled frames, (N, n_frames, 68, 2)), "trajectory"
    (ground-truth expression parameters at the sampled frames, (N, n_frames, E); synthetic benchmark only).
    sampling: "uniform" (evenly over the whole clip, default), "stride" (the public FDP / MOL code's
    ``i * (T // n_frames)``), both blind to the annotation, or "keyframes" (onset -> apex -> offset, from the
    annotation; the trajectory upper bound only). crop: centre fraction of the aligned frame kept before the
    resize (MOL's public code: 128 / 144). image_size: resize frames (and scale flow and landmarks) to this side;
    None keeps the cropped size. gray: True converts to one channel, False to three, None keeps.
    class_names: fixed label order; None uses the sorted labels found. Clips without a label (no class map
    applied, or an emotion the map drops) are left out. Subjects are "<dataset>/<subject>".
    """
    from microface.data.preprocess import load_clip, load_manifest

    unknown = sorted(set(inputs) - set(INPUT_KINDS))
    if unknown or not inputs:
        raise ValueError(f"inputs: expected a non-empty subset of {INPUT_KINDS}, got {list(inputs)}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling: expected one of {SAMPLINGS}, got {sampling!r}")
    prepared_dir = Path(prepared_dir)
    manifest = load_manifest(prepared_dir)
    if not manifest["clips"]:
        raise ValueError(f"{prepared_dir} holds no prepared clips (no {prepared_dir / 'manifest.json'} entries); "
                         "run `microface prepare` first")
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in inputs}
    labels, subjects, datasets, clip_ids = [], [], [], []
    for key in progress(sorted(manifest["clips"]), desc="load prepared clips", unit="clip"):
        path = prepared_dir / manifest["clips"][key]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {prepared_dir / 'manifest.json'} but missing; "
                                    "run `microface prepare` again to rebuild it")
        clip = load_clip(path)
        record = clip["meta"]["record"]
        if not record.get("label"):
            continue
        if sampling == "keyframes":
            picks = sample_frame_indices(int(record["onset"]), int(record["apex"]), int(record["offset"]), n_frames)
        else:
            picks = clip_frame_indices(len(clip["frames"]), n_frames, sampling)
        frames = _frames_to_tensor(clip["frames"][picks], gray)  # (n_frames, C, S, S)
        frames, first, scale = crop_and_resize(frames, crop, image_size or int(round(frames.shape[-1] * crop)))
        if "clips" in columns:
            columns["clips"].append(frames)
        if "sequence_flow" in columns:
            columns["sequence_flow"].append(sequence_flow(frames, flow_method, cache_dir))
        if "sequence_landmarks" in columns:
            points = (torch.from_numpy(clip["landmarks68"][picks].astype(np.float32)) - first) * scale
            if not torch.isfinite(points).all():
                raise ValueError(f"{path}: no landmarks on some of the sampled frames {picks.tolist()}; prepare "
                                 "with landmarks or leave 'sequence_landmarks' out of inputs")
            columns["sequence_landmarks"].append(points)
        if "trajectory" in columns:
            truth = record.get("ground_truth")
            if not truth or not Path(truth).is_file():
                raise ValueError(f"{path}: clip {key} has no ground-truth file ({truth!r}); 'trajectory' needs the "
                                 "synthetic benchmark")
            with np.load(truth) as gt:
                columns["trajectory"].append(torch.from_numpy(gt["expression"][picks].astype(np.float32)))
        labels.append(str(record["label"]))
        subjects.append(f"{record['dataset']}/{record['subject']}")
        datasets.append(str(record["dataset"]))
        clip_ids.append(str(record["clip_id"]))
    if not labels:
        raise ValueError(f"no labelled clips in {prepared_dir}: prepare records with a class map applied")
    names = tuple(class_names) if class_names is not None else tuple(sorted(set(labels)))
    missing = sorted(set(labels) - set(names))
    if missing:
        raise ValueError(f"labels {missing} are not in class_names {names}")
    return MERSamples(
        inputs={name: torch.stack(values) for name, values in columns.items()},
        labels=torch.tensor([names.index(label) for label in labels]),
        subjects=subjects, datasets=datasets, clip_ids=clip_ids, class_names=names,
    )


# ----------------------------------------------------------------------------------------------------------------
# Notebook 03


def _model_run(name: str, profile: str, seed: int, mer: dict, prepared: Path, preset: str = "default"
               ) -> tuple[MERSamples, MERRunConfig]:
    """One model's samples (from notebook 00's ``prepared/``) and run config, as the profile's mer section sets them
    (``preset`` "reference": the public code's settings, ``mer_tables.REFERENCE``). MOL's flow targets are cached
    in ``prepared/../mer/cache``."""
    from microface.experiments.mer_tables import mer_model_settings

    inputs, sample_kwargs = mer_model_settings(name, profile, mer, preset=preset)
    samples = samples_from_prepared(prepared, inputs, cache_dir=prepared.parent / "mer" / "cache", **sample_kwargs)
    config = MERRunConfig.from_dict(mer_model_settings(name, profile, mer, run_config=True, seed=seed,
                                                       samples=samples, preset=preset))
    return samples, config


def run_mer_fold(profile: str, seed: int, device: str, data: dict, mer: dict, results_dir, model: str,
                 holdout: str, preset: str = "default") -> Path:
    """One (model, held-out subject) fold of notebook 03, as a job of its own (``microface mer-fold``, Snakemake rule
    ``mer_fold``): the same samples, settings and numbers as inside :func:`run_mer_experiment`, whose loop then
    reads the fold file back.

    Args:
        profile, seed, device, data, mer, results_dir: as for :func:`run_mer_experiment`.
        model: one of the models the config runs (``mer_plan.mer_models``).
        holdout: the held-out subject, ``"<dataset>/<subject>"`` or its file name (``mer_plan.fold_file_name``).
        preset: "default", or "reference" (``mer.reference`` on: the public code's settings, "test-peek" protocol,
            under ``mer/reference/``; FDP and MOL only).

    Returns:
        The fold file, ``results_dir/mer/<model>/fixed-epoch/folds/<subject>.json`` (reference:
        ``results_dir/mer/reference/<model>/test-peek/folds/<subject>.json``).
    """
    from microface.config import project_root, resolve

    models, skipped = mer_models(data, mer)
    if model not in models:
        raise ValueError(f"model {model!r}: the config runs {models} (mer.models {list(mer['models'])}; "
                         f"{'; '.join(skipped) or 'none skipped'})")
    if preset == "reference" and not mer.get("reference"):
        raise ValueError("preset 'reference': the config's mer.reference is false, so notebook 03 runs no reference "
                         "folds")
    results = resolve(results_dir, project_root())
    samples, config = _model_run(model, profile, seed, mer, results / "prepared", preset)
    if preset == "reference":
        return run_loso_fold(model, samples, config, results / "mer" / REFERENCE_DIR, holdout,
                             protocol=REFERENCE_PROTOCOL, device=device)
    return run_loso_fold(model, samples, config, results / "mer", holdout, protocol=PROTOCOL, device=device)


def run_mer_experiment(profile: str, seed: int, device: str, data: dict, mer: dict, results_dir) -> NotebookReport:
    """Notebook 03_mer end to end: each model of ``mer["models"]``, in that order, under LOSO with the
    "fixed-epoch" protocol on ``results_dir/prepared``; with ``mer["reference"]``, FDP and MOL again under their
    ``reference`` preset (the public code's settings) with its "test-peek" epoch choice, written under
    ``mer/reference/`` and labelled "<model> (reference)" / test-peek; then the table with the chance level beside it.

    The folds that the workflow ran as jobs of their own (:func:`run_mer_fold`) are read from their files; any
    fold without one is trained here, so the notebook also runs alone and gives the same table either way.

    Args:
        profile: the profile's name (names ``config/<profile>.yaml`` in the settings' errors).
        seed, device: the config's top-level keys.
        data: the config's ``data`` section (only ``dataset`` is read: the trajectory upper bound needs the
            synthetic benchmark's ground-truth expressions and is skipped on any other dataset).
        mer: the config's ``mer`` section (``models`` and each model's settings, ``mer_model_settings``).
        results_dir: results/<profile>, relative to the compendium root or absolute; needs notebook 00's
            ``prepared/``.

    Returns:
        tables: ``mer_table`` (scores, chance level and the wall-clock columns; ``mer/mer_table.csv`` / ``.md``
        hold the scores, ``mer/mer_table_timings.csv`` the times) and ``learning_curves`` (per model and epoch, the
        training subjects' loss and accuracy averaged over folds, ``mer/learning_curves.csv``: a model that fits its
        training subjects and stays at chance on the held-out one is data-limited, one that does not fit them is
        not learning at all); notes: ``mer_table`` (the table as Markdown),
        ``skipped`` (models skipped and why, one per line; empty when none); paths: ``out_dir``.
    """
    from microface.config import project_root, resolve
    from microface.experiments.mer_tables import REFERENCE, chance_level, write_mer_table

    results = resolve(results_dir, project_root())
    out_dir = results / "mer"
    rows, curves = [], []
    models, skipped = mer_models(data, mer)
    runs = [(name, "default", PROTOCOL, out_dir) for name in models]
    if mer.get("reference"):  # the public code's settings and its best-epoch-on-test choice, labelled test-peek
        runs += [(name, "reference", REFERENCE_PROTOCOL, out_dir / REFERENCE_DIR) for name in models
                 if name in REFERENCE]
    for name, preset, protocol, run_dir in runs:
        samples, config = _model_run(name, profile, seed, mer, results / "prepared", preset)
        started = time.perf_counter()
        result = run_loso(name, samples, config, run_dir, protocol=protocol, device=device)
        label = name if preset == "default" else f"{name} ({preset})"
        table = result.metrics.assign(model=label, seconds=round(time.perf_counter() - started, 1))
        # the folds' own training time (recorded when they ran, here or as jobs of their own)
        table["train_s_per_fold"] = result.folds["train_seconds"].mean()
        rows.append(table)
        curves.append(learning_curves(result.out_dir).assign(model=label, protocol=protocol))
    chance = chance_level(samples)
    mer_table = write_mer_table(pd.concat(rows), chance, out_dir / "mer_table.csv")
    curve_table = pd.concat(curves, ignore_index=True)[["model", "protocol", "epoch", "train_loss", "train_acc",
                                                        "n_folds"]]
    write_csv_atomic(curve_table, out_dir / "learning_curves.csv")
    return NotebookReport(tables={"mer_table": mer_table, "learning_curves": curve_table},
                          notes={"mer_table": mer_table.to_markdown(index=False), "skipped": "\n".join(skipped)},
                          paths={"out_dir": out_dir})
