"""Recognition from reconstruction on any dataset the loaders read: DEM + DGMD meshes of every prepared clip, then
the trajectory classifier on their region-pooled displacement, leave-one-subject-out.

Configured like notebook 03 (``data.dataset`` / ``data.root`` / ``data.class_map`` made notebook 00's
``results/<profile>/prepared``; ``mer.n_frames``, ``mer.epochs``, ``mer.batch_size``, ``mer.lr`` and
``mer.trajectory`` set the classifier as for the other MER models; ``mer.mesh`` switches this step on and names the
checkpoint). Per labelled clip of the prepared cache:

1. frames: ``mer.n_frames`` indices spread uniformly over the WHOLE clip (``clip_frame_indices(..., "uniform")``);
   the annotation (onset, apex, offset) is never read. The first sampled frame is the clip's first frame, the onset
   of the reconstruction's window;
2. the sampled SOURCE frames (the record's frame files, full resolution) are reconstructed as ``microface
   reconstruct --stage dgmd`` reconstructs one window (``microface.reconstruct.pipeline``): the face tracked by the
   offline MediaPipe landmarker (``track_face``: frame 0 must hold a face), the landmark fit of those frames
   (``fit_video``), the eye-aligned crops and flows from the first frame (``prepare_window``), DEM from the fit's
   onset and DGMD's offsets (``run_window``) with the checkpoint bundle's models (default: the shipped one,
   ``DEMConfig.still_field`` on);
3. the meshes are taken into the face model's frame (no head motion): the model's mesh of the window's shape and
   expression with the jaw but zero global rotation, plus DGMD's offsets rotated back by each frame's global
   rotation (``model_frame_vertices``); cached per clip (``vertices/<dataset>/<subject>/<clip_id>.npz``, keyed by
   the checkpoint's sha256, the frames and this module's format), so a rerun resumes;
4. ``microface.experiments.mesh_recognition.mesh_recognition``: region-pooled displacement from the first frame,
   the trajectory classifier, LOSO under the "fixed-epoch" protocol.

A clip whose first sampled frame holds no face, or that is shorter than ``mer.n_frames``, is left out and listed.
Outputs under ``results/<profile>/mer/mesh/``: ``mesh_table.csv`` / ``.md`` (one row: ACC, UF1, UAR, WF1, chance,
and what the checkpoint was trained on, with its subject overlap with this dataset), ``skipped.csv`` (clips left
out and why), ``vertices/`` (the cache) and ``trajectory/fixed-epoch/`` (the LOSO run's predictions and folds).
"""
from __future__ import annotations

import hashlib
import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from microface.experiments.mesh_recognition import FEATURES_PER_REGION, face_region_labels, mesh_recognition
from microface.experiments.report import NotebookReport
from microface.reconstruct.bundle import (
    build_face_model,
    check_device,
    default_checkpoint_path,
    models_from_bundle,
    read_bundle,
)
from microface.reconstruct.errors import ReconstructionError
from microface.reconstruct.pipeline import WindowFit, fit_video, prepare_window, run_window
from microface.reconstruct.video import track_face

ROW_LABEL = "DEM + DGMD mesh displacement (shipped checkpoint)"
OWN_ROW_LABEL = "DEM + DGMD mesh displacement (checkpoint {name})"
PROTOCOL = "fixed-epoch"
STAGE = "dgmd"
CACHE_FORMAT = 2  # bump when what a cached clip holds changes (2: the tracker follows the face, FaceLandmarker.track)


@dataclass
class MeshModels:
    """What reconstructs a clip: the face model, DEM and DGMD in eval mode, and the bundle's meta (``image_size``,
    ``refine_size``, ``flow``, ``provenance``, ``sha256``, ``path``)."""

    face_model: torch.nn.Module
    dem: torch.nn.Module
    dgmd: torch.nn.Module
    meta: dict


def load_mesh_models(checkpoint: str | Path | None, device: str | torch.device = "cpu") -> MeshModels:
    """DEM + DGMD from a reconstruction bundle (None: ``default_checkpoint_path()``, the shipped one), built as
    ``microface reconstruct`` builds them (``still_field`` on), on ``device``; its face model must be one that needs
    no extra file (the open model)."""
    bundle = read_bundle(checkpoint if checkpoint is not None else default_checkpoint_path())
    spec = bundle["face_model"]
    face_model = build_face_model(spec["name"], None, spec["n_shape"], spec["n_expression"]).to(device)
    dem, dgmd, meta = models_from_bundle(bundle, face_model, still_field=True)
    return MeshModels(face_model=face_model, dem=dem, dgmd=dgmd, meta=meta)


@torch.no_grad()
def model_frame_vertices(face_model, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray,
                         coarse_vertices: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """A reconstruction's meshes in the face model's frame, without head motion.

    The face model applies the global rotation last (``posed = R_t (v - c) + c``), so the model-frame mesh is the
    model's mesh at zero global rotation (jaw kept: it is expression) plus the refinement's posed offsets
    ``vertices - coarse_vertices`` rotated back, ``R_t^T d`` (``microface.experiments.refine.model_frame_offsets``).

    Args:
        face_model: the model the meshes were made with.
        shape: (S,); expression: (T, E); pose: (T, 6) global then jaw axis-angle, radians.
        coarse_vertices: (T, V, 3) mm, the posed mesh of (shape, expression, pose); vertices: (T, V, 3) mm, the
            posed final mesh (DGMD's offsets added).

    Returns:
        (T, V, 3) float32 mm, model frame.
    """
    from microface.experiments.refine import model_frame_offsets
    from microface.mesh.geometry import axis_angle_to_matrix

    device = face_model.v_template.device

    def tensor(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)

    pose_t = tensor(pose)
    if pose_t.ndim != 2 or pose_t.shape[-1] != 6:
        raise ValueError(f"model_frame_vertices: pose must be (T, 6), got {tuple(pose_t.shape)}")
    n_frames = pose_t.shape[0]
    unposed = torch.cat([torch.zeros_like(pose_t[:, :3]), pose_t[:, 3:]], dim=1)
    mesh = face_model(tensor(shape)[None].expand(n_frames, -1), tensor(expression), unposed).vertices
    offsets = tensor(vertices) - tensor(coarse_vertices)
    mesh = mesh + model_frame_offsets(offsets, axis_angle_to_matrix(pose_t[:, :3]))
    return mesh.cpu().numpy().astype(np.float32)


def reconstruct_frames(images: np.ndarray, times: np.ndarray, models: MeshModels, landmarker,
                       name: str = "clip") -> dict[str, np.ndarray]:
    """Reconstruct a short frame sequence as one window of ``microface reconstruct --stage dgmd``.

    Args:
        images: (T, H, W, 3) uint8 RGB source frames, T >= 2; frame 0 is the window's onset and must hold a face.
        times: (T,) strictly increasing (any unit: DEM normalises them to [0, 1]).
        models: ``load_mesh_models``; landmarker: a ``microface.data.landmarks.FaceLandmarker``.
        name: named in errors.

    Returns:
        {"vertices": (T, V, 3) mm in the model frame (``model_frame_vertices``), "expression": (T, E),
        "detected": (T,) bool (False: the previous frame's landmarks were held)}.

    Raises:
        ReconstructionError: no face in frame 0, or the landmark fit failed.
    """
    from microface.data.landmarks import to_ibug68

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
        raise ValueError(f"reconstruct_frames({name}): expected images (T >= 2, H, W, 3) uint8, got {images.shape}")
    tracked = list(track_face(images, landmarker, name))
    meshes = np.stack([f.mesh for f in tracked]).astype(np.float32)
    detected = np.array([f.detected for f in tracked], dtype=bool)
    fit = fit_video(meshes, detected, models.face_model)
    meta = models.meta
    flow = meta["flow"]
    inputs = prepare_window(images, to_ibug68(meshes)[..., :2], int(meta["image_size"]), STAGE, flow["method"],
                            flow.get("options", {}), int(meta["refine_size"]))
    window_fit = WindowFit(shape=fit.shape.numpy(), expression=fit.expression.numpy(), pose=fit.pose.numpy(),
                           camera=fit.camera.numpy(), transform=inputs.transform)
    result = run_window(models.dem, models.dgmd, models.face_model, inputs.crops, inputs.flow,
                        np.asarray(times, dtype=np.float64), inputs.landmarks_crop, STAGE,
                        refine_flow=inputs.refine_flow, refine_landmarks=inputs.refine_landmarks, fit=window_fit)
    vertices = model_frame_vertices(models.face_model, result.shape, result.expression, result.pose,
                                    result.coarse_vertices, result.vertices)
    return {"vertices": vertices, "expression": result.expression, "detected": detected}


# ----------------------------------------------------------------------------------------------- prepared clips
@dataclass
class PreparedClip:
    """A labelled clip of notebook 00's cache: its record's keys, the source frame files and the sampled indices."""

    key: str
    dataset: str
    subject: str
    clip_id: str
    label: str
    frames: list[str]
    picks: np.ndarray


def prepared_clips(prepared_dir: str | Path, n_frames: int) -> tuple[list[PreparedClip], list[dict]]:
    """The labelled clips of a ``microface prepare`` cache with ``n_frames`` uniformly sampled frame indices each.

    Only each clip's record (``meta``) is read, never its annotation: the indices are
    ``clip_frame_indices(len(frames), n_frames, "uniform")``. Returns (clips sorted by key, skipped
    [{"clip", "reason"}]: clips shorter than n_frames). Raises ValueError for an empty cache.
    """
    from microface.data.preprocess import load_manifest
    from microface.experiments.mer import clip_frame_indices

    prepared_dir = Path(prepared_dir)
    manifest = load_manifest(prepared_dir)
    if not manifest["clips"]:
        raise ValueError(f"{prepared_dir} holds no prepared clips (no {prepared_dir / 'manifest.json'} entries); "
                         "run notebook 00_data (`microface prepare`) first")
    clips, skipped = [], []
    for key in sorted(manifest["clips"]):
        path = prepared_dir / manifest["clips"][key]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {prepared_dir / 'manifest.json'} but missing; "
                                    "run `microface prepare` again to rebuild it")
        with np.load(path) as arrays:
            record = json.loads(str(arrays["meta"]))["record"]
        if not record.get("label"):
            continue
        frames = [str(p) for p in record["frames"]]
        if len(frames) < n_frames:
            skipped.append({"clip": key, "reason": f"{len(frames)} frames, fewer than mer.n_frames = {n_frames}"})
            continue
        clips.append(PreparedClip(key=key, dataset=str(record["dataset"]), subject=str(record["subject"]),
                                  clip_id=str(record["clip_id"]), label=str(record["label"]), frames=frames,
                                  picks=clip_frame_indices(len(frames), n_frames, "uniform")))
    return clips, skipped


def _cache_key(clip: PreparedClip, checkpoint_sha256: str) -> str:
    text = json.dumps({"format": CACHE_FORMAT, "checkpoint": checkpoint_sha256, "stage": STAGE,
                       "frames": [clip.frames[i] for i in clip.picks]})
    return hashlib.sha256(text.encode()).hexdigest()


def clip_vertices(clip: PreparedClip, models: MeshModels, landmarker, cache_dir: Path) -> np.ndarray:
    """The model-frame meshes (n_frames, V, 3) mm of one clip's sampled frames, from ``cache_dir`` when a file there
    was made from the same frames and checkpoint, else reconstructed (``reconstruct_frames``) and cached."""
    from microface.data.preprocess import read_rgb
    from microface.utils.io import atomic_path

    path = cache_dir / clip.dataset / clip.subject / f"{clip.clip_id}.npz"
    key = _cache_key(clip, str(models.meta.get("sha256", "")))
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return cached["vertices"]
    images = np.stack([read_rgb(clip.frames[i]) for i in clip.picks])
    out = reconstruct_frames(images, clip.picks.astype(np.float64), models, landmarker, clip.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, vertices=out["vertices"], expression=out["expression"], detected=out["detected"],
                 picks=clip.picks, key=np.array(key))
    return out["vertices"]


def checkpoint_caveat(meta: dict, dataset: str, profile: str, results: Path) -> tuple[str, str]:
    """(what the checkpoint was trained on, its subject overlap with ``dataset``), from the bundle's provenance.

    A checkpoint exported from a profile's training run (``tools/export_checkpoint.py``) was trained on that
    profile's synthetic benchmark, its training subjects' clips. On the same profile's benchmark those subjects
    are scored again here (listed from ``results/dem/split.json`` when present); on a real dataset none are."""
    provenance = meta.get("provenance") or {}
    trained = provenance.get("profile")
    if trained is None:
        return "unknown (the bundle records no training profile)", "unknown"
    trained_on = f"synthetic benchmark, {trained} profile, training subjects"
    if dataset != "synth":
        return trained_on, f"none: the checkpoint never saw {dataset}"
    if trained != profile:
        return trained_on, (f"no clip shared (this is the {profile} profile's benchmark), but the same synthetic "
                            "generator: identities may coincide")
    split = results / "dem" / "split.json"
    subjects = json.loads(split.read_text()).get("train_subjects") if split.is_file() else None
    named = f" ({', '.join(subjects)})" if subjects else ""
    return trained_on, (f"yes: the checkpoint was trained on this benchmark's training subjects{named}; their "
                        "clips are scored here too")


def _classifier_config(profile: str, seed: int, mer: dict, n_regions: int) -> dict:
    """The trajectory classifier's run config as notebook 03 sets it for its trajectory model (``mer.trajectory``,
    ``mer.epochs`` / ``batch_size`` / ``lr``); the input width is the region features'."""
    from microface.experiments.mer_tables import mer_model_settings

    width = types.SimpleNamespace(inputs={"trajectory": torch.empty(0, 0, n_regions * FEATURES_PER_REGION)})
    return mer_model_settings("trajectory", profile, mer, run_config=True, seed=seed, samples=width)


def run_mesh_recognition(profile: str, seed: int, device: str, data: dict, mer: dict, results_dir,
                         checkpoint: str | Path | None = None) -> NotebookReport:
    """Recognition from DEM + DGMD meshes of every labelled prepared clip of the configured dataset (module doc).

    Args:
        profile: the profile's name (named in config errors; compared with the checkpoint's training profile).
        seed, device: the config's top-level keys (the classifier's seed; the models' and classifier's device).
        data: the config's ``data`` section (``dataset``: named in the table and the overlap caveat).
        mer: the config's ``mer`` section (``n_frames``, ``epochs``, ``batch_size``, ``lr``, ``trajectory``;
            ``mesh.checkpoint`` when ``checkpoint`` is None).
        results_dir: results/<profile> (relative to the compendium root or absolute), holding ``prepared/``.
        checkpoint: a reconstruction bundle; None: ``mer.mesh.checkpoint``, and when that is null the shipped one.

    Returns:
        tables: ``mesh_table`` (one row); notes: ``mesh_table`` (Markdown), ``skipped`` (clips left out, one per
        line), ``device`` (empty, or why ``device`` was not available here and the CPU ran the step: notebook 03's
        Snakemake job holds no GPU); paths: ``out_dir`` (``results/mer/mesh``).
    """
    from microface.config import project_root, resolve
    from microface.data.landmarks import FaceLandmarker
    from microface.utils.io import write_table
    from microface.utils.runtime import progress

    results = resolve(results_dir, project_root())
    out_dir = results / "mer" / "mesh"
    checkpoint = checkpoint if checkpoint is not None else (mer.get("mesh") or {}).get("checkpoint")
    if checkpoint is not None:
        checkpoint = resolve(checkpoint, project_root())
    n_frames = int(mer["n_frames"])
    clips, skipped = prepared_clips(results / "prepared", n_frames)
    try:
        device, device_note = str(check_device(device)), ""
    except ReconstructionError as err:  # notebook 03's job holds no GPU (Snakefile rule mer): the CPU does it
        device, device_note = "cpu", f"{err}; the mesh step ran on cpu"
    torch.manual_seed(seed)
    models = load_mesh_models(checkpoint, device)
    region_labels, region_names = face_region_labels(models.face_model)
    kept, vertices = [], []
    with FaceLandmarker(None, max_faces=2) as landmarker:
        for clip in progress(clips, desc="mesh recognition: reconstruct clips", unit="clip"):
            try:
                vertices.append(torch.from_numpy(clip_vertices(clip, models, landmarker, out_dir / "vertices")))
            except ReconstructionError as err:
                skipped.append({"clip": clip.key, "reason": str(err)})
                continue
            kept.append(clip)
    write_table(pd.DataFrame(skipped, columns=["clip", "reason"]), out_dir, "skipped", markdown=False)
    subjects = [f"{c.dataset}/{c.subject}" for c in kept]
    if len(set(subjects)) < 2:
        raise ValueError(f"mesh recognition on {results / 'prepared'}: LOSO needs clips of at least 2 subjects, "
                         f"{len(kept)} clips of {sorted(set(subjects))} were reconstructed "
                         f"({len(skipped)} left out, see {out_dir / 'skipped.csv'})")
    class_names = tuple(sorted({c.label for c in kept}))
    result = mesh_recognition(vertices, [c.label for c in kept], subjects, class_names, region_labels,
                              len(region_names), out_dir, _classifier_config(profile, seed, mer, len(region_names)),
                              n_frames=n_frames, clip_ids=[c.key for c in kept], datasets=[c.dataset for c in kept],
                              seed=seed, device=device)
    labels = np.array([class_names.index(c.label) for c in kept])
    counts = np.bincount(labels, minlength=len(class_names))
    trained_on, overlap = checkpoint_caveat(models.meta, str(data["dataset"]), profile, results)
    shipped = checkpoint is None or Path(checkpoint).resolve() == default_checkpoint_path().resolve()
    label = ROW_LABEL if shipped else OWN_ROW_LABEL.format(name=Path(checkpoint).name)
    scores = result.scores
    table = pd.DataFrame([{
        "model": label, "protocol": PROTOCOL, "dataset": str(data["dataset"]), "n_clips": len(kept),
        "n_subjects": len(set(subjects)), "acc": round(scores["mer_acc"], 4), "uf1": round(scores["mer_uf1"], 4),
        "uar": round(scores["mer_uar"], 4), "wf1": round(scores["mer_wf1"], 4),
        "chance_acc": round(float(counts.max() / counts.sum()), 4), "chance_uar": round(1.0 / len(class_names), 4),
        "frames": f"{n_frames} uniform over the whole clip (no annotation)",
        "checkpoint_sha256": str(models.meta.get("sha256", ""))[:12], "checkpoint_trained_on": trained_on,
        "subject_overlap": overlap,
    }])
    write_table(table, out_dir, "mesh_table")
    notes = {"mesh_table": table.to_markdown(index=False),
             "skipped": "\n".join(f"{s['clip']}: {s['reason']}" for s in skipped), "device": device_note}
    return NotebookReport(tables={"mesh_table": table}, notes=notes, paths={"out_dir": out_dir})


__all__ = [
    "ROW_LABEL",
    "MeshModels",
    "PreparedClip",
    "checkpoint_caveat",
    "clip_vertices",
    "load_mesh_models",
    "model_frame_vertices",
    "prepared_clips",
    "reconstruct_frames",
    "run_mesh_recognition",
]
