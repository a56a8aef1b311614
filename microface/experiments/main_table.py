"""The main table of notebook 04_evaluate: every reconstruction method scored the same way on the test subjects.

Rows, in this order (``METHODS``):
- references without a trained model: "neutral face" (ground-truth shape, zero expression: what predicting no
  motion scores) and "landmark fit" (the face model fit to each frame's detected MediaPipe landmarks,
  ``microface.experiments.landmark_fit_method.fit_clip_expressions``: its AU expression on the ground-truth shape);
- self-supervised methods, trained by notebooks 01 and 02 on the TRAINING subjects of their fixed split without
  any 3D truth: "per-frame encoder" (a SMIRK-style per-frame encoder, notebook 01's "baseline"), "baseline-FT",
  "DEM", "DEM + DGMD";
- "FIELDS": the self-supervised DEM fine-tuned here, on the same training subjects, with its direct 3D expression
  supervision (``dem.supervision``, the ``param`` term, added to DEM's weights) and an intensity-aware emotion
  head, in the two-step schedule of ``microface.training.fields.fields_finetune``;
- the "+3D supervision" variants, trained by notebooks 01 and 02 with the synthetic 3D truth of the training
  subjects (``dem.supervision``, ``dgmd.train.supervision``): "baseline-FT +3D supervision", "DEM +3D
  supervision", "DEM + DGMD +3D supervision".

Columns, on the TEST subjects' ME clips (kept frames as in notebook 01):
- geometry: per-vertex error (mm) on expression-only meshes (zero pose, ground-truth shape, predicted expression,
  plus DGMD's offsets rotated into the model frame), split into MOVING vertices (ground-truth apex displacement
  above ``dgmd.moving_threshold_mm``), STATIC ones and ALL, each at the apex and over the clip
  (``{moving,static,all}_{apex,clip}_mm``, ``microface.metrics.geometry.moving_static_errors``), the std across
  clips of the all-vertex apex error, and temporal jitter of the same meshes (mm / kept-frame step^2), next to
  the ground truth's jitter;
- images: each frame's mesh rendered with the onset frame's colours (``render_frames(albedo="onset")``) and
  composited over the frame: photometric L1 inside the face, the Inception feature distance and FID (see
  ``microface.metrics.image.METRIC_NAMES`` for the networks behind them). The neutral face and the landmark fit
  have no render in the crop (no camera of the crop): their image columns are NaN;
- recognition from mesh displacement, pooled by region (``microface.experiments.mesh_recognition``): each method's
  own reconstructed mesh sequence in the model frame (its shape, its expression at zero pose, plus DGMD's offsets
  rotated into the model frame; the reference rows: their expression on the mean shape) becomes, per face region
  and side, the mean vertex displacement from the onset frame and its mean magnitude (mm), resampled to
  ``dem.max_frames`` frames; the trajectory classifier (``microface.models.trajectory``) reads those,
  leave-one-subject-out over the TEST subjects' clips only: each test subject is scored by a classifier trained on
  the other test subjects. No ground truth enters these features (the expression offsets of the face model add to
  the shape's, so the displacement from the onset does not depend on the shape anyway). Training-subject clips are
  excluded because the FIELDS row saw their emotion labels. ACC, UF1, UAR and WF1 are reported with chance beside
  them; with fewer than two test subjects (the smoke profile's split) there is no one to train on and the four
  columns are NaN. Every vertex a method moves counts, DGMD's per-vertex offsets included.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from microface.data.clip_landmarks import landmark_cache_dir
from microface.data.clips import ClipTensors, _to_device, clip_tensors_from_synth, collate_clips
from microface.experiments.coarse import CoarseBenchmarkSettings, _check_run_description
from microface.experiments.mesh_recognition import ROW_LABEL, face_region_labels, mesh_recognition
from microface.experiments.refine import RefineBenchmarkSettings, coarse_clips, load_split, model_frame_offsets
from microface.experiments.report import NotebookReport
from microface.metrics.geometry import moving_static_errors, moving_vertices, temporal_jitter
from microface.models.baseline import build_baseline
from microface.training.dem import build_dem, render_frames
from microface.training.fields import fields_finetune
from microface.training.loop import load_checkpoint
from microface.utils.checks import config_from_dict
from microface.utils.io import write_table
from microface.utils.runtime import progress
from microface.viz.curves import training_curves

TABLE_NAME = "main_table"
SUPERVISED = " +3D supervision"  # as microface.experiments.coarse.SUPERVISED
NEUTRAL = "neutral face"
LANDMARK_FIT = "landmark fit"
METHODS = (NEUTRAL, LANDMARK_FIT, "per-frame encoder", "baseline-FT", "DEM", "DEM + DGMD", "FIELDS",
           f"baseline-FT{SUPERVISED}", f"DEM{SUPERVISED}", f"DEM + DGMD{SUPERVISED}")
# method -> (notebook 01 checkpoint of its coarse model, notebook 02 checkpoint of its DGMD or None)
TRAINED = {"per-frame encoder": ("baseline.pt", None), "baseline-FT": ("baseline_ft.pt", None),
           "DEM": ("dem.pt", None), "DEM + DGMD": ("dem.pt", "dgmd.pt"),
           f"baseline-FT{SUPERVISED}": ("baseline_ft_3d.pt", None), f"DEM{SUPERVISED}": ("dem_3d.pt", None),
           f"DEM + DGMD{SUPERVISED}": ("dem_3d.pt", "dgmd_3d.pt")}
GEOMETRY_KEYS = tuple(f"{part}_{at}_mm" for part in ("moving", "static", "all") for at in ("apex", "clip"))


@dataclass
class EvaluationSettings:
    """The ``evaluate:`` section of a profile config.

    fields: ``FieldsScheduleConfig`` keys (step1/step2 epochs and lr, step2_weights); emotion_hidden: width of the
    FIELDS emotion head; recognition: ``microface.experiments.mer.MERRunConfig`` keys for the trajectory classifier (epochs,
    batch_size, lr, model); image_batch_size: images per Inception forward pass.
    """

    fields: dict = field(default_factory=dict)
    emotion_hidden: int = 64
    recognition: dict = field(default_factory=dict)
    image_batch_size: int = 16

    @classmethod
    def from_dict(cls, values: dict | None) -> "EvaluationSettings":
        return config_from_dict(cls, values, "evaluate")


# ------------------------------------------------------------------------------------------------- data
def labelled_clip_tensors(records, class_names: tuple[str, ...], image_size: int, flow_method: str, max_frames: int,
                          device, show_progress: bool, landmarks: str = "detected",
                          landmark_cache=None) -> list[ClipTensors]:
    """ClipTensors of records (as notebook 01 builds them) with ``label`` set to the class index; landmarks,
    landmark_cache: as ``clip_tensors_from_synth``."""
    clips = clip_tensors_from_synth(records, image_size, flow_method, max_frames, show_progress, landmarks,
                                    landmark_cache)
    out = []
    for record, clip in zip(records, clips):
        if record.label not in class_names:
            raise ValueError(f"clip {record.key}: label {record.label!r} is not one of {class_names}")
        clip.label = class_names.index(record.label)
        out.append(_to_device(clip, device))
    return out


# ---------------------------------------------------------------------------------------------- methods
def load_methods(coarse_dir: Path, refine_dir: Path, out_dir: Path, face_model, dem_settings: dict,
                 dgmd_settings: dict, settings: EvaluationSettings, train_clips: list[ClipTensors],
                 n_classes: int, seed: int, device) -> tuple[dict[str, tuple], list[dict]]:
    """The trained methods: {method: (coarse model (DEM interface), DGMD or None)} for every row of ``TRAINED``
    and FIELDS, and FIELDS' training history (FIELDS is trained here, from notebook 01's self-supervised DEM, on
    the training subjects' ME clips with DEM's fine-tuning weights plus ``dem.supervision``; resumable)."""
    from microface.models.dgmd import build_dgmd
    from microface.models.fields import EmotionHead, FieldsScheduleConfig

    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    checkpoints = Path(coarse_dir) / "checkpoints"
    for name in sorted({coarse for coarse, _ in TRAINED.values()}):
        if not (checkpoints / name).is_file():
            raise FileNotFoundError(f"{checkpoints / name} is missing: run notebook 01_dem_pretrain first")
    for name in sorted({dgmd for _, dgmd in TRAINED.values() if dgmd}):
        if not (Path(refine_dir) / "checkpoints" / name).is_file():
            raise FileNotFoundError(f"{Path(refine_dir) / 'checkpoints' / name} is missing: run notebook "
                                    "02_dgmd_refine first")
    coarse_models, dgmds = {}, {}
    for coarse_name, dgmd_name in TRAINED.values():
        if coarse_name not in coarse_models:
            if coarse_name.startswith("baseline"):
                model = build_baseline(face_model, config.encoder, seed).to(device)
            else:
                model = build_dem(face_model, config.encoder, config.model, seed).to(device)
            load_checkpoint(checkpoints / coarse_name, model)
            coarse_models[coarse_name] = model.eval()
        if dgmd_name and dgmd_name not in dgmds:
            dgmd = build_dgmd(face_model, RefineBenchmarkSettings.from_dict(dgmd_settings).model, seed).to(device)
            load_checkpoint(Path(refine_dir) / "checkpoints" / dgmd_name, dgmd)
            dgmds[dgmd_name] = dgmd.eval()
    methods = {method: (coarse_models[coarse], dgmds.get(dgmd)) for method, (coarse, dgmd) in TRAINED.items()}

    fields_dem = build_dem(face_model, config.encoder, config.model, seed).to(device)
    load_checkpoint(checkpoints / "dem.pt", fields_dem)
    torch.manual_seed(seed)
    head = EmotionHead(face_model.n_expression, face_model.n_shape, n_classes, settings.emotion_hidden).to(device)
    train = config.stage(1, config.finetune_lr, seed, per_frame=False, supervised=True)
    history = fields_finetune(fields_dem, head, face_model, train_clips, train,
                              FieldsScheduleConfig.from_dict(settings.fields), Path(out_dir) / "checkpoints")
    methods["FIELDS"] = (fields_dem.eval(), None)
    return methods, history


# -------------------------------------------------------------------------------------------- scoring
def geometry_scores(mesh: torch.Tensor, truth: torch.Tensor, apex: int, moving_threshold_mm: float) -> dict:
    """The main table's geometry columns of one clip: ``{moving,static,all}_{apex,clip}_mm`` (moving: ground-truth
    apex displacement above ``moving_threshold_mm``), jitter of ``mesh`` and of ``truth`` (mm / kept-frame step^2).

    Shape:
        mesh, truth: (T, V, 3) mm, expression-only meshes at zero pose; apex: kept-frame index.
    """
    moving = moving_vertices(truth, apex, moving_threshold_mm)
    scores = moving_static_errors(mesh, truth, moving, apex)
    return {**{key: scores[key] for key in GEOMETRY_KEYS}, "jitter_mm_per_frame2": float(temporal_jitter(mesh)),
            "gt_jitter_mm_per_frame2": float(temporal_jitter(truth))}


@torch.no_grad()
def expression_meshes(face_model, clip: ClipTensors,
                      expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Expression-only mesh of ``expression`` and the ground truth, both on the clip's ground-truth shape at zero
    pose, and the apex (``clip.apex``, else the frame of largest ground-truth displacement), as ``coarse_clips``.

    Shape:
        expression: (T, E) over the clip's kept frames -> mesh, truth: (T, V, 3) mm.
    """
    T = clip.frames.shape[0]
    if expression.shape != (T, face_model.n_expression):
        raise ValueError(f"clip {clip.key}: expected an expression of shape ({T}, {face_model.n_expression}) (kept "
                         f"frames, expression parameters), got {tuple(expression.shape)}")
    zero_pose = torch.zeros(T, 6, dtype=clip.frames.dtype, device=clip.frames.device)
    gt_shape = clip.shape[None].expand(T, -1).to(zero_pose)
    truth = face_model(gt_shape, clip.expression.to(zero_pose), zero_pose).vertices
    mesh = face_model(gt_shape, expression.to(zero_pose), zero_pose).vertices
    if clip.apex is not None:
        return mesh, truth, int(clip.apex)
    neutral = face_model(gt_shape, zero_pose.new_zeros(T, face_model.n_expression), zero_pose).vertices
    return mesh, truth, int((truth - neutral).norm(dim=-1).mean(-1).argmax())


def landmark_fit_expressions(records, max_frames: int, cache_dir, show_progress: bool = True) -> list[np.ndarray]:
    """The landmark fit's AU expression (K, E) float32 at each record's kept frames
    (``subsample_indices(onset, apex, offset, max_frames)``), from the detected landmarks cached in ``cache_dir``
    (``microface.experiments.landmark_fit_method.fit_clip_expressions``, imported here: it is heavy)."""
    from microface.experiments.landmark_fit_method import fit_clip_expressions

    return fit_clip_expressions(records, max_frames, cache_dir, show_progress=show_progress)


@torch.no_grad()
def model_frame_meshes(face_model, expression: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
    """A method's own mesh sequence in the model frame (zero pose: no head motion): its ``shape`` (None: the mean
    shape) with its expression at every frame; what recognition from mesh displacement reads (plus DGMD's
    model-frame offsets for the refined rows).

    Shape:
        expression: (T, E), shape: (S,) or None -> (T, V, 3) mm.
    """
    T = expression.shape[0]
    zero_pose = expression.new_zeros(T, 6)
    shape = expression.new_zeros(face_model.n_shape) if shape is None else shape.to(expression)
    return face_model(shape[None].expand(T, -1), expression, zero_pose).vertices


@torch.no_grad()
def score_method(method: str, model, dgmd, face_model, clips: list[ClipTensors], renderer,
                 moving_threshold_mm: float,
                 refine_inputs: list[ClipTensors] | None = None) -> tuple[list[dict], dict[str, object]]:
    """Geometry rows per clip (refined by ``dgmd`` unless it is None), and the method's images and meshes:
    {"rendered" (N,3,H,W) composites, "target" (N,3,H,W), "alpha" (N,1,H,W), "meshes": one (T, V, 3) mm per clip,
    the method's own reconstruction in the model frame (``model_frame_meshes`` of its shape and expression, plus
    DGMD's offsets rotated into the model frame), for recognition}. refine_inputs: the clips at DGMD's resolution
    (None: the same)."""
    refine, scoring = coarse_clips(model, face_model, clips, refine_inputs)
    rows, rendered, targets, alphas, meshes = [], [], [], [], []
    for clip, refine_clip_data, truth in zip(clips, refine, scoring):
        batch = collate_clips([clip])
        recon = truth.reconstruction  # coarse_clips ran the model once; reuse it
        mesh = truth.expression_only
        own_mesh = model_frame_meshes(face_model, recon.output.expression[0], recon.shape[0])
        if dgmd is not None:
            from microface.training.dgmd import refine_clip

            offsets = refine_clip(dgmd, refine_clip_data).offsets
            model_offsets = model_frame_offsets(offsets, truth.rotation)
            mesh = mesh + model_offsets
            own_mesh = own_mesh + model_offsets
            recon = dataclasses.replace(recon, vertices=recon.vertices + offsets[None])
        rows.append({"method": method, "key": clip.key,
                     **geometry_scores(mesh, truth.truth, truth.apex, moving_threshold_mm)})
        out = render_frames(recon, face_model, batch.frames, renderer, "onset")
        target = batch.frames[0]
        rendered.append(out.alpha * out.image + (1 - out.alpha) * target)
        targets.append(target)
        alphas.append(out.alpha)
        meshes.append(own_mesh)
    return rows, {"rendered": torch.cat(rendered), "target": torch.cat(targets), "alpha": torch.cat(alphas),
                  "meshes": meshes}


def recognition_protocol(n_test_subjects: int) -> str:
    """The main table's ``mer_protocol`` text for a split with ``n_test_subjects`` test subjects: what is classified
    (``ROW_LABEL``) and how."""
    if n_test_subjects < 2:
        return (f"{ROW_LABEL}: not scored: LOSO over the test subjects needs at least 2, the split has "
                f"{n_test_subjects} (training subjects are excluded: FIELDS saw their labels)")
    return (f"{ROW_LABEL}: LOSO over the {n_test_subjects} test subjects' clips only "
            "(fixed-epoch; training subjects excluded: FIELDS saw their labels)")


def recognition_scores(method: str, meshes: list[torch.Tensor], clips: list[ClipTensors], subjects: list[str],
                       test_subjects: list[str], class_names: tuple[str, ...], region_labels: torch.Tensor,
                       n_regions: int, n_frames: int, settings: EvaluationSettings, out_dir: Path, seed: int,
                       device) -> dict:
    """Recognition from mesh displacement, pooled by region, of one method's reconstructions: the trajectory
    classifier (``microface.experiments.mesh_recognition.mesh_recognition``), LOSO over the TEST subjects' clips.

    Each test subject is scored by a classifier trained on the other test subjects' clips only: the training
    subjects' clips are dropped, because the FIELDS row was trained with their emotion labels (and every
    reconstruction model with their clips). Predictions are pooled over the folds.

    Args:
        method: the table row's name (names the run folder ``out_dir/recognition_mesh/<method>``).
        meshes: the method's reconstruction of each clip in the model frame, mm (``score_method``'s "meshes").
        clips: the clips, in the order of ``meshes``; their ``label`` indexes ``class_names``.
        subjects: each clip's subject (``"synth/subNN"``); test_subjects: the split's test subjects.
        region_labels, n_regions: the pooling groups (``face_region_labels``); n_frames: trajectory length.
        settings: its ``recognition`` mapping (MERRunConfig keys) sets the classifier; seed, device: the run's.

    Returns:
        {"mer_acc", "mer_uf1", "mer_uar", "mer_wf1"}; all NaN when fewer than two test subjects have clips.

    Shape:
        meshes: N x (T_i, V, 3); the classifier reads (N, n_frames, n_regions * 4).
    """
    if len(meshes) != len(clips) or len(subjects) != len(clips):
        raise ValueError(f"recognition_scores({method!r}): {len(meshes)} meshes, {len(clips)} clips, "
                         f"{len(subjects)} subjects; expected one of each per clip")
    tested = set(test_subjects)
    keep = [i for i, subject in enumerate(subjects) if subject in tested]
    if len({subjects[i] for i in keep}) < 2:
        return {"mer_acc": float("nan"), "mer_uf1": float("nan"), "mer_uar": float("nan"), "mer_wf1": float("nan")}
    result = mesh_recognition([meshes[i] for i in keep], [clips[i].label for i in keep], [subjects[i] for i in keep],
                              class_names, region_labels, n_regions,
                              Path(out_dir) / "recognition_mesh" / method.replace(" ", "_"), settings.recognition,
                              n_frames=n_frames, clip_ids=[clips[i].key for i in keep],
                              datasets=[subjects[i].split("/")[0] for i in keep], seed=seed, device=device)
    return result.scores


@dataclass
class EvalData:
    """What every scored method shares: the face model, labelled train / test clips and their records, the class
    names, the face regions recognition pools by (``region_labels`` (V,) into ``region_names``), the renderer, the
    moving threshold, the trajectory length, and the real frames' Inception features once computed (the FID
    reference); train / test_refine_inputs: the same clips at DGMD's resolution when it differs from DEM's (else
    None)."""

    face_model: object
    train_records: list
    test_records: list
    train_clips: list[ClipTensors]
    test_clips: list[ClipTensors]
    class_names: tuple[str, ...]
    region_labels: torch.Tensor
    region_names: tuple[str, ...]
    renderer: object
    threshold_mm: float
    n_frames: int
    split_label: str
    real_features: torch.Tensor | None = None
    synth_root: Path | None = None
    train_refine_inputs: list[ClipTensors] | None = None
    test_refine_inputs: list[ClipTensors] | None = None

    @property
    def subjects(self) -> list[str]:
        return [f"synth/{r.subject}" for r in self.train_records + self.test_records]

    @property
    def test_subjects(self) -> list[str]:
        return [f"synth/{r.subject}" for r in self.test_records]


def prepare_eval_data(synth_root, coarse_dir, dem_settings: dict, dgmd_settings: dict, class_map: str,
                      image_size: int, flow_method: str, device, show_progress: bool = True) -> EvalData:
    """Load the split's train / test ME clips with labels (the class map's order) and the shared pieces."""
    from microface.data.datasets import load_dataset
    from microface.data.datasets.synth import CLASS_MAPS
    from microface.face.open_model import OpenFaceModel
    from microface.render.renderer import MeshRenderer

    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    cache = landmark_cache_dir(synth_root)
    split = load_split(coarse_dir)
    class_names = tuple(CLASS_MAPS[class_map].order)
    micro = {r.key: r for r in load_dataset("synth", Path(synth_root), kind="micro", class_map=class_map)}
    train_records = [micro[k] for k in split["micro_train"] if k in micro]
    test_records = [micro[k] for k in split["micro_test"] if k in micro]
    if not test_records:
        raise ValueError(f"{coarse_dir}/split.json: none of its test clips carries a {class_map!r} label in {synth_root}")
    train_clips = labelled_clip_tensors(train_records, class_names, image_size, flow_method, config.max_frames,
                                        device, show_progress, config.landmarks, cache)
    test_clips = labelled_clip_tensors(test_records, class_names, image_size, flow_method, config.max_frames,
                                       device, show_progress, config.landmarks, cache)
    refine_settings = RefineBenchmarkSettings.from_dict(dgmd_settings)
    refine_size = refine_settings.image_size
    train_refine = test_refine = None
    if refine_size not in (None, image_size):
        train_refine = labelled_clip_tensors(train_records, class_names, refine_size, flow_method, config.max_frames,
                                             device, show_progress, config.landmarks, cache)
        test_refine = labelled_clip_tensors(test_records, class_names, refine_size, flow_method, config.max_frames,
                                            device, show_progress, config.landmarks, cache)
    face_model = OpenFaceModel().to(device)
    region_labels, region_names = face_region_labels(face_model)
    return EvalData(face_model=face_model, train_records=train_records, test_records=test_records,
                    train_clips=train_clips, test_clips=test_clips, class_names=class_names,
                    region_labels=region_labels, region_names=region_names, renderer=MeshRenderer(),
                    threshold_mm=refine_settings.moving_threshold_mm, n_frames=config.max_frames,
                    split_label=split["label"], synth_root=Path(synth_root), train_refine_inputs=train_refine,
                    test_refine_inputs=test_refine)


def method_row(method: str, model, dgmd, data: EvalData, settings: EvaluationSettings, out_dir: Path, seed: int,
               device, image_metrics: bool = True, recognition: bool = True) -> tuple[dict, list[dict]]:
    """One table row (geometry, image metrics, recognition from reconstruction) and its per-clip rows."""
    from microface.metrics.image import fid_from_features, inception_pool_features, perceptual_distance, photometric_l1

    clip_rows, images = score_method(method, model, dgmd, data.face_model, data.test_clips, data.renderer,
                                     data.threshold_mm, data.test_refine_inputs)
    row = _mean_geometry(method, clip_rows)
    row["photometric_l1"] = photometric_l1(images["rendered"], images["target"], images["alpha"])
    if image_metrics:
        row["perceptual"] = perceptual_distance(images["rendered"], images["target"], images["alpha"],
                                                batch_size=settings.image_batch_size)
        if data.real_features is None:
            data.real_features = inception_pool_features(images["target"], settings.image_batch_size, progress=False)
        rendered = inception_pool_features(images["rendered"], settings.image_batch_size, progress=False)
        row["fid"] = fid_from_features(rendered, data.real_features)
    if recognition:
        row.update(_test_recognition(method, images["meshes"], data, settings, out_dir, seed, device))
    return row, clip_rows


def reference_row(method: str, expressions: list[torch.Tensor], data: EvalData, settings: EvaluationSettings,
                  out_dir: Path, seed: int, device, image_metrics: bool = True,
                  recognition: bool = True) -> tuple[dict, list[dict]]:
    """A row for a method without a render in the crop (the neutral face, the landmark fit): geometry of its
    expression-only meshes, NaN image columns, recognition from the displacement of its mesh (its expression on
    the mean shape, ``model_frame_meshes``).

    Shape:
        expressions: one (T, E) tensor per test clip, over its kept frames.
    """
    if len(expressions) != len(data.test_clips):
        raise ValueError(f"{method}: {len(expressions)} expression sequences for {len(data.test_clips)} test clips")
    clip_rows, meshes = [], []
    for clip, expression in zip(data.test_clips, expressions):
        mesh, truth, apex = expression_meshes(data.face_model, clip, expression)
        clip_rows.append({"method": method, "key": clip.key,
                          **geometry_scores(mesh, truth, apex, data.threshold_mm)})
        meshes.append(model_frame_meshes(data.face_model, expression.to(clip.frames)))
    row = _mean_geometry(method, clip_rows)
    row["photometric_l1"] = float("nan")
    if image_metrics:
        row["perceptual"] = row["fid"] = float("nan")
    if recognition:
        row.update(_test_recognition(method, meshes, data, settings, out_dir, seed, device))
    return row, clip_rows


def _mean_geometry(method: str, clip_rows: list[dict]) -> dict:
    frame = pd.DataFrame(clip_rows)
    return {"method": method, **frame.drop(columns=["method", "key"]).mean().to_dict(),
            "all_apex_std_mm": float(frame["all_apex_mm"].std())}


def _test_recognition(method: str, test_meshes: list[torch.Tensor], data: EvalData, settings: EvaluationSettings,
                      out_dir: Path, seed: int, device) -> dict:
    """``recognition_scores`` of the test clips' meshes (it keeps only the test subjects' clips anyway)."""
    subjects = [f"synth/{r.subject}" for r in data.test_records]
    return recognition_scores(method, test_meshes, data.test_clips, subjects, data.test_subjects, data.class_names,
                              data.region_labels, len(data.region_names), data.n_frames, settings, out_dir, seed,
                              device)


def reference_expressions(method: str, data: EvalData, show_progress: bool = True) -> list[torch.Tensor]:
    """The test clips' expressions of a reference row: zeros ("neutral face") or the landmark fit's (T, E) each."""
    if method == NEUTRAL:
        return [torch.zeros(c.frames.shape[0], data.face_model.n_expression, dtype=c.frames.dtype,
                            device=c.frames.device) for c in data.test_clips]
    if method != LANDMARK_FIT:
        raise ValueError(f"reference_expressions: expected {NEUTRAL!r} or {LANDMARK_FIT!r}, got {method!r}")
    if data.synth_root is None:
        raise ValueError("reference_expressions: the landmark fit needs EvalData.synth_root (its landmark cache)")
    fitted = landmark_fit_expressions(data.test_records, data.n_frames, landmark_cache_dir(data.synth_root),
                                      show_progress=show_progress)
    return [torch.as_tensor(np.asarray(e, dtype=np.float32), device=c.frames.device)
            for e, c in zip(fitted, data.test_clips)]


def finish_table(rows: list[dict], data: EvalData) -> pd.DataFrame:
    """Rows -> table with the chance levels, the test-clip count, the split and the recognition protocol."""
    table = pd.DataFrame(rows)
    labels = np.array([c.label for c in data.test_clips])
    counts = np.bincount(labels, minlength=len(data.class_names))
    table["mer_acc_majority"] = float(counts.max() / counts.sum())
    table["mer_uar_chance"] = 1.0 / len(data.class_names)
    table["n_test_clips"] = len(data.test_clips)
    table["split"] = data.split_label
    table["mer_protocol"] = recognition_protocol(len(set(data.test_subjects)))
    return table


def run_evaluation(synth_root, coarse_dir, refine_dir, out_dir, dem_settings: dict, dgmd_settings: dict,
                   eval_settings: dict, class_map: str = "5class", seed: int = 0, *, image_size: int = 64,
                   flow_method: str = "dis", device="cpu", show_progress: bool = True) -> pd.DataFrame:
    """Score every method (module docstring) and write ``main_table.csv`` / ``.md``, ``per_clip.csv`` and the FIELDS
    ``training_curves.csv`` under ``out_dir``. Returns the table, one row per method."""
    settings = EvaluationSettings.from_dict(eval_settings)
    out_dir, device = Path(out_dir), torch.device(device)
    _check_run_description(out_dir, {"evaluate": asdict(settings), "dem": dem_settings, "dgmd": dgmd_settings,
                                     "seed": seed, "image_size": image_size, "flow_method": flow_method,
                                     "class_map": class_map, "coarse_split": load_split(coarse_dir)["label"]})
    data = prepare_eval_data(synth_root, coarse_dir, dem_settings, dgmd_settings, class_map, image_size, flow_method,
                             device, show_progress)
    methods, fields_history = load_methods(coarse_dir, refine_dir, out_dir, data.face_model, dem_settings,
                                           dgmd_settings, settings, data.train_clips, len(data.class_names), seed,
                                           device)
    per_clip, rows = [], []
    for method in progress(METHODS, desc="evaluate methods", disable=not show_progress):
        if method in (NEUTRAL, LANDMARK_FIT):
            row, clip_rows = reference_row(method, reference_expressions(method, data, show_progress), data, settings,
                                           out_dir, seed, device)
        else:
            model, dgmd = methods[method]
            row, clip_rows = method_row(method, model, dgmd, data, settings, out_dir, seed, device)
        rows.append(row)
        per_clip += clip_rows
    table = finish_table(rows, data)
    write_table(pd.DataFrame(per_clip), out_dir, "per_clip", markdown=False)
    write_table(table, out_dir, TABLE_NAME)
    stages: dict[str, list[dict]] = {}
    for record in fields_history:
        stages.setdefault(f"FIELDS {record['stage']}", []).append({k: v for k, v in record.items() if k != "stage"})
    write_table(training_curves(stages), out_dir, "training_curves", markdown=False)
    return table


@torch.no_grad()
def qualitative_example(synth_root, coarse_dir, refine_dir, dem_settings: dict, dgmd_settings: dict,
                        class_map: str = "5class", seed: int = 0, *, image_size: int = 64, flow_method: str = "dis",
                        device="cpu", clip_index: int | None = None) -> dict:
    """Arrays for the qualitative figures of one test clip (default: the one with the most moving vertices).

    Returns frames / coarse / refined (T, H, W, 3) float in [0, 1] (renders composited over the frames), the
    expression-only meshes: vertices_coarse / vertices_refined / vertices_truth (T, V, 3) mm, faces (F, 3),
    error_coarse / error_refined (T, V) mm, gate (T, V), displacement_{truth,coarse,refined} (T,) mean displacement
    of the moving vertices from the onset (mm), apex (kept-frame index), key.
    """
    from microface.experiments.refine import most_moving_clip
    from microface.models.dgmd import build_dgmd
    from microface.training.dgmd import refine_clip

    device = torch.device(device)
    data = prepare_eval_data(synth_root, coarse_dir, dem_settings, dgmd_settings, class_map, image_size, flow_method,
                             device, show_progress=False)
    config = CoarseBenchmarkSettings.from_dict(dem_settings)
    dem = build_dem(data.face_model, config.encoder, config.model, seed).to(device)
    load_checkpoint(Path(coarse_dir) / "checkpoints" / "dem.pt", dem)
    dgmd = build_dgmd(data.face_model, RefineBenchmarkSettings.from_dict(dgmd_settings).model, seed).to(device)
    load_checkpoint(Path(refine_dir) / "checkpoints" / "dgmd.pt", dgmd)
    dem.eval(), dgmd.eval()
    refine, scoring = coarse_clips(dem, data.face_model, data.test_clips, data.test_refine_inputs)
    k = most_moving_clip(scoring, data.threshold_mm) if clip_index is None else clip_index
    clip, truth = data.test_clips[k], scoring[k]
    refinement = refine_clip(dgmd, refine[k])
    refined_mesh = truth.expression_only + model_frame_offsets(refinement.offsets, truth.rotation)
    batch = collate_clips([clip])
    renders = {}
    for name, offsets in (("coarse", None), ("refined", refinement.offsets)):
        recon = truth.reconstruction
        if offsets is not None:
            recon = dataclasses.replace(recon, vertices=recon.vertices + offsets[None])
        out = render_frames(recon, data.face_model, batch.frames, data.renderer, "onset")
        renders[name] = (out.alpha * out.image + (1 - out.alpha) * batch.frames[0]).permute(0, 2, 3, 1).cpu().numpy()
    moving = moving_vertices(truth.truth, truth.apex, data.threshold_mm)

    def displacement(mesh: torch.Tensor) -> np.ndarray:
        return (mesh - mesh[:1]).norm(dim=-1)[:, moving].mean(-1).cpu().numpy()

    return {"key": clip.key, "apex": truth.apex, "times": clip.times.cpu().numpy(),
            "frames": batch.frames[0].permute(0, 2, 3, 1).cpu().numpy(), "coarse": renders["coarse"],
            "refined": renders["refined"], "faces": data.face_model.faces.cpu().numpy(),
            "vertices_coarse": truth.expression_only.cpu().numpy(), "vertices_refined": refined_mesh.cpu().numpy(),
            "vertices_truth": truth.truth.cpu().numpy(),
            "error_coarse": (truth.expression_only - truth.truth).norm(dim=-1).cpu().numpy(),
            "error_refined": (refined_mesh - truth.truth).norm(dim=-1).cpu().numpy(),
            "gate": refinement.gate.cpu().numpy(), "displacement_truth": displacement(truth.truth),
            "displacement_coarse": displacement(truth.expression_only), "displacement_refined": displacement(refined_mesh)}


# ----------------------------------------------------------------------------------------------- notebook 04
GEOMETRY_COLUMNS = ["method", "moving_apex_mm", "moving_clip_mm", "static_apex_mm", "static_clip_mm", "all_apex_mm",
                    "all_apex_std_mm", "all_clip_mm", "jitter_mm_per_frame2", "gt_jitter_mm_per_frame2"]
TARGET_REDUCTION = 0.30  # the bar: DEM + DGMD must cut the reference's error by this share
IMAGE_COLUMNS = ["method", "photometric_l1", "perceptual", "fid"]
RECOGNITION_COLUMNS = ["method", "mer_acc", "mer_uf1", "mer_uar", "mer_wf1", "mer_acc_majority", "mer_uar_chance"]


def verdict_lines(table: pd.DataFrame, method: str = "DEM + DGMD") -> list[str]:
    """The main table's verdict: does ``method`` cut (a) the neutral face's all-vertex apex error and (b) the
    landmark fit's moving-vertex apex error by ``TARGET_REDUCTION`` or more (relative reduction, numbers given);
    then DEM and DEM + DGMD against baseline-FT on the all-vertex apex error."""
    rows = table.set_index("method")
    lines = []
    for label, reference, column, part in (("(a)", NEUTRAL, "all_apex_mm", "all-vertex"),
                                           ("(b)", LANDMARK_FIT, "moving_apex_mm", "moving-vertex")):
        ours, theirs = float(rows.loc[method, column]), float(rows.loc[reference, column])
        reduction = 1.0 - ours / theirs if theirs > 0 else float("nan")
        beats = bool(reduction >= TARGET_REDUCTION)
        lines.append(f"{label} {method} {'beats' if beats else 'does NOT beat'} the {reference} on the {part} apex "
                     f"error by {TARGET_REDUCTION:.0%} or more: {ours:.4f} vs {theirs:.4f} mm, a relative reduction of "
                     f"{reduction:.1%}")
    for name in ("DEM", "DEM + DGMD"):
        ours, theirs = float(rows.loc[name, "all_apex_mm"]), float(rows.loc["baseline-FT", "all_apex_mm"])
        lines.append(f"{name} {'beats' if ours < theirs else 'does NOT beat'} baseline-FT on the all-vertex apex "
                     f"error: {ours:.4f} vs {theirs:.4f} mm")
    return lines


def run_main_table_experiment(profile: str, seed: int, device: str, synth: dict, data: dict, dem: dict, dgmd: dict,
                              evaluate: dict, results_dir) -> NotebookReport:
    """Notebook 04_evaluate end to end: every method scored (``run_evaluation``) into ``results_dir/evaluate``.

    Args:
        profile, seed, device: the config's top-level keys.
        synth, data, dem, dgmd, evaluate: the config's sections of those names.
        results_dir: results/<profile>, relative to the compendium root or absolute; needs notebooks 01 and 02's
            ``dem/`` and ``dgmd/``.

    Returns:
        tables: ``geometry``, ``images``, ``recognition`` (the main table's column groups); notes: ``metrics``
        (the image metrics' networks), ``split``, ``mer_protocol``, ``verdict`` (``verdict_lines``: does
        DEM + DGMD cut the neutral face's all-vertex apex error and the landmark fit's moving-vertex apex error
        by ``TARGET_REDUCTION`` or more; DEM and DEM + DGMD against baseline-FT; where the table was written); paths: ``out_dir``, ``synth_root``.
    """
    from microface.config import project_root, resolve
    from microface.experiments.coarse import benchmark_root
    from microface.metrics.image import METRIC_NAMES

    report = NotebookReport()
    results = resolve(results_dir, project_root())
    out_dir = results / "evaluate"
    synth_root = benchmark_root(results, data, synth, profile, seed)
    report.notes["metrics"] = "\n".join(f"{name}: {description}" for name, description in METRIC_NAMES.items())

    table = run_evaluation(synth_root, results / "dem", results / "dgmd", out_dir, dem, dgmd, evaluate,
                           class_map=data["class_map"], seed=seed, image_size=data["size"],
                           flow_method=data["flow_method"], device=device)
    report.notes["split"] = table["split"].iloc[0]
    report.notes["mer_protocol"] = table["mer_protocol"].iloc[0]
    report.tables["geometry"] = table[GEOMETRY_COLUMNS]
    report.tables["images"] = table[IMAGE_COLUMNS]
    report.tables["recognition"] = table[RECOGNITION_COLUMNS]

    lines = verdict_lines(table)
    lines.append(f"written: {out_dir / 'main_table.csv'} {out_dir / 'main_table.md'}")
    report.notes["verdict"] = "\n".join(lines)
    report.paths.update(out_dir=out_dir, synth_root=synth_root)
    return report
