"""The coarse-stage benchmark of notebook 01_dem_pretrain: per-frame encoder vs DEM on the synthetic benchmark.

Six methods, all trained from scratch on TRAINING subjects only and scored on the micro-expression (ME) clips
of held-out TEST subjects (a fixed split: the last ``test_fraction`` of subjects by number; leave-one-subject-out
is out of reach on 2 CPU cores). No epoch is ever chosen on test subjects: every stage trains a fixed number of
epochs and its last epoch is scored.

- ``baseline``: the per-frame coarse encoder (``CoarseEncoder``) trained on the training subjects' macro clips;
  "per frame" means its expression at t comes from frame t alone and its losses couple no frames (the temporal
  terms ``smooth`` and ``identity`` are switched off for it);
- ``baseline-FT``: the baseline fine-tuned on the training subjects' ME clips;
- ``DEM w/o macro pretraining``: DEM around a fresh coarse encoder trained on the training subjects' ME clips only,
  for ``pretrain_epochs + finetune_epochs`` epochs (as many epochs as DEM's two stages together, so it differs
  from DEM by its data, not by its amount of training);
- ``DEM``: DEM (with its fresh coarse encoder) pretrained on the macro clips, then fine-tuned on the ME clips;
- ``baseline-FT +3D supervision``, ``DEM +3D supervision``: the same two pipelines (macro stage and ME stage) trained
  with the synthetic 3D truth as well: ``dem.supervision`` (default ``{param: 1.0}``, the direct parameter loss)
  is added to ``dem.weights``. They are other methods, with their own checkpoints (``*_3d.pt``).

The four main methods are self-supervised: their losses (photometric, perceptual, landmarks on the detected
landmarks, regularisers) read no 3D truth, since ``dem.weights.param`` defaults to 0 here (a profile that sets
it > 0 supervises the main rows too, and should not).

Every model starts from the same seeded initialisation of the coarse encoder. Scores (``evaluate_geometry``)
are per-vertex errors in mm at the apex and averaged over the clip, on meshes at ZERO pose (rigid head pose is
not scored) built from the ground-truth shape and the predicted expression ("expression-only": the
micro-expression signal alone); the "full" columns use the predicted shape too. Temporal jitter is the mean
norm of the second difference of the (full) mesh over the clip's kept frames, in mm per kept-frame step^2,
next to the ground truth's own jitter on the same frames. A reference row scores a face with no expression.

Data: clips are cut from onset to offset and subsampled (``subsample_indices``) to ``max_frames`` frames; the
ODE gets the kept frames' true times. Everything is written under ``out_dir`` (checkpoints resume through
``microface.training.loop.fit``; a rerun with the same settings trains nothing).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from microface.data.clip import ClipRecord
from microface.data.clip_landmarks import landmark_cache_dir
from microface.data.clips import ClipTensors, _to_device, clip_tensors_from_synth
from microface.data.folds import split_label, subject_split
from microface.experiments.report import NotebookReport
from microface.models.baseline import build_baseline
from microface.training.dem import LossWeights, TrainSettings, build_dem, evaluate_geometry
from microface.training.loop import load_checkpoint
from microface.utils.checks import check_supervision, config_from_dict
from microface.utils.io import write_table, write_text_atomic
from microface.viz.curves import CURVES_NAME, training_curves

SUPERVISED = " +3D supervision"  # suffix of a method trained with the synthetic 3D truth
METHODS = ("baseline", "baseline-FT", "DEM w/o macro pretraining", "DEM", f"baseline-FT{SUPERVISED}",
           f"DEM{SUPERVISED}")
PERCEPTUAL_DISTANCES = ("inception", "gradient_ssim", "auto")
REFERENCE = "reference: neutral face (no expression)"
TABLE_NAME = "coarse_table"
# temporal terms a per-frame method must not see
PER_FRAME_OFF = {"smooth": 0.0, "identity": 0.0, "consistency": 0.0}


# --------------------------------------------------------------------------------------------- settings
@dataclass
class CoarseBenchmarkSettings:
    """The ``dem:`` section of a profile config.

    max_frames: frames kept per clip (onset, apex and offset always); test_fraction: share of subjects (the last
    by number) held out for testing; pretrain_epochs: macro-clip stage (baseline, DEM stage a); finetune_epochs:
    ME stage (baseline-FT, DEM stage b); lr / finetune_lr: Adam learning rates of the two stages; batch_size:
    clips per batch; albedo: "onset" | "constant" (photometric texture, see ``TrainSettings``); weights:
    ``LossWeights`` keys of the main (self-supervised) rows, ``param`` 0 unless given; perceptual: the network of
    the perceptual term ("inception": ``InceptionFeatureDistance``; "gradient_ssim" | "auto", see
    ``build_perceptual_distance``), used when ``weights.perceptual`` > 0; supervision: ``LossWeights`` keys added to
    ``weights`` for the "+3D supervision" rows (default ``{param: 1.0}``); encoder: ``EncoderConfig`` keys
    (channels, hidden); model: ``DEMConfig`` keys;
    landmarks: "detected" (the offline MediaPipe landmarker on the rendered frames, for training and test clips
    alike: what DEM's landmark loss and DGMD's landmark cue read) | "oracle" (the benchmark's ground-truth
    landmarks; the ablation row "oracle landmarks" only, since no real video has them).
    """

    max_frames: int = 8
    test_fraction: float = 1.0 / 3.0
    pretrain_epochs: int = 2
    finetune_epochs: int = 2
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    batch_size: int = 4
    albedo: str = "onset"
    weights: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    landmarks: str = "detected"
    perceptual: str = "inception"
    supervision: dict = field(default_factory=lambda: {"param": 1.0})

    def __post_init__(self) -> None:
        from microface.data.clip_landmarks import LANDMARK_SOURCES

        if self.landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"dem.landmarks: expected one of {LANDMARK_SOURCES}, got {self.landmarks!r}")
        if self.max_frames < 3:
            raise ValueError(f"dem.max_frames: expected >= 3 (onset, apex, offset), got {self.max_frames}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"dem.test_fraction: expected a value in (0, 1), got {self.test_fraction}")
        if self.pretrain_epochs < 1 or self.finetune_epochs < 1:
            raise ValueError(f"dem.pretrain_epochs / finetune_epochs: expected >= 1, got {self.pretrain_epochs}, "
                             f"{self.finetune_epochs}")
        if self.perceptual not in PERCEPTUAL_DISTANCES:
            raise ValueError(f"dem.perceptual: expected one of {PERCEPTUAL_DISTANCES}, got {self.perceptual!r}")
        LossWeights.from_dict(self.weights)
        check_supervision(self.supervision, LossWeights, "dem.supervision", "{param: 1.0}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "CoarseBenchmarkSettings":
        return config_from_dict(cls, values, "dem")

    def main_weights(self, supervised: bool = False) -> dict:
        """Every ``LossWeights`` term of the main rows (``weights``, ``param`` 0 unless given); ``supervised``: plus
        ``supervision``, term by term (the "+3D supervision" rows)."""
        weights = asdict(LossWeights.from_dict({"param": 0.0, **self.weights}))
        if supervised:
            for term, value in self.supervision.items():
                weights[term] += value
        return weights

    def stage(self, epochs: int, lr: float, seed: int, per_frame: bool, supervised: bool = False) -> TrainSettings:
        """TrainSettings of one training stage; ``per_frame`` switches the temporal loss terms off; ``supervised``
        adds the 3D supervision (``main_weights``)."""
        weights = {**self.main_weights(supervised), **(PER_FRAME_OFF if per_frame else {})}
        return TrainSettings(epochs=epochs, lr=lr, seed=seed, batch_size=self.batch_size, weights=weights,
                             albedo=self.albedo, perceptual=self.perceptual)


# ------------------------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------------------- baseline


# ----------------------------------------------------------------------------------------------- files


def _check_run_description(out_dir: Path, description: dict) -> None:
    """Refuse to resume checkpoints written for other data or settings (``fit`` only checks training settings)."""
    path = out_dir / "benchmark_config.json"
    text = json.dumps(description, indent=2, sort_keys=True, default=str)
    if path.is_file():
        found = json.loads(path.read_text())
        if found != json.loads(text):
            raise ValueError(f"{out_dir} holds a benchmark run with other settings ({path}); delete {out_dir} "
                             f"or choose another out_dir (found {found}, asked {json.loads(text)})")
        return
    write_text_atomic(text, path)


# ------------------------------------------------------------------------------------------ evaluation
def _mean_row(method: str, rows: list[dict], split: str) -> dict:
    frame = pd.DataFrame(rows)
    return {
        "method": method,
        "apex_error_mm": frame["expression_apex_mm"].mean(), "apex_error_std_mm": frame["expression_apex_mm"].std(),
        "clip_error_mm": frame["expression_clip_mm"].mean(), "clip_error_std_mm": frame["expression_clip_mm"].std(),
        "jitter_mm_per_frame2": frame["jitter_mm_per_frame2"].mean(),
        "gt_jitter_mm_per_frame2": frame["truth_jitter_mm_per_frame2"].mean(),
        "full_apex_error_mm": frame["full_apex_mm"].mean(), "full_clip_error_mm": frame["full_clip_mm"].mean(),
        "n_test_clips": len(frame), "split": split,
    }


@torch.no_grad()
def neutral_reference(face_model, clips: list[ClipTensors]) -> list[dict]:
    """Rows like ``evaluate_geometry``'s for a face without expression: expression-only = ground-truth shape and
    zero expression; full = the template (zero shape, zero expression); jitter 0. All at zero pose."""
    from microface.metrics.geometry import clip_vertex_error, temporal_jitter

    rows = []
    for clip in clips:
        T = clip.frames.shape[0]
        dtype, device = clip.frames.dtype, clip.frames.device
        zero_pose = torch.zeros(T, 6, dtype=dtype, device=device)
        zero_expression = torch.zeros_like(clip.expression, dtype=dtype)
        gt_shape = clip.shape[None].expand(T, -1).to(dtype)
        truth = face_model(gt_shape, clip.expression.to(dtype), zero_pose).vertices
        neutral = face_model(gt_shape, zero_expression, zero_pose).vertices
        template = face_model(torch.zeros_like(gt_shape), zero_expression, zero_pose).vertices
        apex = clip.apex_index
        expression_err = clip_vertex_error(neutral, truth, apex)
        full_err = clip_vertex_error(template, truth, apex)
        rows.append({"key": clip.key, "apex": apex, "expression_apex_mm": expression_err["apex_mm"],
                     "expression_clip_mm": expression_err["clip_mm"], "full_apex_mm": full_err["apex_mm"],
                     "full_clip_mm": full_err["clip_mm"], "jitter_mm_per_frame2": 0.0,
                     "truth_jitter_mm_per_frame2": float(temporal_jitter(truth))})
    return rows


# ----------------------------------------------------------------------------------------------- driver
def benchmark_root(results_dir, data: dict, synth: dict, profile: str, seed: int, show_progress: bool = True) -> Path:
    """The synthetic benchmark the coarse benchmark reads: ``data.root`` when ``data.dataset`` is "synth" and a
    root is set (it must exist), else ``<results_dir>/synth``, generated from the ``synth`` section (preset,
    subjects, clips, macro_clips, version) when it holds no benchmark yet (notebook 00_data normally made it)."""
    from microface.config import resolve

    if data.get("dataset") == "synth" and data.get("root"):
        root = resolve(data["root"])
        if not (root / "synth_manifest.json").is_file():
            raise FileNotFoundError(f"data.root {root} holds no synthetic benchmark (no synth_manifest.json): "
                                    f"generate it with `microface synth --out {root}` or set data.root to null")
        return root
    root = Path(results_dir) / "synth"
    if (root / "synth_manifest.json").is_file():
        return root
    from microface.data.synth import config_for_profile, generate

    sizes = {key: value for key, value in synth.items() if key != "preset"}  # as notebook 00_data generates it
    config = config_for_profile(synth.get("preset", profile), seed=seed, **sizes)
    return generate(root, config, show_progress=show_progress)


def _train_stage(model: nn.Module, face_model, clips: list[ClipTensors], settings: TrainSettings, path: Path,
                 desc: str, start_from: Path | None = None, regularise: bool = False) -> list[dict]:
    """Train one stage with checkpoint ``path`` (resumed by ``fit``); ``start_from``: the previous stage's checkpoint,
    loaded first (also the base of the fine-tuning regulariser)."""
    from microface.training.dem import train_dem

    if start_from is not None:
        load_checkpoint(start_from, model)
    return train_dem(model, face_model, clips, settings, path, desc=desc, regularise_to_base=regularise)


def _train_pipelines(face_model, config: CoarseBenchmarkSettings, macro_clips: list[ClipTensors],
                     micro_clips: list[ClipTensors], checkpoints: Path, seed: int, device: torch.device,
                     supervised: bool) -> tuple[dict[str, nn.Module], dict[str, list[dict]]]:
    """Train the main methods (``supervised`` False: baseline, baseline-FT, DEM w/o macro pretraining, DEM) or the
    "+3D supervision" ones (True: baseline and DEM pipelines with ``dem.supervision`` added in both stages;
    checkpoints ``baseline_3d.pt``, ``baseline_ft_3d.pt``, ``dem_pretrain_3d.pt``, ``dem_3d.pt``).

    Returns:
        ({method: trained model} for the table's rows, {training stage: history}).
    """
    pre, ft = config.pretrain_epochs, config.finetune_epochs
    regularise = config.stage(1, config.finetune_lr, seed, False, supervised).loss_weights.base > 0
    tag, suffix = ("_3d", SUPERVISED) if supervised else ("", "")
    histories: dict[str, list[dict]] = {}
    models: dict[str, nn.Module] = {}

    baseline = build_baseline(face_model, config.encoder, seed).to(device)
    histories[f"baseline{suffix} (macro)"] = _train_stage(
        baseline, face_model, macro_clips, config.stage(pre, config.lr, seed, True, supervised),
        checkpoints / f"baseline{tag}.pt", f"baseline{suffix}")
    if not supervised:
        models["baseline"] = baseline
    baseline_ft = build_baseline(face_model, config.encoder, seed).to(device)
    histories[f"baseline-FT{suffix} (ME)"] = _train_stage(
        baseline_ft, face_model, micro_clips, config.stage(ft, config.finetune_lr, seed, True, supervised),
        checkpoints / f"baseline_ft{tag}.pt", f"baseline-FT{suffix}", start_from=checkpoints / f"baseline{tag}.pt",
        regularise=regularise)
    models[f"baseline-FT{suffix}"] = baseline_ft
    if not supervised:
        scratch = build_dem(face_model, config.encoder, config.model, seed).to(device)
        histories["DEM w/o macro pretraining (ME)"] = _train_stage(
            scratch, face_model, micro_clips, config.stage(pre + ft, config.lr, seed, False),
            checkpoints / "dem_scratch.pt", "DEM-scratch")
        models["DEM w/o macro pretraining"] = scratch
    dem = build_dem(face_model, config.encoder, config.model, seed).to(device)
    histories[f"DEM pretrain{suffix} (macro)"] = _train_stage(
        dem, face_model, macro_clips, config.stage(pre, config.lr, seed, False, supervised),
        checkpoints / f"dem_pretrain{tag}.pt", f"DEM-pretrain{suffix}")
    histories[f"DEM fine-tune{suffix} (ME)"] = _train_stage(
        dem, face_model, micro_clips, config.stage(ft, config.finetune_lr, seed, False, supervised),
        checkpoints / f"dem{tag}.pt", f"DEM-finetune{suffix}", start_from=checkpoints / f"dem_pretrain{tag}.pt",
        regularise=regularise)
    models[f"DEM{suffix}"] = dem
    return models, histories


def run_coarse_benchmark(synth_root, out_dir, settings: dict, seed: int = 0, *, image_size: int = 64,
                         flow_method: str = "dis", device: str | torch.device = "cpu",
                         show_progress: bool = True) -> pd.DataFrame:
    """Train the six methods (module docstring) and score them on the test subjects' ME clips.

    synth_root: a synthetic benchmark (``microface synth``); out_dir: where checkpoints (``checkpoints/*.pt``),
    the split (``split.json``), the table (``coarse_table.csv`` / ``.md``), per-clip scores (``per_clip.csv``) and
    training curves (``training_curves.csv``, see ``read_training_curves``) go; settings: the ``dem:`` config
    section (``CoarseBenchmarkSettings``); image_size, flow_method: the ``data:`` section's size and flow_method
    (or "gt"); device: where models train ("cpu", "cuda", ...).

    Returns the table, one row per method plus the no-expression reference: method, apex_error_mm, clip_error_mm
    (mean over test clips of expression-only per-vertex errors at zero pose, with their std across clips),
    jitter_mm_per_frame2, gt_jitter_mm_per_frame2, full_apex_error_mm, full_clip_error_mm, n_test_clips, split.
    """
    from microface.data.datasets import load_dataset
    from microface.data.synth.dataset import FORMAT
    from microface.face.open_model import OpenFaceModel

    config = CoarseBenchmarkSettings.from_dict(settings)
    out_dir = Path(out_dir)
    synth_root = Path(synth_root)
    device = torch.device(device)
    manifest_path = synth_root / "synth_manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{synth_root} holds no synthetic benchmark: run `microface synth --out {synth_root}` "
                                "(or notebook 00_data) first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: expected format {FORMAT!r}, found {manifest.get('format')!r}")
    _check_run_description(out_dir, {"settings": asdict(config), "seed": seed, "image_size": image_size,
                                     "flow_method": flow_method, "synth_config_hash": manifest.get("config_hash")})

    micro = load_dataset("synth", synth_root, kind="micro")
    macro = load_dataset("synth", synth_root, kind="macro")
    train_subjects, test_subjects = subject_split([r.subject for r in micro], config.test_fraction)
    train_set = set(train_subjects)
    micro_train = [r for r in micro if r.subject in train_set]
    micro_test = [r for r in micro if r.subject in set(test_subjects)]
    macro_train = [r for r in macro if r.subject in train_set]  # test subjects' macro clips stay unseen too
    if not macro_train:
        raise ValueError(f"{synth_root}: no macro clips for the training subjects; generate with --macro-clips >= 1")
    split = split_label(train_subjects, test_subjects)
    write_text_atomic(json.dumps({"train_subjects": train_subjects, "test_subjects": test_subjects,
                                   "macro_train": [r.key for r in macro_train],
                                   "micro_train": [r.key for r in micro_train],
                                   "micro_test": [r.key for r in micro_test], "label": split}, indent=2),
                       out_dir / "split.json")

    def tensors(records: list[ClipRecord]) -> list[ClipTensors]:
        clips = clip_tensors_from_synth(records, image_size, flow_method, config.max_frames, show_progress,
                                        config.landmarks, landmark_cache_dir(synth_root))
        return [_to_device(c, device) for c in clips]

    macro_clips, micro_clips, test_clips = tensors(macro_train), tensors(micro_train), tensors(micro_test)
    face_model = OpenFaceModel().to(device)
    checkpoints = out_dir / "checkpoints"
    histories: dict[str, list[dict]] = {}
    models: dict[str, nn.Module] = {}

    for supervised in (False, True):
        trained, stage_histories = _train_pipelines(face_model, config, macro_clips, micro_clips, checkpoints, seed,
                                                    device, supervised)
        models.update(trained)
        histories.update(stage_histories)

    per_clip = []
    rows = []
    for method in METHODS:
        clip_rows = evaluate_geometry(models[method], face_model, test_clips)
        per_clip += [{"method": method, **row} for row in clip_rows]
        rows.append(_mean_row(method, clip_rows, split))
    reference_rows = neutral_reference(face_model, test_clips)
    per_clip += [{"method": REFERENCE, **row} for row in reference_rows]
    rows.append(_mean_row(REFERENCE, reference_rows, split))
    table = pd.DataFrame(rows)
    write_table(pd.DataFrame(per_clip), out_dir, "per_clip", markdown=False)
    write_table(training_curves(histories), out_dir, CURVES_NAME.removesuffix(".csv"), markdown=False)
    write_table(table, out_dir, TABLE_NAME)
    return table


# ------------------------------------------------------------------------------------------------ curves


# ------------------------------------------------------------------------------------------- notebook 01
def run_coarse_experiment(profile: str, seed: int, device: str, synth: dict, data: dict, dem: dict,
                          results_dir) -> NotebookReport:
    """Notebook 01_dem_pretrain end to end: the benchmark (``run_coarse_benchmark``) into ``results_dir/dem``,
    its training-curve and per-clip error figures.

    Args:
        profile, seed, device: the config's top-level keys.
        synth, data, dem: the config's sections of those names.
        results_dir: results/<profile>, relative to the compendium root or absolute.

    Returns:
        tables: ``coarse_table`` (without its ``split`` column); figures: ``training_curves``, ``errors_per_clip``
        (saved as ``dem/training_curves.png``, ``dem/errors_per_clip.png``); notes: ``setup``, ``split``,
        ``checkpoints``; paths: ``out_dir``, ``synth_root``.
    """
    import matplotlib.pyplot as plt

    from microface.config import project_root, resolve
    from microface.viz.curves import plot_errors, plot_training_curves, read_training_curves

    report = NotebookReport()
    results = resolve(results_dir, project_root())
    out_dir = results / "dem"
    synth_root = benchmark_root(results, data, synth, profile, seed)
    report.notes["setup"] = f"profile {profile}: synthetic benchmark {synth_root}, outputs {out_dir}"

    table = run_coarse_benchmark(synth_root, out_dir, dem, seed=seed, image_size=data["size"],
                                 flow_method=data["flow_method"], device=device)
    report.notes["split"] = table["split"].iloc[0]
    report.tables["coarse_table"] = table.drop(columns="split")

    curves = read_training_curves(out_dir)
    report.figures["training_curves"] = plot_training_curves(curves, out_dir / "training_curves.png")
    per_clip = pd.read_csv(out_dir / "per_clip.csv")
    report.figures["errors_per_clip"] = plot_errors(per_clip, out_dir / "errors_per_clip.png")
    for figure in report.figures.values():
        plt.close(figure)

    checkpoints = sorted((out_dir / "checkpoints").glob("*.pt"))
    report.notes["checkpoints"] = "\n".join([f"checkpoints: {out_dir / 'checkpoints'}",
                                             *(f"  {path.name}" for path in checkpoints),
                                             f"table: {out_dir / 'coarse_table.md'}"])
    report.paths.update(out_dir=out_dir, synth_root=synth_root)
    return report
