"""Recognition from reconstruction on the mesh: the trajectory classifier on region-pooled vertex displacements.

Each clip's reconstructed mesh sequence (T, V, 3), in the face model's frame (no head motion), becomes the trajectory
``microface.mesh.region_displacement.region_displacement_features`` makes of it (per face region: the mean
displacement from the onset frame and its mean magnitude), resampled to a common length; the trajectory classifier
(``microface.models.trajectory``) reads those, leave-one-subject-out (``microface.experiments.mer.run_loso``).
Everything a method moves counts, per-vertex refinements (DGMD's offsets) included.

The inputs are plain lists, so any dataset the loaders read can be scored: labels and subjects come from its
records (``microface.data.datasets.load_dataset(dataset, root, class_map=...)``, as ``data.dataset`` / ``data.root``
/ ``data.class_map`` configure notebook 03), the vertex sequences from a reconstruction of each record's clip.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from microface.mesh.region_displacement import FEATURES_PER_REGION, region_displacement_features, region_side_labels

ROW_LABEL = "recognition from mesh displacement, pooled by region"


def resample_trajectory(values: torch.Tensor, n: int) -> torch.Tensor:
    """(T, F) per kept frame -> (n, F), linear interpolation over the frame order (clips keep different T)."""
    T = values.shape[0]
    if T == n:
        return values
    position = torch.linspace(0, T - 1, n, dtype=values.dtype, device=values.device)
    low = position.floor().long().clamp(max=T - 1)
    high = (low + 1).clamp(max=T - 1)
    weight = (position - low.to(values.dtype))[:, None]
    return values[low] * (1 - weight) + values[high] * weight


def face_region_labels(face_model, split_sides: bool = True) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The pooling groups of a face model (its ``regions``, split at the midline of its neutral mesh):
    labels (V,) long and the group names (``region_side_labels``)."""
    device = face_model.faces.device
    with torch.no_grad():
        neutral = face_model(torch.zeros(1, face_model.n_shape, device=device),
                             torch.zeros(1, face_model.n_expression, device=device),
                             torch.zeros(1, 6, device=device)).vertices[0]
    return region_side_labels(face_model.regions, neutral, split_sides)


def mesh_trajectories(vertex_sequences: Sequence[torch.Tensor], region_labels: torch.Tensor, n_regions: int,
                      n_frames: int) -> torch.Tensor:
    """Region-pooled displacement trajectories of clips, resampled to ``n_frames`` each.

    Args:
        vertex_sequences: one mesh sequence per clip, mm, model frame, onset first, (T_i, V, 3); T_i may differ.
        region_labels: (V,) long in [0, n_regions); n_regions: R.
        n_frames: frames of every output trajectory.

    Returns:
        (N, n_frames, R * FEATURES_PER_REGION) mm, on CPU.
    """
    if not vertex_sequences:
        raise ValueError("mesh_trajectories: no vertex sequences given")
    out = []
    for i, vertices in enumerate(vertex_sequences):
        vertices = torch.as_tensor(vertices, dtype=torch.float32)
        if vertices.ndim != 3:
            raise ValueError(f"mesh_trajectories: clip {i}: expected vertices (T, V, 3), got {tuple(vertices.shape)}")
        features = region_displacement_features(vertices, region_labels, n_regions)
        out.append(resample_trajectory(features.detach().cpu(), n_frames))
    return torch.stack(out)


@dataclass
class MeshRecognition:
    """scores: {"mer_acc", "mer_uf1", "mer_uar", "mer_wf1"} pooled over the folds; loso: the run's tables
    (``microface.experiments.mer.LOSOResult``); trajectories: the classifier's inputs (N, n_frames, R * 4)."""

    scores: dict[str, float]
    loso: Any
    trajectories: torch.Tensor


def mesh_recognition(vertex_sequences: Sequence[torch.Tensor], labels: Sequence[int | str], subjects: Sequence[str],
                     class_names: Sequence[str], region_labels: torch.Tensor, n_regions: int, out_dir: Path | str,
                     config: Mapping[str, Any] | None = None, *, n_frames: int = 8,
                     clip_ids: Sequence[str] | None = None, datasets: Sequence[str] | None = None, seed: int = 0,
                     device: torch.device | str = "cpu") -> MeshRecognition:
    """Leave-one-subject-out recognition of clips from their reconstructed mesh sequences.

    Args:
        vertex_sequences: each clip's reconstruction, mm, in the face model's frame (no head motion), onset first,
            (T_i, V, 3); never ground truth when a method is being scored.
        labels: each clip's class, an index into ``class_names`` or its name (a loader's ``record.label``).
        subjects: each clip's subject, unique across datasets (``"<dataset>/<subject>"``); at least two.
        class_names: the label order (K,), e.g. a class map's ``order``.
        region_labels, n_regions: the pooling groups (``face_region_labels``).
        out_dir: the LOSO run writes under ``out_dir/trajectory/fixed-epoch/``.
        config: ``microface.experiments.mer.MERRunConfig`` keys (epochs, batch_size, lr, weight_decay, model);
            the model's input size (``n_expression``) is set to R * 4 here.
        n_frames: trajectory length after resampling. clip_ids, datasets: per clip (default: "clipNNNN",
            the subject's dataset prefix). seed, device: the run's.

    Returns:
        MeshRecognition (scores, the LOSO tables, the trajectories).

    Shape:
        vertex_sequences: N x (T_i, V, 3) -> trajectories (N, n_frames, R * 4).
    """
    from microface.experiments.mer import MERSamples, run_loso
    from microface.metrics.recognition import mer_scores

    n = len(vertex_sequences)
    if len(labels) != n or len(subjects) != n:
        raise ValueError(f"mesh_recognition: {n} vertex sequences, {len(labels)} labels, {len(subjects)} subjects; "
                         "expected one of each per clip")
    if len(set(subjects)) < 2:
        raise ValueError(f"mesh_recognition: LOSO needs at least 2 subjects, got {sorted(set(subjects))}")
    class_names = tuple(class_names)
    indices = []
    for i, label in enumerate(labels):
        if isinstance(label, str):
            if label not in class_names:
                raise ValueError(f"mesh_recognition: clip {i}: label {label!r} is not one of {class_names}")
            label = class_names.index(label)
        indices.append(int(label))
    trajectories = mesh_trajectories(vertex_sequences, region_labels, n_regions, n_frames)
    clip_ids = list(clip_ids) if clip_ids is not None else [f"clip{i:04d}" for i in range(n)]
    datasets = list(datasets) if datasets is not None else [s.split("/")[0] for s in subjects]
    samples = MERSamples(inputs={"trajectory": trajectories}, labels=torch.tensor(indices), subjects=list(subjects),
                         datasets=datasets, clip_ids=clip_ids, class_names=class_names)
    config = dict(config or {})
    model = {**config.get("model", {}), "n_expression": int(trajectories.shape[-1])}
    result = run_loso("trajectory", samples, {**config, "model": model, "seed": seed}, out_dir, device=device)
    predictions = result.predictions
    scores = mer_scores(predictions["truth_index"].to_numpy(), predictions["predicted_index"].to_numpy(),
                        list(range(len(class_names))))
    return MeshRecognition(scores={"mer_acc": scores.acc, "mer_uf1": scores.uf1, "mer_uar": scores.uar,
                                   "mer_wf1": scores.wf1}, loso=result, trajectories=trajectories)


__all__ = ["FEATURES_PER_REGION", "ROW_LABEL", "MeshRecognition", "face_region_labels", "mesh_recognition",
           "mesh_trajectories", "resample_trajectory"]
