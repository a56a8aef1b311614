"""The fine-stage benchmark of notebook 02_dgmd_refine: DEM vs DEM + DGMD on the synthetic benchmark.

It continues the coarse benchmark (``microface.experiments.coarse``, notebook 01): same subject split (read from
its ``split.json``), same kept frames, and its trained DEM (``checkpoints/dem.pt``) gives the coarse meshes.

- DGMD trains on the TRAINING subjects' ME clips only, with its self-supervised losses (flow, landmarks,
  Laplacian, normals, offset; ``microface.training.dgmd``; ``dgmd.train.weights``, ``vertex`` 0).
- "DEM + DGMD +3D supervision": a second DGMD, trained the same way on the coarse meshes of notebook 01's
  "DEM +3D supervision" (``checkpoints/dem_3d.pt``) with ``dgmd.train.supervision`` (default ``{vertex: 1.0}``:
  the training subjects' 3D ground truth) added to the weights; checkpoint ``dgmd_3d.pt``. The test subjects'
  truth never enters training. It trains a fixed number of epochs and the last one is scored: no epoch is
  chosen on test subjects. Settings are chosen on held-out TRAINING subjects
  (:func:`validate_on_training_subject`, ``tools/validate_dgmd.py``), never on the test subjects.
- Scores are on the TEST subjects' ME clips, per-vertex errors (mm) against the ground truth, on the same
  "expression-only" meshes as notebook 01 (zero pose, ground-truth shape, predicted expression), so the DEM row
  here equals DEM's row there. DGMD's offsets live in the posed camera frame; they are rotated back into the
  model frame by the inverse of the frame's predicted global rotation and added to the expression-only mesh.
- Vertices are split into MOVING ones (ground-truth displacement from the onset at the apex above
  ``moving_threshold_mm``) and STATIC ones, per clip; the columns give the error at the apex and averaged
  over the clip's kept frames for each part, and the mean motion-attention gate on each part.

Everything is written under ``out_dir``: ``checkpoints/dgmd*.pt`` (resumed by ``microface.training.loop.fit``),
``refine_table.csv`` / ``.md``, ``per_clip.csv``, ``training_curves.csv``, ``benchmark_config.json``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from microface.data.clip_landmarks import landmark_cache_dir
from microface.data.clips import ClipTensors, _to_device, clip_tensors_from_synth, collate_clips
from microface.experiments.coarse import CoarseBenchmarkSettings, _check_run_description
from microface.experiments.report import NotebookReport
from microface.mesh.geometry import axis_angle_to_matrix
from microface.metrics.geometry import moving_static_errors, moving_vertices
from microface.models.dgmd import DGMDConfig, build_dgmd
from microface.render.camera import to_render_camera
from microface.training.dem import Reconstruction, build_dem, reconstruct
from microface.training.dgmd import DGMDLossWeights, DGMDTrainSettings, RefineClip, refine_clip, train_dgmd
from microface.training.loop import load_checkpoint
from microface.utils.checks import check_supervision, config_from_dict
from microface.utils.io import write_table
from microface.viz.curves import training_curves

TABLE_NAME = "refine_table"
METHOD_COARSE = "DEM"
METHOD_REFINED = "DEM + DGMD"
SUPERVISED = " +3D supervision"  # as microface.experiments.coarse.SUPERVISED
METHOD_COARSE_3D = f"DEM{SUPERVISED}"
METHOD_REFINED_3D = f"DEM + DGMD{SUPERVISED}"
REFERENCE = "reference: neutral face (no expression)"


@dataclass
class RefineBenchmarkSettings:
    """The ``dgmd:`` section of a profile config.

    moving_threshold_mm: ground-truth apex displacement above which a vertex counts as moving; image_size: DGMD's
    own resolution for flow, landmarks and rasterization (None: DEM's, ``data.size``; fine motion needs more
    pixels than the coarse encoder); model: ``DGMDConfig`` keys; train: ``DGMDTrainSettings`` keys except ``seed``
    (the profile's seed is used), plus ``supervision``: ``DGMDLossWeights`` keys added to ``weights`` for the
    "+3D supervision" DGMD (default ``{vertex: 1.0}``).
    """

    moving_threshold_mm: float = 0.1
    image_size: int | None = None
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.moving_threshold_mm > 0:
            raise ValueError(f"dgmd.moving_threshold_mm: expected > 0, got {self.moving_threshold_mm}")
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise ValueError(f"dgmd.image_size must be an int >= 8 pixels (DGMD's crop size) or null (data.size), "
                             f"got {size!r}")
        if "seed" in self.train:
            raise ValueError("dgmd.train.seed: not a setting here; the profile's top-level seed is used")
        DGMDConfig.from_dict(self.model)
        DGMDTrainSettings.from_dict(self._train_only)
        check_supervision(self.supervision, DGMDLossWeights, "dgmd.train.supervision", "{vertex: 1.0}")

    @property
    def _train_only(self) -> dict:
        return {key: value for key, value in self.train.items() if key != "supervision"}

    @property
    def supervision(self) -> dict:
        """Loss weights added to ``train.weights`` for the "+3D supervision" DGMD."""
        return dict(self.train.get("supervision", {"vertex": 1.0}))

    def main_weights(self, supervised: bool = False) -> dict:
        """Every ``DGMDLossWeights`` term of the main DGMD; ``supervised``: plus ``supervision``, term by term."""
        weights = asdict(DGMDLossWeights.from_dict(self.train.get("weights", {})))
        if supervised:
            for term, value in self.supervision.items():
                weights[term] += value
        return weights

    @classmethod
    def from_dict(cls, values: dict | None) -> "RefineBenchmarkSettings":
        return config_from_dict(cls, values, "dgmd")

    def train_settings(self, seed: int, **overrides) -> DGMDTrainSettings:
        return DGMDTrainSettings.from_dict({**self._train_only, "seed": seed, **overrides})


# ------------------------------------------------------------------------------------------------- data
@dataclass
class EvalClip:
    """What scoring one test clip needs besides its RefineClip (all over the clip's kept frames T).

    expression_only (T, V, 3): DEM's expression on the ground-truth shape at zero pose; truth (T, V, 3): the
    ground truth at zero pose; neutral (T, V, 3): ground-truth shape, no expression; rotation (T, 3, 3): DEM's
    predicted global rotation per frame (maps model-frame offsets to the posed frame); apex: kept-frame index;
    reconstruction: DEM's ``Reconstruction`` of the clip (batch 1), for rendering.
    """

    expression_only: torch.Tensor
    truth: torch.Tensor
    neutral: torch.Tensor
    rotation: torch.Tensor
    apex: int
    key: str
    reconstruction: Reconstruction | None = None


@torch.no_grad()
def coarse_clips(dem, face_model, clips: list[ClipTensors],
                 refine_inputs: list[ClipTensors] | None = None) -> tuple[list[RefineClip], list[EvalClip]]:
    """Run DEM on each clip: RefineClips (DEM's posed meshes, the onset's weak-perspective camera, the clip's
    flow and landmarks) and the matching EvalClips (see ``EvalClip``). refine_inputs: the same clips at DGMD's
    own resolution (flow, landmarks and camera are taken from them; None: DEM's resolution)."""
    dem.eval()
    if refine_inputs is not None and len(refine_inputs) != len(clips):
        raise ValueError(f"coarse_clips: {len(refine_inputs)} refine inputs for {len(clips)} clips")
    refine, scoring = [], []
    for i, clip in enumerate(clips):
        batch = collate_clips([clip])
        recon = reconstruct(dem, face_model, batch.frames, batch.flow, batch.times)
        T = clip.frames.shape[0]
        cues = clip if refine_inputs is None else refine_inputs[i]
        if cues.key != clip.key or cues.frames.shape[0] != T:
            raise ValueError(f"coarse_clips: refine input {cues.key!r} ({cues.frames.shape[0]} frames) does not "
                             f"match clip {clip.key!r} ({T} frames)")
        H, W = cues.frames.shape[-2:]
        camera = to_render_camera(recon.output.coarse.camera[:, 0], (H, W))
        zero_pose = torch.zeros(T, 6, dtype=clip.frames.dtype, device=clip.frames.device)
        gt_shape = clip.shape[None].expand(T, -1).to(zero_pose)
        truth = face_model(gt_shape, clip.expression.to(zero_pose), zero_pose).vertices
        neutral = face_model(gt_shape, torch.zeros_like(clip.expression).to(zero_pose), zero_pose).vertices
        apex = clip.apex if clip.apex is not None else int((truth - neutral).norm(dim=-1).mean(-1).argmax())
        expression_only = face_model(gt_shape, recon.output.expression[0], zero_pose).vertices
        rotation = axis_angle_to_matrix(recon.output.coarse.pose[0, :, :3])
        # posed displacement = R (model displacement): the inverse of model_frame_offsets
        target = torch.einsum("tij,tvj->tvi", rotation, truth - expression_only)
        refine.append(RefineClip(coarse_vertices=recon.vertices[0], flow_onset_to_t=cues.flow, camera=camera,
                                 landmarks2d=cues.landmarks2d, apex=clip.apex, key=clip.key, target_offsets=target))
        scoring.append(EvalClip(expression_only=expression_only, truth=truth, neutral=neutral, rotation=rotation,
                                apex=apex, key=clip.key, reconstruction=recon))
    return refine, scoring


def model_frame_offsets(offsets: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Posed-frame offsets (T, V, 3) -> model-frame offsets R_t^T d (T, V, 3); rotation (T, 3, 3) the global
    rotation of each frame (posed = R (v - c) + c, so a posed displacement d is R^T d in the model frame)."""
    return torch.einsum("tji,tvj->tvi", rotation, offsets)


def score_clip(mesh: torch.Tensor, scoring: EvalClip, moving: torch.Tensor, gate: torch.Tensor | None = None) -> dict:
    """Per-vertex errors of ``mesh`` (T, V, 3) against the clip's truth, split by ``moving`` (V,) bool; the mean
    gate (T, V) on each part when given (``microface.metrics.geometry.moving_static_errors``)."""
    return moving_static_errors(mesh, scoring.truth, moving, scoring.apex, gate=gate)


# ----------------------------------------------------------------------------------------------- driver
def load_split(coarse_dir: Path) -> dict:
    path = Path(coarse_dir) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the coarse benchmark (notebook 01_dem_pretrain) first")
    return json.loads(path.read_text())


def load_trained_dem(coarse_dir: Path, face_model, dem_settings: dict, seed: int, device: torch.device,
                     checkpoint: str = "dem.pt"):
    """DEM from the coarse benchmark's ``checkpoints/<checkpoint>`` (``dem.pt``; ``dem_3d.pt``: "DEM +3D
    supervision"), built from the ``dem:`` section's encoder/model."""
    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    path = Path(coarse_dir) / "checkpoints" / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the coarse benchmark (notebook 01_dem_pretrain) first")
    dem = build_dem(face_model, config.encoder, config.model, seed).to(device)
    load_checkpoint(path, dem)
    return dem.eval()


def refine_and_score(dgmd, refine: list[RefineClip], scoring: list[EvalClip], threshold_mm: float,
                     method: str) -> list[dict]:
    """Refine each test clip with a trained DGMD and score it (rows of ``score_clip`` with method and key)."""
    rows = []
    for clip, truth in zip(refine, scoring):
        refined = refine_clip(dgmd, clip)
        mesh = truth.expression_only + model_frame_offsets(refined.offsets, truth.rotation)
        moving = moving_vertices(truth.truth, truth.apex, threshold_mm)
        rows.append({"method": method, "key": clip.key, "n_moving": int(moving.sum()),
                     **score_clip(mesh, truth, moving, refined.gate),
                     "offset_mean_mm": float(refined.offsets.norm(dim=-1).mean())})
    return rows


def unrefined_rows(scoring: list[EvalClip], threshold_mm: float, method: str = METHOD_COARSE,
                   reference: bool = True) -> list[dict]:
    """Rows for the coarse model alone (``method``) and, when ``reference``, for the neutral face (no DGMD)."""
    rows = []
    for truth in scoring:
        moving = moving_vertices(truth.truth, truth.apex, threshold_mm)
        meshes = ((method, truth.expression_only),) + (((REFERENCE, truth.neutral),) if reference else ())
        for method_name, mesh in meshes:
            rows.append({"method": method_name, "key": truth.key, "n_moving": int(moving.sum()),
                         **score_clip(mesh, truth, moving)})
    return rows


def summary_table(per_clip: pd.DataFrame, split: str) -> pd.DataFrame:
    """Mean per method (in order of first appearance) of every numeric column, plus the std of the apex errors."""
    numeric = [c for c in per_clip.columns if c not in ("method", "key") and pd.api.types.is_numeric_dtype(per_clip[c])]
    grouped = per_clip.groupby("method", sort=False)
    table = grouped[numeric].mean()
    for part in ("moving", "static"):
        table[f"{part}_apex_std_mm"] = grouped[f"{part}_apex_mm"].std()
    table["n_test_clips"] = grouped.size()
    table = table.reset_index()
    table["split"] = split
    return table


def prepare_refine_data(synth_root, coarse_dir, dem_settings: dict, seed: int, image_size: int, flow_method: str,
                        device, show_progress: bool = True, refine_size: int | None = None):
    """Everything the DGMD runs share: (face_model, train RefineClips, test RefineClips, test EvalClips, split).
    image_size: DEM's input size; refine_size: DGMD's flow / landmark resolution (None: image_size)."""
    data = _coarse_data(synth_root, coarse_dir, dem_settings, seed, image_size, flow_method, device, show_progress,
                        refine_size)
    return data.face_model, data.train_refine, data.test_refine, data.test_scoring, data.split


@dataclass
class CoarseData:
    """DEM's coarse clips of both splits (``coarse_clips`` outputs) with each clip's subject."""

    face_model: object
    train_refine: list[RefineClip]
    train_scoring: list[EvalClip]
    train_subjects: list[str]
    test_refine: list[RefineClip]
    test_scoring: list[EvalClip]
    split: dict


def _coarse_data(synth_root, coarse_dir, dem_settings: dict, seed: int, image_size: int, flow_method: str, device,
                 show_progress: bool, refine_size: int | None) -> CoarseData:
    return _coarse_data_of(synth_root, coarse_dir, dem_settings, seed, image_size, flow_method, device, show_progress,
                           refine_size)["dem.pt"]


def _coarse_data_of(synth_root, coarse_dir, dem_settings: dict, seed: int, image_size: int, flow_method: str, device,
                    show_progress: bool, refine_size: int | None,
                    checkpoints: tuple[str, ...] = ("dem.pt",)) -> dict[str, CoarseData]:
    """``CoarseData`` of each of notebook 01's DEM ``checkpoints`` (the clips are read once)."""
    from microface.data.datasets import load_dataset
    from microface.face.open_model import OpenFaceModel

    device = torch.device(device)
    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    split = load_split(coarse_dir)
    micro = {r.key: r for r in load_dataset("synth", Path(synth_root), kind="micro")}
    missing = [k for k in split["micro_train"] + split["micro_test"] if k not in micro]
    if missing:
        raise ValueError(f"{coarse_dir}/split.json names clips {missing[:3]} absent from {synth_root}: the coarse "
                         "benchmark was run on another synthetic benchmark; rerun notebook 01")
    face_model = OpenFaceModel().to(device)

    def tensors(keys: list[str], size: int) -> list[ClipTensors]:
        clips = clip_tensors_from_synth([micro[k] for k in keys], size, flow_method, config.max_frames,
                                        show_progress, config.landmarks, landmark_cache_dir(synth_root))
        return [_to_device(c, device) for c in clips]

    def refine_inputs(keys: list[str]) -> list[ClipTensors] | None:
        return None if refine_size in (None, image_size) else tensors(keys, refine_size)

    train_clips, train_inputs = tensors(split["micro_train"], image_size), refine_inputs(split["micro_train"])
    test_clips, test_inputs = tensors(split["micro_test"], image_size), refine_inputs(split["micro_test"])
    out = {}
    for checkpoint in checkpoints:
        dem = load_trained_dem(coarse_dir, face_model, dem_settings, seed, device, checkpoint)
        train_refine, train_scoring = coarse_clips(dem, face_model, train_clips, train_inputs)
        test_refine, test_scoring = coarse_clips(dem, face_model, test_clips, test_inputs)
        out[checkpoint] = CoarseData(face_model, train_refine, train_scoring,
                                     [micro[k].subject for k in split["micro_train"]], test_refine, test_scoring, split)
    return out


def validate_on_training_subject(synth_root, coarse_dir, dem_settings: dict, dgmd_settings: dict, seed: int = 0, *,
                                 image_size: int = 64, flow_method: str = "dis", device="cpu",
                                 holdout: str | None = None, show_progress: bool = True,
                                 dem_dir: str | Path | None = None) -> pd.DataFrame:
    """Choose DGMD settings without the test subjects: one fold over notebook 01's TRAINING subjects.

    Only the training subjects' clips are read (a test subject's folder may be absent). ``holdout`` is held out of
    everything: a fold DEM is trained the way notebook 01 trains DEM (same ``dem:`` settings and seed: pretrained on
    the other training subjects' macro clips, fine-tuned on their ME clips; notebook 01's checkpoint cannot serve,
    since both its stages saw the held-out subject, whose face the synthetic macro clips also show), DGMD is trained
    on the fold DEM's meshes of the other training subjects, and DEM vs DEM + DGMD is scored on the held-out
    subject's ME clips, coarse meshes from the fold DEM: the held-out subject plays a test subject's part.

    Args:
        synth_root, dem_settings, dgmd_settings, seed, image_size, flow_method, device, show_progress: as
            ``run_refine_benchmark``.
        coarse_dir: notebook 01's output folder; only its ``split.json`` is read.
        holdout: the held-out training subject, e.g. "sub04" (None: the last training subject).
        dem_dir: folder for the fold DEM's checkpoints, resumed by a rerun with the same settings (None: trained in
            memory; nothing is written).

    Returns:
        The per-clip rows' summary (``summary_table``), split "validation: held-out <subject>, trained on <others>
        (DEM and DGMD)".
    """
    settings = RefineBenchmarkSettings.from_dict(dgmd_settings)
    split = load_split(coarse_dir)
    subjects = list(split["train_subjects"])
    holdout = subjects[-1] if holdout is None else holdout
    if holdout not in subjects or len(subjects) < 2:
        raise ValueError(f"validation: held-out subject {holdout!r} must be one of at least two training subjects "
                         f"{subjects} (the test subjects are never used here)")
    device = torch.device(device)
    clips = _fold_clips(synth_root, coarse_dir, split, holdout, dem_settings, image_size, flow_method, device,
                        show_progress, settings.image_size)
    from microface.face.open_model import OpenFaceModel

    face_model = OpenFaceModel().to(device)
    if dem_dir is not None:
        dem_dir = Path(dem_dir)
        _check_run_description(dem_dir, {"dem": dem_settings, "seed": seed, "image_size": image_size,
                                         "flow_method": flow_method, "holdout": holdout,
                                         "macro": [c.key for c in clips["macro"]],
                                         "micro": [c.key for c in clips["micro"]]})
    dem = _fold_dem(face_model, clips["macro"], clips["micro"], dem_settings, seed, dem_dir, holdout, device)
    train_refine, _ = coarse_clips(dem, face_model, clips["micro"], clips["micro_refine"])
    held_refine, held_scoring = coarse_clips(dem, face_model, clips["held"], clips["held_refine"])
    dgmd, _ = train_variant(face_model, train_refine, settings, seed, None, f"dgmd (validation, without {holdout})",
                            device=device)
    rows = unrefined_rows(held_scoring, settings.moving_threshold_mm)
    rows += refine_and_score(dgmd, held_refine, held_scoring, settings.moving_threshold_mm, METHOD_REFINED)
    others = ", ".join(s for s in subjects if s != holdout)
    return summary_table(pd.DataFrame(rows), f"validation: held-out {holdout}, trained on {others} (DEM and DGMD)")


def _fold_clips(synth_root, coarse_dir, split: dict, holdout: str, dem_settings: dict, image_size: int,
                flow_method: str, device: torch.device, show_progress: bool,
                refine_size: int | None) -> dict[str, list[ClipTensors] | None]:
    """The training subjects' clips of ``split`` for a validation fold, and no other clip.

    Returns {"macro": the other training subjects' macro clips, "micro": their ME clips, "held": ``holdout``'s ME
    clips} at DEM's ``image_size``, and "micro_refine" / "held_refine": the same ME clips at DGMD's ``refine_size``
    (None when it is DEM's). The benchmark's coding sheets are listed without opening an image
    (``check_images="none"``); frames are read for the clips returned only.
    """
    from microface.data.datasets import load_dataset

    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    listed = {r.key: r for r in load_dataset("synth", Path(synth_root), kind="all", on_error="skip",
                                             check_images="none")}
    wanted = list(split["macro_train"]) + list(split["micro_train"])
    missing = [k for k in wanted if k not in listed]
    if missing:
        raise ValueError(f"{coarse_dir}/split.json names training clips {missing[:3]} absent from {synth_root}: the "
                         "coarse benchmark was run on another synthetic benchmark; rerun notebook 01")

    def tensors(keys: list[str], size: int) -> list[ClipTensors]:
        records = [listed[k] for k in keys]
        clips = clip_tensors_from_synth(records, size, flow_method, config.max_frames, show_progress,
                                        config.landmarks, landmark_cache_dir(synth_root))
        return [_to_device(c, device) for c in clips]

    held = [k for k in split["micro_train"] if listed[k].subject == holdout]
    micro = [k for k in split["micro_train"] if listed[k].subject != holdout]
    macro = [k for k in split["macro_train"] if listed[k].subject != holdout]
    same = refine_size in (None, image_size)
    return {"macro": tensors(macro, image_size), "micro": tensors(micro, image_size), "held": tensors(held, image_size),
            "micro_refine": None if same else tensors(micro, refine_size),
            "held_refine": None if same else tensors(held, refine_size)}


def _fold_dem(face_model, macro_clips: list[ClipTensors], micro_clips: list[ClipTensors], dem_settings: dict,
              seed: int, dem_dir: Path | None, holdout: str, device: torch.device):
    """DEM trained as notebook 01 trains it (``run_coarse_benchmark``'s two DEM stages) on one fold's clips:
    pretrained on ``macro_clips``, then fine-tuned on ``micro_clips`` (regularised to the pretrained model when the
    ``base`` weight is > 0). dem_dir: checkpoints ``dem_pretrain.pt`` / ``dem.pt`` there (None: none). -> DEM (eval)."""
    from microface.training.dem import train_dem

    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    regularise = config.stage(1, config.finetune_lr, seed, False).loss_weights.base > 0
    pretrain_path = None if dem_dir is None else dem_dir / "dem_pretrain.pt"
    dem = build_dem(face_model, config.encoder, config.model, seed).to(device)
    train_dem(dem, face_model, macro_clips, config.stage(config.pretrain_epochs, config.lr, seed, False),
              pretrain_path, desc=f"fold DEM pretrain (without {holdout})")
    if pretrain_path is not None:
        load_checkpoint(pretrain_path, dem)
    train_dem(dem, face_model, micro_clips, config.stage(config.finetune_epochs, config.finetune_lr, seed, False),
              None if dem_dir is None else dem_dir / "dem.pt", desc=f"fold DEM fine-tune (without {holdout})",
              regularise_to_base=regularise)
    return dem.eval()


def train_variant(face_model, train_refine: list[RefineClip], settings: RefineBenchmarkSettings, seed: int,
                  checkpoint: Path | None, name: str, model_overrides: dict | None = None,
                  weight_overrides: dict | None = None, device="cpu", supervised: bool = False):
    """Train one DGMD (the config's, with overrides for ablations; ``supervised``: with ``train.supervision``
    added to the weights) -> (model, history)."""
    model_cfg = {**settings.model, **(model_overrides or {})}
    weights = {**settings.main_weights(supervised), **(weight_overrides or {})}
    train = settings.train_settings(seed, weights=weights)
    dgmd = build_dgmd(face_model, model_cfg, seed).to(device)
    history = train_dgmd(dgmd, train_refine, train, checkpoint, desc=name)
    return dgmd.eval(), history


def run_refine_benchmark(synth_root, coarse_dir, out_dir, dem_settings: dict, dgmd_settings: dict, seed: int = 0, *,
                         image_size: int = 64, flow_method: str = "dis", device: str | torch.device = "cpu",
                         show_progress: bool = True) -> pd.DataFrame:
    """Train DGMD on the training subjects' DEM meshes and score DEM vs DEM + DGMD on the test subjects.

    synth_root: the synthetic benchmark; coarse_dir: notebook 01's output folder (``split.json``,
    ``checkpoints/dem.pt``, ``dem_3d.pt``); dem_settings / dgmd_settings: the profile's ``dem:`` and ``dgmd:``
    sections; image_size, flow_method: the ``data:`` section's. Returns the table: one row per method (DEM,
    DEM + DGMD, DEM +3D supervision, DEM + DGMD +3D supervision, the neutral
    reference) with ``{moving,static,all}_{apex,clip}_mm``, the apex std per part, the mean gate per part (DGMD),
    ``n_moving`` (mean moving vertices per clip), ``offset_mean_mm``, ``n_test_clips``, ``split``.
    """
    settings = RefineBenchmarkSettings.from_dict(dgmd_settings)
    out_dir = Path(out_dir)
    device = torch.device(device)
    _check_run_description(out_dir, {"dgmd": asdict(settings), "dem": dem_settings, "seed": seed,
                                     "image_size": image_size, "flow_method": flow_method,
                                     "coarse_split": load_split(coarse_dir)["label"]})
    coarse = _coarse_data_of(synth_root, coarse_dir, dem_settings, seed, image_size, flow_method, device,
                             show_progress, settings.image_size, ("dem.pt", "dem_3d.pt"))
    main, supervised = coarse["dem.pt"], coarse["dem_3d.pt"]
    face_model, split = main.face_model, main.split
    threshold = settings.moving_threshold_mm
    dgmd, history = train_variant(face_model, main.train_refine, settings, seed, out_dir / "checkpoints" / "dgmd.pt",
                                  "dgmd", device=device)
    dgmd_3d, history_3d = train_variant(face_model, supervised.train_refine, settings, seed,
                                        out_dir / "checkpoints" / "dgmd_3d.pt", f"dgmd{SUPERVISED}", device=device,
                                        supervised=True)
    rows = unrefined_rows(main.test_scoring, threshold)
    rows += refine_and_score(dgmd, main.test_refine, main.test_scoring, threshold, METHOD_REFINED)
    rows += unrefined_rows(supervised.test_scoring, threshold, METHOD_COARSE_3D, reference=False)
    rows += refine_and_score(dgmd_3d, supervised.test_refine, supervised.test_scoring, threshold, METHOD_REFINED_3D)
    per_clip = pd.DataFrame(rows)
    order = [METHOD_COARSE, METHOD_REFINED, METHOD_COARSE_3D, METHOD_REFINED_3D, REFERENCE]
    per_clip["method"] = pd.Categorical(per_clip["method"], categories=order, ordered=True)
    per_clip = per_clip.sort_values(["method", "key"], kind="stable").reset_index(drop=True)
    per_clip["method"] = per_clip["method"].astype(str)
    table = summary_table(per_clip, split["label"])
    write_table(per_clip, out_dir, "per_clip", markdown=False)
    write_table(training_curves({"DGMD (ME, training subjects)": history,
                                 f"DGMD{SUPERVISED} (ME, training subjects)": history_3d}),
                out_dir, "training_curves", markdown=False)
    write_table(table, out_dir, TABLE_NAME)
    return table


@torch.no_grad()
def example_refinement(dgmd, refine: RefineClip, scoring: EvalClip, threshold_mm: float) -> dict[str, np.ndarray]:
    """Arrays for figures of one test clip at its apex: vertices (V,3) refined expression-only mesh, faces (F,3),
    error_coarse (V,), error_refined (V,) mm, gate (V,), moving (V,) bool, and over the clip's frames the mean
    displacement from the onset of the moving vertices: truth / coarse / refined (T,) mm."""
    refined = refine_clip(dgmd, refine)
    mesh = scoring.expression_only + model_frame_offsets(refined.offsets, scoring.rotation)
    moving = moving_vertices(scoring.truth, scoring.apex, threshold_mm)
    a = scoring.apex

    def displacement(x: torch.Tensor) -> np.ndarray:
        return (x - x[:1]).norm(dim=-1)[:, moving].mean(-1).cpu().numpy() if bool(moving.any()) else np.zeros(len(x))

    return {"vertices": mesh[a].cpu().numpy(), "faces": dgmd.faces.cpu().numpy(),
            "error_coarse": (scoring.expression_only[a] - scoring.truth[a]).norm(dim=-1).cpu().numpy(),
            "error_refined": (mesh[a] - scoring.truth[a]).norm(dim=-1).cpu().numpy(),
            "gate": refined.gate[a].cpu().numpy(), "moving": moving.cpu().numpy(),
            "displacement_truth": displacement(scoring.truth),
            "displacement_coarse": displacement(scoring.expression_only),
            "displacement_refined": displacement(mesh)}



def load_refine_run(synth_root, coarse_dir, out_dir, dem_settings: dict, dgmd_settings: dict, seed: int = 0, *,
                    image_size: int = 64, flow_method: str = "dis", device="cpu", show_progress: bool = False):
    """The trained DGMD of a finished ``run_refine_benchmark`` (``out_dir/checkpoints/dgmd.pt``) with the test
    clips -> (dgmd, test RefineClips, test EvalClips), for figures."""
    settings = RefineBenchmarkSettings.from_dict(dgmd_settings)
    path = Path(out_dir) / "checkpoints" / "dgmd.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run run_refine_benchmark (notebook 02_dgmd_refine) first")
    face_model, _, test_refine, test_scoring, _ = prepare_refine_data(
        synth_root, coarse_dir, dem_settings, seed, image_size, flow_method, device, show_progress,
        refine_size=settings.image_size)
    dgmd = build_dgmd(face_model, settings.model, seed).to(torch.device(device))
    load_checkpoint(path, dgmd)
    return dgmd.eval(), test_refine, test_scoring


def most_moving_clip(scoring: list[EvalClip], threshold_mm: float) -> int:
    """Index of the test clip with the most moving vertices (the clearest example for a figure)."""
    if not scoring:
        raise ValueError("most_moving_clip: no clips")
    return int(np.argmax([int(moving_vertices(s.truth, s.apex, threshold_mm).sum()) for s in scoring]))


# ------------------------------------------------------------------------------------------- notebook 02
REFINE_COLUMNS = ["method", "moving_apex_mm", "moving_apex_std_mm", "static_apex_mm", "static_apex_std_mm",
                  "moving_clip_mm", "static_clip_mm", "all_apex_mm", "gate_moving", "gate_static", "offset_mean_mm",
                  "n_moving", "n_test_clips"]


def run_refine_experiment(profile: str, seed: int, device: str, synth: dict, data: dict, dem: dict, dgmd: dict,
                          results_dir) -> NotebookReport:
    """Notebook 02_dgmd_refine end to end: DGMD trained and scored (``run_refine_benchmark``) into
    ``results_dir/dgmd``, its training curves, and the error / motion-attention maps of the test clip with the
    most moving vertices (into ``results_dir/figures``).

    Args:
        profile, seed, device: the config's top-level keys.
        synth, data, dem, dgmd: the config's sections of those names.
        results_dir: results/<profile>, relative to the compendium root or absolute; needs notebook 01's ``dem/``.

    Returns:
        tables: ``refine_table`` (``REFINE_COLUMNS``); figures: ``training_curves``, ``dgmd_error_dem``,
        ``dgmd_error_refined``, ``dgmd_attention``, ``dgmd_displacement``; notes: ``setup``, ``split``,
        ``verdict`` (moving error lower? static error not raised?), ``viewer``; paths: ``out_dir``, ``synth_root``,
        ``viewer``.
    """
    import matplotlib.pyplot as plt

    from microface.config import project_root, resolve
    from microface.experiments.coarse import benchmark_root
    from microface.viz import mesh as viz
    from microface.viz.curves import plot_training_curves, read_training_curves
    from microface.viz.save import save_figure

    report = NotebookReport()
    results = resolve(results_dir, project_root())
    coarse_dir = results / "dem"
    out_dir = results / "dgmd"
    synth_root = benchmark_root(results, data, synth, profile, seed)
    report.notes["setup"] = (f"profile {profile}: synthetic benchmark {synth_root}; DEM from {coarse_dir}; "
                             f"outputs {out_dir}")

    # train DGMD on the training subjects and score the test subjects
    table = run_refine_benchmark(synth_root, coarse_dir, out_dir, dem, dgmd, seed=seed, image_size=data["size"],
                                 flow_method=data["flow_method"], device=device)
    report.notes["split"] = table["split"].iloc[0]
    report.tables["refine_table"] = table[REFINE_COLUMNS]
    dem_row, dgmd_row = (table.set_index("method").loc[name] for name in (METHOD_COARSE, METHOD_REFINED))
    supervised_rows = [table.set_index("method").loc[name] for name in (METHOD_COARSE_3D, METHOD_REFINED_3D)]
    report.notes["verdict"] = "\n".join([
        (f"moving vertices, apex: DEM {dem_row.moving_apex_mm:.4f} mm -> DEM + DGMD {dgmd_row.moving_apex_mm:.4f} mm "
         f"({'lower' if dgmd_row.moving_apex_mm < dem_row.moving_apex_mm else 'NOT lower'})"),
        (f"static vertices, apex: DEM {dem_row.static_apex_mm:.4f} mm -> DEM + DGMD {dgmd_row.static_apex_mm:.4f} mm "
         f"({'not raised' if dgmd_row.static_apex_mm <= dem_row.static_apex_mm else 'RAISED'})"),
        (f"with 3D supervision (other methods), moving vertices, apex: {METHOD_COARSE_3D} "
         f"{supervised_rows[0].moving_apex_mm:.4f} mm -> {METHOD_REFINED_3D} "
         f"{supervised_rows[1].moving_apex_mm:.4f} mm")])

    # training curves: pixels for flow and landmarks, mm² for the regularisers, mm for the vertex term
    curves = read_training_curves(out_dir)
    report.figures["training_curves"] = plot_training_curves(
        curves, out_dir / "training_curves.png",
        terms=("loss", "flow", "landmark", "laplacian", "normal", "offset", "vertex"))

    # error and motion-attention maps of the test clip with the most moving vertices, at its apex
    model, test_refine, test_scoring = load_refine_run(
        synth_root, coarse_dir, out_dir, dem, dgmd, seed, image_size=data["size"], flow_method=data["flow_method"],
        device=device)
    k = most_moving_clip(test_scoring, dgmd["moving_threshold_mm"])
    example = example_refinement(model, test_refine[k], test_scoring[k], dgmd["moving_threshold_mm"])
    vmax = float(max(example["error_coarse"].max(), example["error_refined"].max()))
    figures = results / "figures"
    for name, values, title in (("dgmd_error_dem", example["error_coarse"], "DEM"),
                                ("dgmd_error_refined", example["error_refined"], "DEM + DGMD")):
        figure = viz.error_heatmap_figure(example["vertices"], example["faces"], values,
                                          title=f"{test_scoring[k].key} apex: {title}", vmax=vmax)
        save_figure(figure, figures / name)
        report.figures[name] = figure
    figure = viz.attention_map_figure(example["vertices"], example["faces"], example["gate"],
                                      title=f"{test_scoring[k].key} apex: motion attention")
    save_figure(figure, figures / "dgmd_attention")
    report.figures["dgmd_attention"] = figure

    refined = refine_clip(model, test_refine[k])
    sequence = test_scoring[k].expression_only + model_frame_offsets(refined.offsets, test_scoring[k].rotation)
    html = viz.mesh_sequence_html(sequence.cpu().numpy(), example["faces"], figures / "dgmd_attention_sequence.html",
                                  values=refined.gate.cpu().numpy(), title=f"{test_scoring[k].key}: DEM + DGMD, gate",
                                  value_label="gate")
    report.notes["viewer"] = f"interactive viewer: {html}"

    # mean displacement of the moving vertices over the clip
    figure, axis = plt.subplots(figsize=(5, 3))
    for name, key in (("ground truth", "displacement_truth"), ("DEM", "displacement_coarse"),
                      ("DEM + DGMD", "displacement_refined")):
        axis.plot(example[key], marker="o", label=name)
    axis.set_xlabel("kept frame (onset = 0)")
    axis.set_ylabel("mean displacement of moving vertices (mm)")
    axis.legend()
    save_figure(figure, figures / "dgmd_displacement")
    report.figures["dgmd_displacement"] = figure
    for figure in report.figures.values():
        plt.close(figure)
    report.paths.update(out_dir=out_dir, synth_root=synth_root, viewer=html)
    return report
