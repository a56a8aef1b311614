"""FIELDS-style supervision of a coarse encoder: direct 3D parameter loss, an emotion head, regularisation
toward a frozen base model, and the two-step schedule.

- ``parameter_loss``: direct loss on face-model parameters where ground truth exists (the synthetic benchmark);
- ``EmotionHead``: (expression (N, E), shape (N, S)) -> valence/arousal (N, 2) in [-1, 1] and class logits
  (N, K); its loss is ``microface.losses.emotion.emotion_loss`` (intensity-weighted cross-entropy + VA
  regression);
- ``BaseModelRegulariser``: keeps a fine-tuned encoder near a deep-copied frozen base, by parameter L2 or by
  output distillation on the same images;
- ``fields_schedule``: step 1 trains the emotion head with the encoder frozen, step 2 fine-tunes encoder and
  head with all losses; ``apply_stage`` sets ``requires_grad`` accordingly.

Shapes: N samples (images or frames), B clips, T frames, E expression size, S shape size, K classes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from microface.utils.checks import config_from_dict


def parameter_loss(predicted: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                   weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Direct parameter supervision: weighted mean squared error per parameter group.

    Args:
        predicted: name -> tensor, e.g. expression (B, T, E), shape (B, S), pose (B, T, 6).
        target: name -> tensor of the same shape; names missing from it (or None: no ground truth) are skipped.
        weights: name -> weight (default 1).

    Returns:
        ``{"param_<name>": mse, ..., "param": weighted sum}``; "param" is 0 when nothing had a target.

    Raises:
        ValueError: a target whose shape differs from the prediction's.
    """
    weights = weights or {}
    out: dict[str, torch.Tensor] = {}
    total = None
    for name, pred in predicted.items():
        if name not in target or target[name] is None:
            continue
        tgt = target[name].to(pred)
        if tgt.shape != pred.shape:
            raise ValueError(f"parameter_loss[{name}]: expected target {tuple(pred.shape)}, got {tuple(tgt.shape)}")
        mse = (pred - tgt).pow(2).mean()
        out[f"param_{name}"] = mse
        term = float(weights.get(name, 1.0)) * mse
        total = term if total is None else total + term
    if total is None:
        reference = next(iter(predicted.values()))
        total = reference.new_zeros(())
    out["param"] = total
    return out


@dataclass
class EmotionPrediction:
    """What the EmotionHead returns.

    Attributes:
        valence_arousal: in [-1, 1], shape (N, 2).
        logits: class logits, shape (N, K).
    """

    valence_arousal: torch.Tensor
    logits: torch.Tensor


class EmotionHead(nn.Module):
    """MLP on ``[expression, shape]`` -> EmotionPrediction.

    Shape is an input because the same displacement reads differently on different faces (FIELDS feeds both).

    Args:
        n_expression: E.
        n_shape: S.
        n_classes: K, >= 2.
        hidden: MLP width.

    Raises:
        ValueError: fewer than 2 classes.
    """

    def __init__(self, n_expression: int, n_shape: int, n_classes: int, hidden: int = 64):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes: expected >= 2, got {n_classes}")
        self.n_expression, self.n_shape = n_expression, n_shape
        self.trunk = nn.Sequential(nn.Linear(n_expression + n_shape, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.va = nn.Linear(hidden, 2)
        self.classes = nn.Linear(hidden, n_classes)

    def forward(self, expression: torch.Tensor, shape: torch.Tensor) -> EmotionPrediction:
        """Valence/arousal and class logits of face-model parameters.

        Args:
            expression: shape (N, E).
            shape: shape (N, S).

        Returns:
            EmotionPrediction with valence_arousal (N, 2) and logits (N, K).

        Raises:
            ValueError: inputs of the wrong shape.
        """
        if expression.ndim != 2 or expression.shape[1] != self.n_expression or shape.shape != (expression.shape[0], self.n_shape):
            raise ValueError(f"expected expression (N, {self.n_expression}) and shape (N, {self.n_shape}), "
                             f"got {tuple(expression.shape)} and {tuple(shape.shape)}")
        h = self.trunk(torch.cat([expression, shape], dim=-1))
        return EmotionPrediction(valence_arousal=torch.tanh(self.va(h)), logits=self.classes(h))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every parameter frozen, in eval mode: the base a fine-tuned model is kept close to.

    Args:
        module: the model to copy.

    Returns:
        the frozen copy.
    """
    base = copy.deepcopy(module)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    return base.eval()


def parameter_l2_to_base(model: nn.Module, base: nn.Module) -> torch.Tensor:
    """Sum over parameters of ``||p - p_base||^2`` (same names).

    Args:
        model: the model being trained.
        base: its frozen copy (see :func:`frozen_copy`).

    Returns:
        the scalar sum.

    Raises:
        ValueError: the base lacks a parameter name, or the model has no parameters.
    """
    base_params = dict(base.named_parameters())
    total = None
    for name, parameter in model.named_parameters():
        if name not in base_params:
            raise ValueError(f"parameter_l2_to_base: base model has no parameter {name!r}; was it copied from this model?")
        term = (parameter - base_params[name].detach()).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("parameter_l2_to_base: the model has no parameters")
    return total


def output_distillation(model_outputs: dict[str, torch.Tensor], base_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared difference summed over the named outputs, base outputs detached.

    Args:
        model_outputs: name -> tensor, shape (N, ...).
        base_outputs: name -> tensor of the same shape, from the base.

    Returns:
        the scalar sum.

    Raises:
        ValueError: the base outputs lack a name, or no outputs are given.
    """
    total = None
    for name, value in model_outputs.items():
        if name not in base_outputs:
            raise ValueError(f"output_distillation: base outputs lack {name!r}")
        term = (value - base_outputs[name].detach()).pow(2).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("output_distillation: no outputs given")
    return total


class BaseModelRegulariser:
    """Pull a model toward a frozen deep copy of its starting point.

    mode "parameter": ``parameter_l2_to_base(model, base)``; mode "output": distillation of
    ``outputs_fn(model, batch)`` (a dict name -> tensor, e.g. expression and shape of a coarse encoder) toward
    ``outputs_fn(base, batch)``. The base is kept outside the model (not a submodule), so it is never saved in
    the model's checkpoint; build it from the same pretrained weights before resuming. Call it as
    ``regulariser(model, batch)`` to get the scalar penalty.

    Args:
        model: the model at its starting point (copied and frozen here).
        mode: "parameter" or "output".
        outputs_fn: ``(model, batch) -> dict of tensors``; needed with mode "output".

    Raises:
        ValueError: an unknown mode, or mode "output" without ``outputs_fn``.
    """

    def __init__(self, model: nn.Module, mode: str = "parameter",
                 outputs_fn: Callable[[nn.Module, object], dict[str, torch.Tensor]] | None = None):
        if mode not in ("parameter", "output"):
            raise ValueError(f"BaseModelRegulariser mode: expected 'parameter' or 'output', got {mode!r}")
        if mode == "output" and outputs_fn is None:
            raise ValueError("BaseModelRegulariser mode 'output' needs outputs_fn(model, batch) -> dict of tensors")
        self.mode = mode
        self.outputs_fn = outputs_fn
        self.base = frozen_copy(model)

    def __call__(self, model: nn.Module, batch=None) -> torch.Tensor:
        if self.mode == "parameter":
            return parameter_l2_to_base(model, self.base)
        with torch.no_grad():
            base_outputs = self.outputs_fn(self.base, batch)
        return output_distillation(self.outputs_fn(model, batch), base_outputs)


@dataclass
class FieldsStage:
    """One step of the FIELDS schedule: which parts train, for how long, with which loss weights.

    Attributes:
        name: the step's name.
        trainable: "emotion_head" (encoder frozen) or "all".
        epochs: how many epochs.
        lr: learning rate.
        weights: loss name -> weight (names as in ``microface.training.dem.LossWeights``).
    """

    name: str
    trainable: str
    epochs: int
    lr: float
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class FieldsScheduleConfig:
    """Config of the two-step schedule: epochs and learning rate of each step, loss weights of step 2.

    step1 only uses the emotion loss (weight 1); step2 uses ``step2_weights`` (empty: the caller's defaults).

    Args:
        step1_epochs: epochs of step 1.
        step1_lr: learning rate of step 1.
        step2_epochs: epochs of step 2.
        step2_lr: learning rate of step 2.
        step2_weights: loss name -> weight of step 2.
    """

    step1_epochs: int = 2
    step1_lr: float = 1e-3
    step2_epochs: int = 2
    step2_lr: float = 1e-4
    step2_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict | None) -> "FieldsScheduleConfig":
        """The config from a mapping (the ``fields`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the FieldsScheduleConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "fields")


def fields_schedule(config: FieldsScheduleConfig) -> list[FieldsStage]:
    """The two FIELDS steps: step 1, emotion head only, emotion loss only; step 2, all parts, all losses.

    Args:
        config: the FieldsScheduleConfig.

    Returns:
        ``[step 1, step 2]``.

    Raises:
        ValueError: negative epochs.
    """
    if config.step1_epochs < 0 or config.step2_epochs < 0:
        raise ValueError(f"fields schedule: epochs must be >= 0, got {config.step1_epochs}, {config.step2_epochs}")
    return [
        FieldsStage("fields_step1_emotion_head", "emotion_head", config.step1_epochs, config.step1_lr, {"emotion": 1.0}),
        FieldsStage("fields_step2_finetune", "all", config.step2_epochs, config.step2_lr, dict(config.step2_weights)),
    ]


def apply_stage(stage: FieldsStage, encoder: nn.Module, emotion_head: nn.Module) -> list[nn.Parameter]:
    """Freeze or unfreeze for ``stage``.

    "emotion_head": encoder frozen (requires_grad False), head trainable; "all": both trainable.

    Args:
        stage: the FieldsStage.
        encoder: the coarse encoder.
        emotion_head: the EmotionHead.

    Returns:
        the parameters to optimise.

    Raises:
        ValueError: an unknown ``stage.trainable``.
    """
    if stage.trainable not in ("emotion_head", "all"):
        raise ValueError(f"stage {stage.name}: trainable must be 'emotion_head' or 'all', got {stage.trainable!r}")
    train_encoder = stage.trainable == "all"
    for parameter in encoder.parameters():
        parameter.requires_grad_(train_encoder)
    for parameter in emotion_head.parameters():
        parameter.requires_grad_(True)
    return list(emotion_head.parameters()) + (list(encoder.parameters()) if train_encoder else [])
