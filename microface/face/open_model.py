"""The embedded open face model: MediaPipe's canonical face mesh with FACS action-unit blendshapes.

Topology: the MediaPipe canonical face mesh (468 vertices, 898 triangles, per-vertex UVs; Apache-2.0, see
``assets/NOTICE``). Its vertex indices ARE MediaPipe's landmark indices, so a MediaPipe detection is a dense
468-point correspondence with this mesh. The mesh is kept at 468 vertices (no subdivision): its vertex
spacing is 3-8 mm around the brows, eyes and mouth, finer than the 5-30 mm extent of every AU field below,
and DGMD refines per vertex on top of it.

Parameters (coefficients, ``pose`` in radians; every displacement and output is in millimetres; shapes:
B batch, V = 468 vertices, S = 12 identity modes, E = 17 AUs, K vertices of a region):
- ``shape`` (B, 12): identity modes, smooth fields at coefficient 1 (see ``IDENTITY_MODES``); N(0, 1) is a
  plausible population.
- ``expression`` (B, 17): FACS AU intensities, one per ``AU_NAMES``; 1.0 is a strong macro-expression, the peak
  displacement at 1.0 is ``AU_PEAK_MM``; micro-expressions sit around 0.1-0.6. Negative intensities are
  accepted by ``forward`` (fitting needs them) but rejected by ``au_expression_vector``.
- ``pose`` (B, 6): global axis-angle about the head centre, then jaw axis-angle about the jaw pivot.

Every field is built from Wendland kernels ``(1 - s^2)^2`` (C1-smooth, exactly zero beyond its radius) around
anchor vertices, optionally multiplied by a smooth ramp across the eye or mouth opening, where tissue
separates. Bilateral AUs are defined on the subject's right side and mirrored.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from microface.face.model import FaceModel, FaceOutput
from microface.mesh.geometry import axis_angle_to_matrix

# iBUG-68 points as MediaPipe mesh indices (contour, brows, nose, eyes, outer mouth, inner mouth).
IBUG68_FROM_MEDIAPIPE: tuple[int, ...] = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    78, 81, 13, 311, 308, 402, 14, 178,
)

AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26",
)

# Right-side landmark groups (subject's right, x < 0); left ones are found by mirroring.
_INNER_BROW = (107, 55, 66, 65)
_OUTER_BROW = (70, 46, 63, 53)
_BROW = (107, 55, 66, 65, 105, 52, 70, 46, 63, 53)
_UPPER_LID = (161, 160, 159, 158, 157)
_LOWER_LID = (163, 144, 145, 153, 154)
_CHEEK = (117, 118, 119, 101, 50)
_NOSE_WING = (98, 64, 48, 129, 102)
_UPPER_LIP = (37, 39, 40, 82, 81, 80)
_LOWER_LIP = (84, 181, 91, 87, 178)
_LIP_CORNER = (61, 78, 185, 146)
_CHIN = (152, 175, 199, 200, 18)


@dataclass(frozen=True)
class Handle:
    """One smooth bump of an AU field.

    Attributes:
        anchors: mesh vertex indices the bump is centred on.
        displacement: displacement at the anchors in mm, right side, ``(x, y, z)``.
        radius: support radius in mm.
        opening: "eye" or "mouth": the opening ``side`` refers to, or None.
        side: "upper"/"lower" limits it to one side of the eye or mouth opening.
        mirror: also apply the mirrored handle on the left side.
    """

    anchors: tuple[int, ...]
    displacement: tuple[float, float, float]
    radius: float
    opening: str | None = None
    side: str | None = None
    mirror: bool = True


@dataclass(frozen=True)
class ActionUnit:
    """A FACS action unit of the open model: its field is the sum of its handles, scaled to ``peak_mm``.

    Attributes:
        name: e.g. "AU12".
        description: what the AU does.
        peak_mm: largest vertex displacement at intensity 1, in mm.
        regions: the named regions its field may touch (checked by the tests).
        handles: the bumps whose sum is the field.
    """
    name: str
    description: str
    peak_mm: float
    regions: tuple[str, ...]  # the named regions its field may touch (checked by the tests)
    handles: tuple[Handle, ...]


# Directions: +x toward the subject's left (so -x is lateral on the right side), +y up, +z forward.
ACTION_UNITS: tuple[ActionUnit, ...] = (
    ActionUnit("AU1", "inner brow raiser: inner brows and medial forehead up", 4.0, ('forehead', 'brows', 'eyes', 'nose'),
               (Handle(_INNER_BROW, (0.0, 1.0, 0.1), 16.0, "eye", "upper"),)),
    ActionUnit("AU2", "outer brow raiser: lateral brows up", 4.0, ('brows', 'eyes'),
               (Handle(_OUTER_BROW, (0.0, 1.0, 0.0), 16.0, "eye", "upper"),)),
    ActionUnit("AU4", "brow lowerer: brows down and toward the midline", 3.5, ('forehead', 'brows', 'eyes', 'nose'),
               (Handle(_BROW, (0.4, -1.0, 0.1), 14.0, "eye", "upper"),
                Handle((9, 8), (0.0, -0.5, 0.2), 10.0, mirror=False))),
    ActionUnit("AU5", "upper lid raiser: upper eyelids up", 2.0, ('eyes',),
               (Handle(_UPPER_LID, (0.0, 1.0, 0.0), 8.0, "eye", "upper"),)),
    ActionUnit("AU6", "cheek raiser: malar cheeks and lower lids up", 3.0, ('eyes', 'cheeks'),
               (Handle(_CHEEK, (-0.1, 1.0, 0.35), 18.0, "eye", "lower"),)),
    ActionUnit("AU7", "lid tightener: lower lids up and medially", 1.5, ('eyes',),
               (Handle(_LOWER_LID, (0.3, 1.0, 0.0), 7.0, "eye", "lower"),)),
    ActionUnit("AU9", "nose wrinkler: nose wings and sides up", 2.5, ('nose', 'cheeks', 'mouth'),
               (Handle(_NOSE_WING, (0.1, 1.0, 0.1), 11.0, "mouth", "upper"),)),
    ActionUnit("AU10", "upper lip raiser: upper lip up", 3.0, ('mouth',),
               (Handle(_UPPER_LIP, (0.0, 1.0, 0.2), 10.0, "mouth", "upper"),)),
    ActionUnit("AU12", "lip corner puller: corners up, out and back", 5.0, ('mouth',),
               (Handle(_LIP_CORNER, (-0.7, 0.7, -0.25), 16.0),)),
    ActionUnit("AU14", "dimpler: corners tightened back and inward", 3.0, ('mouth',),
               (Handle(_LIP_CORNER, (0.2, 0.0, -1.0), 12.0),)),
    ActionUnit("AU15", "lip corner depressor: corners down", 3.5, ('mouth',),
               (Handle(_LIP_CORNER, (0.0, -1.0, -0.1), 14.0),)),
    ActionUnit("AU17", "chin raiser: chin boss and lower lip up and forward", 3.0, ('mouth', 'chin', 'jaw'),
               (Handle(_CHIN, (0.0, 1.0, 0.3), 18.0, "mouth", "lower", mirror=False),)),
    ActionUnit("AU20", "lip stretcher: corners lateral and slightly down", 4.0, ('mouth',),
               (Handle(_LIP_CORNER, (-1.0, -0.25, 0.0), 16.0),)),
    ActionUnit("AU23", "lip tightener: corners toward the midline, lips narrowed", 2.0, ('mouth',),
               (Handle(_LIP_CORNER, (1.0, 0.0, 0.0), 10.0),
                Handle(_UPPER_LIP, (0.0, -0.3, 0.0), 8.0, "mouth", "upper"),
                Handle(_LOWER_LIP, (0.0, 0.3, 0.0), 8.0, "mouth", "lower"))),
    ActionUnit("AU24", "lip pressor: lips pressed together", 2.0, ('mouth',),
               (Handle(_UPPER_LIP, (0.0, -1.0, 0.0), 9.0, "mouth", "upper"),
                Handle(_LOWER_LIP, (0.0, 1.0, 0.0), 9.0, "mouth", "lower"))),
    ActionUnit("AU25", "lips part: lower lip down, upper lip slightly up", 3.0, ('mouth', 'chin'),
               (Handle(_LOWER_LIP + (17, 14), (0.0, -1.0, 0.0), 10.0, "mouth", "lower"),
                Handle(_UPPER_LIP + (0, 13), (0.0, 0.25, 0.0), 8.0, "mouth", "upper"))),
    ActionUnit("AU26", "jaw drop: lower lip, chin and jaw down (skin field; the rigid jaw is pose[3:6])", 5.0, ('mouth', 'chin', 'jaw'),
               (Handle(_CHIN + (17, 14), (0.0, -1.0, -0.2), 30.0, "mouth", "lower", mirror=False),)),
)
AU_PEAK_MM: dict[str, float] = {au.name: au.peak_mm for au in ACTION_UNITS}


@dataclass(frozen=True)
class IdentityMode:
    """An identity mode of the open model, scaled so its largest displacement is ``peak_mm``.

    Attributes:
        name: e.g. "face_width".
        description: what the mode changes.
        peak_mm: largest vertex displacement at coefficient 1, in mm.
    """
    name: str
    description: str
    peak_mm: float


IDENTITY_MODES: tuple[IdentityMode, ...] = (
    IdentityMode("face_width", "whole face wider (x scaled about the midline)", 6.0),
    IdentityMode("face_height", "whole face taller (y scaled about the nose)", 6.0),
    IdentityMode("face_depth", "deeper profile (z scaled)", 5.0),
    IdentityMode("jaw_width", "wider lower face and jaw angle", 5.0),
    IdentityMode("chin_length", "longer chin", 4.0),
    IdentityMode("nose_length", "nose tip further forward and down", 4.0),
    IdentityMode("nose_width", "wider nose wings", 3.0),
    IdentityMode("brow_height", "brows sit higher above the eyes", 3.0),
    IdentityMode("eye_spacing", "eyes further apart", 2.5),
    IdentityMode("mouth_width", "wider mouth", 3.0),
    IdentityMode("cheek_fullness", "fuller, more forward cheeks", 3.0),
    IdentityMode("forehead_slope", "forehead slopes back", 4.0),
)

# Named regions: each vertex belongs to the region of its nearest seed landmark (seeds on both sides).
_REGION_SEEDS: dict[str, tuple[int, ...]] = {
    "forehead": (10, 151, 9, 108, 337, 67, 297, 103, 332),
    "brows": _BROW + (336, 285, 296, 295, 334, 282, 300, 276, 293, 283),
    "eyes": _UPPER_LID + _LOWER_LID + (33, 133, 362, 263, 386, 374, 385, 380, 387, 373),
    "nose": (168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 48, 278, 64, 294),
    "cheeks": _CHEEK + (346, 347, 348, 330, 280, 123, 352, 187, 411, 147, 376),
    "mouth": _UPPER_LIP + _LOWER_LIP + _LIP_CORNER + (0, 13, 14, 17, 267, 269, 270, 312, 311, 310, 314, 405, 321,
                                                       317, 402, 291, 308, 409, 375),
    "chin": _CHIN + (32, 262, 201, 421, 208, 428),
    "jaw": (172, 136, 150, 149, 176, 148, 397, 365, 379, 378, 400, 377, 58, 288, 132, 361),
    "temples": (127, 234, 93, 356, 454, 323, 21, 251, 54, 284, 162, 389),
}


def _load_canonical_mesh() -> dict[str, np.ndarray]:
    with resources.files("microface.face").joinpath("assets/canonical_face_mesh.npz").open("rb") as handle:
        data = np.load(handle)
        return {key: np.array(data[key]) for key in data.files}


def _mirror_indices(vertices: np.ndarray) -> np.ndarray:
    """For each vertex, the index of the vertex nearest its mirror image across x = 0. (V, 3) -> (V,)."""
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    dist = np.linalg.norm(vertices[None, :, :] - mirrored[:, None, :], axis=-1)
    return dist.argmin(axis=1)


def _wendland(distance: np.ndarray, radius: float) -> np.ndarray:
    """C1 compact kernel (1 - s^2)^2 for s = d / r < 1, else 0."""
    s = np.clip(distance / radius, 0.0, 1.0)
    return (1.0 - s**2) ** 2


def _smoothstep(x: np.ndarray, width: float) -> np.ndarray:
    """0 below -width, 1 above +width, cubic in between."""
    t = np.clip((x + width) / (2 * width), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class OpenFaceModel(FaceModel):
    """Embedded default face model (see the module docstring). Buffers follow ``.to(device)``."""

    def __init__(self) -> None:
        super().__init__()
        mesh = _load_canonical_mesh()
        template = mesh["vertices_cm"].astype(np.float64) * 10.0  # cm -> mm
        self._mirror = _mirror_indices(template)
        self._template_np = template
        self.register_buffer("v_template", torch.tensor(template, dtype=torch.float32))
        self.register_buffer("faces", torch.tensor(mesh["triangles"], dtype=torch.long))
        self.register_buffer("uvs", torch.tensor(mesh["uvs"], dtype=torch.float32))
        self.register_buffer("landmark_indices", torch.tensor(IBUG68_FROM_MEDIAPIPE, dtype=torch.long))
        self.regions = self._build_regions(template)
        self.au_names = AU_NAMES
        self.identity_names = tuple(mode.name for mode in IDENTITY_MODES)
        self.n_expression = len(AU_NAMES)
        self.n_shape = len(IDENTITY_MODES)
        # expression_dirs[v, k, e]: displacement (mm) of vertex v along axis k for AU e at intensity 1
        self.register_buffer("expression_dirs", torch.tensor(self._build_au_fields(template), dtype=torch.float32))
        self.register_buffer("shape_dirs", torch.tensor(self._build_identity_fields(template), dtype=torch.float32))
        jaw_weights, jaw_pivot = self._build_jaw(template)
        self.register_buffer("jaw_weights", torch.tensor(jaw_weights, dtype=torch.float32))
        self.register_buffer("jaw_pivot", torch.tensor(jaw_pivot, dtype=torch.float32))
        self.register_buffer("head_centre", torch.tensor([0.0, 0.0, 0.0]))

    # ----------------------------------------------------------------- construction (numpy, once)
    def _opening_ramps(self, v: np.ndarray) -> dict[str, np.ndarray]:
        """Signed, smooth 'above the opening' weights for the eyes and the mouth. (V, 3) -> {name: (V,)}."""
        eye_line = 0.5 * (v[159, 1] + v[145, 1])  # between upper and lower lid centres
        mouth_line = 0.5 * (v[13, 1] + v[14, 1])  # between the inner lip midpoints
        return {
            "eye": _smoothstep(v[:, 1] - eye_line, 1.5),
            "mouth": _smoothstep(v[:, 1] - mouth_line, 1.5),
        }

    def _handle_field(self, v: np.ndarray, handle: Handle, ramps: dict[str, np.ndarray]) -> np.ndarray:
        """Displacement (V, 3) of one handle on the right side, plus its mirror when asked."""
        sides = [(np.array(handle.anchors), np.array(handle.displacement, dtype=np.float64))]
        if handle.mirror:
            sides.append((self._mirror[np.array(handle.anchors)], np.array(handle.displacement) * [-1.0, 1.0, 1.0]))
        field = np.zeros_like(v)
        for anchors, direction in sides:
            distance = np.linalg.norm(v[:, None, :] - v[anchors][None, :, :], axis=-1).min(axis=1)
            weight = _wendland(distance, handle.radius)
            if handle.opening is not None:
                ramp = ramps[handle.opening]
                weight = weight * (ramp if handle.side == "upper" else 1.0 - ramp)
            field += weight[:, None] * direction[None, :]
        return field

    def _build_au_fields(self, v: np.ndarray) -> np.ndarray:
        ramps = self._opening_ramps(v)
        fields = []
        for au in ACTION_UNITS:
            field = sum(self._handle_field(v, handle, ramps) for handle in au.handles)
            field = field * (au.peak_mm / np.linalg.norm(field, axis=1).max())
            fields.append(field)
        return np.stack(fields, axis=-1)  # (V, 3, E)

    def _region_weight(self, v: np.ndarray, region: str, radius: float) -> np.ndarray:
        seeds = self.regions[region].numpy()
        centre_distance = np.linalg.norm(v[:, None, :] - v[seeds][None, :, :], axis=-1).min(axis=1)
        return _wendland(centre_distance, radius)

    def _build_identity_fields(self, v: np.ndarray) -> np.ndarray:
        x, y, z = v[:, 0], v[:, 1], v[:, 2]
        nose_y = v[4, 1]
        mouth_line = 0.5 * (v[13, 1] + v[14, 1])
        brow_y = v[_BROW, 1].mean()
        lower_face = _smoothstep(mouth_line - y, 15.0)
        raw = {
            "face_width": np.stack([x, 0 * x, 0 * x], 1),
            "face_height": np.stack([0 * y, y - nose_y, 0 * y], 1),
            "face_depth": np.stack([0 * z, 0 * z, z - z.mean()], 1),
            "jaw_width": np.stack([x * lower_face, 0 * x, 0 * x], 1),
            "chin_length": np.stack([0 * x, -self._region_weight(v, "chin", 35.0), 0 * x], 1),
            "nose_length": np.stack([0 * x, -0.3 * self._region_weight(v, "nose", 25.0),
                                     self._region_weight(v, "nose", 25.0)], 1),
            "nose_width": np.stack([x * self._region_weight(v, "nose", 14.0), 0 * x, 0 * x], 1),
            "brow_height": np.stack([0 * x, self._region_weight(v, "brows", 12.0) * _smoothstep(y - v[159, 1], 3.0),
                                     0 * x], 1),
            "eye_spacing": np.stack([np.sign(x) * self._region_weight(v, "eyes", 14.0), 0 * x, 0 * x], 1),
            "mouth_width": np.stack([x * self._region_weight(v, "mouth", 12.0), 0 * x, 0 * x], 1),
            "cheek_fullness": np.stack([0.3 * np.sign(x) * self._region_weight(v, "cheeks", 25.0), 0 * x,
                                        self._region_weight(v, "cheeks", 25.0)], 1),
            "forehead_slope": np.stack([0 * x, 0 * x, -np.clip(y - brow_y, 0, None)], 1),
        }
        fields = []
        for mode in IDENTITY_MODES:
            field = raw[mode.name]
            fields.append(field * (mode.peak_mm / np.linalg.norm(field, axis=1).max()))
        return np.stack(fields, axis=-1)  # (V, 3, S)

    def _build_jaw(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Skinning weight of each vertex to the jaw (V,) and the jaw pivot (3,) near the ear line."""
        mouth_line = 0.5 * (v[13, 1] + v[14, 1])
        weights = _smoothstep(mouth_line - v[:, 1], 4.0)
        pivot = np.array([0.0, 0.5 * (v[234, 1] + v[454, 1]), v[234, 2]])
        return weights, pivot

    def _build_regions(self, v: np.ndarray) -> dict[str, torch.Tensor]:
        names, seeds = [], []
        for name, seed in _REGION_SEEDS.items():
            both = np.unique(np.concatenate([np.array(seed), self._mirror[np.array(seed)]]))
            names += [name] * len(both)
            seeds.append(both)
        seed_idx = np.concatenate(seeds)
        nearest = np.linalg.norm(v[:, None, :] - v[seed_idx][None, :, :], axis=-1).argmin(axis=1)
        owner = np.array(names)[nearest]
        return {name: torch.tensor(np.flatnonzero(owner == name), dtype=torch.long) for name in _REGION_SEEDS}

    # ----------------------------------------------------------------- forward
    def expression_offsets(self, expression: torch.Tensor) -> torch.Tensor:
        """AU blendshape displacement.

        Args:
            expression: AU intensities, shape (B, E).

        Returns:
            displacements in mm, shape (B, V, 3).
        """
        # offsets[b, v, k] = sum_e expression[b, e] * expression_dirs[v, k, e]
        return torch.einsum("be,vke->bvk", expression, self.expression_dirs.to(expression.dtype))

    def shape_offsets(self, shape: torch.Tensor) -> torch.Tensor:
        """Identity displacement.

        Args:
            shape: identity coefficients, shape (B, S).

        Returns:
            displacements in mm, shape (B, V, 3).
        """
        return torch.einsum("bs,vks->bvk", shape, self.shape_dirs.to(shape.dtype))

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> FaceOutput:
        """Vertices and landmarks of a batch of faces.

        Args:
            shape: identity coefficients, shape (B, 12).
            expression: AU intensities, shape (B, 17).
            pose: global then jaw axis-angle in radians, shape (B, 6).

        Returns:
            FaceOutput with vertices (B, 468, 3) and landmarks (B, 68, 3), in mm.

        Example:
            >>> model = OpenFaceModel()
            >>> model(*model.zero_params(2)).vertices.shape
            torch.Size([2, 468, 3])
        """
        self.check_params(shape, expression, pose)
        dtype = shape.dtype
        vertices = self.v_template.to(dtype)[None] + self.shape_offsets(shape) + self.expression_offsets(expression)
        # jaw: blend each vertex between itself and its jaw-rotated position by its jaw weight
        jaw_rotation = axis_angle_to_matrix(pose[:, 3:6])  # (B, 3, 3)
        pivot = self.jaw_pivot.to(dtype)
        rotated = torch.einsum("bij,bvj->bvi", jaw_rotation, vertices - pivot) + pivot
        w = self.jaw_weights.to(dtype)[None, :, None]
        vertices = vertices + w * (rotated - vertices)
        global_rotation = axis_angle_to_matrix(pose[:, 0:3])
        centre = self.head_centre.to(dtype)
        vertices = torch.einsum("bij,bvj->bvi", global_rotation, vertices - centre) + centre
        return FaceOutput(vertices=vertices, landmarks=vertices[:, self.landmark_indices])

    def au_expression_vector(self, intensities: dict[str, float], batch_size: int = 1) -> torch.Tensor:
        """Expression parameters from named AU intensities, e.g. ``{"AU12": 0.3}``.

        Args:
            intensities: AU name ("AU12", "au12" or "12") -> intensity >= 0.
            batch_size: B; every row gets the same intensities.

        Returns:
            expression parameters, shape (B, 17).

        Raises:
            ValueError: an unknown AU or a negative intensity (AU intensities are >= 0 by definition).
        """
        expression = torch.zeros(batch_size, self.n_expression, device=self.v_template.device)
        for name, value in intensities.items():
            key = name if name.upper().startswith("AU") else f"AU{name}"
            key = key.upper()
            if key not in self.au_names:
                raise ValueError(f"unknown action unit {name!r}: the open model has {', '.join(self.au_names)}")
            if value < 0:
                raise ValueError(f"negative intensity {value} for {key}: AU intensities must be >= 0")
            expression[:, self.au_names.index(key)] = float(value)
        return expression

    def au_support(self, name: str, threshold_mm: float = 1e-6) -> torch.Tensor:
        """Indices of the vertices an AU moves at all.

        Args:
            name: AU name as in ``AU_NAMES``, e.g. "AU12".
            threshold_mm: smallest displacement at intensity 1, in mm, that counts as moving.

        Returns:
            vertex indices, shape (K,) long.
        """
        field = self.expression_dirs[:, :, self.au_names.index(name)]
        return torch.nonzero(field.norm(dim=-1) > threshold_mm).flatten()
