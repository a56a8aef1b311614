"""Clips as tensors: frames, onset->t flow, times and optional ground truth; batching; loading from records."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from microface.data.clip import ClipRecord
from microface.utils.runtime import progress


@dataclass
class ClipTensors:
    """One clip as tensors. frames (T,3,H,W) in [0,1]; flow (T,2,H,W) onset->t in pixels (flow[0] = 0);
    times (T,) strictly increasing (any unit). Optional ground truth (synthetic benchmark): expression (T,E),
    shape (S,), pose (T,6), landmarks2d (T,68,2) pixels. label: class index (-1 = none); valence_arousal (2,);
    intensity in [0,1]; apex: frame index (None: the frame of largest mean flow magnitude)."""

    frames: torch.Tensor
    flow: torch.Tensor
    times: torch.Tensor
    expression: torch.Tensor | None = None
    shape: torch.Tensor | None = None
    pose: torch.Tensor | None = None
    landmarks2d: torch.Tensor | None = None
    label: int = -1
    valence_arousal: torch.Tensor | None = None
    intensity: float | None = None
    apex: int | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[1] != 3:
            raise ValueError(f"clip {self.key!r} frames: expected (T, 3, H, W), got {tuple(self.frames.shape)}")
        T, _, H, W = self.frames.shape
        expected = {"flow": (T, 2, H, W), "times": (T,), "pose": (T, 6), "landmarks2d": (T, 68, 2), "valence_arousal": (2,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"clip {self.key!r} {name}: expected {shape}, got {tuple(value.shape)}")
        if self.expression is not None and (self.expression.ndim != 2 or self.expression.shape[0] != T):
            raise ValueError(f"clip {self.key!r} expression: expected ({T}, E), got {tuple(self.expression.shape)}")
        if self.shape is not None and self.shape.ndim != 1:
            raise ValueError(f"clip {self.key!r} shape: expected (S,), got {tuple(self.shape.shape)}")
        if self.apex is not None and not 0 <= self.apex < T:
            raise ValueError(f"clip {self.key!r} apex: expected 0 <= apex < {T}, got {self.apex}")

    @property
    def apex_index(self) -> int:
        if self.apex is not None:
            return self.apex
        return int(self.flow.norm(dim=1).mean(dim=(1, 2)).argmax())


@dataclass
class ClipBatch:
    """Clips of equal length and size stacked: frames (B,T,3,H,W), flow (B,T,2,H,W), times (B,T); ground truth
    (B,T,E) / (B,S) / (B,T,6) / (B,T,68,2) only where every clip has it, else None; labels (B,) long;
    valence_arousal (B,2) (NaN unknown); intensity (B,) (1 where unknown); apex (B,) long."""

    frames: torch.Tensor
    flow: torch.Tensor
    times: torch.Tensor
    expression: torch.Tensor | None
    shape: torch.Tensor | None
    pose: torch.Tensor | None
    landmarks2d: torch.Tensor | None
    labels: torch.Tensor
    valence_arousal: torch.Tensor
    intensity: torch.Tensor
    apex: torch.Tensor


def collate_clips(clips: list[ClipTensors]) -> ClipBatch:
    """Stack clips of the same (T, H, W) into a ClipBatch."""
    if not clips:
        raise ValueError("collate_clips: expected at least one clip, got none")
    sizes = {(c.frames.shape[0], *c.frames.shape[2:]) for c in clips}
    if len(sizes) != 1:
        raise ValueError(f"collate_clips: clips in a batch need one (T, H, W), found {sorted(sizes)}; "
                         "batch by length (batches_by_length does) or resample clips to one length")

    def stack_optional(name: str) -> torch.Tensor | None:
        values = [getattr(c, name) for c in clips]
        return None if any(v is None for v in values) else torch.stack(values)

    nan = torch.full((2,), float("nan"))
    return ClipBatch(
        frames=torch.stack([c.frames for c in clips]), flow=torch.stack([c.flow for c in clips]),
        times=torch.stack([c.times for c in clips]).to(clips[0].frames.dtype),
        expression=stack_optional("expression"), shape=stack_optional("shape"), pose=stack_optional("pose"),
        landmarks2d=stack_optional("landmarks2d"),
        labels=torch.tensor([c.label for c in clips], dtype=torch.long),
        valence_arousal=torch.stack([c.valence_arousal if c.valence_arousal is not None else nan for c in clips]),
        intensity=torch.tensor([1.0 if c.intensity is None else float(c.intensity) for c in clips]),
        apex=torch.tensor([c.apex_index for c in clips], dtype=torch.long),
    )


def batches_by_length(clips: list[ClipTensors], batch_size: int, seed: int, epoch: int) -> Iterator[ClipBatch]:
    """The epoch's batches: a permutation seeded by (seed, epoch), clips grouped by (T, H, W), chunks of
    ``batch_size``. Deterministic, so a resumed run sees the batches an uninterrupted one would."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(clips), generator=generator).tolist()
    groups: dict[tuple, list[int]] = {}
    for index in order:
        groups.setdefault((clips[index].frames.shape[0], *clips[index].frames.shape[2:]), []).append(index)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield collate_clips([clips[i] for i in members[start: start + batch_size]])


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


def _resize_rgb(image: np.ndarray, image_size: int) -> np.ndarray:
    # INTER_AREA keeps pixel centres at (j + 0.5) * scale, the convention landmarks and flows are rescaled by
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)


def _resize_flow(flow: np.ndarray, image_size: int) -> np.ndarray:
    """(K, H, W, 2) pixels of the original frames -> (K, S, S, 2) pixels of the resized frames."""
    height, width = flow.shape[1:3]
    scale = np.array([image_size / width, image_size / height], np.float32)
    return np.stack([cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) * scale for f in flow])


def clip_tensors_from_record(record: ClipRecord, image_size: int, flow_method: str = "dis",
                             max_frames: int = 8, landmarks: str = "detected",
                             landmark_cache: str | Path | None = None, face_crop: bool | None = None) -> ClipTensors:
    """One synthetic-benchmark record -> ClipTensors of its kept frames (see ``clip_tensors_from_synth``)."""
    from microface.data.clip_landmarks import LANDMARK_SOURCES, clip_landmarks
    from microface.data.face_crop import clip_crop_transform, crop_flow, crop_image, needs_face_crop
    from microface.data.flow import accumulate_flow_opencv, clip_flow
    from microface.data.preprocess import read_rgb, transform_landmarks
    from microface.data.synth.affect import benchmark_reference, clip_affect

    if flow_method not in FLOW_SOURCES:
        raise ValueError(f"flow_method: expected one of {FLOW_SOURCES}, got {flow_method!r}")
    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks: expected one of {LANDMARK_SOURCES}, got {landmarks!r}")
    if record.ground_truth is None:
        raise ValueError(f"clip {record.key}: no ground truth; load the synthetic benchmark with load_dataset('synth', ...)")
    indices = subsample_indices(record.onset, record.apex, record.offset, max_frames)
    with np.load(record.ground_truth) as truth:
        expression = truth["expression"]
        if expression.shape[0] != len(record.frames):
            raise ValueError(f"{record.ground_truth}: ground truth has {expression.shape[0]} frames, the clip folder "
                             f"{len(record.frames)}; regenerate the benchmark with `microface synth`")
        fps = float(truth["fps"])
        shape, pose = truth["shape"], truth["pose"][indices]
        # the ground-truth landmarks are read for the "oracle" ablation only: no real video has them
        points = truth["landmarks2d"][indices] if landmarks == "oracle" else None
        consecutive = truth["flow"] if flow_method == "gt" else None
    # affect targets from the label and the whole AU schedule (microface.data.synth.affect)
    valence_arousal, intensity = clip_affect(record.emotion, expression, benchmark_reference(record.ground_truth))
    if landmarks == "detected":
        points = clip_landmarks(record, landmark_cache).points[indices]
    sources = [read_rgb(record.frames[i]) for i in indices]
    height, width = sources[0].shape[:2]
    crop = needs_face_crop(points[0], width) if face_crop is None else face_crop
    if crop:
        transform = clip_crop_transform(points[0], image_size, (width, height), record.key)
        frames = np.stack([crop_image(image, transform, image_size) for image in sources])
        points = transform_landmarks(points, transform)
    else:
        frames = np.stack([_resize_rgb(image, image_size) for image in sources])
        points = points * np.array([image_size / width, image_size / height], np.float32)
    if flow_method == "gt":
        onset_flow = accumulate_flow_opencv(consecutive, int(indices[0]), indices)
        flow = crop_flow(onset_flow, transform, image_size) if crop else _resize_flow(onset_flow, image_size)
    else:
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        flow = clip_flow(gray, mode="onset", onset=0, method=flow_method)
    return ClipTensors(
        frames=torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0,
        flow=torch.from_numpy(np.ascontiguousarray(flow)).permute(0, 3, 1, 2).float(),
        times=torch.from_numpy(indices / fps).float(),
        expression=torch.from_numpy(expression[indices]).float(), shape=torch.from_numpy(shape).float(),
        pose=torch.from_numpy(pose).float(), landmarks2d=torch.from_numpy(np.asarray(points, np.float32)).float(),
        valence_arousal=torch.from_numpy(valence_arousal).float(), intensity=intensity,
        apex=int(np.searchsorted(indices, record.apex)), key=record.key,
    )


def clip_tensors_from_synth(records: list[ClipRecord], image_size: int, flow_method: str = "dis",
                            max_frames: int = 8, show_progress: bool = True, landmarks: str = "detected",
                            landmark_cache: str | Path | None = None,
                            face_crop: bool | None = None) -> list[ClipTensors]:
    """Synthetic-benchmark records (``load_dataset("synth", root, kind=...)``) -> ClipTensors for DEM training.

    Per clip: frames onset..offset subsampled to ``max_frames`` (``subsample_indices``), resized to
    (image_size, image_size), frames (T,3,S,S) in [0,1]; times (T,) in seconds (the ODE gets the true, irregular
    times); flow onset->t (T,2,S,S) in resized pixels: "dis" / "tvl1" run ``microface.data.flow.clip_flow`` on
    the resized gray frames, "gt" composes the ground-truth consecutive flows
    (``microface.data.flow.accumulate_flow_opencv``) and rescales them; ground truth expression (T,E), shape (S,),
    pose (T,6); landmarks2d (T,68,2) in resized pixels: with ``landmarks="detected"`` the offline MediaPipe
    landmarker's on the full-resolution frames (``microface.data.clip_landmarks.clip_landmarks``, cached under
    ``landmark_cache`` when given, frames without a face held), with "oracle" the ground truth's (the ablation
    row "oracle landmarks" only; no real video has them); apex: the apex's position among the kept frames;
    valence_arousal (2,) and intensity in [0, 1]: the affect targets of the clip's emotion word and whole AU
    schedule (``microface.data.synth.affect.clip_affect``; VA NaN for "repression" and "others").
    face_crop: cut frames, landmarks and flow to the clip's eye-aligned face crop (``microface.data.face_crop``,
    from the onset's landmarks above: the geometry ``microface reconstruct`` uses) instead of resizing; None: when the face spans less than half the frame's width (CASME II
    and version 2 frames, not version 1's face-filling ones), so version 1 clips are unchanged.
    """
    if image_size < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    return [clip_tensors_from_record(r, image_size, flow_method, max_frames, landmarks, landmark_cache, face_crop)
            for r in progress(records, desc="clips", disable=not show_progress)]


def _to_device(clip: ClipTensors, device: torch.device) -> ClipTensors:
    moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in vars(clip).items()}
    return ClipTensors(**moved)


FLOW_SOURCES = ("gt", "dis", "tvl1")
