"""DGMD, dynamic-guided mesh deformation: the fine stage that adds small per-vertex offsets to a coarse mesh.

Given the coarse mesh of frame t (from DEM), the coarse mesh of the onset frame, the camera, the dense optical
flow onset->t (pixels) and the detected 2D landmarks of frame t, DGMD builds per-vertex cues

- geometry (9): centred position / ``position_scale_mm``, unit normal, UNIFORM Laplacian coordinates
  ``v_i - mean_{j in N(i)} v_j`` / ``laplacian_scale_mm`` (``config.laplacian = "cotangent"`` switches to
  clamped cotangent weights computed on the coarse mesh itself);
- landmark (2): the residual ``detected - projected`` of the 68 landmarks, spread to every vertex by a fixed
  Gaussian kernel of 3D distance on the template (see :func:`landmark_spread_weights`);
- flow (4): the flow sampled bilinearly at each vertex's onset projection, and a pooled flow: either the mean
  flow of the face REGION the vertex belongs to (pixels -> faces via the rasterizer's ``pix_to_face``, faces ->
  regions by majority vote of their vertices; the "region-based pixel-vertex correspondence"), or, for the
  "per-pixel mapping" ablation, the mean flow of the pixels whose face contains the vertex;

fuses them with a per-vertex MLP, runs gated residual graph convolutions over the mesh edges and decodes
``offsets = max_offset_mm * tanh(head(h)) * a``, where the motion-attention gate
``a = tanh(relu(motion - gate_floor_px) / gate_scale_px) * sigmoid(MLP(motion magnitudes))`` is EXACTLY zero for
a vertex whose motion cues are at most the floor (``motion`` = sum of the enabled cue magnitudes in pixels). By
default (``motion_cues = "residual"``) the motion cues are what the coarse mesh does not explain: the flow minus
the coarse mesh's own projected motion since the onset, and the change of the landmark residual since the onset;
so where DEM already moves the face as the flow says, or nothing moves, DGMD leaves the mesh alone. The same gate
multiplies every graph-convolution update, so static vertices keep the coarse geometry.

Clip-level flow denoising (``temporal_rank`` > 0, in :meth:`DGMD.clip_cues`, which sees a whole clip): before
the flow cues are read, the clip's flow fields onset -> t, as a (T, H * W * 2) matrix of frames, are replaced by
their best rank-k approximation (truncated SVD, :func:`temporal_low_rank`). A micro-expression is one action-unit
pattern that rises and falls, so its flow is close to one displacement field scaled over time, while the flow
estimator's noise is independent from frame to frame and falls mostly outside it. The flow-guided loss still
compares with the observed flow. Written here rather than taken from a library: it is one SVD.
With ``flow_affine_free`` the flow cues also lose each frame's least-squares affine motion over the face
(:func:`remove_affine_motion`): the coarse stage's pose misfit is global, a micro-expression is local.

Ablation switches (``DGMDConfig``): use_geometry, use_landmarks, use_flow, use_attention (off: a = 1),
mapping "region" | "per_pixel". With neither motion cue enabled there is nothing to attend to and a = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F_nn
from torch import nn

from microface.data.flow import remove_affine_motion, sample_at_points, temporal_low_rank
from microface.face.model import FaceModel
from microface.mesh.geometry import vertex_normals
from microface.mesh.laplacian import cotangent_laplacian_coordinates, uniform_laplacian_coordinates
from microface.mesh.regions import face_region_map, vertex_region_labels
from microface.mesh.topology import mesh_edges, normalized_adjacency, propagate
from microface.render.camera import Camera, expand_camera, project_points
from microface.render.rasterize import packed_pix_to_face, rasterize
from microface.utils.checks import config_from_dict

MAPPINGS = ("region", "per_pixel")
LAPLACIANS = ("uniform", "cotangent")
MOTION_CUES = ("residual", "raw")


@dataclass
class DGMDConfig:
    """Sizes, scales and ablation switches of DGMD.

    Args:
        hidden: MLP / GCN width.
        gcn_layers: gated graph-convolution layers.
        max_offset_mm: bound of every offset component (tanh).
        use_geometry: geometry cue switch.
        use_landmarks: landmark cue switch.
        use_flow: flow cue switch.
        use_attention: motion-attention gate (off: a = 1).
        mapping: "region" (region-pooled flow) | "per_pixel" (per-vertex pixel average).
        laplacian: "uniform" | "cotangent".
        landmark_sigma_mm: width of the landmark spreading kernel on the template.
        flow_scale_px: pixels of flow / landmark residual mapped to 1.0 in the features.
        gate_scale_px: motion (px) at which the gate's magnitude term reaches tanh(1) = 0.76.
        position_scale_mm: feature normaliser of the centred positions.
        laplacian_scale_mm: feature normaliser of the Laplacian coordinates.
        render_blur_px: blur radius of the internal rasterization (only when pix_to_face is not given).
        motion_cues: "residual" (flow minus the coarse mesh's own projected motion onset->t, and the landmark
            residual minus its onset value: what the coarse mesh has NOT explained) | "raw" (flow and landmark
            residual as given).
        gate_floor_px: motion (px) below which the gate stays exactly shut (the noise level of the flow).
        gate_noise_factor: when > 0, the floor of each frame is at least this factor times the MEDIAN motion
            over the frame's vertices, an estimate of its noise (a micro-expression moves a minority of the face).
        attention_context: the gate's learned term also sees each vertex's fused features (geometry and cues), so
            it can learn WHERE a face moves as well as how much (off: the motion magnitudes alone).
        temporal_rank: rank of the clip-level denoising of the flow over time before the flow cues are read
            (0: off, each frame's flow as estimated). When > 0, cues must come from ``DGMD.clip_cues`` over a
            whole clip (``refine_clip`` and training do this).
        flow_affine_free: remove from each frame's flow cues their least-squares 2D affine motion over the face
            (see :func:`remove_affine_motion`): a global misfit between DEM's projected motion and the flow (the
            coarse stage's pose or camera error) is not DGMD's to fix with local offsets, and it would open the
            gate everywhere.

    Raises:
        ValueError: an unknown choice, a scale <= 0, every cue switched off, or a negative size.
    """

    hidden: int = 64
    gcn_layers: int = 2
    max_offset_mm: float = 2.0
    use_geometry: bool = True
    use_landmarks: bool = True
    use_flow: bool = True
    use_attention: bool = True
    mapping: str = "region"
    laplacian: str = "uniform"
    landmark_sigma_mm: float = 8.0
    flow_scale_px: float = 1.0
    gate_scale_px: float = 0.05
    position_scale_mm: float = 80.0
    laplacian_scale_mm: float = 1.0
    render_blur_px: float = 0.5
    motion_cues: str = "residual"
    gate_floor_px: float = 0.0
    gate_noise_factor: float = 0.0
    attention_context: bool = False
    temporal_rank: int = 0
    flow_affine_free: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.temporal_rank, bool) or not isinstance(self.temporal_rank, int) or self.temporal_rank < 0:
            raise ValueError(f"dgmd temporal_rank: expected an int >= 0 (0: off), got {self.temporal_rank!r}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"dgmd mapping: expected one of {MAPPINGS}, got {self.mapping!r}")
        if self.motion_cues not in MOTION_CUES:
            raise ValueError(f"dgmd motion_cues: expected one of {MOTION_CUES}, got {self.motion_cues!r}")
        if self.gate_noise_factor < 0:
            raise ValueError(f"dgmd gate_noise_factor: expected >= 0, got {self.gate_noise_factor}")
        if self.gate_floor_px < 0:
            raise ValueError(f"dgmd gate_floor_px: expected >= 0, got {self.gate_floor_px}")
        if self.laplacian not in LAPLACIANS:
            raise ValueError(f"dgmd laplacian: expected one of {LAPLACIANS}, got {self.laplacian!r}")
        if not (self.use_geometry or self.use_landmarks or self.use_flow):
            raise ValueError("dgmd: every cue is switched off (use_geometry, use_landmarks, use_flow); enable one")
        for name in ("max_offset_mm", "landmark_sigma_mm", "flow_scale_px", "gate_scale_px", "position_scale_mm",
                     "laplacian_scale_mm", "render_blur_px"):
            if not getattr(self, name) > 0:
                raise ValueError(f"dgmd {name}: expected > 0, got {getattr(self, name)}")
        if self.hidden < 1 or self.gcn_layers < 0:
            raise ValueError(f"dgmd: expected hidden >= 1 and gcn_layers >= 0, got {self.hidden}, {self.gcn_layers}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "DGMDConfig":
        """The config from a mapping (the ``dgmd`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the DGMDConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "dgmd")


# ------------------------------------------------------------------------------------------ cues
def _check_flow(flow: torch.Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow: expected (B, 2, H, W) onset->t in pixels, got {tuple(flow.shape)}")


def _check_pix_to_face(pix_to_face: torch.Tensor, flow: torch.Tensor) -> None:
    B, _, H, W = flow.shape
    if pix_to_face.shape != (B, H, W, 1):
        raise ValueError(f"pix_to_face: expected ({B}, {H}, {W}, 1) to match the flow, got {tuple(pix_to_face.shape)}")


def region_pool_flow(flow: torch.Tensor, pix_to_face: torch.Tensor, face_region: torch.Tensor,
                     n_regions: int) -> torch.Tensor:
    """Mean flow over the pixels each face region covers.

    Args:
        flow: flow in pixels, shape (B, 2, H, W).
        pix_to_face: packed face index ``b * F + f``, -1 background, shape (B, H, W, 1).
        face_region: region of each face, long in [0, n_regions), shape (F,).
        n_regions: number of regions R.

    Returns:
        mean flow per region in pixels, shape (B, R, 2). A region covering no pixel gets 0. Differentiable
        w.r.t. the flow.

    Raises:
        ValueError: shapes that do not match, or face indices beyond B * F.
    """
    _check_flow(flow)
    _check_pix_to_face(pix_to_face, flow)
    B, _, H, W = flow.shape
    n_faces = face_region.shape[0]
    p2f = pix_to_face.reshape(-1)
    fg = torch.nonzero(p2f >= 0, as_tuple=True)[0]
    if fg.numel() and int(p2f[fg].max()) >= B * n_faces:
        raise ValueError(f"pix_to_face holds index {int(p2f[fg].max())} >= B * F = {B * n_faces}: "
                         "face_region does not match the rasterized mesh")
    batch = p2f[fg] // n_faces
    slot = batch * n_regions + face_region.to(p2f.device)[p2f[fg] % n_faces]  # (P,) in [0, B*R)
    values = flow.permute(0, 2, 3, 1).reshape(-1, 2)[fg]
    sums = torch.zeros(B * n_regions, 2, dtype=flow.dtype, device=flow.device).index_add(0, slot, values)
    counts = torch.zeros(B * n_regions, dtype=flow.dtype, device=flow.device).index_add(
        0, slot, torch.ones_like(slot, dtype=flow.dtype))
    return (sums / counts.clamp_min(1.0)[:, None]).reshape(B, n_regions, 2)


def per_pixel_vertex_flow(flow: torch.Tensor, pix_to_face: torch.Tensor, faces: torch.Tensor,
                          n_vertices: int) -> torch.Tensor:
    """Per-pixel mapping (ablation): each vertex averages the flow of the pixels whose face contains it.

    Args:
        flow: flow in pixels, shape (B, 2, H, W).
        pix_to_face: packed face index ``b * F + f``, -1 background, shape (B, H, W, 1).
        faces: triangle vertex indices, shape (F, 3).
        n_vertices: number of vertices V.

    Returns:
        flow per vertex in pixels, shape (B, V, 2); vertices on no visible face get 0. Differentiable w.r.t.
        the flow.

    Raises:
        ValueError: shapes that do not match.
    """
    _check_flow(flow)
    _check_pix_to_face(pix_to_face, flow)
    B = flow.shape[0]
    n_faces = faces.shape[0]
    p2f = pix_to_face.reshape(-1)
    fg = torch.nonzero(p2f >= 0, as_tuple=True)[0]
    batch = p2f[fg] // n_faces
    corners = faces.long().to(p2f.device)[p2f[fg] % n_faces]  # (P, 3)
    slot = (batch[:, None] * n_vertices + corners).reshape(-1)  # (3P,)
    values = flow.permute(0, 2, 3, 1).reshape(-1, 2)[fg].repeat_interleave(3, dim=0)
    sums = torch.zeros(B * n_vertices, 2, dtype=flow.dtype, device=flow.device).index_add(0, slot, values)
    counts = torch.zeros(B * n_vertices, dtype=flow.dtype, device=flow.device).index_add(
        0, slot, torch.ones_like(slot, dtype=flow.dtype))
    return (sums / counts.clamp_min(1.0)[:, None]).reshape(B, n_vertices, 2)


def landmark_spread_weights(template: torch.Tensor, landmark_vertices: torch.Tensor, sigma_mm: float) -> torch.Tensor:
    """Fixed kernel spreading the 68 landmark residuals to the mesh.

    Weights ``g_vl / max(sum_l g_vl, 1)`` with ``g_vl = exp(-|x_v - x_l|^2 / (2 sigma^2))``: near landmarks a
    weighted average of their residuals, far from every landmark the weights (and the cue) fade to zero.

    Args:
        template: template vertices in mm, shape (V, 3).
        landmark_vertices: vertex index of each landmark, shape (L,).
        sigma_mm: kernel width in mm.

    Returns:
        weights, shape (V, L).
    """
    distance2 = (template[:, None, :] - template[landmark_vertices][None, :, :]).pow(2).sum(-1)
    g = torch.exp(-distance2 / (2.0 * sigma_mm**2))
    return g / g.sum(dim=1, keepdim=True).clamp_min(1.0)


def spread_landmark_residual(residual: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-vertex landmark residual.

    Args:
        residual: detected minus projected landmarks in pixels, shape (B, L, 2).
        weights: from :func:`landmark_spread_weights`, shape (V, L).

    Returns:
        per-vertex residual in pixels, shape (B, V, 2).

    Raises:
        ValueError: ``residual`` of the wrong shape.
    """
    if residual.ndim != 3 or residual.shape[-1] != 2 or residual.shape[1] != weights.shape[1]:
        raise ValueError(f"residual: expected (B, {weights.shape[1]}, 2), got {tuple(residual.shape)}")
    # out[b, v, k] = sum_l weights[v, l] * residual[b, l, k]
    return torch.einsum("vl,blk->bvk", weights.to(residual.dtype), residual)


def landmark_anchor_vertices(face_model: FaceModel) -> torch.Tensor:
    """Vertex index standing for each landmark.

    ``face_model.landmark_indices`` when the model has them (the open model), else the template vertex nearest
    each neutral landmark (FLAME's barycentric ones).

    Args:
        face_model: the face model.

    Returns:
        vertex indices, shape (L,) long, on the CPU.

    Raises:
        ValueError: the model's landmarks are NaN (no landmark embedding).
    """
    indices = getattr(face_model, "landmark_indices", None)
    if isinstance(indices, torch.Tensor):
        return indices.long().cpu()
    with torch.no_grad():
        shape, expression, pose = face_model.zero_params(1)
        landmarks = face_model(shape, expression, pose).landmarks[0]
    if not bool(torch.isfinite(landmarks).all()):
        raise ValueError("landmark_anchor_vertices: the face model's landmarks are NaN (no landmark embedding); "
                         "set dgmd use_landmarks: false or supply the model's landmark file")
    return torch.cdist(landmarks.float(), face_model.v_template.float()).argmin(dim=1).cpu()


@dataclass
class VertexCues:
    """Per-vertex inputs of DGMD (None where switched off).

    Attributes:
        geometry: position / scale, normal, Laplacian coordinates / scale, shape (B, V, 9).
        landmark: spread landmark residual in px, shape (B, V, 2).
        vertex_flow: flow at the onset projection in px, shape (B, V, 2).
        pooled_flow: region (or per-pixel) pooled flow in px, shape (B, V, 2).
    """

    geometry: torch.Tensor | None
    landmark: torch.Tensor | None
    vertex_flow: torch.Tensor | None
    pooled_flow: torch.Tensor | None

    def frames(self, index) -> "VertexCues":
        """The cues of some frames.

        Args:
            index: any index of the batch dimension.

        Returns:
            VertexCues of those frames.
        """
        return VertexCues(*(None if c is None else c[index] for c in (self.geometry, *self.motion())))

    def motion(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The motion cues.

        Returns:
            ``(landmark, vertex_flow, pooled_flow)``, None where switched off.
        """
        return self.landmark, self.vertex_flow, self.pooled_flow

    def motion_magnitudes(self) -> torch.Tensor | None:
        """Magnitude of each enabled motion cue.

        Returns:
            |cue| in pixels, shape (B, V, K) for K enabled motion cues, or None without motion cues.
        """
        mags = [c.norm(dim=-1) for c in self.motion() if c is not None]
        return torch.stack(mags, dim=-1) if mags else None


# ------------------------------------------------------------------------------------------ modules
class GatedGraphConv(nn.Module):
    """h + gate * SiLU(A_hat h W + b), A_hat the normalised adjacency (Kipf & Welling).

    Hand-written rather than torch-geometric's GCNConv: the topology is fixed and shared by the whole batch,
    so one precomputed sparse list serves (B, V, C) directly, with no per-graph batching.

    Args:
        channels: C, input and output channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, h: torch.Tensor, gate: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One gated residual graph convolution.

        Args:
            h: vertex features, shape (B, V, C).
            gate: per-vertex gate, shape (B, V).
            index: message pairs [source, target], shape (2, N).
            weight: message weights, shape (N,).

        Returns:
            updated features, shape (B, V, C).
        """
        return h + gate[..., None] * F_nn.silu(propagate(self.linear(h), index, weight))


class MotionAttention(nn.Module):
    """The motion-attention gate of DGMD.

    a = tanh(relu(sum(magnitudes) - floor) / gate_scale) * sigmoid(MLP(magnitudes / flow_scale)) lies in [0, 1) and is exactly 0 where the summed magnitude is at most the floor: ``floor_px``, or
    ``noise_factor`` x the frame's median summed magnitude when that is larger.

    Args:
        n_cues: K, motion cues.
        hidden: MLP width.
        gate_scale_px: motion (px) at which the magnitude term reaches tanh(1).
        flow_scale_px: pixels mapped to 1.0 in the MLP's input.
        floor_px: motion (px) at or below which the gate is exactly 0.
        noise_factor: when > 0, the floor is at least this factor times the frame's median motion.
        n_context: extra per-vertex features the MLP sees (0: none).
    """

    def __init__(self, n_cues: int, hidden: int, gate_scale_px: float, flow_scale_px: float, floor_px: float = 0.0,
                 noise_factor: float = 0.0, n_context: int = 0):
        super().__init__()
        self.n_context = n_context
        self.gate_scale_px = gate_scale_px
        self.floor_px = floor_px
        self.noise_factor = noise_factor
        self.flow_scale_px = flow_scale_px
        self.mlp = nn.Sequential(nn.Linear(n_cues + n_context, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, magnitudes: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The gate of each vertex.

        Args:
            magnitudes: motion cue magnitudes in px, shape (B, V, K).
            context: extra features, shape (B, V, n_context), or None (required when n_context > 0).

        Returns:
            gate in [0, 1), shape (B, V).

        Raises:
            ValueError: ``context`` missing or of the wrong size when n_context > 0.
        """
        motion = magnitudes.sum(-1)
        floor = torch.full_like(motion[:, :1], self.floor_px)
        if self.noise_factor > 0:
            floor = torch.maximum(floor, self.noise_factor * motion.detach().median(dim=1, keepdim=True).values)
        strength = torch.tanh(F_nn.relu(motion - floor) / self.gate_scale_px)
        inputs = magnitudes / self.flow_scale_px
        if self.n_context:
            if context is None or context.shape[-1] != self.n_context:
                raise ValueError(f"motion attention: expected context (B, V, {self.n_context}), got "
                                 f"{None if context is None else tuple(context.shape)}")
            inputs = torch.cat([inputs, context], dim=-1)
        return strength * torch.sigmoid(self.mlp(inputs))[..., 0]


@dataclass
class DGMDOutput:
    """What DGMD returns.

    Attributes:
        vertices: refined vertices in mm, shape (B, V, 3).
        offsets: offsets in mm, shape (B, V, 3).
        gate: motion attention, shape (B, V).
        cues: the VertexCues used.
    """

    vertices: torch.Tensor
    offsets: torch.Tensor
    gate: torch.Tensor
    cues: VertexCues


class DGMD(nn.Module):
    """Dynamic-guided mesh deformation on a fixed face-model topology (see the module docstring).

    Args:
        face_model: gives the topology, template, regions and landmarks.
        config: the DGMDConfig; defaults when None.

    Raises:
        ValueError: ``use_landmarks`` with a face model whose landmarks are NaN.
    """

    def __init__(self, face_model: FaceModel, config: DGMDConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else DGMDConfig()
        faces = face_model.faces.detach().long().cpu()
        template = face_model.v_template.detach().float().cpu()
        n_vertices = template.shape[0]
        self.n_vertices = n_vertices
        edges = mesh_edges(faces)
        gcn_index, gcn_weight = normalized_adjacency(edges, n_vertices)
        vertex_region, self.region_names = vertex_region_labels(face_model.regions, n_vertices)
        self.n_regions = len(self.region_names)
        self.register_buffer("faces", faces)
        self.register_buffer("edges", edges)
        self.register_buffer("gcn_index", gcn_index)
        self.register_buffer("gcn_weight", gcn_weight)
        self.register_buffer("vertex_region", vertex_region)
        self.register_buffer("face_region", face_region_map(faces, vertex_region, self.n_regions))
        try:
            anchors = landmark_anchor_vertices(face_model)
        except ValueError:
            if config.use_landmarks:
                raise
            anchors = None  # no landmark cue and no landmark loss for this model
        self.register_buffer("landmark_vertices", anchors)
        if config.use_landmarks:
            spread = landmark_spread_weights(template, anchors, config.landmark_sigma_mm)
            self.register_buffer("landmark_weights", spread)
        in_features = 9 * config.use_geometry + 2 * config.use_landmarks + 4 * config.use_flow
        n_motion = 1 * config.use_landmarks + 2 * config.use_flow
        self.fusion = nn.Sequential(nn.Linear(in_features, config.hidden), nn.SiLU(),
                                    nn.Linear(config.hidden, config.hidden), nn.SiLU())
        self.layers = nn.ModuleList(GatedGraphConv(config.hidden) for _ in range(config.gcn_layers))
        self.attention = (MotionAttention(n_motion, config.hidden, config.gate_scale_px, config.flow_scale_px,
                                          config.gate_floor_px, config.gate_noise_factor,
                                          n_context=config.hidden if config.attention_context else 0)
                          if config.use_attention and n_motion > 0 else None)
        self.head = nn.Linear(config.hidden, 3)
        # small initial offsets: an untrained DGMD stays close to the coarse mesh
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    # -------------------------------------------------------------------------------------- cues
    def rasterize_faces(self, vertices: torch.Tensor, camera: Camera, image_size: tuple[int, int]) -> torch.Tensor:
        """Which face each pixel sees (no gradient).

        Args:
            vertices: world vertices in mm, shape (B, V, 3).
            camera: a batch of B cameras.
            image_size: (H, W).

        Returns:
            pix_to_face, packed, -1 background, shape (B, H, W, 1).
        """
        with torch.no_grad():
            screen = project_points(vertices.detach(), camera)
            fragments = rasterize(screen, self.faces, image_size, self.config.render_blur_px, camera.is_perspective)
            return fragments.pix_to_face

    def geometry_cue(self, vertices: torch.Tensor) -> torch.Tensor:
        """The geometry cue.

        Args:
            vertices: world vertices in mm, shape (B, V, 3).

        Returns:
            ``[centred position / scale, normal, Laplacian / scale]``, shape (B, V, 9).
        """
        c = self.config
        if c.laplacian == "uniform":
            laplacian = uniform_laplacian_coordinates(vertices, self.edges)
        else:
            laplacian = cotangent_laplacian_coordinates(vertices, self.faces)
        position = (vertices - vertices.mean(dim=1, keepdim=True)) / c.position_scale_mm
        return torch.cat([position, vertex_normals(vertices, self.faces), laplacian / c.laplacian_scale_mm], dim=-1)

    def landmark_cue(self, vertices: torch.Tensor, camera: Camera, landmarks2d: torch.Tensor) -> torch.Tensor:
        """Spread residual of detected landmarks vs the projected anchors of ``vertices``.

        Args:
            vertices: world vertices in mm, shape (B, V, 3).
            camera: a batch of B cameras.
            landmarks2d: detected landmarks in pixels, shape (B, L, 2).

        Returns:
            per-vertex residual in px, shape (B, V, 2).

        Raises:
            ValueError: ``landmarks2d`` of the wrong shape.
        """
        anchors = self.landmark_vertices
        if landmarks2d.shape != (vertices.shape[0], anchors.shape[0], 2):
            raise ValueError(f"landmarks2d: expected ({vertices.shape[0]}, {anchors.shape[0]}, 2) pixels, got "
                             f"{tuple(landmarks2d.shape)}")
        projected = project_points(vertices[:, anchors], camera)[..., :2]
        return spread_landmark_residual(landmarks2d.to(projected.dtype) - projected, self.landmark_weights)

    def region_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-vertex values over each vertex's region, broadcast back.

        Args:
            values: shape (B, V, C).

        Returns:
            region means, shape (B, V, C).
        """
        B, V, C = values.shape
        sums = values.new_zeros(B, self.n_regions, C).index_add_(1, self.vertex_region, values)
        counts = torch.bincount(self.vertex_region, minlength=self.n_regions).clamp(min=1).to(values)
        return (sums / counts[None, :, None])[:, self.vertex_region]

    def coarse_motion_px(self, coarse_vertices: torch.Tensor, onset_vertices: torch.Tensor,
                         camera: Camera) -> torch.Tensor:
        """Projected motion onset -> t of the coarse mesh itself (no gradient: an input).

        Args:
            coarse_vertices: world vertices at t in mm, shape (B, V, 3).
            onset_vertices: world vertices at the onset in mm, shape (B, V, 3).
            camera: a batch of B cameras.

        Returns:
            motion in px, shape (B, V, 2).
        """
        with torch.no_grad():
            return (project_points(coarse_vertices, camera)[..., :2]
                    - project_points(onset_vertices, camera)[..., :2])

    def flow_cues(self, onset_vertices: torch.Tensor, camera: Camera, flow: torch.Tensor,
                  pix_to_face: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw flow cues, anchored at the onset mesh (``cues`` subtracts the coarse motion in "residual" mode).

        Args:
            onset_vertices: world vertices at the onset in mm, shape (B, V, 3).
            camera: a batch of B cameras.
            flow: flow onset -> t in pixels, shape (B, 2, H, W).
            pix_to_face: packed face index of each pixel, shape (B, H, W, 1), or None (rasterized here).

        Returns:
            ``(vertex flow, pooled flow)`` in px, each shape (B, V, 2).

        Raises:
            ValueError: ``flow`` of the wrong shape or batch.
        """
        _check_flow(flow)
        if flow.shape[0] != onset_vertices.shape[0]:
            raise ValueError(f"flow: expected batch {onset_vertices.shape[0]}, got {flow.shape[0]}")
        if pix_to_face is None:
            pix_to_face = self.rasterize_faces(onset_vertices, camera, tuple(flow.shape[-2:]))
        onset_px = project_points(onset_vertices, camera)[..., :2].detach()
        vertex_flow = sample_at_points(flow, onset_px)
        if self.config.mapping == "region":
            pooled = region_pool_flow(flow, pix_to_face, self.face_region, self.n_regions)[:, self.vertex_region]
        else:
            pooled = per_pixel_vertex_flow(flow, pix_to_face, self.faces, self.n_vertices)
        return vertex_flow, pooled

    def cues(self, coarse_vertices: torch.Tensor, camera: Camera, flow_onset_to_t: torch.Tensor | None = None,
             landmarks2d: torch.Tensor | None = None, onset_vertices: torch.Tensor | None = None,
             pix_to_face: torch.Tensor | None = None, onset_landmarks2d: torch.Tensor | None = None,
             with_geometry: bool = True) -> VertexCues:
        """All enabled cues (see ``VertexCues``).

        In "residual" mode the flow cues are the flow minus the coarse mesh's own projected motion onset -> t
        (region-averaged for the pooled cue), and, when ``onset_landmarks2d`` is given, the landmark cue is the
        residual at t minus the residual at the onset (a constant detector-vs-mesh bias cancels).

        Args:
            coarse_vertices: coarse world vertices in mm, shape (B, V, 3).
            camera: a batch of B cameras.
            flow_onset_to_t: optical flow onset -> t in pixels, shape (B, 2, H, W); needed with ``use_flow``.
            landmarks2d: detected landmarks in pixels, shape (B, 68, 2); needed with ``use_landmarks``.
            onset_vertices: the onset's coarse vertices in mm, shape (B, V, 3); default ``coarse_vertices``.
            pix_to_face: packed face index of each pixel of the onset mesh, shape (B, H, W, 1); rasterized here
                when None.
            onset_landmarks2d: detected onset landmarks in pixels, shape (B, 68, 2), or None.
            with_geometry: compute the geometry cue (else it is None).

        Returns:
            the VertexCues.

        Raises:
            ValueError: a switched-on cue whose input is None, or shapes that do not match.
        """
        c = self.config
        if coarse_vertices.ndim != 3 or coarse_vertices.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"coarse_vertices: expected (B, {self.n_vertices}, 3), got {tuple(coarse_vertices.shape)}")
        if camera.batch_size != coarse_vertices.shape[0]:
            raise ValueError(f"camera: expected batch {coarse_vertices.shape[0]}, got {camera.batch_size}")
        onset_vertices = coarse_vertices if onset_vertices is None else onset_vertices
        if onset_vertices.shape != coarse_vertices.shape:
            raise ValueError(f"onset_vertices: expected {tuple(coarse_vertices.shape)}, got "
                             f"{tuple(onset_vertices.shape)}")
        geometry = self.geometry_cue(coarse_vertices) if c.use_geometry and with_geometry else None
        landmark = vertex_flow = pooled = None
        if c.use_landmarks:
            if landmarks2d is None:
                raise ValueError("dgmd: use_landmarks is on but landmarks2d is None; pass (B, 68, 2) detections")
            landmark = self.landmark_cue(coarse_vertices, camera, landmarks2d)
            if c.motion_cues == "residual" and onset_landmarks2d is not None:
                landmark = landmark - self.landmark_cue(onset_vertices, camera, onset_landmarks2d)
        if c.use_flow:
            if flow_onset_to_t is None:
                raise ValueError("dgmd: use_flow is on but flow_onset_to_t is None; pass (B, 2, H, W) flow")
            vertex_flow, pooled = self.flow_cues(onset_vertices, camera, flow_onset_to_t.to(coarse_vertices.dtype),
                                                 pix_to_face)
            if c.motion_cues == "residual":
                explained = self.coarse_motion_px(coarse_vertices, onset_vertices, camera)
                vertex_flow = vertex_flow - explained
                pooled = pooled - (self.region_mean(explained) if c.mapping == "region" else explained)
            if c.flow_affine_free:
                onset_px = project_points(onset_vertices, camera)[..., :2].detach()
                vertex_flow = remove_affine_motion(vertex_flow, onset_px)
                pooled = remove_affine_motion(pooled, onset_px)
        return VertexCues(geometry=geometry, landmark=landmark, vertex_flow=vertex_flow, pooled_flow=pooled)

    # -------------------------------------------------------------------------------------- forward
    def gate(self, cues: VertexCues, like: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Motion-attention gate; ones when attention is off or there is no motion cue.

        Args:
            cues: the VertexCues.
            like: a (B, V, ...) tensor giving the shape, dtype and device of the ones.
            context: the fused features, shape (B, V, hidden), used when ``attention_context`` is on.

        Returns:
            gate, shape (B, V).
        """
        magnitudes = cues.motion_magnitudes()
        if self.attention is None or magnitudes is None:
            return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
        return self.attention(magnitudes, context if self.config.attention_context else None)

    def clip_cues(self, coarse_vertices: torch.Tensor, camera: Camera, flow_onset_to_t: torch.Tensor | None = None,
                  landmarks2d: torch.Tensor | None = None, pix_to_face: torch.Tensor | None = None) -> VertexCues:
        """Motion cues of ONE clip whose frame 0 is the onset, its flow denoised over time when ``temporal_rank`` > 0.

        Args:
            coarse_vertices: world vertices in mm, shape (T, V, 3).
            camera: batch 1, shared by the frames.
            flow_onset_to_t: flow in px, shape (T, 2, H, W).
            landmarks2d: detected landmarks in px, shape (T, 68, 2).
            pix_to_face: of the onset mesh, shape (1, H, W, 1), or None (rasterized here, once).

        Returns:
            VertexCues with geometry None and motion cues (T, V, 2) (pass them to ``forward`` as ``cues``).

        Raises:
            ValueError: a camera batch other than 1.
        """
        T = coarse_vertices.shape[0]
        if camera.batch_size != 1:
            raise ValueError(f"clip_cues: expected one camera for the clip (batch 1), got batch {camera.batch_size}")
        onset = coarse_vertices[:1].expand(T, -1, -1)
        onset_landmarks = None if landmarks2d is None else landmarks2d[:1].expand(T, -1, -1)
        if pix_to_face is None and flow_onset_to_t is not None and self.config.use_flow:
            pix_to_face = self.rasterize_faces(coarse_vertices[:1], camera, tuple(flow_onset_to_t.shape[-2:]))
        packed = None if pix_to_face is None else packed_pix_to_face(pix_to_face.expand(T, -1, -1, -1),
                                                                     self.faces.shape[0])
        rank = self.config.temporal_rank
        with torch.no_grad():  # cues are inputs: nothing here depends on parameters
            if rank > 0 and flow_onset_to_t is not None:
                flow_onset_to_t = temporal_low_rank(flow_onset_to_t, rank)
            cues = self.cues(coarse_vertices, expand_camera(camera, T), flow_onset_to_t, landmarks2d, onset, packed,
                             onset_landmarks, with_geometry=False)
        return VertexCues(None, *cues.motion())

    def forward(self, coarse_vertices: torch.Tensor, camera: Camera, flow_onset_to_t: torch.Tensor | None = None,
                landmarks2d: torch.Tensor | None = None, onset_vertices: torch.Tensor | None = None,
                pix_to_face: torch.Tensor | None = None, onset_landmarks2d: torch.Tensor | None = None,
                cues: VertexCues | None = None) -> DGMDOutput:
        """Refine coarse meshes by small per-vertex offsets.

        Args:
            coarse_vertices: coarse world vertices in mm, shape (B, V, 3).
            camera: a batch of B cameras.
            flow_onset_to_t: optical flow onset -> t in pixels, shape (B, 2, H, W); needed with ``use_flow``.
            landmarks2d: detected landmarks in pixels, shape (B, 68, 2); needed with ``use_landmarks``.
            onset_vertices: the onset's coarse vertices in mm, shape (B, V, 3); default ``coarse_vertices``.
            pix_to_face: packed face index of each pixel of the onset mesh, shape (B, H, W, 1); rasterized here
                when None.
            onset_landmarks2d: detected onset landmarks in pixels, shape (B, 68, 2), or None.
            cues: precomputed motion cues (B, V, 2) of these frames (``clip_cues``; then flow, landmarks, onset and
                pix_to_face are not read); required when ``temporal_rank`` > 0.

        Returns:
            the DGMDOutput.

        Raises:
            ValueError: no ``cues`` with ``temporal_rank`` > 0, or inputs that do not fit (see :meth:`cues`).
        """
        if cues is None:
            if self.config.temporal_rank > 0:
                raise ValueError(f"dgmd temporal_rank={self.config.temporal_rank} denoises cues over a whole clip: "
                                 "compute them with DGMD.clip_cues and pass cues= (refine_clip does this)")
            cues = self.cues(coarse_vertices, camera, flow_onset_to_t, landmarks2d, onset_vertices, pix_to_face,
                             onset_landmarks2d)
        else:
            cues = self.with_geometry(cues, coarse_vertices)
        scale = self.config.flow_scale_px
        parts = [cues.geometry] + [x / scale for x in cues.motion() if x is not None]
        h = self.fusion(torch.cat([p for p in parts if p is not None], dim=-1))
        gate = self.gate(cues, coarse_vertices, h)
        for layer in self.layers:
            h = layer(h, gate, self.gcn_index, self.gcn_weight)
        offsets = self.config.max_offset_mm * torch.tanh(self.head(h)) * gate[..., None]
        return DGMDOutput(vertices=coarse_vertices + offsets, offsets=offsets, gate=gate, cues=cues)

    def with_geometry(self, precomputed: VertexCues, coarse_vertices: torch.Tensor) -> VertexCues:
        """Precomputed motion cues checked against the enabled switches, plus the geometry cue of ``coarse_vertices``.

        Args:
            precomputed: motion cues, e.g. from :meth:`clip_cues`.
            coarse_vertices: world vertices in mm, shape (B, V, 3).

        Returns:
            the VertexCues with geometry.

        Raises:
            ValueError: a switched-on cue missing or of the wrong shape, or a switched-off cue given.
        """
        c = self.config
        expected = (coarse_vertices.shape[0], self.n_vertices, 2)
        for name, enabled, value in zip(("landmark", "vertex_flow", "pooled_flow"),
                                        (c.use_landmarks, c.use_flow, c.use_flow), precomputed.motion()):
            if enabled and (value is None or tuple(value.shape) != expected):
                raise ValueError(f"cues.{name}: expected {expected} (the cue is switched on), got "
                                 f"{None if value is None else tuple(value.shape)}")
            if not enabled and value is not None:
                raise ValueError(f"cues.{name}: the cue is switched off but a value was given")
        geometry = self.geometry_cue(coarse_vertices) if c.use_geometry else None
        return VertexCues(geometry, *(None if v is None else v.to(coarse_vertices) for v in precomputed.motion()))


def build_dgmd(face_model: FaceModel, config: dict | DGMDConfig | None = None, seed: int = 0) -> DGMD:
    """A seeded DGMD for ``face_model``.

    Args:
        face_model: the face model.
        config: a config mapping (DGMDConfig keys), a DGMDConfig, or None for the defaults.
        seed: seeds ``torch`` and ``numpy`` before the weights are drawn.

    Returns:
        the DGMD.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    cfg = config if isinstance(config, DGMDConfig) else DGMDConfig.from_dict(config)
    return DGMD(face_model, cfg)
