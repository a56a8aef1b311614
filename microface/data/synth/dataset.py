"""The synthetic micro-expression benchmark: rendered clips in CASME II's own layout, with 3D ground truth.

Layout written under ``out`` (the real CASME II loader reads it unchanged)::

    synth_manifest.json                     format, version, config, config hash, clip list
    CASME2-coding-20140508.xlsx             micro clips, CASME II's columns
    sub01/EP01_01/img{N}.jpg                micro frames (N = the dataset's frame numbers)
    macro/CASME2-coding-20140508.xlsx       macro clips (six basic emotions), same columns
    macro/sub01/MA01_01/img{N}.jpg
    ground_truth/sub01/EP01_01.npz          per-clip ground truth (see ``GROUND_TRUTH_KEYS``)
    ground_truth/macro/sub01/MA01_01.npz

Generation is deterministic (every clip has its own seed derived from the dataset seed, subject and clip
numbers; archives are written with fixed timestamps), so the same config gives byte-identical files.
It runs in a sibling ``<out>.partial`` folder that is renamed to ``out`` at the end; an interrupted run
resumes there, keeping the clips already written.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import cv2
import numpy as np
import torch

from microface.data.synth.schedules import (
    MACRO_EMOTION_AUS,
    MACRO_EMOTIONS,
    MICRO_EMOTION_AUS,
    MICRO_EMOTIONS,
    expression_trajectory,
    plan_events,
)
from microface.data.synth.subjects import Subject, head_pose, sample_subject
from microface.face.open_model import OpenFaceModel
from microface.render.camera import Camera, camera_to_arrays, expand_camera, look_at_camera, project_points
from microface.render.rasterize import interpolate_vertex_attributes, rasterize
from microface.render.shading import shade_mesh
from microface.utils.io import atomic_path, replace_folder, write_text_atomic
from microface.utils.runtime import progress

FORMAT = "microface-synth"
FORMAT_VERSION = 1
CASME2_SHEET = "CASME2-coding-20140508.xlsx"
# CASME II's header row; its two unnamed columns are kept empty, as in the real sheet.
CASME2_COLUMNS = ("Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                  "Estimated Emotion")
GROUND_TRUTH_KEYS = (
    "vertices", "vertices_canonical", "shape", "expression", "pose", "translation", "au_names", "landmarks2d",
    "flow", "flow_mask", "mask", "visibility", "camera_R", "camera_t", "focal", "principal", "sh", "fps",
    "frame_numbers", "onset", "apex", "offset", "noise_sigma",
)
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
VERSIONS = (1, 2)
V2_FIELDS = ("frame_size", "face_width_px", "texture_size", "test_fraction")
V2_JPEG_QUALITY = 90  # version 2's default JPEG quality (an explicit jpeg_quality override wins)


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic dataset is made of; its hash identifies the dataset on disk.

    micro_duration_s / macro_duration_s: (min, max) onset->offset durations; micro_apex_mm: (min, max)
    largest vertex displacement at the apex; overlap_fraction: share of multi-AU micro clips whose AUs start
    at different times; jpeg_quality: frames are JPEG like CASME II's.

    version: 1 renders the painted mask at image_size x image_size; 2 renders real skin into a CASME II frame
    (``render_v2``, ``appearance``): frame_size (W, H) pixels, face_width_px (min, max), texture_size texels of the
    real-face pool textures, test_fraction the share of subjects (the last by number, as the experiments' split)
    wearing textures of identities no other subject wears. image_size is not used by version 2. The version 2
    fields are left out of a version 1 config's hash and manifest, so version 1 datasets keep their bytes.
    """

    subjects: int = 3
    clips: int = 4
    macro_clips: int = 2
    seed: int = 0
    image_size: int = 96
    fps: int = 200
    macro_fps: int = 30
    micro_duration_s: tuple[float, float] = (0.2, 0.3)
    macro_duration_s: tuple[float, float] = (1.0, 1.4)
    micro_apex_mm: tuple[float, float] = (0.5, 3.0)
    macro_peak: tuple[float, float] = (0.85, 1.2)
    lead_frames: tuple[int, int] = (2, 6)
    overlap_fraction: float = 0.5
    jpeg_quality: int = 95
    version: int = 1
    frame_size: tuple[int, int] = (640, 480)
    face_width_px: tuple[float, float] = (250.0, 300.0)
    texture_size: int = 256
    test_fraction: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"synth config: version must be one of {VERSIONS}, got {self.version!r}")
        if self.version == 2 and not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"synth config: test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("subjects", "clips", "image_size", "fps", "macro_fps"):
            if getattr(self, name) < 1:
                raise ValueError(f"synth config: {name} must be >= 1, got {getattr(self, name)}")
        if self.macro_clips < 0:
            raise ValueError(f"synth config: macro_clips must be >= 0, got {self.macro_clips}")
        if self.subjects > 99:
            raise ValueError("synth config: at most 99 subjects (CASME II's sub01..sub99 naming)")
        low, high = self.micro_apex_mm
        if not 0 < low <= high:
            raise ValueError(f"synth config: micro_apex_mm must be 0 < min <= max, got {self.micro_apex_mm}")

    def to_dict(self) -> dict:
        """The config as written to the manifest and hashed: a version 1 config leaves out the version 2 fields
        (and ``version``), exactly as before they existed."""
        values = asdict(self)
        if self.version == 1:
            for name in ("version",) + V2_FIELDS:
                values.pop(name)
        return values

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


PROFILES: dict[str, dict] = {
    # smoke proves every path in seconds; cpu is a small honest benchmark; full is paper-scale (GPU nodes)
    "smoke": dict(image_size=96, micro_duration_s=(0.2, 0.3), macro_duration_s=(1.0, 1.4)),
    "cpu": dict(image_size=128, micro_duration_s=(0.25, 0.45), macro_duration_s=(1.0, 1.6)),
    "full": dict(image_size=224, micro_duration_s=(0.3, 0.5), macro_duration_s=(1.5, 3.0)),
}


def config_for_profile(profile: str, **overrides) -> SynthConfig:
    """SynthConfig from a named profile plus explicit overrides (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown synth profile {profile!r}: expected one of {', '.join(PROFILES)}")
    values = dict(PROFILES[profile])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("version", 1) == 2:
        values.setdefault("jpeg_quality", V2_JPEG_QUALITY)
    return SynthConfig(**values)


@dataclass
class ClipSpec:
    kind: str  # "micro" | "macro"
    subject: int
    index: int
    emotion: str
    aus: tuple[str, ...]
    seed: int

    @property
    def clip_id(self) -> str:
        return f"{'EP' if self.kind == 'micro' else 'MA'}{self.subject:02d}_{self.index:02d}"

    @property
    def relative_dir(self) -> Path:
        prefix = Path("macro") if self.kind == "macro" else Path()
        return prefix / f"sub{self.subject:02d}" / self.clip_id

    @property
    def ground_truth_path(self) -> Path:
        prefix = Path("ground_truth") / ("macro" if self.kind == "macro" else "")
        return prefix / f"sub{self.subject:02d}" / f"{self.clip_id}.npz"


@dataclass
class RenderedClip:
    """In-memory result of rendering one clip. frames: (T, H, W, 3) float in [0, 1] before noise."""

    spec: ClipSpec
    frames_clean: np.ndarray
    frames_uint8: np.ndarray
    ground_truth: dict[str, np.ndarray]
    row: dict = field(default_factory=dict)


def plan_clips(config: SynthConfig) -> list[ClipSpec]:
    """Every clip of the dataset, with balanced emotions and its own seed. Pure function of the config."""
    specs = []
    for subject in range(1, config.subjects + 1):
        for kind, n_clips, emotions in (("micro", config.clips, MICRO_EMOTIONS),
                                         ("macro", config.macro_clips, MACRO_EMOTIONS)):
            for index in range(1, n_clips + 1):
                # rotate emotions per subject so every class appears across subjects
                emotion = emotions[(index - 1 + subject - 1) % len(emotions)]
                seed = int(np.random.SeedSequence([config.seed, subject, index, 0 if kind == "micro" else 1])
                           .generate_state(1)[0])
                rng = np.random.default_rng(seed)
                if kind == "micro":
                    combos = MICRO_EMOTION_AUS[emotion]
                    aus = combos[int(rng.integers(len(combos)))]
                else:
                    aus = MACRO_EMOTION_AUS[emotion]
                specs.append(ClipSpec(kind, subject, index, emotion, tuple(aus), seed))
    return specs


def subject_for(config: SynthConfig, subject_id: int, model: OpenFaceModel, textures: dict | None = None) -> Subject:
    """Subject ``subject_id`` of the dataset; version 2 needs ``textures`` (subject -> pool texture, from
    ``_textures_for``) and dresses the version 1 subject with real skin (``appearance.appearance_v2``)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, subject_id, 7]))
    subject = sample_subject(subject_id, rng, model, config.image_size)
    if config.version == 1:
        return subject
    from microface.data.synth.appearance import appearance_v2

    if textures is None:
        textures = _textures_for(config)
    rng_v2 = np.random.default_rng(np.random.SeedSequence([config.seed, subject_id, 8]))
    return appearance_v2(subject, textures[subject_id], rng_v2, config.frame_size, config.face_width_px)


def _textures_for(config: SynthConfig) -> dict:
    """Version 2: the pool texture each subject wears (``appearance.assign_textures``). -> {subject: PoolTexture}."""
    from microface.data.synth.appearance import assign_textures
    from microface.data.synth.textures import texture_pool

    return assign_textures(texture_pool(config.texture_size), config.subjects, config.test_fraction)


def render_any(spec: ClipSpec, config: SynthConfig, model: OpenFaceModel, subject: Subject) -> RenderedClip:
    """Render one clip with the config's version (``render_clip`` or ``render_v2.render_clip_v2``)."""
    if config.version == 1:
        return render_clip(spec, config, model, subject)
    from microface.data.synth.render_v2 import render_clip_v2

    return render_clip_v2(spec, config, model, subject)


def _subject_camera(subject: Subject, image_size: int) -> Camera:
    return look_at_camera(subject.distance_mm, subject.focal_px, (image_size, image_size), batch_size=1,
                          dtype=torch.float64)


def _clip_parameters(spec: ClipSpec, config: SynthConfig, model: OpenFaceModel, subject: Subject):
    """Timing and parameter trajectories of one clip: (expression (T,E), pose (T,6), translation (T,3), onset, offset, fps)."""
    rng = np.random.default_rng(spec.seed)
    fps = config.fps if spec.kind == "micro" else config.macro_fps
    duration = rng.uniform(*(config.micro_duration_s if spec.kind == "micro" else config.macro_duration_s))
    active = max(4, int(round(duration * fps)))
    lead = int(rng.integers(config.lead_frames[0], config.lead_frames[1] + 1))
    n_frames = lead + active + lead
    onset, offset = lead, lead + active - 1
    apex = onset + int(round(rng.uniform(0.35, 0.55) * (offset - onset)))
    overlap = 0.0
    if spec.kind == "micro" and len(spec.aus) > 1 and rng.uniform() < config.overlap_fraction:
        overlap = rng.uniform(0.3, 0.7)
    events = plan_events(rng, spec.aus, onset, apex, offset, 1.0, overlap)
    expression = expression_trajectory(events, model.au_names, n_frames)
    if spec.kind == "micro":
        # scale intensities so that the largest vertex displacement at the apex hits the drawn target (mm)
        target_mm = rng.uniform(*config.micro_apex_mm)
        peak_frame = int(np.abs(expression).sum(1).argmax())
        peak_offsets = model.expression_offsets(torch.tensor(expression[peak_frame][None], dtype=torch.float32))
        expression *= target_mm / float(peak_offsets.norm(dim=-1).max())
    else:
        expression *= rng.uniform(*config.macro_peak)
    times = np.arange(n_frames) / fps
    pose = np.zeros((n_frames, 6))
    pose[:, :3] = head_pose(subject, times, clip_phase=rng.uniform(0, 2 * np.pi))
    if "AU26" in spec.aus:  # the rigid jaw opens with the jaw-drop AU
        pose[:, 3] = 0.12 * expression[:, model.au_names.index("AU26")]
    translation = 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8, 3)[None] * times[:, None] + rng.uniform(0, 6.3, 3))
    translation -= translation[:1]
    return expression, pose, translation, onset, offset, fps


@torch.no_grad()
def clip_vertices(model: OpenFaceModel, subject: Subject, expression: np.ndarray, pose: np.ndarray,
                  translation: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip's ground-truth meshes, float64 (both benchmark versions).

    Args:
        model: the open face model (evaluated in float64, left in float32).
        subject: its ``shape`` (S,) is the identity.
        expression: (T, E) AU activations; pose: (T, 6) global + jaw axis-angle, rad; translation: (T, 3) mm.

    Returns:
        canonical (T, V, 3) mm: the expression and jaw at zero global pose, no translation (what is scored);
        posed (T, V, 3) mm: with the head's rotation and translation (what is rendered).
    """
    n_frames = expression.shape[0]
    dtype = torch.float64
    shape_t = torch.tensor(subject.shape, dtype=dtype)[None].expand(n_frames, -1)
    canonical = model.double()(shape_t, torch.tensor(expression, dtype=dtype),
                               torch.cat([torch.zeros(n_frames, 3, dtype=dtype),
                                          torch.tensor(pose[:, 3:], dtype=dtype)], 1)).vertices
    posed = model(shape_t, torch.tensor(expression, dtype=dtype), torch.tensor(pose, dtype=dtype)).vertices
    posed = posed + torch.tensor(translation, dtype=dtype)[:, None, :]
    model.float()
    return canonical, posed


def render_clip(spec: ClipSpec, config: SynthConfig, model: OpenFaceModel, subject: Subject) -> RenderedClip:
    """Render one clip and its ground truth (vertices, landmarks, flow, visibility) in memory."""
    expression, pose, translation, onset, offset, fps = _clip_parameters(spec, config, model, subject)
    n_frames = expression.shape[0]
    size = config.image_size
    dtype = torch.float64
    with torch.no_grad():
        canonical, posed = clip_vertices(model, subject, expression, pose, translation)
        camera = expand_camera(_subject_camera(subject, size), n_frames)
        screen = project_points(posed, camera)
        fragments = rasterize(screen, model.faces, (size, size), blur_radius_px=0.7, perspective_correct=True)
        texture = torch.tensor(subject.texture, dtype=dtype)[None].expand(n_frames, -1, -1, -1)
        sh = torch.tensor(subject.sh, dtype=dtype)[None].expand(n_frames, -1, -1)
        background = torch.tensor(subject.background, dtype=dtype)
        image = shade_mesh(fragments, posed, model.faces, texture, sh, background, model.uvs.double())
        frames_clean = image.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        # ground-truth flow t -> t+1: where the surface point under each pixel at t projects at t+1
        leading = _leading_fragments(fragments, n_frames - 1)
        surface_next = interpolate_vertex_attributes(leading, model.faces, posed[1:])
        surface_now = interpolate_vertex_attributes(leading, model.faces, posed[:-1])
        cam_pairs = expand_camera(_subject_camera(subject, size), n_frames - 1)
        next_px = project_points(surface_next.reshape(n_frames - 1, -1, 3), cam_pairs).reshape(n_frames - 1, size, size, 3)
        now_px = project_points(surface_now.reshape(n_frames - 1, -1, 3), cam_pairs).reshape(n_frames - 1, size, size, 3)
        flow = (next_px[..., :2] - now_px[..., :2])
        mask = fragments.mask.numpy()
        flow_mask = mask[:-1] & _visible_at(next_px, fragments.zbuf[1:, ..., 0], size)
        flow = torch.where(torch.tensor(mask[:-1])[..., None], flow, torch.zeros_like(flow))
        visibility = _vertex_visibility(screen, fragments.zbuf[..., 0], size)
        landmarks2d = screen[:, model.landmark_indices, :2]
    rng = np.random.default_rng(spec.seed + 1)
    noisy = frames_clean + rng.normal(0.0, subject.noise_sigma, frames_clean.shape)
    frames_uint8 = np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8)
    first_number = 1 + int(rng.integers(0, 40))
    frame_numbers = np.arange(first_number, first_number + n_frames)
    cam = _subject_camera(subject, size)
    return finish_clip(spec, model, subject, frames_clean, frames_uint8, posed=posed, canonical=canonical,
                       expression=expression, pose=pose, translation=translation, landmarks2d=landmarks2d,
                       flow=flow.numpy().astype(np.float16), flow_mask=flow_mask, mask=mask, visibility=visibility,
                       camera=cam, fps=fps, frame_numbers=frame_numbers, onset=onset, offset=offset)



def finish_clip(spec: ClipSpec, model: OpenFaceModel, subject: Subject, frames_clean: np.ndarray,
                frames_uint8: np.ndarray, *, posed: torch.Tensor, canonical: torch.Tensor, expression: np.ndarray,
                pose: np.ndarray, translation: np.ndarray, landmarks2d: torch.Tensor, flow: np.ndarray,
                flow_mask: np.ndarray, mask: np.ndarray, visibility: np.ndarray, camera, fps: int,
                frame_numbers: np.ndarray, onset: int, offset: int) -> RenderedClip:
    """A rendered clip's ground-truth npz arrays and coding-sheet row (both benchmark versions write these).

    The apex is the true one: the frame of largest canonical motion from the onset. ``flow`` is already float16.
    """
    motion = np.linalg.norm(canonical.numpy() - canonical.numpy()[onset][None], axis=-1).max(axis=1)
    apex = int(np.argmax(motion[onset: offset + 1])) + onset  # the true apex: largest motion from onset
    gt = {
        "vertices": posed.numpy().astype(np.float32),
        "vertices_canonical": canonical.numpy().astype(np.float32),
        "shape": subject.shape.astype(np.float32),
        "expression": expression.astype(np.float32),
        "pose": pose.astype(np.float32),
        "translation": translation.astype(np.float32),
        "au_names": np.array(model.au_names),
        "landmarks2d": landmarks2d.numpy().astype(np.float32),
        "flow": flow,
        "flow_mask": flow_mask,
        "mask": mask,
        "visibility": visibility,
        **camera_to_arrays(camera),
        "sh": subject.sh.astype(np.float32),
        "fps": np.int32(fps),
        "frame_numbers": frame_numbers.astype(np.int32),
        "onset": np.int32(onset),
        "apex": np.int32(apex),
        "offset": np.int32(offset),
        "noise_sigma": np.float32(subject.noise_sigma),
    }
    row = {
        "Subject": spec.subject,
        "Filename": spec.clip_id,
        "OnsetFrame": int(frame_numbers[onset]),
        "ApexFrame": int(frame_numbers[apex]),
        "OffsetFrame": int(frame_numbers[offset]),
        "Action Units": "+".join(au[2:] for au in spec.aus),
        "Estimated Emotion": spec.emotion,
    }
    return RenderedClip(spec, frames_clean, frames_uint8, gt, row)

def _leading_fragments(fragments, count: int):
    """The first ``count`` frames of batched Fragments (packed face indices b * F + f stay valid for them)."""
    sliced = {f.name: getattr(fragments, f.name) for f in dataclass_fields(fragments)}
    return replace(fragments, **{k: v[:count] if isinstance(v, torch.Tensor) else v for k, v in sliced.items()})


def _visible_at(points_px: torch.Tensor, zbuf: torch.Tensor, size: int, tolerance_mm: float = 1.0) -> np.ndarray:
    """Whether screen points (B, H, W, 3) land on the image and are not hidden in zbuf (B, H, W). -> bool (B, H, W)."""
    x = points_px[..., 0].floor().long()
    y = points_px[..., 1].floor().long()
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    xc, yc = x.clamp(0, size - 1), y.clamp(0, size - 1)
    b = torch.arange(points_px.shape[0])[:, None, None].expand_as(xc)
    depth_there = zbuf[b, yc, xc]
    visible = inside & (depth_there > 0) & (points_px[..., 2] <= depth_there + tolerance_mm)
    return visible.numpy()


def _vertex_visibility(screen: torch.Tensor, zbuf: torch.Tensor, size: int, tolerance_mm: float = 1.5) -> np.ndarray:
    """Per-vertex visibility: on the image, in front of the z-buffer. screen (T, V, 3) -> bool (T, V)."""
    return _visible_at(screen[:, :, None, :], zbuf, size, tolerance_mm)[:, :, 0]


# --------------------------------------------------------------------------------------------- writing
def _deterministic_zip(path: Path, members: dict[str, bytes]) -> None:
    """Write a zip with fixed timestamps and order, so identical content gives identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps; written to a temp file, then renamed."""
    members = {}
    for key, value in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
        members[f"{key}.npy"] = buffer.getvalue()
    with atomic_path(path) as tmp:
        _deterministic_zip(tmp, members)


def write_casme2_sheet(path: Path, rows: list[dict]) -> None:
    """The CASME II coding spreadsheet with its real header (two unnamed columns), byte-deterministic."""
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append([name if name is not None else None for name in CASME2_COLUMNS])
    for row in rows:
        sheet.append([row.get(name) if name is not None else None for name in CASME2_COLUMNS])
    buffer = io.BytesIO()
    workbook.save(buffer)
    # openpyxl stamps the save time into the archive and docProps/core.xml: pin both
    members = {}
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if name == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2014-05-08T00:00:00Z", data)
            members[name] = data
    with atomic_path(path) as tmp:
        _deterministic_zip(tmp, members)


def _write_clip(clip: RenderedClip, root: Path, jpeg_quality: int) -> None:
    frame_dir = root / clip.spec.relative_dir
    tmp_dir = frame_dir.with_name(frame_dir.name + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    for number, frame in zip(clip.ground_truth["frame_numbers"], clip.frames_uint8):
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"could not encode frame {number} of {clip.spec.clip_id}")
        (tmp_dir / f"img{number}.jpg").write_bytes(encoded.tobytes())
    gt_path = root / clip.spec.ground_truth_path
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(gt_path, clip.ground_truth)
    replace_folder(tmp_dir, frame_dir)  # the frame folder appears last: its presence marks the clip done
    row_path = root / ".rows" / f"{clip.spec.kind}_{clip.spec.clip_id}.json"
    write_text_atomic(json.dumps(clip.row, sort_keys=True), row_path)


def _read_manifest(out: Path) -> dict | None:
    path = out / "synth_manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete {out} and generate again") from err


def generate(out: Path, config: SynthConfig, show_progress: bool = True) -> Path:
    """Generate the synthetic benchmark into ``out`` (see the module docstring); return ``out``.

    If ``out`` already holds this very dataset, nothing is done. If it holds anything else, ValueError.
    """
    out = Path(out)
    digest = config.digest()
    if out.exists():
        manifest = _read_manifest(out)
        if manifest is not None and manifest.get("format") == FORMAT and manifest.get("config_hash") == digest:
            return out
        if manifest is not None:
            raise ValueError(
                f"{out} already holds a different dataset ({manifest.get('format')}, config hash "
                f"{manifest.get('config_hash')}, asked {digest}): choose another --out or delete it"
            )
        if any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a microface synthetic dataset: choose another --out")
        out.rmdir()
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        stamp = partial / ".config_hash"
        if not stamp.is_file() or stamp.read_text() != digest:
            shutil.rmtree(partial)  # leftovers of a different config: start over
    partial.mkdir(parents=True, exist_ok=True)
    write_text_atomic(digest, partial / ".config_hash")
    model = OpenFaceModel()
    specs = plan_clips(config)
    subjects: dict[int, Subject] = {}
    textures = _textures_for(config) if config.version == 2 else None
    bar = progress(specs, desc="synth clips", disable=not show_progress)
    with torch.no_grad():
        for spec in bar:
            done = (partial / spec.relative_dir).is_dir() and (partial / spec.ground_truth_path).is_file() and (
                partial / ".rows" / f"{spec.kind}_{spec.clip_id}.json").is_file()
            if done:
                continue
            if spec.subject not in subjects:
                subjects[spec.subject] = subject_for(config, spec.subject, model, textures)
            clip = render_any(spec, config, model, subjects[spec.subject])
            _write_clip(clip, partial, config.jpeg_quality)
    for kind, folder in (("micro", partial), ("macro", partial / "macro")):
        rows = [json.loads((partial / ".rows" / f"{s.kind}_{s.clip_id}.json").read_text())
                for s in specs if s.kind == kind]
        if rows:
            folder.mkdir(parents=True, exist_ok=True)
            write_casme2_sheet(folder / CASME2_SHEET, rows)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "config_hash": digest,
        "face_model": "open (MediaPipe canonical mesh, microface AU fields)",
        "au_names": list(model.au_names),
        "micro_emotions": list(MICRO_EMOTIONS),
        "macro_emotions": list(MACRO_EMOTIONS),
        "clips": [
            {"kind": s.kind, "subject": f"sub{s.subject:02d}", "clip_id": s.clip_id, "emotion": s.emotion,
             "aus": list(s.aus), "ground_truth": str(s.ground_truth_path)}
            for s in specs
        ],
    }
    if textures is not None:
        manifest["textures"] = {f"sub{number:02d}": texture.name for number, texture in textures.items()}
    shutil.rmtree(partial / ".rows")
    (partial / ".config_hash").unlink()
    write_text_atomic(json.dumps(manifest, indent=2, sort_keys=True), partial / "synth_manifest.json")
    replace_folder(partial, out)
    return out


def load_ground_truth(path: Path) -> dict[str, np.ndarray]:
    """Read one clip's ground-truth npz, checking its keys. -> dict of arrays (see GROUND_TRUTH_KEYS)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path} not found: generate the benchmark with `microface synth`")
    with np.load(path) as data:
        missing = [key for key in GROUND_TRUTH_KEYS if key not in data.files]
        if missing:
            raise ValueError(f"{path} lacks ground-truth keys {missing}: regenerate it with `microface synth`")
        return {key: data[key] for key in data.files}
