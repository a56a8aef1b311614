"""The ablation table of notebook 05_ablations: remove one part at a time, score like notebook 04.

Every variant reuses what notebooks 01 and 02 trained where it can and retrains only what the ablation changes, on
the TRAINING subjects (fixed epochs, no epoch chosen on a test subject); scores are on the TEST subjects'
ME clips with ``microface.experiments.main_table.method_row`` (the same columns as the main table).

- full model: DEM + DGMD (notebooks 01 + 02);
- without DEM: baseline-FT's per-frame meshes refined by a DGMD retrained on them;
- without DGMD: DEM alone;
- without macro pretraining: "DEM w/o macro pretraining" (notebook 01) + the full model's DGMD;
- DEM's parts, at test time on the same trained DEM + DGMD (nothing retrained): without the Neural ODE (the residual
  fusion's per-frame codes), and without motion (the static onset code on every frame: what the motion branch adds);
- DGMD without each local cue (geometry, landmarks, flow), without motion attention, with per-pixel instead of
  region-based pixel-vertex mapping: DGMD retrained with that switch;
- each DGMD loss term removed (``dgmd_loss_terms``: flow, landmark, laplacian, normal, offset): DGMD retrained
  without it;
- each DEM loss term removed (``dem_loss_terms``: photometric, perceptual, landmark, smooth, consistency, ...): DEM's
  ME fine-tuning stage rerun from notebook 01's pretrained checkpoint without that term (the macro pretraining
  keeps every term), scored with the full model's DGMD;
- a term whose weight is already 0 in the main (self-supervised) model, such as ``param`` or ``vertex`` (the 3D
  truth, see the "+3D supervision" rows of notebook 04), cannot be removed: ``check_removable`` refuses it before
  anything trains;
- oracle landmarks: DEM (both stages) and DGMD retrained as notebooks 01 and 02 train them, and scored, with the
  benchmark's ground-truth 2D landmarks in place of the detected ones (``dem.landmarks: oracle``); no real video
  has them, so this row measures what the landmark detector costs. When the config itself asks for the oracle,
  the row is the full model.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch

from microface.experiments.coarse import CoarseBenchmarkSettings, _check_run_description, _train_stage
from microface.experiments.main_table import EvaluationSettings, finish_table, method_row, prepare_eval_data
from microface.experiments.refine import RefineBenchmarkSettings, coarse_clips, train_variant
from microface.experiments.report import NotebookReport
from microface.models.baseline import build_baseline
from microface.training.dem import build_dem, train_dem
from microface.training.dgmd import DGMDLossWeights
from microface.training.loop import load_checkpoint
from microface.utils.checks import config_from_dict
from microface.utils.io import write_table
from microface.utils.runtime import progress

TABLE_NAME = "ablation_table"
ORACLE_LANDMARKS = "oracle landmarks"
CUES = {"geometry": "use_geometry", "landmarks": "use_landmarks", "flow": "use_flow"}
DGMD_LOSS_TERMS = tuple(f.name for f in fields(DGMDLossWeights))


@dataclass
class AblationSettings:
    """The ``ablations:`` section of a profile config.

    dem_loss_terms: DEM loss terms (``LossWeights`` names) whose removal is ablated by rerunning DEM's fine-tuning
    stage; dgmd_loss_terms: DGMD loss terms removed one at a time; image_metrics: compute the Inception distance
    and FID for every variant (minutes each on CPU); recognition: score recognition from reconstruction.
    """

    dem_loss_terms: list = field(default_factory=list)
    dgmd_loss_terms: list = field(default_factory=lambda: [t for t in DGMD_LOSS_TERMS if t != "vertex"])
    image_metrics: bool = True
    recognition: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dgmd_loss_terms) - set(DGMD_LOSS_TERMS))
        if unknown:
            raise ValueError(f"ablations.dgmd_loss_terms: unknown term(s) {unknown}; choose from {DGMD_LOSS_TERMS}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "AblationSettings":
        return config_from_dict(cls, values, "ablations")


def check_removable(terms: list, weights: dict, section: str, weights_key: str) -> None:
    """Refuse to ablate a loss term that is not there: one unknown to ``weights`` or whose weight is already 0.

    Args:
        terms: the loss terms to remove one at a time; weights: every term's weight in the full model.
        section: the config key listing ``terms`` (named in the error); weights_key: the config key of ``weights``.
    """
    unknown = sorted(set(terms) - set(weights))
    if unknown:
        raise ValueError(f"{section}: unknown loss term(s) {unknown}; choose from {sorted(weights)}")
    off = [term for term in terms if not weights[term] > 0]
    if off:
        raise ValueError(f"{section}: {off} already weigh 0 in {weights_key}, so removing them changes nothing; "
                         f"drop them from {section} (the terms that weigh > 0: "
                         f"{[t for t, w in weights.items() if w > 0]})")


def run_ablations(synth_root, coarse_dir, refine_dir, out_dir, dem_settings: dict, dgmd_settings: dict,
                  eval_settings: dict, ablation_settings: dict, class_map: str = "5class", seed: int = 0, *,
                  image_size: int = 64, flow_method: str = "dis", device="cpu",
                  show_progress: bool = True) -> pd.DataFrame:
    """Train what each ablation changes and score every variant (module docstring). Writes ``ablation_table.csv`` /
    ``.md`` and ``per_clip.csv`` under ``out_dir``; checkpoints under ``out_dir/checkpoints`` resume."""
    settings = AblationSettings.from_dict(ablation_settings)
    evaluation = EvaluationSettings.from_dict(eval_settings)
    refine = RefineBenchmarkSettings.from_dict(dgmd_settings)
    coarse = CoarseBenchmarkSettings.from_dict(dem_settings)
    check_removable(settings.dgmd_loss_terms, refine.main_weights(), "ablations.dgmd_loss_terms", "dgmd.train.weights")
    check_removable(settings.dem_loss_terms, coarse.main_weights(), "ablations.dem_loss_terms", "dem.weights")
    out_dir, device = Path(out_dir), torch.device(device)
    checkpoints = out_dir / "checkpoints"
    _check_run_description(out_dir, {"ablations": asdict(settings), "evaluate": asdict(evaluation),
                                     "dem": dem_settings, "dgmd": dgmd_settings, "seed": seed,
                                     "image_size": image_size, "flow_method": flow_method, "class_map": class_map})
    data = prepare_eval_data(synth_root, coarse_dir, dem_settings, dgmd_settings, class_map, image_size, flow_method,
                             device, show_progress)
    face_model = data.face_model

    def load(builder, name: str):
        path = Path(coarse_dir) / "checkpoints" / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run notebook 01_dem_pretrain first")
        model = builder().to(device)
        load_checkpoint(path, model)
        return model.eval()

    def new_dem():
        return build_dem(face_model, coarse.encoder, coarse.model, seed)

    dem = load(new_dem, "dem.pt")
    baseline_ft = load(lambda: build_baseline(face_model, coarse.encoder, seed), "baseline_ft.pt")
    scratch = load(new_dem, "dem_scratch.pt")
    full_dgmd_path = Path(refine_dir) / "checkpoints" / "dgmd.pt"
    if not full_dgmd_path.is_file():
        raise FileNotFoundError(f"{full_dgmd_path} is missing: run notebook 02_dgmd_refine first")

    def refine_clips_of(model):
        return coarse_clips(model, face_model, data.train_clips, data.train_refine_inputs)[0]

    dem_train = refine_clips_of(dem)

    def dgmd_variant(name: str, train_clips, model_overrides=None, weight_overrides=None):
        return train_variant(face_model, train_clips, refine, seed, checkpoints / f"dgmd_{name}.pt", name,
                             model_overrides, weight_overrides, device)[0]

    from microface.models.dgmd import DGMDConfig, build_dgmd

    full_dgmd = build_dgmd(face_model, refine.model, seed).to(device)
    load_checkpoint(full_dgmd_path, full_dgmd)  # notebook 02's DGMD
    full_dgmd.eval()
    variants: list[tuple[str, str, object, object]] = [
        ("full model (DEM + DGMD)", "-", dem, full_dgmd),
        ("w/o DEM (baseline-FT + DGMD)", "model", baseline_ft,
         dgmd_variant("without_dem", refine_clips_of(baseline_ft))),
        ("w/o DGMD (DEM)", "model", dem, None),
        ("w/o macro pretraining", "model", scratch, full_dgmd),
        ("DEM w/o Neural ODE (residual-fusion codes)", "DEM part", dem_without_ode(dem), full_dgmd),
        ("DEM w/o motion (onset code on every frame)", "DEM part", dem_without_motion(dem), full_dgmd),
    ]
    for cue, switch in CUES.items():
        variants.append((f"DGMD w/o {cue} cue", "cue", dem, dgmd_variant(f"without_{cue}", dem_train, {switch: False})))
    variants.append(("DGMD w/o motion attention", "attention", dem,
                     dgmd_variant("without_attention", dem_train, {"use_attention": False})))
    full_config = DGMDConfig.from_dict(refine.model)
    if full_config.temporal_rank > 0:
        variants.append(("DGMD w/o temporal flow denoising", "denoising", dem,
                         dgmd_variant("without_denoising", dem_train, {"temporal_rank": 0})))
    if full_config.flow_affine_free:
        variants.append(("DGMD w/o affine-free flow cues", "denoising", dem,
                         dgmd_variant("without_affine_free", dem_train, {"flow_affine_free": False})))
    variants.append(("DGMD per-pixel mapping (not region-based)", "mapping", dem,
                     dgmd_variant("per_pixel", dem_train, {"mapping": "per_pixel"})))
    for term in settings.dgmd_loss_terms:
        variants.append((f"DGMD loss w/o {term}", "DGMD loss", dem,
                         dgmd_variant(f"without_loss_{term}", dem_train, weight_overrides={term: 0.0})))
    for term in settings.dem_loss_terms:
        variants.append((f"DEM loss w/o {term}", "DEM loss", dem_without_term(term, face_model, coarse, data, seed,
                                                                             coarse_dir, checkpoints, device),
                         full_dgmd))

    scored = [(name, group, model, dgmd, data) for name, group, model, dgmd in variants]
    if coarse.landmarks == "oracle":
        scored.append((ORACLE_LANDMARKS, "landmarks", dem, full_dgmd, data))
    else:
        oracle_dem, oracle_dgmd, oracle_data = oracle_landmark_models(
            synth_root, coarse_dir, dem_settings, dgmd_settings, class_map, seed, image_size, flow_method, checkpoints,
            device, show_progress)
        scored.append((ORACLE_LANDMARKS, "landmarks", oracle_dem, oracle_dgmd, oracle_data))

    rows, per_clip = [], []
    for name, group, model, dgmd, variant_data in progress(scored, desc="score ablations", disable=not show_progress):
        row, clip_rows = method_row(name, model, dgmd, variant_data, evaluation, out_dir, seed, device,
                                    image_metrics=settings.image_metrics, recognition=settings.recognition)
        rows.append({"group": group, **row})
        per_clip += clip_rows
    table = finish_table(rows, data)
    full = table.iloc[0]
    table.insert(3, "delta_all_apex_mm", table["all_apex_mm"] - full["all_apex_mm"])
    write_table(pd.DataFrame(per_clip), out_dir, "per_clip", markdown=False)
    write_table(table, out_dir, TABLE_NAME)
    return table


class _NoMotion(torch.nn.Module):
    """A motion encoder that sees no motion: features (B, T, M) of zeros, whatever the flow (B, T, 2, H, W)."""

    def __init__(self, motion_dim: int):
        super().__init__()
        self.motion_dim = motion_dim

    def forward(self, flow_onset_to_t: torch.Tensor) -> torch.Tensor:
        return flow_onset_to_t.new_zeros(*flow_onset_to_t.shape[:2], self.motion_dim)


def dem_without_ode(dem):
    """A copy of a trained DEM that returns its residual fusion's per-frame codes instead of the ODE's."""
    variant = copy.deepcopy(dem)
    variant.config = replace(dem.config, temporal="residual")
    return variant


def dem_without_motion(dem):
    """A copy of a trained DEM whose motion branch is cut: with the fusion wiring (``ode_condition: fusion``) every
    frame then gets the static onset code, exactly."""
    variant = copy.deepcopy(dem)
    variant.motion_encoder = _NoMotion(dem.config.motion_dim)
    return variant


def dem_without_term(term: str, face_model, coarse: CoarseBenchmarkSettings, data, seed: int, coarse_dir,
                     checkpoints: Path, device):
    """DEM's ME fine-tuning stage rerun from notebook 01's pretrained checkpoint with loss ``term`` at weight 0."""
    settings = coarse.stage(coarse.finetune_epochs, coarse.finetune_lr, seed, False)
    weights = settings.loss_weights
    if not hasattr(weights, term):
        raise ValueError(f"ablations.dem_loss_terms: {term!r} is not a DEM loss term")
    if getattr(weights, term) == 0:
        raise ValueError(f"ablations.dem_loss_terms: {term!r} already has weight 0 in dem.weights; nothing to remove")
    settings.weights = {**settings.weights, term: 0.0}
    dem = build_dem(face_model, coarse.encoder, coarse.model, seed).to(device)
    pretrained = Path(coarse_dir) / "checkpoints" / "dem_pretrain.pt"
    if not pretrained.is_file():
        raise FileNotFoundError(f"{pretrained} is missing: run notebook 01_dem_pretrain first")
    load_checkpoint(pretrained, dem)
    train_dem(dem, face_model, data.train_clips, settings, checkpoints / f"dem_without_{term}.pt",
              desc=f"DEM w/o {term}", regularise_to_base=settings.loss_weights.base > 0)
    return dem.eval()


def oracle_landmark_models(synth_root, coarse_dir, dem_settings: dict, dgmd_settings: dict, class_map: str,
                           seed: int, image_size: int, flow_method: str, checkpoints: Path, device,
                           show_progress: bool = True):
    """The "oracle landmarks" row: DEM and DGMD trained as notebooks 01 and 02 train them (same clips, seed and
    settings) but with the benchmark's ground-truth 2D landmarks (``dem.landmarks: oracle``), and the data to
    score them on (the test clips' landmarks the ground truth's too).

    Args:
        synth_root, coarse_dir, dem_settings, dgmd_settings, class_map, seed, image_size, flow_method, device,
            show_progress: as ``run_ablations``.
        checkpoints: folder of the ablation checkpoints (``dem_oracle_landmarks_pretrain.pt``,
            ``dem_oracle_landmarks.pt``, ``dgmd_oracle_landmarks.pt``; a rerun resumes them).

    Returns:
        (DEM, DGMD, EvalData): both models in eval mode, and ``prepare_eval_data``'s clips with oracle landmarks.
    """
    from microface.data.clips import _to_device, clip_tensors_from_synth
    from microface.data.datasets import load_dataset
    from microface.experiments.refine import load_split

    oracle = {**dem_settings, "landmarks": "oracle"}
    coarse = CoarseBenchmarkSettings.from_dict(oracle)
    refine = RefineBenchmarkSettings.from_dict(dgmd_settings)
    data = prepare_eval_data(synth_root, coarse_dir, oracle, dgmd_settings, class_map, image_size, flow_method,
                             device, show_progress)
    face_model = data.face_model
    split = load_split(coarse_dir)
    listed = {r.key: r for r in load_dataset("synth", Path(synth_root), kind="all", on_error="skip",
                                             check_images="none")}

    def tensors(keys: list[str], size: int):
        clips = clip_tensors_from_synth([listed[k] for k in keys], size, flow_method, coarse.max_frames,
                                        show_progress, "oracle")
        return [_to_device(c, device) for c in clips]

    # DEM as notebook 01 trains it: pretrained on the training subjects' macro clips, fine-tuned on their ME clips
    micro = tensors(split["micro_train"], image_size)
    pre, ft = coarse.pretrain_epochs, coarse.finetune_epochs
    dem = build_dem(face_model, coarse.encoder, coarse.model, seed).to(device)
    pretrain_path, dem_path = checkpoints / "dem_oracle_landmarks_pretrain.pt", checkpoints / "dem_oracle_landmarks.pt"
    _train_stage(dem, face_model, tensors(split["macro_train"], image_size), coarse.stage(pre, coarse.lr, seed, False),
                 pretrain_path, "DEM-pretrain (oracle landmarks)")
    finetune = coarse.stage(ft, coarse.finetune_lr, seed, False)
    _train_stage(dem, face_model, micro, finetune, dem_path, "DEM-finetune (oracle landmarks)",
                 start_from=pretrain_path, regularise=finetune.loss_weights.base > 0)
    dem.eval()
    # DGMD as notebook 02 trains it: on that DEM's meshes of the training subjects' ME clips
    same = refine.image_size in (None, image_size)
    train_refine = coarse_clips(dem, face_model, micro,
                                None if same else tensors(split["micro_train"], refine.image_size))[0]
    dgmd = train_variant(face_model, train_refine, refine, seed, checkpoints / "dgmd_oracle_landmarks.pt",
                         ORACLE_LANDMARKS, device=device)[0]
    return dem, dgmd, data


# ----------------------------------------------------------------------------------------------- notebook 05
ABLATION_COLUMNS = ["method", "group", "all_apex_mm", "delta_all_apex_mm", "moving_apex_mm", "static_apex_mm",
                    "all_clip_mm", "jitter_mm_per_frame2", "photometric_l1", "perceptual", "fid", "mer_acc", "mer_uf1",
                    "mer_wf1"]


def run_ablations_experiment(profile: str, seed: int, device: str, synth: dict, data: dict, dem: dict, dgmd: dict,
                             evaluate: dict, ablations: dict, results_dir) -> NotebookReport:
    """Notebook 05_ablations end to end: every ablation trained and scored (``run_ablations``) into
    ``results_dir/ablations``.

    Args:
        profile, seed, device: the config's top-level keys.
        synth, data, dem, dgmd, evaluate, ablations: the config's sections of those names.
        results_dir: results/<profile>, relative to the compendium root or absolute; needs notebooks 01 and 02's
            ``dem/`` and ``dgmd/``.

    Returns:
        tables: ``ablation_table`` (the ``ABLATION_COLUMNS`` it has); notes: ``split``, ``written``; paths:
        ``out_dir``, ``synth_root``.
    """
    from microface.config import project_root, resolve
    from microface.experiments.coarse import benchmark_root

    results = resolve(results_dir, project_root())
    out_dir = results / "ablations"
    synth_root = benchmark_root(results, data, synth, profile, seed)
    table = run_ablations(synth_root, results / "dem", results / "dgmd", out_dir, dem, dgmd, evaluate, ablations,
                          class_map=data["class_map"], seed=seed, image_size=data["size"],
                          flow_method=data["flow_method"], device=device)
    columns = [c for c in ABLATION_COLUMNS if c in table.columns]
    written = f"written: {out_dir / 'ablation_table.csv'} {out_dir / 'ablation_table.md'}"
    return NotebookReport(tables={"ablation_table": table[columns]},
                          notes={"split": table["split"].iloc[0], "written": written},
                          paths={"out_dir": out_dir, "synth_root": synth_root})
