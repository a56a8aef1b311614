"""A face model seen through MediaPipe's 468 landmarks, linearised for the landmark fit.

The fit needs, for each frame, the model's points that correspond to detected MediaPipe landmarks, in the
model's own frame (millimetres, global rotation left out: the fit's similarity step owns it), and their
Jacobian with respect to identity, AU expression and jaw rotation. Identity and AUs enter linearly once the
jaw is fixed, so the Jacobian is exact for them and a Gauss-Newton linearisation for the jaw only.

Two bases, one interface: ``landmark_indices`` (N,) into MediaPipe's 468; ``n_shape``, ``n_expression``;
``points(shape, expression, jaw)``; ``linearise(...) -> (points, jaw_rotation, rigid_jaw_jacobian,
dynamic_jacobian)``. The points fall in three row groups, so that most of the Jacobian is constant:

- ``static_rows``: points that do not move with the jaw, exactly ``static_offset + static_jacobian @ coeffs``
  (coeffs = identity then AUs);
- ``rigid_rows``: points carried rigidly by the jaw, exactly ``R_jaw (rigid_offset + rigid_jacobian @ coeffs - p)
  + p``; ``rigid_jaw_jacobian`` (T, r, 3, 3) is their jaw Jacobian rotated back by ``R_jaw^T``, so that in the
  jaw's frame their coefficient Jacobian is the constant ``rigid_jacobian``;
- ``dynamic_rows``: everything else, with a full per-frame Jacobian (T, m, 3, S+E+3).

- ``OpenModelLandmarks``: the open model's vertices ARE MediaPipe's 468 landmarks; its blendshapes and its jaw
  blend are read from the model's buffers, so the Jacobian is computed in closed form (fast).
- ``EmbeddedLandmarks``: any FaceModel (FLAME) with a barycentric embedding of some MediaPipe landmarks on its
  triangles (FLAME's site distributes ``mediapipe_landmark_embedding.npz``: 105 points). Its Jacobian comes
  from the model's own forward pass: identity and AUs by unit steps (exact, the map is affine in them at a fixed
  pose), the jaw by central differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

N_MEDIAPIPE = 468
EMBEDDING_FILENAME = "mediapipe_landmark_embedding.npz"
EMBEDDING_KEYS = ("lmk_face_idx", "lmk_b_coords", "landmark_indices")
FLAME_SITE = "https://flame.is.tue.mpg.de"
JAW_STEP_RAD = 1e-4  # central-difference step of the generic jaw Jacobian


def rotation_matrices(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula in numpy float64 (the model's ``axis_angle_to_matrix``, without a torch round trip in
    the solver's inner loop). axis_angle (..., 3) radians -> rotation matrices (..., 3, 3)."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = np.maximum(np.linalg.norm(axis_angle, axis=-1, keepdims=True), 1e-12)
    x, y, z = np.moveaxis(axis_angle / angle, -1, 0)
    zeros = np.zeros_like(x)
    K = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], -1).reshape(*x.shape, 3, 3)
    s = np.sin(angle)[..., None]
    c = np.cos(angle)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


class OpenModelLandmarks:
    """The open face model's 468 vertices as landmark points, with a closed-form Jacobian.

    Parameter order of the Jacobian's last axis: identity (S), AUs (E), jaw axis-angle (3).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.landmark_indices = np.arange(N_MEDIAPIPE)
        self.n_shape = int(model.n_shape)
        self.n_expression = int(model.n_expression)
        self.template = model.v_template.detach().cpu().double().numpy()  # (V, 3) mm
        # basis[v, k, p]: displacement (mm) of vertex v along axis k per unit of parameter p (identity, then AUs)
        self.basis = np.concatenate([model.shape_dirs.detach().cpu().double().numpy(),
                                     model.expression_dirs.detach().cpu().double().numpy()], axis=-1)
        jaw_weights = model.jaw_weights.detach().cpu().double().numpy()
        self.jaw_vertices = np.flatnonzero(jaw_weights > 0)  # only these move with the jaw
        self.jaw_weights = jaw_weights[self.jaw_vertices]
        self.jaw_pivot = model.jaw_pivot.detach().cpu().double().numpy()
        rigid = self.jaw_weights >= 1.0
        self.rigid_rows = self.jaw_vertices[rigid]
        self.rigid_jacobian = self.basis[self.rigid_rows]
        self.rigid_offset = self.template[self.rigid_rows]
        self.dynamic_rows = self.jaw_vertices[~rigid]  # the blend band just below the mouth line
        self.static_rows = np.setdiff1d(np.arange(N_MEDIAPIPE), self.jaw_vertices)
        self.static_jacobian = self.basis[self.static_rows]
        self.static_offset = self.template[self.static_rows]

    def _rest(self, shape: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Vertices before the jaw: shape (S,), expression (T, E) -> (T, V, 3) mm."""
        coeffs = np.concatenate([np.broadcast_to(shape, (len(expression), self.n_shape)), expression], axis=1)
        # rest[t, v, k] = template[v, k] + sum_p coeffs[t, p] * basis[v, k, p]
        flat = self.basis.reshape(-1, self.basis.shape[-1])
        return self.template[None] + (coeffs @ flat.T).reshape(len(coeffs), *self.template.shape)

    def points(self, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """Model points without global rotation. shape (S,), expression (T, E), jaw (T, 3) rad -> (T, 468, 3) mm."""
        rest = self._rest(shape, expression)
        return self._apply_jaw(rest, rotation_matrices(jaw))

    def _apply_jaw(self, rest: np.ndarray, jaw_rot: np.ndarray) -> np.ndarray:
        """Blend the jaw vertices toward their jaw-rotated positions (the model's forward), in place."""
        lower = rest[:, self.jaw_vertices] - self.jaw_pivot
        rotated = lower @ np.swapaxes(jaw_rot, 1, 2) + self.jaw_pivot  # (T, J, 3): R (x - p) + p
        w = self.jaw_weights[None, :, None]
        rest[:, self.jaw_vertices] += w * (rotated - rest[:, self.jaw_vertices])
        return rest

    def linearise(self, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray):
        """Points and the per-frame parts of their Jacobian (see the module docstring for the row groups).

        Args:
            shape: (S,) identity; expression: (T, E) AUs; jaw: (T, 3) axis-angle, radians.
        Returns:
            points (T, 468, 3) mm; jaw_rotation (T, 3, 3); rigid_jaw_jacobian (T, r, 3, 3) (in the jaw's frame);
            dynamic_jacobian (T, m, 3, S+E+3).
        """
        rest = self._rest(shape, expression)
        jaw_rot = rotation_matrices(jaw)
        lower_rest = rest[:, self.jaw_vertices] - self.jaw_pivot  # (T, J, 3) before the jaw
        points = self._apply_jaw(rest, jaw_rot)
        d_rot = np.empty((3,) + jaw_rot.shape)
        for k in range(3):
            step = np.zeros(3)
            step[k] = JAW_STEP_RAD
            d_rot[k] = (rotation_matrices(jaw + step) - rotation_matrices(jaw - step)) / (2 * JAW_STEP_RAD)
        rigid = self.jaw_weights >= 1.0
        # rigid rows: d/dtheta_k of R (x - p) = dR_k (x - p); rotated back: R^T dR_k (x - p)
        back = np.swapaxes(jaw_rot, 1, 2)[None] @ d_rot  # (3, T, 3, 3)
        rigid_lower = lower_rest[:, rigid]
        rigid_cols = np.stack([rigid_lower @ np.swapaxes(back[k], 1, 2) for k in range(3)], -1)  # (T, r, 3, 3)
        # blend rows: x' = x + w (R (x - p) + p - x), so J = [(1 - w) B + w R B | w dR_k (x - p)]
        w = self.jaw_weights[~rigid]
        band = lower_rest[:, ~rigid]
        basis = self.basis[self.dynamic_rows]  # (m, 3, SE)
        T, m, SE = len(jaw), len(w), basis.shape[-1]
        out = np.empty((T, m, 3, SE + 3))
        rotated = np.einsum("tij,vjp->tvip", jaw_rot, basis, optimize=True)
        out[..., :SE] = (1 - w)[None, :, None, None] * basis[None] + w[None, :, None, None] * rotated
        out[..., SE:] = w[None, :, None, None] * np.stack([band @ np.swapaxes(d_rot[k], 1, 2) for k in range(3)], -1)
        return points, jaw_rot, rigid_cols, out


@dataclass(frozen=True)
class MediapipeEmbedding:
    """MediaPipe landmarks embedded on a mesh's triangles.

    face_idx: (L,) triangle index per landmark; bary: (L, 3) barycentric weights; landmark_indices: (L,)
    indices into MediaPipe's 468 points.
    """

    face_idx: np.ndarray
    bary: np.ndarray
    landmark_indices: np.ndarray
    source: str


def load_mediapipe_embedding(path: str | Path, n_faces: int | None = None) -> MediapipeEmbedding:
    """Read FLAME's ``mediapipe_landmark_embedding.npz`` (keys ``lmk_face_idx`` (L,), ``lmk_b_coords`` (L, 3),
    ``landmark_indices`` (L,) into MediaPipe's 468); check shapes and ranges (against ``n_faces`` triangles)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MediaPipe landmark embedding not found: {path}. Download {EMBEDDING_FILENAME} from the FLAME site "
            f"({FLAME_SITE}, 'MediaPipe landmark embedding') and pass its path.")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in EMBEDDING_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"{path}: lacks keys {missing} (found {sorted(data.files)}); expected "
                                 f"{', '.join(EMBEDDING_KEYS)}")
            face_idx = np.asarray(data["lmk_face_idx"]).astype(np.int64).reshape(-1)
            bary = np.asarray(data["lmk_b_coords"], dtype=np.float64)
            indices = np.asarray(data["landmark_indices"]).astype(np.int64).reshape(-1)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"{path} is not a readable .npz landmark embedding ({err})") from err
    n = len(face_idx)
    if bary.shape != (n, 3) or indices.shape != (n,) or n == 0:
        raise ValueError(f"{path}: expected lmk_face_idx (L,), lmk_b_coords (L, 3), landmark_indices (L,); got "
                         f"{face_idx.shape}, {bary.shape}, {indices.shape}")
    if indices.min() < 0 or indices.max() >= N_MEDIAPIPE:
        raise ValueError(f"{path}: landmark_indices must index MediaPipe's {N_MEDIAPIPE} points, got "
                         f"{indices.min()}..{indices.max()}")
    if n_faces is not None and (face_idx.min() < 0 or face_idx.max() >= n_faces):
        raise ValueError(f"{path}: lmk_face_idx must index the model's {n_faces} triangles, got "
                         f"{face_idx.min()}..{face_idx.max()}")
    return MediapipeEmbedding(face_idx, bary, indices, str(path))


class EmbeddedLandmarks:
    """Any FaceModel's points at embedded MediaPipe landmarks, linearised through the model's forward pass.

    Cost per frame and linearisation: 1 + S + E + 6 forward passes (chunked over frames).
    """

    def __init__(self, model, embedding: MediapipeEmbedding, chunk: int = 4096) -> None:
        self.model = model
        self.embedding = embedding
        self.landmark_indices = embedding.landmark_indices
        self.n_shape = int(model.n_shape)
        self.n_expression = int(model.n_expression)
        self.chunk = chunk
        faces = model.faces.detach().cpu().numpy()[embedding.face_idx]  # (L, 3) vertex ids
        self._corner_vertices = torch.as_tensor(faces, dtype=torch.long)
        self._bary = torch.as_tensor(embedding.bary, dtype=torch.float64)
        self.dynamic_rows = np.arange(len(embedding.landmark_indices))
        self.static_rows = np.zeros(0, dtype=np.int64)
        self.static_jacobian = np.zeros((0, 3, self.n_shape + self.n_expression))
        self.static_offset = np.zeros((0, 3))
        self.rigid_rows = np.zeros(0, dtype=np.int64)
        self.rigid_jacobian = np.zeros((0, 3, self.n_shape + self.n_expression))
        self.rigid_offset = np.zeros((0, 3))
        self.jaw_pivot = np.zeros(3)

    def _forward(self, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """Batched model points. shape (B, S), expression (B, E), jaw (B, 3) -> (B, L, 3) mm, no global rotation."""
        out = []
        dtype = torch.float64
        with torch.no_grad():
            for start in range(0, len(shape), self.chunk):
                sl = slice(start, start + self.chunk)
                b = len(shape[sl])
                pose = torch.cat([torch.zeros(b, 3, dtype=dtype), torch.tensor(jaw[sl], dtype=dtype)], 1)
                vertices = self.model(torch.tensor(shape[sl], dtype=dtype), torch.tensor(expression[sl], dtype=dtype),
                                      pose).vertices
                corners = vertices[:, self._corner_vertices]  # (B, L, 3 corners, 3)
                out.append(torch.einsum("blck,lc->blk", corners, self._bary).numpy())
        return np.concatenate(out)

    def points(self, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """shape (S,), expression (T, E), jaw (T, 3) rad -> (T, L, 3) mm."""
        return self._forward(np.broadcast_to(shape, (len(expression), self.n_shape)), expression, jaw)

    def linearise(self, shape: np.ndarray, expression: np.ndarray, jaw: np.ndarray):
        """-> points (T, L, 3) mm, jaw rotation (T, 3, 3), rigid jaw Jacobian (T, 0, 3, 3) (no rigid rows),
        dynamic Jacobian (T, L, 3, S+E+3) (identity, AUs, jaw) for every point."""
        T, S, E = len(expression), self.n_shape, self.n_expression
        coeffs = np.concatenate([np.broadcast_to(shape, (T, S)), expression], 1)  # (T, S+E)
        # rows: the current parameters, then one unit step per identity/AU coefficient, then +-h per jaw axis
        steps = np.concatenate([np.zeros((1, S + E)), np.eye(S + E)])
        c = (coeffs[:, None, :] + steps[None]).reshape(-1, S + E)
        j = np.repeat(jaw, S + E + 1, axis=0)
        jaw_steps = np.concatenate([np.eye(3), -np.eye(3)]) * JAW_STEP_RAD
        c = np.concatenate([c, np.repeat(coeffs, 6, axis=0)])
        j = np.concatenate([j, (jaw[:, None, :] + jaw_steps[None]).reshape(-1, 3)])
        out = self._forward(c[:, :S], c[:, S:], j)
        n_lin = T * (S + E + 1)
        lin = out[:n_lin].reshape(T, S + E + 1, -1, 3)
        points = lin[:, 0]
        linear = (lin[:, 1:] - points[:, None]).transpose(0, 2, 3, 1)  # (T, L, 3, S+E)
        jw = out[n_lin:].reshape(T, 6, -1, 3)
        jaw_cols = ((jw[:, :3] - jw[:, 3:]) / (2 * JAW_STEP_RAD)).transpose(0, 2, 3, 1)
        return points, rotation_matrices(jaw), np.zeros((T, 0, 3, 3)), np.concatenate([linear, jaw_cols], axis=-1)


def landmark_basis(model, embedding: str | Path | MediapipeEmbedding | None = None):
    """The landmark basis of ``model``: the open model directly; any other model (FLAME) through a MediaPipe
    embedding, given as a path or a ``MediapipeEmbedding``. Raises ValueError naming the file when it is needed
    and missing."""
    from microface.face.open_model import OpenFaceModel

    if isinstance(model, OpenFaceModel):
        return OpenModelLandmarks(model)
    if embedding is None:
        raise ValueError(
            f"fitting {type(model).__name__} to MediaPipe landmarks needs FLAME's MediaPipe landmark embedding "
            f"({EMBEDDING_FILENAME}, keys {', '.join(EMBEDDING_KEYS)}), supplied like the model: download it from "
            f"{FLAME_SITE} and pass its path (mediapipe_embedding=...).")
    if not isinstance(embedding, MediapipeEmbedding):
        embedding = load_mediapipe_embedding(embedding, n_faces=int(model.faces.shape[0]))
    return EmbeddedLandmarks(model, embedding)
