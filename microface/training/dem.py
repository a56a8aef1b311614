"""Training drivers for the coarse stage (notebook 01_dem_pretrain): DEM pretraining on macro clips,
fine-tuning on micro-expression clips, the FIELDS two-step schedule, and geometry evaluation.

Data: ``ClipTensors`` (one clip: frames (T,3,H,W) in [0,1], flow onset->t (T,2,H,W) in pixels, frame times (T,),
optional ground truth). Losses, each used when its weight is > 0 and its data exist:
- photometric: masked L1 (renderer alpha) between frame t and the mesh at t rendered with the ONSET frame's
  colours (sampled at the onset's projected vertices, detached, lit by constant SH): with no albedo model
  offline, the onset appearance moved by the predicted geometry must reproduce each later frame;
  ``albedo = "constant"`` instead renders a uniform grey albedo lit by the encoder's SH;
- perceptual: the same render composited over the frame, through ``build_perceptual_distance`` (named);
- landmark: projected iBUG-68 points vs ``landmarks2d`` (optional iBUG weighting), in units of image width;
  on the benchmark the detected landmarks (``microface.data.clip_landmarks``; ground truth only with
  ``dem.landmarks: oracle``);
- param: FIELDS direct supervision of expression / shape / pose where ground truth exists;
- expression_reg, smooth (first difference of codes), consistency (ODE vs per-frame codes), identity (per-frame
  shape codes of a clip agree); base (fine-tuning: pull toward the frozen pretrained model); emotion (FIELDS).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from microface.data.clips import ClipBatch, ClipTensors, batches_by_length, collate_clips
from microface.face.model import FaceModel
from microface.losses.emotion import emotion_loss
from microface.losses.identity import shape_consistency
from microface.losses.landmark import ibug68_weights, landmark_loss
from microface.losses.photometric import photometric_l1
from microface.losses.regularizers import code_consistency, expression_l2, temporal_smoothness
from microface.metrics.geometry import clip_vertex_error, temporal_jitter
from microface.models.dem import DEM, DEMConfig, DEMOutput
from microface.models.encoder import CoarseEncoder, EncoderConfig
from microface.models.fields import BaseModelRegulariser, EmotionHead, parameter_loss
from microface.render.camera import to_render_camera, weak_perspective_project
from microface.training.loop import TrainConfig, fit
from microface.utils.checks import config_from_dict

# ------------------------------------------------------------------------------------------------- data


# ----------------------------------------------------------------------------------------------- config
@dataclass
class LossWeights:
    """Weight of each loss term (0 switches it off)."""

    photometric: float = 1.0
    perceptual: float = 0.0
    landmark: float = 1.0
    param: float = 1.0
    expression_reg: float = 1e-3
    smooth: float = 1e-2
    consistency: float = 1e-2
    identity: float = 1e-2
    base: float = 0.0
    emotion: float = 0.0

    @classmethod
    def from_dict(cls, values: dict | None) -> "LossWeights":
        return config_from_dict(cls, values, "loss weights")


@dataclass
class TrainSettings:
    """One training run of the coarse stage.

    epochs, lr, weight_decay, seed, grad_clip, batch_size: as in ``TrainConfig``; weights: ``LossWeights`` keys;
    albedo: "onset" | "constant"; blur_radius_px: renderer soft-edge radius; landmark_norm: "l2" | "l1" | "mse";
    ibug_weighting: weight brows/eyes/mouth over the contour; param_weights: per-group weights of the direct
    parameter loss (expression, shape, pose); base_mode: "parameter" | "output" (fine-tuning regulariser);
    perceptual: "inception" | "gradient_ssim" | "auto" (used when weights.perceptual > 0).
    """

    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    grad_clip: float | None = 1.0
    batch_size: int = 2
    weights: dict = field(default_factory=dict)
    albedo: str = "onset"
    blur_radius_px: float = 1.0
    landmark_norm: str = "l2"
    ibug_weighting: bool = True
    param_weights: dict = field(default_factory=lambda: {"expression": 1.0, "shape": 0.1, "pose": 0.1})
    base_mode: str = "parameter"
    perceptual: str = "auto"

    def __post_init__(self) -> None:
        if self.albedo not in ("onset", "constant"):
            raise ValueError(f"albedo: expected 'onset' or 'constant', got {self.albedo!r}")
        if self.base_mode not in ("parameter", "output"):
            raise ValueError(f"base_mode: expected 'parameter' or 'output', got {self.base_mode!r}")
        LossWeights.from_dict(self.weights)  # validate the keys now, not mid-training

    @classmethod
    def from_dict(cls, values: dict | None) -> "TrainSettings":
        return config_from_dict(cls, values, "train")

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights.from_dict(self.weights)

    def train_config(self, **extra) -> TrainConfig:
        """The ``TrainConfig`` for ``fit``; every setting goes into ``extra`` so a changed one blocks a resume."""
        core = {"epochs", "lr", "weight_decay", "seed", "grad_clip"}
        rest = {k: v for k, v in asdict(self).items() if k not in core}
        return TrainConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, seed=self.seed,
                           grad_clip=self.grad_clip, extra={**rest, **extra})


def build_dem(face_model: FaceModel, encoder: dict | None = None, dem: dict | None = None, seed: int = 0) -> DEM:
    """A seeded DEM around a fresh ``CoarseEncoder`` sized for ``face_model``.

    encoder: EncoderConfig keys except n_shape / n_expression (channels, hidden); dem: DEMConfig keys.
    """
    encoder_values = dict(encoder or {})
    for key in ("n_shape", "n_expression"):
        if key in encoder_values:
            raise ValueError(f"encoder config: {key!r} comes from the face model; remove it from the config")
    torch.manual_seed(seed)
    coarse = CoarseEncoder(EncoderConfig.from_dict(
        {**encoder_values, "n_shape": face_model.n_shape, "n_expression": face_model.n_expression}))
    return DEM(coarse, face_model.n_expression, DEMConfig.from_dict(dem))


# ------------------------------------------------------------------------------------------ reconstruction
@dataclass
class Reconstruction:
    """DEM output plus geometry: shape (B,S) clip shape (mean of per-frame codes); vertices (B,T,V,3) mm;
    landmarks (B,T,68,3) mm; landmarks_px (B,T,68,2)."""

    output: DEMOutput
    shape: torch.Tensor
    vertices: torch.Tensor
    landmarks: torch.Tensor
    landmarks_px: torch.Tensor


def reconstruct(dem: DEM, face_model: FaceModel, frames: torch.Tensor, flow: torch.Tensor,
                times: torch.Tensor) -> Reconstruction:
    """frames (B,T,3,H,W), flow (B,T,2,H,W), times (B,T) -> Reconstruction (DEM expressions, per-frame pose and
    camera from the coarse encoder, one shape per clip)."""
    output = dem(frames, flow, times)
    B, T = frames.shape[:2]
    image_size = tuple(frames.shape[-2:])
    shape = output.coarse.shape.mean(dim=1)
    face = face_model(shape[:, None].expand(B, T, -1).reshape(B * T, -1), output.expression.reshape(B * T, -1),
                      output.coarse.pose.reshape(B * T, 6))
    landmarks_px = weak_perspective_project(face.landmarks, output.coarse.camera.reshape(B * T, 3), image_size)
    return Reconstruction(output=output, shape=shape, vertices=face.vertices.reshape(B, T, -1, 3),
                          landmarks=face.landmarks.reshape(B, T, -1, 3), landmarks_px=landmarks_px.reshape(B, T, -1, 2))


def render_frames(recon: Reconstruction, face_model: FaceModel, frames: torch.Tensor, renderer, albedo: str):
    """Render every frame's mesh. frames (B,T,3,H,W) -> RenderOutput with images (B*T,3,H,W).

    albedo "onset": per-vertex colours sampled from the onset frame at the onset's projected vertices (detached;
    occlusion ignored), constant SH; "constant": grey 0.5 albedo, the encoder's SH lighting.
    """
    from microface.render.shading import sh_constant

    B, T, _, H, W = frames.shape
    vertices = recon.vertices.reshape(B * T, -1, 3)
    camera = recon.output.coarse.camera.reshape(B * T, 3)
    if albedo == "onset":
        onset_px = weak_perspective_project(recon.vertices[:, 0], recon.output.coarse.camera[:, 0], (H, W))
        grid = torch.stack([onset_px[..., 0] / W, onset_px[..., 1] / H], dim=-1) * 2.0 - 1.0
        colours = F.grid_sample(frames[:, 0], grid[:, :, None], mode="bilinear", padding_mode="border",
                                align_corners=False)[..., 0].transpose(1, 2).detach()  # (B, V, 3)
        vertex_albedo = colours[:, None].expand(B, T, -1, 3).reshape(B * T, -1, 3)
        sh = sh_constant(B * T, device=frames.device, dtype=frames.dtype)
    else:
        vertex_albedo = torch.full_like(vertices, 0.5)
        sh = recon.output.coarse.lighting.reshape(B * T, 9, 3)
    return renderer(vertices, face_model.faces, to_render_camera(camera, (H, W)), vertex_albedo, sh, (H, W))


def clip_losses(dem: DEM, face_model: FaceModel, batch: ClipBatch, settings: TrainSettings, renderer=None,
                perceptual: nn.Module | None = None, base: BaseModelRegulariser | None = None,
                emotion_head: EmotionHead | None = None) -> dict[str, torch.Tensor]:
    """All coarse-stage loss terms for one batch; {"loss": weighted total, term: value, ...} (scalars).

    renderer: a ``microface.render.MeshRenderer`` (needed when weights.photometric or perceptual > 0).
    """
    weights = settings.loss_weights
    recon = reconstruct(dem, face_model, batch.frames, batch.flow, batch.times)
    out = recon.output
    B, T, _, H, W = batch.frames.shape
    terms: dict[str, torch.Tensor] = {}
    if weights.photometric > 0 or weights.perceptual > 0:
        if renderer is None:
            raise ValueError("clip_losses: photometric/perceptual weights are > 0 but no renderer was given")
        rendered = render_frames(recon, face_model, batch.frames, renderer, settings.albedo)
        target = batch.frames.reshape(B * T, 3, H, W)
        if weights.photometric > 0:
            terms["photometric"] = photometric_l1(rendered.image, target, rendered.alpha)
        if weights.perceptual > 0:
            if perceptual is None:
                raise ValueError("clip_losses: weights.perceptual > 0 but no perceptual distance was given")
            composite = rendered.alpha * rendered.image + (1 - rendered.alpha) * target
            terms["perceptual"] = perceptual(composite, target).mean()
    if weights.landmark > 0 and batch.landmarks2d is not None:
        point_weights = ibug68_weights() if settings.ibug_weighting else None
        terms["landmark"] = landmark_loss(recon.landmarks_px, batch.landmarks2d.to(recon.landmarks_px), point_weights,
                                          settings.landmark_norm, scale=float(W))
    if weights.param > 0:
        predicted = {"expression": out.expression, "shape": recon.shape, "pose": out.coarse.pose}
        target = {"expression": batch.expression, "shape": batch.shape, "pose": batch.pose}
        if any(v is not None for v in target.values()):
            terms["param"] = parameter_loss(predicted, target, settings.param_weights)["param"]
    if weights.expression_reg > 0:
        terms["expression_reg"] = expression_l2(out.expression)
    if weights.smooth > 0:
        terms["smooth"] = temporal_smoothness(out.code)
    if weights.consistency > 0 and dem.config.temporal == "ode":
        terms["consistency"] = code_consistency(out.code, out.frame_code)
    if weights.identity > 0:
        terms["identity"] = shape_consistency(out.coarse.shape)
    if weights.base > 0:
        if base is None:
            raise ValueError("clip_losses: weights.base > 0 but no base-model regulariser was given")
        terms["base"] = base(dem, batch)
    if weights.emotion > 0:
        if emotion_head is None:
            raise ValueError("clip_losses: weights.emotion > 0 but no emotion head was given")
        terms.update(emotion_terms(recon, batch, emotion_head))
    total = sum(getattr(weights, name) * value for name, value in terms.items() if hasattr(weights, name))
    if not terms:
        raise ValueError("clip_losses: no loss term is active (all weights 0 or no data for them)")
    return {"loss": total, **terms}


def emotion_terms(recon: Reconstruction, batch: ClipBatch, emotion_head: EmotionHead) -> dict[str, torch.Tensor]:
    """Emotion head on (apex expression (B,E), clip shape (B,S)); the intensity-aware emotion loss."""
    index = torch.arange(batch.apex.shape[0])
    prediction = emotion_head(recon.output.expression[index, batch.apex], recon.shape)
    return emotion_loss(prediction.logits, batch.labels, prediction.valence_arousal, batch.valence_arousal,
                        batch.intensity)


def _dem_outputs_for_distillation(model: DEM, batch: ClipBatch) -> dict[str, torch.Tensor]:
    out = model(batch.frames, batch.flow, batch.times)
    return {"expression": out.expression, "shape": out.coarse.shape}


# ---------------------------------------------------------------------------------------------- drivers
def train_dem(dem: DEM, face_model: FaceModel, clips: list[ClipTensors], settings: TrainSettings,
              checkpoint_path: Path | None = None, desc: str = "dem", regularise_to_base: bool = False) -> list[dict]:
    """Train DEM (with its coarse encoder) on ``clips`` with ``microface.training.loop.fit``; resumes from
    ``checkpoint_path``. regularise_to_base: build a frozen copy of ``dem`` as it is now (load the pretrained
    weights first) and add the "base" term. Returns the history."""
    from microface.losses.perceptual import build_perceptual_distance
    from microface.render.renderer import MeshRenderer

    weights = settings.loss_weights
    renderer = MeshRenderer(blur_radius_px=settings.blur_radius_px)
    perceptual = build_perceptual_distance(settings.perceptual) if weights.perceptual > 0 else None
    base = None
    if regularise_to_base:
        base = BaseModelRegulariser(dem, settings.base_mode, _dem_outputs_for_distillation)
    extra = {"desc": desc, "perceptual_name": getattr(perceptual, "name", None)}

    def step(model: DEM, batch: ClipBatch) -> dict[str, torch.Tensor]:
        return clip_losses(model, face_model, batch, settings, renderer, perceptual, base)

    return fit(dem, step, lambda epoch: batches_by_length(clips, settings.batch_size, settings.seed, epoch),
               settings.train_config(**extra), checkpoint_path, desc=desc)


def pretrain_dem(dem: DEM, face_model: FaceModel, macro_clips: list[ClipTensors], settings: TrainSettings,
                 checkpoint_path: Path | None = None) -> list[dict]:
    """(a) Pretrain DEM and its coarse encoder on macro-expression clips (self-supervised + direct parameter
    loss where ground truth exists)."""
    return train_dem(dem, face_model, macro_clips, settings, checkpoint_path, desc="dem-pretrain")


def finetune_dem(dem: DEM, face_model: FaceModel, micro_clips: list[ClipTensors], settings: TrainSettings,
                 checkpoint_path: Path | None = None) -> list[dict]:
    """(b) Fine-tune a pretrained DEM on micro-expression clips, regularised toward its pretrained self when
    ``weights.base > 0`` (load the pretrained weights into ``dem`` before calling)."""
    return train_dem(dem, face_model, micro_clips, settings, checkpoint_path, desc="dem-finetune",
                     regularise_to_base=settings.loss_weights.base > 0)


# -------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_geometry(dem: DEM, face_model: FaceModel, clips: list[ClipTensors], align: bool = False) -> list[dict]:
    """Per-vertex error (mm) at the apex and over each clip, and temporal jitter (mm/frame^2), for clips with
    ground-truth expression and shape. Geometry is compared at zero pose (rigid pose is not part of the score):
    "full": predicted shape + expression vs ground truth; "expression": ground-truth shape with predicted vs
    ground-truth expression (the micro-expression signal alone). Apex: ``clip.apex`` or the frame of largest
    ground-truth displacement. Returns one dict per evaluated clip."""
    dem.eval()
    rows = []
    for clip in clips:
        if clip.expression is None or clip.shape is None:
            continue
        batch = collate_clips([clip])
        recon = reconstruct(dem, face_model, batch.frames, batch.flow, batch.times)
        T = clip.frames.shape[0]
        zero_pose = torch.zeros(T, 6, dtype=clip.frames.dtype, device=clip.frames.device)
        gt_shape = clip.shape[None].expand(T, -1).to(clip.frames.dtype)
        truth = face_model(gt_shape, clip.expression.to(clip.frames.dtype), zero_pose).vertices
        full = face_model(recon.shape.expand(T, -1), recon.output.expression[0], zero_pose).vertices
        expression_only = face_model(gt_shape, recon.output.expression[0], zero_pose).vertices
        neutral = face_model(gt_shape, torch.zeros_like(clip.expression), zero_pose).vertices
        apex = clip.apex if clip.apex is not None else int((truth - neutral).norm(dim=-1).mean(-1).argmax())
        full_err = clip_vertex_error(full, truth, apex, align)
        expr_err = clip_vertex_error(expression_only, truth, apex, align)
        rows.append({
            "key": clip.key, "apex": apex,
            "full_apex_mm": full_err["apex_mm"], "full_clip_mm": full_err["clip_mm"],
            "expression_apex_mm": expr_err["apex_mm"], "expression_clip_mm": expr_err["clip_mm"],
            "jitter_mm_per_frame2": float(temporal_jitter(full)) if T >= 3 else float("nan"),
            "truth_jitter_mm_per_frame2": float(temporal_jitter(truth)) if T >= 3 else float("nan"),
        })
    return rows
