"""The coarse-stage benchmark of notebook 01_dem_pretrain: per-frame encoder vs DEM on the synthetic benchmark.

Four methods, all trained from scratch on TRAINING subjects only and scored on the micro-expression (ME) clips
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
- ``DEM``: DEM (with its fresh coarse encoder) pretrained on the macro clips, then fine-tuned on the ME clips.

Every model starts from the same seeded initialisation of the coarse encoder. Scores (``evaluate_geometry``)
are per-vertex errors in mm at the apex and averaged over the clip, on meshes at ZERO pose (rigid head pose is
not scored) built from the ground-truth shape and the predicted expression ("expression-only": the
micro-expression signal alone); the "full" columns use the predicted shape too. Temporal jitter is the mean
norm of the second difference of the (full) mesh over the clip's kept frames, in mm per kept-frame step^2,
next to the ground truth's own jitter on the same frames. A reference row scores a face with no expression.

Data: clips are cut from onset to offset and subsampled (``subsample_indices``) to ``max_frames`` frames; the
ODE gets the kept frames' true times. Everything is written under ``out_dir`` (checkpoints resume through
``microface.train.fit``; a rerun with the same settings trains nothing).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from microface.atomic import atomic_path, write_text_atomic
from microface.data.clip import ClipRecord
from microface.models import config_from_dict
from microface.models.dem import DEMOutput, normalise_times
from microface.models.dem_training import ClipTensors, TrainSettings, build_dem, evaluate_geometry
from microface.models.encoder import CoarseEncoder, EncoderConfig, check_images
from microface.train import load_checkpoint, progress

FLOW_SOURCES = ("gt", "dis", "tvl1")
METHODS = ("baseline", "baseline-FT", "DEM w/o macro pretraining", "DEM")
REFERENCE = "reference: neutral face (no expression)"
TABLE_NAME = "coarse_table"
CURVES_NAME = "training_curves.csv"
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
    ``LossWeights`` keys; encoder: ``EncoderConfig`` keys (channels, hidden); model: ``DEMConfig`` keys.
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

    def __post_init__(self) -> None:
        if self.max_frames < 3:
            raise ValueError(f"dem.max_frames: expected >= 3 (onset, apex, offset), got {self.max_frames}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"dem.test_fraction: expected a value in (0, 1), got {self.test_fraction}")
        if self.pretrain_epochs < 1 or self.finetune_epochs < 1:
            raise ValueError(f"dem.pretrain_epochs / finetune_epochs: expected >= 1, got {self.pretrain_epochs}, "
                             f"{self.finetune_epochs}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "CoarseBenchmarkSettings":
        return config_from_dict(cls, values, "dem")

    def stage(self, epochs: int, lr: float, seed: int, per_frame: bool) -> TrainSettings:
        """TrainSettings of one training stage; ``per_frame`` switches the temporal loss terms off."""
        weights = {**self.weights, **(PER_FRAME_OFF if per_frame else {})}
        return TrainSettings(epochs=epochs, lr=lr, seed=seed, batch_size=self.batch_size, weights=weights,
                             albedo=self.albedo)


# ------------------------------------------------------------------------------------------------ data
def subsample_indices(onset: int, apex: int, offset: int, max_frames: int) -> np.ndarray:
    """Frame indices from onset to offset, uniform, always holding onset, apex and offset.

    Returns (K,) sorted distinct int indices, K = min(max_frames, offset - onset + 1). When the apex falls
    between grid points, the interior grid point nearest to it moves onto it (order is kept: the apex lies
    between that point's neighbours).
    """
    if max_frames < 3:
        raise ValueError(f"max_frames: expected >= 3 (onset, apex, offset), got {max_frames}")
    if not onset <= apex <= offset:
        raise ValueError(f"expected onset <= apex <= offset, got {onset}, {apex}, {offset}")
    if offset - onset + 1 <= max_frames:
        return np.arange(onset, offset + 1)
    grid = np.round(np.linspace(onset, offset, max_frames)).astype(int)
    if apex not in grid:
        interior = np.arange(1, max_frames - 1)
        grid[interior[np.argmin(np.abs(grid[interior] - apex))]] = apex
    return grid


def _read_rgb(path: Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One frame -> ((image_size, image_size, 3) uint8 RGB, original (H, W))."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame {path} could not be read as an image; regenerate the benchmark with `microface synth`")
    original = image.shape[:2]
    # INTER_AREA keeps pixel centres at (j + 0.5) * scale, the convention landmarks and flows are rescaled by
    resized = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), original


def accumulate_flow(consecutive: np.ndarray, start: int, targets: np.ndarray) -> np.ndarray:
    """Compose consecutive flows into flows from frame ``start`` to each of ``targets``.

    consecutive (N, H, W, 2) pixels, flow[k] from frame k to k+1 (the benchmark's ground truth); targets (K,)
    increasing, >= start -> (K, H, W, 2) float32, ``F(start->t)(x) = F(start->t-1)(x) + f(t-1)(x + F(start->t-1)(x))``,
    each step sampled bilinearly. An approximation of the true onset->t motion: the benchmark's pair flows are
    zero off the face (and where the face disoccludes), and bilinear sampling blurs them across the silhouette.
    """
    consecutive = np.asarray(consecutive, dtype=np.float32)
    if consecutive.ndim != 4 or consecutive.shape[-1] != 2:
        raise ValueError(f"consecutive: expected (N, H, W, 2), got {consecutive.shape}")
    targets = np.asarray(targets)
    if targets.size and (targets[0] < start or targets[-1] > consecutive.shape[0] or np.any(np.diff(targets) < 0)):
        raise ValueError(f"targets: expected increasing indices in [{start}, {consecutive.shape[0]}], got {targets.tolist()}")
    height, width = consecutive.shape[1:3]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    total = np.zeros((height, width, 2), np.float32)
    out = np.zeros((len(targets), height, width, 2), np.float32)
    frame = start
    for k, target in enumerate(targets):
        while frame < target:
            step = cv2.remap(consecutive[frame], xs + total[..., 0], ys + total[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            total = total + step
            frame += 1
        out[k] = total
    return out


def _resize_flow(flow: np.ndarray, image_size: int) -> np.ndarray:
    """(K, H, W, 2) pixels of the original frames -> (K, S, S, 2) pixels of the resized frames."""
    height, width = flow.shape[1:3]
    scale = np.array([image_size / width, image_size / height], np.float32)
    return np.stack([cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) * scale for f in flow])


def clip_tensors_from_record(record: ClipRecord, image_size: int, flow_method: str = "dis",
                             max_frames: int = 8) -> ClipTensors:
    """One synthetic-benchmark record -> ClipTensors of its kept frames (see ``clip_tensors_from_synth``)."""
    from microface.data.flow import clip_flow

    if flow_method not in FLOW_SOURCES:
        raise ValueError(f"flow_method: expected one of {FLOW_SOURCES}, got {flow_method!r}")
    if record.ground_truth is None:
        raise ValueError(f"clip {record.key}: no ground truth; load the synthetic benchmark with load_dataset('synth', ...)")
    indices = subsample_indices(record.onset, record.apex, record.offset, max_frames)
    with np.load(record.ground_truth) as truth:
        expression = truth["expression"]
        if expression.shape[0] != len(record.frames):
            raise ValueError(f"{record.ground_truth}: ground truth has {expression.shape[0]} frames, the clip folder "
                             f"{len(record.frames)}; regenerate the benchmark with `microface synth`")
        fps = float(truth["fps"])
        shape, pose, landmarks = truth["shape"], truth["pose"][indices], truth["landmarks2d"][indices]
        consecutive = truth["flow"] if flow_method == "gt" else None
    frames, originals = zip(*(_read_rgb(record.frames[i], image_size) for i in indices))
    frames = np.stack(frames)
    height, width = originals[0]
    if flow_method == "gt":
        flow = _resize_flow(accumulate_flow(consecutive, int(indices[0]), indices), image_size)
    else:
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        flow = clip_flow(gray, mode="onset", onset=0, method=flow_method)
    landmarks = landmarks * np.array([image_size / width, image_size / height], np.float32)
    return ClipTensors(
        frames=torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0,
        flow=torch.from_numpy(np.ascontiguousarray(flow)).permute(0, 3, 1, 2).float(),
        times=torch.from_numpy(indices / fps).float(),
        expression=torch.from_numpy(expression[indices]).float(), shape=torch.from_numpy(shape).float(),
        pose=torch.from_numpy(pose).float(), landmarks2d=torch.from_numpy(landmarks).float(),
        apex=int(np.searchsorted(indices, record.apex)), key=record.key,
    )


def clip_tensors_from_synth(records: list[ClipRecord], image_size: int, flow_method: str = "dis",
                            max_frames: int = 8, show_progress: bool = True) -> list[ClipTensors]:
    """Synthetic-benchmark records (``load_dataset("synth", root, kind=...)``) -> ClipTensors for DEM training.

    Per clip: frames onset..offset subsampled to ``max_frames`` (``subsample_indices``), resized to
    (image_size, image_size), frames (T,3,S,S) in [0,1]; times (T,) in seconds (the ODE gets the true, irregular
    times); flow onset->t (T,2,S,S) in resized pixels: "dis" / "tvl1" run ``microface.data.flow.clip_flow`` on
    the resized gray frames, "gt" composes the ground-truth consecutive flows (``accumulate_flow``) and rescales
    them; ground truth expression (T,E), shape (S,), pose (T,6), landmarks2d (T,68,2) in resized pixels; apex:
    the apex's position among the kept frames.
    """
    if image_size < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    return [clip_tensors_from_record(r, image_size, flow_method, max_frames)
            for r in progress(records, desc="clips", disable=not show_progress)]


def subject_split(subjects: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """(train, test) subjects: the last ``round(n * test_fraction)`` (at least 1) subjects by number are test.

    subjects: names like "sub01" (repeats allowed). Raises ValueError when no training subject would remain.
    """
    from microface.data.datasets._common import natural_key

    ordered = sorted(set(subjects), key=natural_key)
    n_test = max(1, int(round(len(ordered) * test_fraction)))
    if len(ordered) - n_test < 1:
        raise ValueError(f"subject split: {len(ordered)} subject(s) leave none for training with test_fraction "
                         f"{test_fraction}; generate more subjects (synth.subjects >= 2)")
    return ordered[:-n_test], ordered[-n_test:]


def split_label(train: list[str], test: list[str]) -> str:
    return f"test {', '.join(test)} (last {len(test)} of {len(train) + len(test)} subjects); train {', '.join(train)}"


# ------------------------------------------------------------------------------------------- baseline
@dataclass(frozen=True)
class PerFrameConfig:
    """Stands where ``DEMConfig`` stands for the loss code: no ODE, so no ODE/per-frame consistency term."""

    temporal: str = "per-frame"


class PerFrameBaseline(nn.Module):
    """The per-frame coarse encoder behind DEM's interface, so one training and evaluation path serves both.

    forward(frames (B,T,3,H,W), flow (ignored), frame_times (B,T)) -> DEMOutput whose expression (B,T,E) is the
    coarse encoder's estimate from each frame alone (code = expression; motion (B,T,0)).
    """

    def __init__(self, coarse_encoder: nn.Module):
        super().__init__()
        self.config = PerFrameConfig()
        self.coarse_encoder = coarse_encoder

    def forward(self, frames: torch.Tensor, flow_onset_to_t: torch.Tensor, frame_times: torch.Tensor) -> DEMOutput:
        if frames.ndim != 5:
            raise ValueError(f"frames: expected (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch, n_frames = frames.shape[:2]
        check_images(frames.flatten(0, 1), name="frames")
        coarse = self.coarse_encoder(frames.flatten(0, 1)).reshape_batch(batch, n_frames)
        expression = coarse.expression
        return DEMOutput(code=expression, expression=expression, frame_code=expression, frame_expression=expression,
                         z0=expression[:, 0], motion=expression.new_zeros(batch, n_frames, 0),
                         tau=normalise_times(frame_times.to(frames.dtype)), coarse=coarse)


def build_baseline(face_model, encoder: dict | None = None, seed: int = 0) -> PerFrameBaseline:
    """A seeded per-frame baseline; same seed, same initial encoder weights as ``build_dem``'s."""
    torch.manual_seed(seed)
    coarse = CoarseEncoder(EncoderConfig.from_dict(
        {**(encoder or {}), "n_shape": face_model.n_shape, "n_expression": face_model.n_expression}))
    return PerFrameBaseline(coarse)


# ----------------------------------------------------------------------------------------------- files
def write_table(table: pd.DataFrame, out_dir: Path, name: str, markdown: bool = True) -> None:
    """``table`` as ``out_dir/name.csv`` (and ``name.md``), each written to a temp file and renamed."""
    write_text_atomic(table.to_csv(index=False), Path(out_dir) / f"{name}.csv")
    if markdown:
        write_text_atomic(markdown_table(table), Path(out_dir) / f"{name}.md")


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, floats with ``digits`` decimals)."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    align = ["---:" if pd.api.types.is_numeric_dtype(table[c]) else ":---" for c in table.columns]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


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
    from microface.metrics_geometry import clip_vertex_error, temporal_jitter

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
    root is set (it must exist), else ``<results_dir>/synth``, generated from the ``synth`` section (subjects,
    clips, macro_clips) when it holds no benchmark yet (notebook 00_data normally made it)."""
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
    from microface.synth import config_for_profile, generate

    config = config_for_profile(profile, seed=seed, subjects=synth["subjects"], clips=synth["clips"],
                                macro_clips=synth["macro_clips"])
    return generate(root, config, show_progress=show_progress)


def _train_stage(model: nn.Module, face_model, clips: list[ClipTensors], settings: TrainSettings, path: Path,
                 desc: str, start_from: Path | None = None, regularise: bool = False) -> list[dict]:
    """Train one stage with checkpoint ``path`` (resumed by ``fit``); ``start_from``: the previous stage's checkpoint,
    loaded first (also the base of the fine-tuning regulariser)."""
    from microface.models.dem_training import train_dem

    if start_from is not None:
        load_checkpoint(start_from, model)
    return train_dem(model, face_model, clips, settings, path, desc=desc, regularise_to_base=regularise)


def run_coarse_benchmark(synth_root, out_dir, settings: dict, seed: int = 0, *, image_size: int = 64,
                         flow_method: str = "dis", device: str | torch.device = "cpu",
                         show_progress: bool = True) -> pd.DataFrame:
    """Train the four methods (module docstring) and score them on the test subjects' ME clips.

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
    from microface.face.open_model import OpenFaceModel
    from microface.synth.dataset import FORMAT

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
        clips = clip_tensors_from_synth(records, image_size, flow_method, config.max_frames, show_progress)
        return [_to_device(c, device) for c in clips]

    macro_clips, micro_clips, test_clips = tensors(macro_train), tensors(micro_train), tensors(micro_test)
    face_model = OpenFaceModel().to(device)
    checkpoints = out_dir / "checkpoints"
    finetune_regularised = config.stage(1, config.finetune_lr, seed, False).loss_weights.base > 0
    pre, ft = config.pretrain_epochs, config.finetune_epochs
    histories: dict[str, list[dict]] = {}
    models: dict[str, nn.Module] = {}

    baseline = build_baseline(face_model, config.encoder, seed).to(device)
    histories["baseline (macro)"] = _train_stage(
        baseline, face_model, macro_clips, config.stage(pre, config.lr, seed, True), checkpoints / "baseline.pt",
        "baseline")
    models["baseline"] = baseline
    baseline_ft = build_baseline(face_model, config.encoder, seed).to(device)
    histories["baseline-FT (ME)"] = _train_stage(
        baseline_ft, face_model, micro_clips, config.stage(ft, config.finetune_lr, seed, True),
        checkpoints / "baseline_ft.pt", "baseline-FT", start_from=checkpoints / "baseline.pt",
        regularise=finetune_regularised)
    models["baseline-FT"] = baseline_ft
    scratch = build_dem(face_model, config.encoder, config.model, seed).to(device)
    histories["DEM w/o macro pretraining (ME)"] = _train_stage(
        scratch, face_model, micro_clips, config.stage(pre + ft, config.lr, seed, False),
        checkpoints / "dem_scratch.pt", "DEM-scratch")
    models["DEM w/o macro pretraining"] = scratch
    dem = build_dem(face_model, config.encoder, config.model, seed).to(device)
    histories["DEM pretrain (macro)"] = _train_stage(
        dem, face_model, macro_clips, config.stage(pre, config.lr, seed, False), checkpoints / "dem_pretrain.pt",
        "DEM-pretrain")
    histories["DEM fine-tune (ME)"] = _train_stage(
        dem, face_model, micro_clips, config.stage(ft, config.finetune_lr, seed, False), checkpoints / "dem.pt",
        "DEM-finetune", start_from=checkpoints / "dem_pretrain.pt", regularise=finetune_regularised)
    models["DEM"] = dem

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


def _to_device(clip: ClipTensors, device: torch.device) -> ClipTensors:
    moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in vars(clip).items()}
    return ClipTensors(**moved)


# ------------------------------------------------------------------------------------------------ curves
def training_curves(histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Histories per stage (``fit``'s records) -> one long DataFrame: stage, epoch, term, value."""
    records = [{"stage": stage, "epoch": int(record["epoch"]), "term": term, "value": float(value)}
               for stage, history in histories.items() for record in history
               for term, value in record.items() if term != "epoch"]
    return pd.DataFrame(records, columns=["stage", "epoch", "term", "value"])


def read_training_curves(out_dir) -> pd.DataFrame:
    """The training curves a ``run_coarse_benchmark`` wrote under ``out_dir`` (stage, epoch, term, value)."""
    path = Path(out_dir) / CURVES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run run_coarse_benchmark with out_dir={out_dir} first")
    return pd.read_csv(path)


def plot_training_curves(curves: pd.DataFrame, path=None, terms: tuple[str, ...] = ("loss", "param", "landmark",
                                                                                   "photometric")):
    """One panel per loss term, one line per stage (epochs of a fine-tuning stage continue its pretraining's).
    Saves to ``path`` (png) when given; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    terms = [t for t in terms if t in set(curves["term"])]
    if not terms:
        raise ValueError(f"curves: none of the terms {terms} was logged; found {sorted(set(curves['term']))}")
    offsets = {}
    for stage in curves["stage"].unique():
        if "(ME)" in stage and not stage.startswith("DEM w/o"):
            before = "baseline (macro)" if stage.startswith("baseline") else "DEM pretrain (macro)"
            offsets[stage] = int(curves.loc[curves["stage"] == before, "epoch"].max()) + 1 if before in set(curves["stage"]) else 0
    figure, axes = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.2), squeeze=False)
    for axis, term in zip(axes[0], terms):
        for stage, part in curves[curves["term"] == term].groupby("stage", sort=False):
            axis.plot(part["epoch"] + offsets.get(stage, 0), part["value"], marker=".", label=stage)
        axis.set_title(term)
        axis.set_xlabel("epoch (fine-tuning continues pretraining)")
        axis.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    if path is not None:
        _save_figure(figure, Path(path))
    return figure


def plot_errors(per_clip: pd.DataFrame, path=None):
    """Apex and clip expression-only errors per method (box over test clips). Saves to ``path`` when given."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(per_clip["method"]))
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, column, title in zip(axes, ("expression_apex_mm", "expression_clip_mm"), ("apex", "clip mean")):
        axis.boxplot([per_clip.loc[per_clip["method"] == m, column] for m in methods], showmeans=True)
        axis.set_xticks(range(1, len(methods) + 1), [m.replace(" ", "\n", 2) for m in methods], fontsize=7)
        axis.set_ylabel("per-vertex error (mm)")
        axis.set_title(f"expression-only error at the {title} (test subjects' ME clips)", fontsize=9)
    figure.tight_layout()
    if path is not None:
        _save_figure(figure, Path(path))
    return figure


def _save_figure(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
