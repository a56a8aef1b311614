"""FIELDS-style fine-tuning of DEM with direct 3D expression supervision and an emotion head."""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from microface.data.clips import ClipBatch, ClipTensors, batches_by_length
from microface.face.model import FaceModel
from microface.models.dem import DEM
from microface.models.fields import (
    BaseModelRegulariser,
    EmotionHead,
    FieldsScheduleConfig,
    apply_stage,
    fields_schedule,
)
from microface.training.dem import LossWeights, TrainSettings, _dem_outputs_for_distillation, clip_losses
from microface.training.loop import fit


def fields_finetune(dem: DEM, emotion_head: EmotionHead, face_model: FaceModel, clips: list[ClipTensors],
                    settings: TrainSettings, schedule: FieldsScheduleConfig, checkpoint_dir: Path | None = None) -> list[dict]:
    """FIELDS two-step fine-tuning: step 1 trains ``emotion_head`` with DEM frozen (emotion loss only); step 2
    fine-tunes both with ``settings.weights`` updated by ``schedule.step2_weights`` (emotion included).
    Each step checkpoints to ``checkpoint_dir/<stage>.pt`` and resumes. Returns both histories, concatenated,
    each record tagged with its stage."""
    from microface.losses.perceptual import build_perceptual_distance
    from microface.render.renderer import MeshRenderer

    model = nn.ModuleDict({"dem": dem, "emotion_head": emotion_head})
    renderer = MeshRenderer(blur_radius_px=settings.blur_radius_px)
    history: list[dict] = []
    base = None
    for stage in fields_schedule(schedule):
        if stage.trainable == "emotion_head":  # step 1: the emotion loss alone
            stage_weights = {**{f.name: 0.0 for f in fields(LossWeights)}, **stage.weights}
        else:
            stage_weights = {**settings.weights, **stage.weights}
        stage_weights.setdefault("emotion", 1.0)
        stage_settings = TrainSettings.from_dict({**asdict(settings), "epochs": stage.epochs, "lr": stage.lr,
                                                  "weights": stage_weights})
        parameters = apply_stage(stage, dem, emotion_head)
        if stage.trainable == "all" and stage_settings.loss_weights.base > 0 and base is None:
            base = BaseModelRegulariser(dem, settings.base_mode, _dem_outputs_for_distillation)
        w = stage_settings.loss_weights
        perceptual = build_perceptual_distance(settings.perceptual) if w.perceptual > 0 else None

        def step(m: nn.ModuleDict, batch: ClipBatch, s=stage_settings, p=perceptual) -> dict[str, torch.Tensor]:
            return clip_losses(m["dem"], face_model, batch, s, renderer, p, base, m["emotion_head"])

        path = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{stage.name}.pt"
        stage_history = fit(model, step, lambda e, s=stage_settings: batches_by_length(clips, s.batch_size, s.seed, e),
                            stage_settings.train_config(stage=stage.name), path, parameters=parameters, desc=stage.name)
        history += [{**record, "stage": stage.name} for record in stage_history]
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return history
