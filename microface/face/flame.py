"""User-supplied FLAME (2020 / 2023) behind the FaceModel interface, loaded without chumpy.

FLAME cannot be redistributed: the user downloads it after registering at https://flame.is.tue.mpg.de
and points the config key ``face_model.flame_path`` at ``generic_model.pkl`` (FLAME 2020; also
``male_model.pkl`` / ``female_model.pkl``) or ``flame2023.pkl`` / ``flame2023_no_jaw.pkl``.

Design choice: we build the buffers ourselves and call ``smplx.lbs.lbs`` directly, because ``smplx.FLAME``
insists on fixed file names, a plain-numpy pickle and its own landmark files, and a converted cache file
would be a second copy of a licensed asset on disk.

Files looked for beside the model file (all optional):
- ``landmark_embedding.npy`` (DECA / EMOCA dict) or ``flame_static_embedding.pkl`` (51 points) plus
  ``flame_dynamic_embedding.npy`` / ``.pkl`` (17 contour points, indexed by head yaw);
- ``FLAME_masks.pkl`` (FLAME's named vertex sets) for ``regions``.

Landmarks are in iBUG-68 order (17 contour points, then the 51 inner points). Without an embedding, the
landmarks are NaN and the model warns once at construction, naming the missing file; with a static
embedding but no contour table, only the 17 contour points are NaN.

Shapes: B batch, V vertices (5023), F faces, S shape size, E expression size, K blendshapes or vertices
of a region (said where used).
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from smplx.lbs import find_dynamic_lmk_idx_and_bcoords, lbs, vertices2landmarks
from smplx.utils import find_joint_kin_chain

from microface.face.model import FaceModel, FaceOutput
from microface.mesh.geometry import vertex_normals

FLAME_SITE = "https://flame.is.tue.mpg.de"
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
N_JOINTS = 5  # global, neck, jaw, left eye, right eye
NECK_JOINT = 1
METRES_TO_MM = 1000.0
SHAPE_SPACE_DIM = {400: 300}  # total blendshapes -> identity part (the rest is expression), FLAME 2020 and 2023
N_CONTOUR = 17
N_INNER = 51
N_YAW_BINS = 79  # smplx's contour lookup: yaw 0..39 degrees, then -1..-39
REGION_NAMES = ("forehead", "brows", "eyes", "nose", "cheeks", "mouth", "chin")


# ----------------------------------------------------------------------------------------------------------
# Reading pickles without chumpy
# ----------------------------------------------------------------------------------------------------------
class ChumpyShim:
    """Stands in for any chumpy class while unpickling; keeps the state so the array can be recovered."""

    chumpy_class = "chumpy.ch.Ch"

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self) -> np.ndarray:
        """The wrapped array.

        A plain ``Ch`` holds its value under ``'x'``; for operation nodes (which chumpy evaluates lazily and we
        cannot) we fall back to the first operand ``'a'``, then to the first array in the state.

        Returns:
            the array.

        Raises:
            ValueError: the state holds no array.
        """
        state = getattr(self, "state", None)
        if not isinstance(state, dict):
            state = {"value": state}
        if "x" in state:
            return np.asarray(_to_plain(state["x"]))
        warnings.warn(
            f"chumpy {self.chumpy_class} is an operation, not a stored array; using its first operand as the "
            f"value. Check this array, or re-save the file with numpy arrays.",
            stacklevel=2,
        )
        if "a" in state:
            return np.asarray(_to_plain(state["a"]))
        for value in state.values():
            value = _to_plain(value)
            if isinstance(value, np.ndarray):
                return value
        raise ValueError(f"chumpy object of class {self.chumpy_class} holds no array (state keys {sorted(state)})")


class SparseShim:
    """Rebuilds scipy sparse matrices from their pickled state, whatever scipy version wrote them."""

    sparse_class = "csc_matrix"

    def __setstate__(self, state):
        self.state = state

    def to_scipy(self) -> scipy.sparse.spmatrix:
        """The sparse matrix rebuilt from the pickled state.

        Returns:
            a ``csc_matrix``, ``csr_matrix`` or ``coo_matrix``, as pickled.

        Raises:
            ValueError: another sparse class.
        """
        state = self.state
        shape = tuple(state.get("_shape", state.get("shape")))
        cls = getattr(scipy.sparse, self.sparse_class)
        if self.sparse_class in ("csc_matrix", "csr_matrix"):
            return cls((state["data"], state["indices"], state["indptr"]), shape=shape)
        if self.sparse_class == "coo_matrix":
            return cls((state["data"], (state["row"], state["col"])), shape=shape)
        raise ValueError(f"unsupported sparse matrix class {self.sparse_class!r} in pickle")


def _shim_class(base: type, attr: str, qualified: str) -> type:
    return type(base.__name__, (base,), {attr: qualified})


_SAFE_BUILTINS = {
    "object", "set", "frozenset", "slice", "complex", "bytes", "bytearray", "str", "int", "float", "bool",
    "list", "dict", "tuple",
}
_NUMPY_GLOBALS = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}


class _FlameUnpickler(pickle.Unpickler):
    """Maps chumpy and scipy.sparse classes to shims and refuses any other global (a pickle can run code)."""

    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return _shim_class(ChumpyShim, "chumpy_class", f"{module}.{name}")
        if module.startswith("scipy.sparse") and name in ("csc_matrix", "csr_matrix", "coo_matrix"):
            return _shim_class(SparseShim, "sparse_class", name)
        if module == "numpy" or module.startswith("numpy."):
            if name in _NUMPY_GLOBALS:
                module = module.replace("numpy.core", "numpy._core")  # numpy 2 renamed the private package
                return super().find_class(module, name)
            if module == "numpy.dtypes":
                return super().find_class(module, name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return super().find_class("copyreg", name)
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return super().find_class("builtins", name)
        if module == "_codecs" and name == "encode":
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of a FLAME file")


def _to_plain(value):
    """Replace shims (recursively inside dicts, lists, tuples) by numpy arrays / scipy sparse matrices."""
    if isinstance(value, ChumpyShim):
        return value.to_numpy()
    if isinstance(value, SparseShim):
        return value.to_scipy()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(v) for v in value)
    return value


def _unpickle(path: Path, what: str):
    """Read a (possibly Python 2, possibly chumpy) pickle; errors name the file and what it should be."""
    try:
        with open(path, "rb") as handle:
            return _to_plain(_FlameUnpickler(handle, encoding="latin1").load())
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, AttributeError, ImportError,
            IndexError, TypeError, KeyError) as err:
        raise ValueError(f"{path} is not a readable {what} pickle ({type(err).__name__}: {err})") from err


def _missing_flame_message(path: Path) -> str:
    return (
        f"FLAME model file not found: {path}. FLAME cannot be shipped with microface: download it after "
        f"registering at the FLAME website ({FLAME_SITE}), e.g. FLAME 2020 'generic_model.pkl' or FLAME 2023 "
        f"'flame2023.pkl', and set the config key `face_model.flame_path` to that file "
        f"(optionally put FLAME_masks.pkl and landmark_embedding.npy beside it)."
    )


def load_flame_pickle(path: str | Path) -> dict:
    """Read a FLAME 2020 / 2023 model pickle without chumpy.

    Args:
        path: ``generic_model.pkl``, ``flame2023.pkl`` or another FLAME model pickle.

    Returns:
        a dict with numpy arrays (``J_regressor`` stays a ``scipy.sparse.csc_matrix``):
        ``v_template (V, 3)`` metres, ``f (F, 3)``, ``shapedirs (V, 3, K)`` (K = 400: 300 shape +
        100 expression), ``posedirs (V, 3, 36)``, ``J_regressor (5, V)``, ``weights (V, 5)``,
        ``kintree_table (2, 5)``, and whatever else the file holds (``J (5, 3)``, ``bs_style``, ``bs_type``).

    Raises:
        FileNotFoundError: no file (the message gives download instructions).
        ValueError: naming the file, when it is not a pickle, lacks keys, or has arrays of the wrong shape.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(_missing_flame_message(path))
    data = _unpickle(path, "FLAME model")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected the FLAME model dict")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(
            f"{path} is not a FLAME model: missing keys {missing} (found {sorted(map(str, data))}). "
            f"Expected FLAME 2020 generic_model.pkl or FLAME 2023 flame2023.pkl from {FLAME_SITE}."
        )
    for key in REQUIRED_KEYS:
        if key != "J_regressor":
            data[key] = np.asarray(data[key])
    if not scipy.sparse.issparse(data["J_regressor"]):
        data["J_regressor"] = scipy.sparse.csc_matrix(np.asarray(data["J_regressor"]))
    _check_layout(path, data)
    return data


def _check_layout(path: Path, data: dict) -> None:
    n_vertices = data["v_template"].shape[0]
    expected = {
        "v_template": (n_vertices, 3),
        "f": (None, 3),
        "shapedirs": (n_vertices, 3, None),
        "posedirs": (n_vertices, 3, (N_JOINTS - 1) * 9),
        "J_regressor": (N_JOINTS, n_vertices),
        "weights": (n_vertices, N_JOINTS),
        "kintree_table": (2, N_JOINTS),
    }
    for key, want in expected.items():
        got = tuple(data[key].shape)
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = tuple("*" if w is None else w for w in want)
            raise ValueError(f"{path}: '{key}' has shape {got}, expected {shown} for a FLAME model")


# ----------------------------------------------------------------------------------------------------------
# Landmark embeddings
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LandmarkEmbedding:
    """Barycentric landmark embedding on the FLAME mesh.

    Attributes:
        source: the file(s) it was read from.
        inner_faces: face indices of iBUG points 17..67, shape (51,).
        inner_bary: their barycentrics, shape (51, 3).
        dynamic_faces: contour points 0..16 per head yaw, shape (79, 17); None if absent.
        dynamic_bary: their barycentrics, shape (79, 17, 3); None if absent.
        contour_faces: a fixed contour, shape (17,); None if absent.
        contour_bary: its barycentrics, shape (17, 3); None if absent.
    """

    source: str
    inner_faces: np.ndarray
    inner_bary: np.ndarray
    dynamic_faces: np.ndarray | None = None
    dynamic_bary: np.ndarray | None = None
    contour_faces: np.ndarray | None = None
    contour_bary: np.ndarray | None = None


def _read_npy_dict(path: Path) -> dict:
    """A ``.npy`` holding one pickled dict (DECA's landmark_embedding.npy), read with the safe unpickler."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(handle)
        except ValueError as err:
            raise ValueError(f"{path} is not a .npy file ({err})") from err
        if not dtype.hasobject:
            raise ValueError(f"{path} holds a plain {dtype} array, expected a pickled landmark-embedding dict")
        try:
            obj = _to_plain(_FlameUnpickler(handle, encoding="latin1").load())
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a readable landmark-embedding .npy ({err})") from err
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
        obj = obj.reshape(()).item()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a landmark-embedding dict")
    return obj


def _read_any_dict(path: Path, what: str) -> dict:
    obj = _read_npy_dict(path) if path.suffix == ".npy" else _unpickle(path, what)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a {what} dict")
    return obj


def _require(path: Path, data: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: landmark embedding lacks keys {missing} (found {sorted(map(str, data))})")


def load_landmark_embedding(path: str | Path) -> LandmarkEmbedding:
    """Read DECA's ``landmark_embedding.npy`` or FLAME's ``flame_static_embedding.pkl``.

    For the FLAME static file, ``flame_dynamic_embedding.npy`` / ``.pkl`` beside it supplies the contour.

    Args:
        path: the embedding file.

    Returns:
        the LandmarkEmbedding.

    Raises:
        FileNotFoundError: no file (the message says where to get one).
        ValueError: the file lacks keys or its arrays have the wrong shape.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"landmark embedding not found: {path}. Get landmark_embedding.npy (DECA / EMOCA) or FLAME's "
            f"flame_static_embedding.pkl and put it beside the FLAME model file."
        )
    data = _read_any_dict(path, "landmark embedding")
    if "static_lmk_faces_idx" in data:  # DECA / EMOCA layout
        _require(path, data, ("static_lmk_faces_idx", "static_lmk_bary_coords"))
        emb = LandmarkEmbedding(
            source=str(path),
            inner_faces=np.asarray(data["static_lmk_faces_idx"]).reshape(-1),
            inner_bary=np.asarray(data["static_lmk_bary_coords"]).reshape(-1, 3),
        )
        if "dynamic_lmk_faces_idx" in data and "dynamic_lmk_bary_coords" in data:
            emb.dynamic_faces = np.asarray(data["dynamic_lmk_faces_idx"])
            emb.dynamic_bary = np.asarray(data["dynamic_lmk_bary_coords"])
        if "full_lmk_faces_idx" in data and "full_lmk_bary_coords" in data:
            emb.contour_faces = np.asarray(data["full_lmk_faces_idx"]).reshape(-1)[:N_CONTOUR]
            emb.contour_bary = np.asarray(data["full_lmk_bary_coords"]).reshape(-1, 3)[:N_CONTOUR]
    else:  # FLAME's own static (+ dynamic) files
        _require(path, data, ("lmk_face_idx", "lmk_b_coords"))
        emb = LandmarkEmbedding(
            source=str(path),
            inner_faces=np.asarray(data["lmk_face_idx"]).reshape(-1),
            inner_bary=np.asarray(data["lmk_b_coords"]).reshape(-1, 3),
        )
        for name in ("flame_dynamic_embedding.npy", "flame_dynamic_embedding.pkl"):
            dyn_path = path.parent / name
            if dyn_path.is_file():
                dyn = _read_any_dict(dyn_path, "dynamic landmark embedding")
                _require(dyn_path, dyn, ("lmk_face_idx", "lmk_b_coords"))
                emb.dynamic_faces = np.asarray(dyn["lmk_face_idx"])
                emb.dynamic_bary = np.asarray(dyn["lmk_b_coords"])
                emb.source += f" + {dyn_path}"
                break
    _check_embedding(path, emb)
    return emb


def _check_embedding(path: Path, emb: LandmarkEmbedding) -> None:
    if emb.inner_faces.shape != (N_INNER,) or emb.inner_bary.shape != (N_INNER, 3):
        raise ValueError(
            f"{path}: expected {N_INNER} inner landmarks (faces ({N_INNER},), bary ({N_INNER},3)), got "
            f"{emb.inner_faces.shape} and {emb.inner_bary.shape}"
        )
    if emb.dynamic_faces is not None:
        faces, bary = emb.dynamic_faces, emb.dynamic_bary
        if faces.shape != (N_YAW_BINS, N_CONTOUR) or bary.shape != (N_YAW_BINS, N_CONTOUR, 3):
            raise ValueError(
                f"{path}: expected dynamic contour tables ({N_YAW_BINS},{N_CONTOUR}) and ({N_YAW_BINS},{N_CONTOUR},3), "
                f"got {faces.shape} and {bary.shape}"
            )
    if emb.contour_faces is not None and emb.contour_faces.shape != (N_CONTOUR,):
        raise ValueError(f"{path}: expected a 68-point full embedding, got {emb.contour_faces.shape[0]} contour points")


def find_landmark_embedding(model_path: Path) -> Path | None:
    """The first landmark embedding beside the model: landmark_embedding.npy, then flame_static_embedding.pkl.

    Args:
        model_path: the FLAME model file.

    Returns:
        the embedding's path, or None when there is none.
    """
    for name in ("landmark_embedding.npy", "flame_static_embedding.pkl"):
        candidate = model_path.parent / name
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------------------------------------
def load_flame_masks(path: str | Path) -> dict[str, np.ndarray]:
    """Read FLAME's ``FLAME_masks.pkl``.

    Args:
        path: the masks file.

    Returns:
        mask name ('face', 'eye_region', 'lips', ...) -> vertex indices, shape (K,) int64.

    Raises:
        ValueError: the file does not hold a dict.
    """
    path = Path(path)
    data = _unpickle(path, "FLAME_masks")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected FLAME's dict of vertex masks")
    return {str(k): np.asarray(v).astype(np.int64).reshape(-1) for k, v in data.items()}


def regions_from_masks(v_template: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map FLAME's masks to microface's regions.

    forehead = 'forehead', nose = 'nose', mouth = 'lips'; FLAME has no brow mask, so 'eye_region' is split at
    the top of the eyeballs: above it are the brows, the rest plus the eyeballs are the eyes. Of the 'face'
    vertices left over, those below the lips and within their width are the chin, those between the lips'
    bottom and the eyes' bottom are the cheeks.

    Args:
        v_template: template vertices, shape (V, 3) (any length unit: only the layout counts).
        masks: as from :func:`load_flame_masks`.

    Returns:
        region name -> vertex indices, shape (K,) int64.

    Raises:
        ValueError: a mask it needs is missing.
    """
    needed = ("forehead", "nose", "lips", "eye_region", "face")
    missing = [k for k in needed if k not in masks]
    if missing:
        raise ValueError(f"FLAME masks lack {missing} (found {sorted(masks)})")
    y, x = v_template[:, 1], v_template[:, 0]
    eye_region = masks["eye_region"]
    eyeballs = np.concatenate([masks.get("left_eyeball", np.empty(0, np.int64)),
                               masks.get("right_eyeball", np.empty(0, np.int64))])
    brow_floor = y[eyeballs].max() if eyeballs.size else np.percentile(y[eye_region], 70)
    brows = eye_region[y[eye_region] > brow_floor]
    eyes = np.union1d(np.setdiff1d(eye_region, brows), eyeballs)
    forehead = np.setdiff1d(masks["forehead"], np.union1d(brows, eyes))
    nose = np.setdiff1d(masks["nose"], np.union1d(brows, eyes))
    mouth = masks["lips"]
    taken = np.concatenate([forehead, brows, eyes, nose, mouth])
    rest = np.setdiff1d(masks["face"], taken)
    lips_x = x[mouth]
    chin = rest[(y[rest] < y[mouth].min()) & (x[rest] >= lips_x.min()) & (x[rest] <= lips_x.max())]
    cheeks = rest[(y[rest] >= y[mouth].min()) & (y[rest] <= y[eyes].min())]
    out = dict(forehead=forehead, brows=brows, eyes=eyes, nose=nose, cheeks=cheeks, mouth=mouth, chin=chin)
    return {k: np.unique(v).astype(np.int64) for k, v in out.items()}


def regions_from_geometry(v_template: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Coarse regions when FLAME_masks.pkl is absent.

    The face is the set of vertices whose normal points toward the camera (n_z > 0.5); its height is split
    into bands (h = 0 at the bottom, 1 at the top) and its width into a central and lateral part
    (u = |x - centre| / half-width): forehead h >= .80; brows .68-.80; eyes .55-.68 with u >= .3;
    nose .35-.68 with u < .3; cheeks .15-.55 lateral (u >= .3 above h=.35, u >= .7 below); mouth .15-.35
    with u < .7; chin below .15 with u < .7. First matching rule wins, so regions are disjoint. On a full
    head with a neck, the bottom bands can reach the neck: prefer FLAME_masks.pkl.

    Args:
        v_template: template vertices, shape (V, 3).
        faces: triangle vertex indices, shape (F, 3).

    Returns:
        region name -> vertex indices, shape (K,) int64.

    Raises:
        ValueError: no vertex faces +z.
    """
    verts = torch.as_tensor(v_template, dtype=torch.float64)[None]
    normals = vertex_normals(verts, torch.as_tensor(faces, dtype=torch.long))[0].numpy()
    front = np.flatnonzero(normals[:, 2] > 0.5)
    if front.size == 0:
        raise ValueError("no vertex faces +z: cannot derive face regions from this template")
    x, y = v_template[front, 0], v_template[front, 1]
    h = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    centre = 0.5 * (x.min() + x.max())
    u = np.abs(x - centre) / max(np.abs(x - centre).max(), 1e-12)
    rules = [
        ("forehead", h >= 0.80),
        ("brows", h >= 0.68),
        ("eyes", (h >= 0.55) & (u >= 0.3)),
        ("nose", (h >= 0.35) & (u < 0.3)),
        ("cheeks", (h >= 0.35) & (h < 0.55) & (u >= 0.3)),
        ("cheeks", (h >= 0.15) & (u >= 0.7)),
        ("mouth", (h >= 0.15) & (h < 0.35)),
        ("chin", (h < 0.15) & (u < 0.7)),
    ]
    label = np.full(front.size, "", dtype=object)
    for name, mask in rules:
        label[(label == "") & mask] = name
    return {name: front[label == name].astype(np.int64) for name in REGION_NAMES}


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
def split_blendshapes(shapedirs: np.ndarray, n_shape: int, n_expression: int, path: Path) -> np.ndarray:
    """Pick the first n_shape identity and n_expression expression components.

    FLAME 2020 and 2023 both store K = 400: 300 identity then 100 expression components.

    Args:
        shapedirs: all blendshapes, shape (V, 3, K).
        n_shape: identity components wanted, 0..300.
        n_expression: expression components wanted, 0..100.
        path: the model file, named in errors.

    Returns:
        the chosen blendshapes, shape (V, 3, n_shape + n_expression).

    Raises:
        ValueError: K is not 400, or a count is out of range.
    """
    total = shapedirs.shape[-1]
    if total not in SHAPE_SPACE_DIM:
        raise ValueError(f"{path}: shapedirs has {total} components, expected 400 (300 shape + 100 expression)")
    n_identity = SHAPE_SPACE_DIM[total]
    n_expr_available = total - n_identity
    if not 0 <= n_shape <= n_identity:
        raise ValueError(f"n_shape: expected 0..{n_identity} (available in {path.name}), got {n_shape}")
    if not 0 <= n_expression <= n_expr_available:
        raise ValueError(f"n_expression: expected 0..{n_expr_available} (available in {path.name}), got {n_expression}")
    return np.concatenate(
        [shapedirs[..., :n_shape], shapedirs[..., n_identity:n_identity + n_expression]], axis=-1
    )


class FlameFaceModel(FaceModel):
    """FLAME as a FaceModel: ``forward(shape (B, S), expression (B, E), pose (B, 6)) -> FaceOutput``.

    Vertices (B, 5023, 3) and landmarks (B, 68, 3) are in millimetres (FLAME's metres x 1000). ``pose`` is
    global rotation then jaw rotation (axis-angle, radians); neck and eyes are held at zero. Buffers (all mm
    where a length): ``v_template (V, 3)``, ``faces (F, 3)`` long, ``shapedirs (V, 3, S+E)``,
    ``posedirs (36, 3V)``, ``J_regressor (5, V)``, ``lbs_weights (V, 5)``, ``parents (5,)``.

    Args:
        path: the FLAME model pickle.
        n_shape: how many identity components to use (<= 300).
        n_expression: how many expression components to use (<= 100).
        landmark_embedding: an explicit embedding file; default: the first found beside ``path``.
        dynamic_contour: pick the 17 contour landmarks by head yaw (DECA's table) when the embedding has one;
            otherwise use the fixed contour of the 68-point embedding.

    Raises:
        FileNotFoundError: no model file.
        ValueError: a model file, embedding or count that does not fit.
    """

    def __init__(
        self,
        path: str | Path,
        n_shape: int = 100,
        n_expression: int = 50,
        landmark_embedding: str | Path | None = None,
        dynamic_contour: bool = True,
    ) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        data = load_flame_pickle(self.path)
        dirs = split_blendshapes(np.asarray(data["shapedirs"], dtype=np.float64), n_shape, n_expression, self.path)
        self.n_shape = int(n_shape)
        self.n_expression = int(n_expression)
        faces = np.asarray(data["f"]).astype(np.int64)
        v_template = np.asarray(data["v_template"], dtype=np.float64)
        if faces.min() < 0 or faces.max() >= v_template.shape[0]:
            raise ValueError(f"{self.path}: faces index vertices outside 0..{v_template.shape[0] - 1}")
        posedirs = np.asarray(data["posedirs"], dtype=np.float64)
        parents = np.asarray(data["kintree_table"])[0].astype(np.int64)
        parents[0] = -1  # FLAME stores the root's parent as uint32(-1) = 4294967295
        if any(not 0 <= parents[j] < j for j in range(1, N_JOINTS)):
            raise ValueError(f"{self.path}: kintree_table parents {parents.tolist()} are not a tree in joint order")

        def buffer(name: str, array: np.ndarray, dtype=torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array)).to(dtype))

        buffer("v_template", v_template * METRES_TO_MM)
        buffer("faces", faces, torch.long)
        buffer("shapedirs", dirs * METRES_TO_MM)
        # smplx.lbs wants posedirs as (P, V*3): pose feature p times row p gives flattened vertex offsets
        buffer("posedirs", posedirs.reshape(-1, posedirs.shape[-1]).T * METRES_TO_MM)
        buffer("J_regressor", data["J_regressor"].toarray())
        buffer("lbs_weights", np.asarray(data["weights"], dtype=np.float64))
        buffer("parents", parents, torch.long)
        buffer("neck_kin_chain", np.asarray(find_joint_kin_chain(NECK_JOINT, parents.tolist())), torch.long)

        self._setup_landmarks(landmark_embedding, dynamic_contour, faces.shape[0])
        self._setup_regions(v_template, faces)

    # -- construction helpers ------------------------------------------------------------------------------
    def _setup_landmarks(self, explicit: str | Path | None, dynamic_contour: bool, n_faces: int) -> None:
        emb_path = Path(explicit).expanduser() if explicit is not None else find_landmark_embedding(self.path)
        self.landmark_source: str | None = None
        self.contour_mode = "none"
        if emb_path is None:
            warnings.warn(
                f"no landmark embedding beside {self.path} (looked for landmark_embedding.npy and "
                f"flame_static_embedding.pkl): FlameFaceModel landmarks will be NaN",
                stacklevel=3,
            )
            return
        emb = load_landmark_embedding(emb_path)
        for faces in (emb.inner_faces, emb.dynamic_faces, emb.contour_faces):
            if faces is not None and (faces.min() < 0 or faces.max() >= n_faces):
                raise ValueError(f"{emb.source}: landmark faces index outside the model's {n_faces} faces")
        self.landmark_source = emb.source
        self.register_buffer("inner_lmk_faces", torch.as_tensor(emb.inner_faces.astype(np.int64)))
        self.register_buffer("inner_lmk_bary", torch.as_tensor(emb.inner_bary, dtype=torch.float32))
        if emb.dynamic_faces is not None and (dynamic_contour or emb.contour_faces is None):
            self.contour_mode = "dynamic"
            self.register_buffer("dynamic_lmk_faces", torch.as_tensor(emb.dynamic_faces.astype(np.int64)))
            self.register_buffer("dynamic_lmk_bary", torch.as_tensor(emb.dynamic_bary, dtype=torch.float32))
        elif emb.contour_faces is not None:
            self.contour_mode = "static"
            self.register_buffer("contour_lmk_faces", torch.as_tensor(emb.contour_faces.astype(np.int64)))
            self.register_buffer("contour_lmk_bary", torch.as_tensor(emb.contour_bary, dtype=torch.float32))
        else:
            warnings.warn(
                f"{emb.source} has no face-contour table (flame_dynamic_embedding.npy missing beside it): "
                f"landmarks 0-16 will be NaN",
                stacklevel=3,
            )

    def _setup_regions(self, v_template_m: np.ndarray, faces: np.ndarray) -> None:
        masks_path = self.path.parent / "FLAME_masks.pkl"
        if masks_path.is_file():
            self.flame_masks = load_flame_masks(masks_path)
            regions = regions_from_masks(v_template_m, self.flame_masks)
            self.region_source = str(masks_path)
        else:
            self.flame_masks = {}
            regions = regions_from_geometry(v_template_m, faces)
            self.region_source = "geometry (no FLAME_masks.pkl beside the model)"
        self._region_names = tuple(regions)
        for name, idx in regions.items():
            self.register_buffer(f"region_{name}", torch.as_tensor(idx, dtype=torch.long))

    @property
    def regions(self) -> dict[str, torch.Tensor]:
        """Region name -> long vertex indices, shape (K,); buffers, so they follow ``.to(device)``."""
        return {name: getattr(self, f"region_{name}") for name in self._region_names}

    # -- forward -------------------------------------------------------------------------------------------
    def full_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """FLAME's full pose from microface's.

        Args:
            pose: global then jaw axis-angle, shape (B, 6).

        Returns:
            FLAME's pose: global, neck, jaw, left eye, right eye axis-angle, shape (B, 15).
        """
        zeros = pose.new_zeros(pose.shape[0], 3)
        return torch.cat([pose[:, :3], zeros, pose[:, 3:], zeros, zeros], dim=1)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> FaceOutput:
        """Vertices and landmarks of a batch of faces.

        Args:
            shape: identity coefficients, shape (B, S).
            expression: expression coefficients, shape (B, E).
            pose: global then jaw axis-angle in radians, shape (B, 6).

        Returns:
            FaceOutput with vertices (B, V, 3) and landmarks (B, 68, 3), in mm.

        Raises:
            ValueError: parameters of the wrong shape or not floating point.
        """
        self.check_params(shape, expression, pose)
        dtype = shape.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"shape: expected a floating-point tensor, got {dtype}")
        expression, pose = expression.to(dtype), pose.to(dtype)
        full_pose = self.full_pose(pose)
        vertices, _ = lbs(
            torch.cat([shape, expression], dim=1),
            full_pose,
            self.v_template.to(dtype),
            self.shapedirs.to(dtype),
            self.posedirs.to(dtype),
            self.J_regressor.to(dtype),
            self.parents,
            self.lbs_weights.to(dtype),
            pose2rot=True,
        )
        return FaceOutput(vertices=vertices, landmarks=self.landmarks(vertices, full_pose))

    def landmarks(self, vertices: torch.Tensor, full_pose: torch.Tensor) -> torch.Tensor:
        """iBUG-68 landmarks of posed vertices.

        Args:
            vertices: posed vertices in mm, shape (B, V, 3).
            full_pose: FLAME's full pose, shape (B, 15) (see :meth:`full_pose`).

        Returns:
            landmarks in mm, shape (B, 68, 3); NaN where no embedding covers them.
        """
        batch = vertices.shape[0]
        out = vertices.new_full((batch, N_CONTOUR + N_INNER, 3), float("nan"))
        if self.landmark_source is None:
            return out
        dtype = vertices.dtype
        inner = vertices2landmarks(
            vertices, self.faces,
            self.inner_lmk_faces.expand(batch, -1).contiguous(),
            self.inner_lmk_bary.to(dtype).expand(batch, -1, -1),
        )
        out = torch.cat([out[:, :N_CONTOUR], inner], dim=1)
        if self.contour_mode == "dynamic":
            # the contour follows the silhouette: smplx picks the table row from the yaw of neck + global
            faces_idx, bary = find_dynamic_lmk_idx_and_bcoords(
                vertices, full_pose, self.dynamic_lmk_faces, self.dynamic_lmk_bary.to(dtype),
                self.neck_kin_chain, pose2rot=True,
            )
            contour = vertices2landmarks(vertices, self.faces, faces_idx, bary)
        elif self.contour_mode == "static":
            contour = vertices2landmarks(
                vertices, self.faces,
                self.contour_lmk_faces.expand(batch, -1).contiguous(),
                self.contour_lmk_bary.to(dtype).expand(batch, -1, -1),
            )
        else:
            return out
        return torch.cat([contour, inner], dim=1)

    def extra_repr(self) -> str:
        """The settings shown by ``repr``.

        Returns:
            path, sizes, and where the landmarks and regions come from.
        """
        return (
            f"path={self.path}, n_vertices={self.n_vertices}, n_shape={self.n_shape}, "
            f"n_expression={self.n_expression}, landmarks={self.landmark_source}, contour={self.contour_mode}, "
            f"regions={self.region_source}"
        )
