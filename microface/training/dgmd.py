"""Training and evaluation of DGMD (notebook 02_dgmd_refine): refine coarse meshes with flow + landmarks.

Data: ``RefineClip`` (one clip from its onset: coarse meshes (T,V,3) mm, flow onset->t (T,2,H,W) px with frame 0
the onset, one camera for the clip, optional landmarks and ground truth). Build them from the synthetic
benchmark's ground-truth npz with :func:`clip_from_ground_truth` (coarse meshes given as tensors: DEM's, or
any ground-truth-free stand-in) or from a trained DEM with ``microface.experiments.refine.coarse_clips``.

Losses per training frame t (every term used when its weight is > 0 and its data exist); DGMD is run on frame t
AND on the onset (zero flow), so a static correction that landmarks ask for at both cancels in the motion:
- flow: projected motion of the refined mesh, onset -> t, vs the observed flow at the onset projection
  (visible vertices; ``microface.losses.geometry.flow_guided_loss``), pixels;
- landmark: projected landmark vertices of the refined meshes (t and onset) vs the 2D landmarks, pixels;
- laplacian: uniform Laplacian of the offsets (mm^2); normal: adjacent-face normal agreement relative to the
  coarse mesh; offset: mean squared offset (mm^2), a weak pull toward the coarse mesh.

Evaluation (:func:`evaluate_dgmd`): per-vertex error (mm) of coarse vs coarse+DGMD against ground truth, split
into MOVING vertices (ground-truth displacement from the onset at the apex above ``moving_threshold_mm``,
0.1 mm by default, measured on the pose-free ``vertices_canonical`` so head motion does not count) and STATIC
ones; both the absolute error and the error of the motion from the onset (which removes a static coarse bias).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from microface.data.flow import accumulate_flow_torch
from microface.losses.geometry import flow_guided_loss, laplacian_smoothness, normal_consistency, vertex_visibility
from microface.losses.landmark import landmark_loss
from microface.mesh.topology import face_adjacency
from microface.metrics.geometry import moving_static_errors, moving_vertices
from microface.models.dgmd import DGMD, VertexCues
from microface.render.camera import Camera, camera_from_arrays, concat_cameras, expand_camera, project_points
from microface.render.rasterize import rasterize
from microface.training.loop import TrainConfig, fit
from microface.utils.checks import config_from_dict
from microface.utils.runtime import progress

# ------------------------------------------------------------------------------------------------- data


@dataclass
class RefineClip:
    """One clip from its onset (frame 0) onward.

    coarse_vertices (T, V, 3) mm in the camera's world frame; flow_onset_to_t (T, 2, H, W) px (flow[0] = 0);
    camera: batch-1 Camera shared by the clip's frames; landmarks2d (T, 68, 2) px or None; truth_vertices
    (T, V, 3) mm (same frame as coarse, or any frame when evaluating with ``align=True``) or None;
    truth_motion_vertices (T, V, 3): pose-free truth deciding which vertices move (None: truth_vertices);
    apex: frame index within the clip (None: largest ground-truth motion, else largest mean flow);
    target_offsets (T, V, 3) mm or None: where 3D ground truth exists (synthetic training subjects), the offsets
    that would take each coarse vertex to the truth, in the coarse mesh's posed frame (the ``vertex`` loss).
    """

    coarse_vertices: torch.Tensor
    flow_onset_to_t: torch.Tensor
    camera: Camera
    landmarks2d: torch.Tensor | None = None
    truth_vertices: torch.Tensor | None = None
    truth_motion_vertices: torch.Tensor | None = None
    apex: int | None = None
    key: str = ""
    target_offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.coarse_vertices.ndim != 3 or self.coarse_vertices.shape[-1] != 3:
            raise ValueError(f"clip {self.key!r} coarse_vertices: expected (T, V, 3), got "
                             f"{tuple(self.coarse_vertices.shape)}")
        T, V, _ = self.coarse_vertices.shape
        if self.flow_onset_to_t.ndim != 4 or self.flow_onset_to_t.shape[:2] != (T, 2):
            raise ValueError(f"clip {self.key!r} flow_onset_to_t: expected ({T}, 2, H, W), got "
                             f"{tuple(self.flow_onset_to_t.shape)}")
        if self.camera.batch_size != 1:
            raise ValueError(f"clip {self.key!r} camera: expected batch 1 (one camera per clip), got "
                             f"{self.camera.batch_size}")
        for name in ("truth_vertices", "truth_motion_vertices", "target_offsets"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (T, V, 3):
                raise ValueError(f"clip {self.key!r} {name}: expected ({T}, {V}, 3), got {tuple(value.shape)}")
        if self.landmarks2d is not None and (self.landmarks2d.ndim != 3 or self.landmarks2d.shape[0] != T
                                             or self.landmarks2d.shape[-1] != 2):
            raise ValueError(f"clip {self.key!r} landmarks2d: expected ({T}, L, 2), got "
                             f"{tuple(self.landmarks2d.shape)}")
        if self.apex is not None and not 0 <= self.apex < T:
            raise ValueError(f"clip {self.key!r} apex: expected 0 <= apex < {T}, got {self.apex}")

    @property
    def n_frames(self) -> int:
        return int(self.coarse_vertices.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.flow_onset_to_t.shape[-2:])

    @property
    def apex_index(self) -> int:
        if self.apex is not None:
            return self.apex
        motion = self.truth_motion_vertices if self.truth_motion_vertices is not None else self.truth_vertices
        if motion is not None:
            return int((motion - motion[:1]).norm(dim=-1).max(dim=-1).values.argmax())
        return int(self.flow_onset_to_t.norm(dim=1).mean(dim=(1, 2)).argmax())


def flow_from_vertices(onset_vertices: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
                       image_size: tuple[int, int]) -> torch.Tensor:
    """Exact onset->t flow of a known mesh motion: where the surface point under each onset pixel projects at t.

    onset_vertices (V, 3), vertices (T, V, 3) mm, faces (F, 3), camera batch 1 -> (T, 2, H, W) px, zero off the
    onset mesh.
    """
    T = vertices.shape[0]
    H, W = image_size
    with torch.no_grad():
        fragments = rasterize(project_points(onset_vertices[None], camera), faces, image_size, 0.5,
                              camera.is_perspective)
        p2f = fragments.pix_to_face.reshape(-1)
        fg = torch.nonzero(p2f >= 0, as_tuple=True)[0]
        bary = fragments.bary_coords.reshape(-1, 3)[fg]  # 3D surface weights (perspective-correct)
        corners = faces.long()[p2f[fg]]  # (P, 3)
        # surface[t, p, c] = sum_k bary[p, k] * vertices[t, corners[p, k], c]
        surface_t = torch.einsum("pk,tpkc->tpc", bary, vertices[:, corners])
        surface_0 = torch.einsum("pk,pkc->pc", bary, onset_vertices[corners])
        px_t = project_points(surface_t, expand_camera(camera, T))[..., :2]
        px_0 = project_points(surface_0[None], camera)[..., :2]
        flow = torch.zeros(T, H * W, 2, dtype=vertices.dtype, device=vertices.device)
        flow[:, fg] = px_t - px_0
    return flow.reshape(T, H, W, 2).permute(0, 3, 1, 2).contiguous()


def clip_from_ground_truth(gt: dict, coarse_vertices: torch.Tensor, key: str = "", flow: str = "accumulate",
                           end: str = "offset", faces: torch.Tensor | None = None) -> RefineClip:
    """A RefineClip from a benchmark npz (``microface.data.synth.load_ground_truth``) and coarse meshes.

    gt: vertices (T,V,3), vertices_canonical, landmarks2d (T,68,2), flow (T-1,H,W,2) float16 consecutive,
    camera_R / camera_t / focal / principal, onset / apex / offset; coarse_vertices (T, V, 3) mm in the same
    posed world frame (all frames of the clip). The clip keeps frames onset..offset (``end="offset"``) or
    onset..last (``end="last"``). flow: "accumulate" (chained consecutive flows,
    ``microface.data.flow.accumulate_flow_torch``) or "exact" (from the ground-truth meshes, needs ``faces``).
    An oracle clip for tests: its landmarks (and flow, camera) are the ground truth's, which no real video has;
    the benchmark's clips come from ``coarse_clips`` with detected landmarks (``dem.landmarks``).
    """
    vertices = torch.as_tensor(np.asarray(gt["vertices"]), dtype=torch.float32)
    T = vertices.shape[0]
    coarse_vertices = torch.as_tensor(coarse_vertices, dtype=torch.float32)
    if coarse_vertices.shape != vertices.shape:
        raise ValueError(f"clip {key!r} coarse_vertices: expected {tuple(vertices.shape)} like the ground truth, got "
                         f"{tuple(coarse_vertices.shape)}")
    onset = int(gt["onset"])
    if end not in ("offset", "last"):
        raise ValueError(f"end: expected 'offset' or 'last', got {end!r}")
    stop = int(gt["offset"]) if end == "offset" else T - 1
    camera = camera_from_arrays(gt)
    if flow == "accumulate":
        consecutive = torch.as_tensor(np.asarray(gt["flow"], dtype=np.float32)).permute(0, 3, 1, 2)
        flow_onset = accumulate_flow_torch(consecutive, onset, stop)
    elif flow == "exact":
        if faces is None:
            raise ValueError("clip_from_ground_truth: flow='exact' needs the face model's faces")
        mask = np.asarray(gt["mask"])
        flow_onset = flow_from_vertices(vertices[onset], vertices[onset: stop + 1], faces, camera,
                                        tuple(mask.shape[1:]))
    else:
        raise ValueError(f"flow: expected 'accumulate' or 'exact', got {flow!r}")
    window = slice(onset, stop + 1)
    canonical = gt.get("vertices_canonical")
    apex = int(gt["apex"]) - onset
    return RefineClip(
        coarse_vertices=coarse_vertices[window], flow_onset_to_t=flow_onset, camera=camera,
        landmarks2d=torch.as_tensor(np.asarray(gt["landmarks2d"]), dtype=torch.float32)[window],
        truth_vertices=vertices[window],
        truth_motion_vertices=(None if canonical is None
                               else torch.as_tensor(np.asarray(canonical), dtype=torch.float32)[window]),
        apex=apex if 0 <= apex <= stop - onset else None, key=key)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class DGMDLossWeights:
    """Weight of each DGMD loss term (0 switches it off)."""

    flow: float = 1.0
    landmark: float = 0.5
    laplacian: float = 1.0
    normal: float = 1.0
    offset: float = 1e-3
    vertex: float = 0.0

    @classmethod
    def from_dict(cls, values: dict | None) -> "DGMDLossWeights":
        return config_from_dict(cls, values, "dgmd loss weights")


@dataclass
class DGMDTrainSettings:
    """One DGMD training run: epochs, lr, weight_decay, seed, grad_clip as in ``TrainConfig``; batch_size: frames
    per step; weights: ``DGMDLossWeights`` keys; frames_per_clip: frames drawn per clip and epoch (None: all
    frames after the onset); visibility_tolerance_mm: depth slack of the onset visibility test."""

    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    grad_clip: float | None = 1.0
    batch_size: int = 4
    weights: dict = field(default_factory=dict)
    frames_per_clip: int | None = None
    visibility_tolerance_mm: float = 1.5

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"dgmd train batch_size: expected >= 1, got {self.batch_size}")
        DGMDLossWeights.from_dict(self.weights)

    @classmethod
    def from_dict(cls, values: dict | None) -> "DGMDTrainSettings":
        return config_from_dict(cls, values, "dgmd train")

    @property
    def loss_weights(self) -> DGMDLossWeights:
        return DGMDLossWeights.from_dict(self.weights)

    def train_config(self, **extra) -> TrainConfig:
        core = {"epochs", "lr", "weight_decay", "seed", "grad_clip"}
        rest = {k: v for k, v in asdict(self).items() if k not in core}
        return TrainConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, seed=self.seed,
                           grad_clip=self.grad_clip, extra={**rest, **extra})


# ------------------------------------------------------------------------------------------------ batches
@dataclass
class OnsetRaster:
    """The onset mesh seen by the clip's camera: pix_to_face (1, H, W, 1), visible (1, V) bool."""

    pix_to_face: torch.Tensor
    visible: torch.Tensor


def onset_raster(dgmd: DGMD, clip: RefineClip, tolerance_mm: float = 1.5) -> OnsetRaster:
    """Rasterize the clip's coarse onset mesh once (no gradient)."""
    with torch.no_grad():
        onset = clip.coarse_vertices[:1]
        screen = project_points(onset, clip.camera)
        fragments = rasterize(screen, dgmd.faces, clip.image_size, dgmd.config.render_blur_px,
                              clip.camera.is_perspective)
        visible = vertex_visibility(onset, clip.camera, fragments.zbuf, tolerance_mm)
    return OnsetRaster(pix_to_face=fragments.pix_to_face, visible=visible)


@dataclass
class FrameBatch:
    """B training frames. coarse (B,V,3) at t, coarse_onset (B,V,3), flow (B,2,H,W) onset->t, landmarks (B,L,2) |
    None, landmarks_onset (B,L,2) | None, camera (batch B), visible (B,V) bool at the onset, cues / onset_cues: the
    motion cues (B,V,2) of frame t and of the onset (``DGMD.clip_cues`` of each frame's clip), target_offsets
    (B,V,3) | None."""

    coarse: torch.Tensor
    coarse_onset: torch.Tensor
    flow: torch.Tensor
    landmarks: torch.Tensor | None
    landmarks_onset: torch.Tensor | None
    camera: Camera
    visible: torch.Tensor
    cues: VertexCues
    onset_cues: VertexCues
    target_offsets: torch.Tensor | None = None


def clip_motion_cues(dgmd: DGMD, clip: RefineClip, raster: OnsetRaster) -> VertexCues:
    """``DGMD.clip_cues`` of a RefineClip (motion cues (T, V, 2) of every frame, frame 0 the onset)."""
    landmarks = clip.landmarks2d if dgmd.config.use_landmarks else None
    if dgmd.config.use_landmarks and landmarks is None:
        raise ValueError(f"clip {clip.key!r}: the DGMD landmark cue is on but the clip has no landmarks2d")
    return dgmd.clip_cues(clip.coarse_vertices, clip.camera, clip.flow_onset_to_t, landmarks, raster.pix_to_face)


def _stack_cues(cues: list[VertexCues], items: list[tuple[int, int]]) -> VertexCues:
    """Motion cues of (clip index, frame index) items -> VertexCues (B, V, 2) (geometry None)."""
    motion = []
    for k in range(3):
        parts = [cues[c].motion()[k] for c, _ in items]
        motion.append(None if parts[0] is None else torch.stack([p[t] for p, (_, t) in zip(parts, items)]))
    return VertexCues(None, *motion)


def collate_frames(clips: list[RefineClip], rasters: list[OnsetRaster], items: list[tuple[int, int]],
                   cues: list[VertexCues]) -> FrameBatch:
    """Stack (clip index, frame index) items of one image size into a FrameBatch; cues: each clip's
    ``clip_motion_cues``."""
    chosen = [clips[c] for c, _ in items]
    has_landmarks = all(c.landmarks2d is not None for c in chosen)
    has_targets = all(c.target_offsets is not None for c in chosen)
    return FrameBatch(
        coarse=torch.stack([clips[c].coarse_vertices[t] for c, t in items]),
        coarse_onset=torch.stack([clips[c].coarse_vertices[0] for c, _ in items]),
        flow=torch.stack([clips[c].flow_onset_to_t[t] for c, t in items]),
        landmarks=torch.stack([clips[c].landmarks2d[t] for c, t in items]) if has_landmarks else None,
        landmarks_onset=torch.stack([clips[c].landmarks2d[0] for c, _ in items]) if has_landmarks else None,
        camera=concat_cameras([clips[c].camera for c, _ in items]),
        visible=torch.cat([rasters[c].visible for c, _ in items]),
        cues=_stack_cues(cues, items), onset_cues=_stack_cues(cues, [(c, 0) for c, _ in items]),
        target_offsets=torch.stack([clips[c].target_offsets[t] for c, t in items]) if has_targets else None,
    )


def frame_batches(clips: list[RefineClip], rasters: list[OnsetRaster], cues: list[VertexCues], batch_size: int,
                  seed: int, epoch: int, frames_per_clip: int | None = None) -> Iterator[FrameBatch]:
    """The epoch's batches of frames t >= 1, in an order seeded by (seed, epoch), grouped by image size."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    items = []
    for c, clip in enumerate(clips):
        frames = torch.arange(1, clip.n_frames)
        if frames_per_clip is not None and frames.numel() > frames_per_clip:
            frames = frames[torch.randperm(frames.numel(), generator=generator)[:frames_per_clip]].sort().values
        items += [(c, int(t)) for t in frames]
    order = torch.randperm(len(items), generator=generator).tolist()
    groups: dict[tuple, list] = {}
    for i in order:
        groups.setdefault(clips[items[i][0]].image_size, []).append(items[i])
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield collate_frames(clips, rasters, members[start: start + batch_size], cues)


# ------------------------------------------------------------------------------------------------- losses
def dgmd_losses(dgmd: DGMD, batch: FrameBatch, weights: DGMDLossWeights,
                adjacency: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All DGMD loss terms for one FrameBatch: {"loss": weighted total, term: value} (scalars)."""
    B = batch.coarse.shape[0]
    coarse = torch.cat([batch.coarse, batch.coarse_onset])
    camera = concat_cameras([batch.camera, batch.camera])
    landmarks = None if batch.landmarks is None else torch.cat([batch.landmarks, batch.landmarks_onset])
    cues = VertexCues(None, *(None if a is None else torch.cat([a, b])
                              for a, b in zip(batch.cues.motion(), batch.onset_cues.motion())))
    out = dgmd(coarse, camera, cues=cues)
    refined_t, refined_onset = out.vertices[:B], out.vertices[B:]
    terms: dict[str, torch.Tensor] = {}
    if weights.flow > 0:
        terms["flow"] = flow_guided_loss(refined_t, refined_onset, batch.camera, batch.flow, batch.visible)
    if weights.landmark > 0 and landmarks is not None and dgmd.landmark_vertices is not None:
        projected = project_points(out.vertices[:, dgmd.landmark_vertices], camera)[..., :2]
        terms["landmark"] = landmark_loss(projected, landmarks.to(projected))
    if weights.laplacian > 0:
        terms["laplacian"] = laplacian_smoothness(out.vertices, coarse, dgmd.faces, dgmd.edges)
    if weights.normal > 0:
        adjacency = face_adjacency(dgmd.faces) if adjacency is None else adjacency
        terms["normal"] = normal_consistency(out.vertices, dgmd.faces, coarse, adjacency)
    if weights.offset > 0:
        terms["offset"] = out.offsets.pow(2).sum(-1).mean()
    if weights.vertex > 0:
        if batch.target_offsets is None:
            raise ValueError("dgmd_losses: the vertex loss is on but the clips carry no target_offsets (3D ground "
                             "truth); set its weight to 0 for data without it")
        terms["vertex"] = (out.offsets[:B] - batch.target_offsets.to(out.offsets)).norm(dim=-1).mean()
    if not terms:
        raise ValueError("dgmd_losses: no loss term is active (all weights 0 or no data for them)")
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return {"loss": total, **terms, "gate_mean": out.gate.mean().detach()}


# ------------------------------------------------------------------------------------------------ drivers
def train_dgmd(dgmd: DGMD, clips: list[RefineClip], settings: DGMDTrainSettings,
               checkpoint_path: Path | None = None, desc: str = "dgmd") -> list[dict]:
    """Train DGMD on the clips' coarse meshes with ``microface.training.loop.fit`` (seeded; checkpoints to and resumes
    from ``checkpoint_path``). Returns the history (mean loss terms per epoch)."""
    if not clips:
        raise ValueError("train_dgmd: expected at least one RefineClip, got none")
    weights = settings.loss_weights
    rasters = [onset_raster(dgmd, clip, settings.visibility_tolerance_mm) for clip in clips]
    cues = [clip_motion_cues(dgmd, clip, raster) for clip, raster in zip(clips, rasters)]  # inputs: computed once
    adjacency = face_adjacency(dgmd.faces)

    def step(model: DGMD, batch: FrameBatch) -> dict[str, torch.Tensor]:
        return dgmd_losses(model, batch, weights, adjacency)

    def batches(epoch: int) -> Iterator[FrameBatch]:
        return frame_batches(clips, rasters, cues, settings.batch_size, settings.seed, epoch,
                             settings.frames_per_clip)

    extra = {"desc": desc, "dgmd": asdict(dgmd.config)}
    return fit(dgmd, step, batches, settings.train_config(**extra), checkpoint_path, desc=desc)


@dataclass
class ClipRefinement:
    """vertices (T, V, 3) refined mm; offsets (T, V, 3) mm; gate (T, V) motion attention."""

    vertices: torch.Tensor
    offsets: torch.Tensor
    gate: torch.Tensor


@torch.no_grad()
def refine_clip(dgmd: DGMD, clip: RefineClip, batch_size: int = 16) -> ClipRefinement:
    """Run a trained DGMD on every frame of a clip (frame 0, the onset, included)."""
    dgmd.eval()
    cues = clip_motion_cues(dgmd, clip, onset_raster(dgmd, clip))
    parts = []
    for start in range(0, clip.n_frames, batch_size):
        index = torch.arange(start, min(start + batch_size, clip.n_frames))
        parts.append(dgmd(clip.coarse_vertices[index], expand_camera(clip.camera, index.numel()),
                          cues=cues.frames(index)))
    return ClipRefinement(vertices=torch.cat([p.vertices for p in parts]),
                          offsets=torch.cat([p.offsets for p in parts]), gate=torch.cat([p.gate for p in parts]))


def _rigid_transform(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kabsch rotation and translation taking source onto target. (T, V, 3) x2 -> (R (T, 3, 3), t (T, 3))."""
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    covariance = (source - mu_s).transpose(1, 2) @ (target - mu_t)
    u, _, vh = torch.linalg.svd(covariance)
    d = torch.sign(torch.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    correction = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    rotation = vh.transpose(1, 2) @ correction @ u.transpose(1, 2)
    return rotation, (mu_t - mu_s @ rotation.transpose(1, 2))[:, 0]


@torch.no_grad()
def evaluate_dgmd(dgmd: DGMD, clips: list[RefineClip], moving_threshold_mm: float = 0.1,
                  align: bool = False) -> list[dict]:
    """Per-vertex error (mm) of coarse vs coarse+DGMD against ground truth, moving vs static vertices.

    One row per clip with ground truth: ``{coarse,dgmd}_{moving,static,all}_apex_mm`` (error at the apex),
    ``..._clip_mm`` (mean over the clip's frames), ``{coarse,dgmd}_motion_{moving,static}_apex_mm`` (error of
    the displacement from the onset, which a static coarse bias does not affect), ``n_moving``, ``apex``.
    align: map each coarse frame onto the truth by its Kabsch transform and apply the SAME transform to the
    refined frame (for coarse meshes in another frame, e.g. DEM's).
    """
    rows = []
    for clip in progress(clips, desc="evaluate dgmd"):
        if clip.truth_vertices is None:
            continue
        refined = refine_clip(dgmd, clip).vertices
        coarse, truth = clip.coarse_vertices, clip.truth_vertices.to(refined)
        if align:
            rotation, translation = _rigid_transform(coarse, truth)
            coarse = coarse @ rotation.transpose(1, 2) + translation[:, None]
            refined = refined @ rotation.transpose(1, 2) + translation[:, None]
        apex = clip.apex_index
        motion_truth = clip.truth_motion_vertices if clip.truth_motion_vertices is not None else clip.truth_vertices
        moving = moving_vertices(motion_truth, apex, moving_threshold_mm)
        row: dict = {"key": clip.key, "apex": apex, "n_moving": int(moving.sum()), "n_vertices": int(moving.numel())}
        for name, mesh in (("coarse", coarse), ("dgmd", refined)):
            scores = moving_static_errors(mesh, truth, moving, apex, motion=True)
            row.update({f"{name}_{key}": value for key, value in scores.items()})
        rows.append(row)
    return rows


def summarise_dgmd(rows: list[dict]) -> dict[str, float]:
    """Mean of every numeric column of ``evaluate_dgmd`` rows over clips (NaNs skipped)."""
    if not rows:
        raise ValueError("summarise_dgmd: no rows (no clip had ground truth)")
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and k != "apex"]
    return {k: float(np.nanmean([row[k] for row in rows])) for k in keys}
