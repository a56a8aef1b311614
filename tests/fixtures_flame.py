"""Writes a tiny synthetic FLAME model (same keys, dtypes and nesting as the real files) at test time.

No FLAME data is used or shipped: the mesh is a procedural 10 x 6 grid on a curved patch (60 vertices,
90 triangles) in metres, with random blendshapes. With ``with_chumpy=True`` the arrays are pickled as
chumpy ``Ch`` objects through fake ``chumpy`` modules that are removed again afterwards, so the loader
must read them through its shim exactly as it would a real, Python 2 chumpy pickle.
"""
from __future__ import annotations

import pickle
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse

ROWS, COLS = 10, 6
N_VERTICES = ROWS * COLS
FILE_NAMES = {"2020": "generic_model.pkl", "2023": "flame2023.pkl", "2023_no_jaw": "flame2023_no_jaw.pkl"}
JAW_ROWS = (6, 7, 8, 9)  # the lower face follows the jaw
GRID_X = np.linspace(-0.06, 0.06, COLS)
GRID_Y = np.linspace(0.09, -0.09, ROWS)  # row 0 is the top


def vertex_index(row: int, col: int) -> int:
    return row * COLS + col


def grid_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A curved face-like patch facing +z: vertices (60,3) metres, faces (90,3) uint32, counter-clockwise from +z."""
    x, y = np.meshgrid(GRID_X, GRID_Y)
    z = 0.03 - 2.0 * x**2 - 0.5 * y**2
    vertices = np.stack([x, y, z], -1).reshape(-1, 3)
    faces = []
    for r in range(ROWS - 1):
        for c in range(COLS - 1):
            a, b = vertex_index(r, c), vertex_index(r, c + 1)
            d, e = vertex_index(r + 1, c), vertex_index(r + 1, c + 1)
            # rows go down in y, so (a, d, b) is counter-clockwise seen from +z
            faces += [(a, d, b), (b, d, e)]
    return vertices, np.asarray(faces, dtype=np.uint32)


def skinning_weights() -> np.ndarray:
    """(60,5): neck everywhere, blended with the jaw on the lower rows; the eye joints drive no vertex."""
    weights = np.zeros((N_VERTICES, 5))
    for r in range(ROWS):
        jaw = {6: 0.3, 7: 0.6, 8: 1.0, 9: 1.0}.get(r, 0.0)
        for c in range(COLS):
            weights[vertex_index(r, c), 1] = 1.0 - jaw
            weights[vertex_index(r, c), 2] = jaw
    return weights


def joint_regressor() -> scipy.sparse.csc_matrix:
    """(5,60) rows summing to 1: root and neck at the bottom centre, jaw under the mouth, eyes at eye height."""
    groups = {
        0: [vertex_index(9, 2), vertex_index(9, 3)],
        1: [vertex_index(8, 2), vertex_index(8, 3)],
        2: [vertex_index(6, 2), vertex_index(6, 3), vertex_index(7, 2), vertex_index(7, 3)],
        3: [vertex_index(3, 4)],
        4: [vertex_index(3, 1)],
    }
    dense = np.zeros((5, N_VERTICES))
    for joint, idx in groups.items():
        dense[joint, idx] = 1.0 / len(idx)
    return scipy.sparse.csc_matrix(dense)


def flame_arrays(seed: int = 0) -> dict:
    """FLAME's exact keys and dtypes on the tiny grid (metres)."""
    rng = np.random.default_rng(seed)
    vertices, faces = grid_mesh()
    weights = skinning_weights()
    posedirs = rng.normal(0, 1e-3, (N_VERTICES, 3, 36))
    # pose features 9..17 are the jaw's (R - I); only jaw-skinned vertices get correctives from it
    posedirs[weights[:, 2] == 0, :, 9:18] = 0.0
    J_regressor = joint_regressor()
    return {
        "v_template": vertices,
        "f": faces,
        "shapedirs": rng.normal(0, 1e-3, (N_VERTICES, 3, 400)),
        "posedirs": posedirs,
        "J_regressor": J_regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": J_regressor @ vertices,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def grid_masks() -> dict[str, np.ndarray]:
    """FLAME_masks.pkl-like named vertex sets on the grid."""
    def cells(rows, cols):
        return np.array([vertex_index(r, c) for r in rows for c in cols], dtype=np.int64)

    return {
        "forehead": cells(range(0, 2), range(COLS)),
        "eye_region": cells(range(2, 5), (0, 1, 4, 5)),
        "right_eye_region": cells(range(2, 5), (0, 1)),
        "left_eye_region": cells(range(2, 5), (4, 5)),
        "right_eyeball": cells((3, 4), (1,)),
        "left_eyeball": cells((3, 4), (4,)),
        "nose": cells(range(2, 6), (2, 3)),
        "lips": cells((6, 7), (1, 2, 3, 4)),
        "face": cells(range(0, 9), range(COLS)),
        "neck": cells((9,), range(COLS)),
        "scalp": np.empty(0, np.int64),
        "boundary": cells((0, 9), range(COLS)),
        "left_ear": np.empty(0, np.int64),
        "right_ear": np.empty(0, np.int64),
    }


def landmark_tables(n_faces: int, seed: int = 1) -> dict[str, np.ndarray]:
    """DECA-layout embedding: random faces and positive barycentric weights summing to 1."""
    rng = np.random.default_rng(seed)

    def bary(*shape):
        w = rng.uniform(0.05, 1.0, (*shape, 3))
        return w / w.sum(-1, keepdims=True)

    static_faces = rng.integers(0, n_faces, 51)
    static_bary = bary(51)
    full_faces = np.concatenate([rng.integers(0, n_faces, 17), static_faces])[None]
    full_bary = np.concatenate([bary(17), static_bary])[None]
    return {
        "static_lmk_faces_idx": static_faces.astype(np.int64),
        "static_lmk_bary_coords": static_bary,
        "dynamic_lmk_faces_idx": rng.integers(0, n_faces, (79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": bary(79, 17),
        "full_lmk_faces_idx": full_faces.astype(np.int64),
        "full_lmk_bary_coords": full_bary,
    }


@contextmanager
def fake_chumpy():
    """Registers modules ``chumpy`` and ``chumpy.ch`` with a ``Ch`` that pickles like chumpy's, then removes them."""
    chumpy = types.ModuleType("chumpy")
    ch_module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()
            self.label = None

        def __getstate__(self):
            # chumpy drops its weak-reference caches and pickles the rest of __dict__, value under 'x'
            return {"x": self.x, "_dirty_vars": self._dirty_vars, "label": self.label}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch_module.Ch = Ch
    chumpy.ch = ch_module
    chumpy.Ch = Ch
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch_module
    try:
        yield Ch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _atomic_pickle(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)
    tmp.replace(path)


def _atomic_npy(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, np.array(obj, dtype=object), allow_pickle=True)
    tmp.replace(path)


def write_tiny_flame(
    directory: str | Path,
    with_chumpy: bool = True,
    with_embedding: bool | str = True,
    with_masks: bool = True,
    variant: str = "2020",
    seed: int = 0,
) -> Path:
    """Write a tiny FLAME model (and optional companions) into ``directory``; return the model path.

    with_embedding: True / "deca" -> landmark_embedding.npy; "flame" -> flame_static_embedding.pkl +
    flame_dynamic_embedding.npy; "static" -> only flame_static_embedding.pkl; False -> none.
    variant: "2020" (generic_model.pkl), "2023" (flame2023.pkl) or "2023_no_jaw" (flame2023_no_jaw.pkl).
    """
    if variant not in FILE_NAMES:
        raise ValueError(f"variant: expected one of {sorted(FILE_NAMES)}, got {variant!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = flame_arrays(seed)
    path = directory / FILE_NAMES[variant]
    if with_chumpy:
        with fake_chumpy() as Ch:
            for key in ("v_template", "shapedirs", "posedirs", "weights", "J"):
                data[key] = Ch(data[key])
            _atomic_pickle(data, path)
    else:
        _atomic_pickle(data, path)

    tables = landmark_tables(len(data["f"]), seed + 1)
    mode = "deca" if with_embedding is True else with_embedding
    if mode == "deca":
        _atomic_npy(tables, directory / "landmark_embedding.npy")
    elif mode in ("flame", "static"):
        _atomic_pickle(
            {"lmk_face_idx": tables["static_lmk_faces_idx"].astype(np.uint32),
             "lmk_b_coords": tables["static_lmk_bary_coords"]},
            directory / "flame_static_embedding.pkl",
        )
        if mode == "flame":
            dynamic = {"lmk_face_idx": tables["dynamic_lmk_faces_idx"], "lmk_b_coords": tables["dynamic_lmk_bary_coords"]}
            _atomic_npy(dynamic, directory / "flame_dynamic_embedding.npy")
    elif mode is not False:
        raise ValueError(f"with_embedding: expected True, False, 'deca', 'flame' or 'static', got {with_embedding!r}")
    if with_masks:
        _atomic_pickle(grid_masks(), directory / "FLAME_masks.pkl")
    return path


def fixture_tables(seed: int = 0) -> dict[str, np.ndarray]:
    """The landmark tables ``write_tiny_flame(seed=seed)`` writes, for hand-computed expectations."""
    _, faces = grid_mesh()
    return landmark_tables(len(faces), seed + 1)
