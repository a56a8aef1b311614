"""Parametric face models behind one interface: the embedded open model (default) and user-supplied FLAME."""
from microface.face.model import FaceModel, FaceOutput
from microface.mesh.geometry import axis_angle_to_matrix, vertex_normals

__all__ = ["FaceModel", "FaceOutput", "axis_angle_to_matrix", "vertex_normals", "load_face_model"]


def load_face_model(name: str = "open", path: str | None = None) -> FaceModel:
    """Build a face model by name.

    Args:
        name: ``open`` (embedded default) or ``flame`` (needs ``path``).
        path: for ``flame``, the path to ``generic_model.pkl`` or ``flame2023.pkl``.

    Returns:
        the FaceModel.

    Raises:
        ValueError: an unknown name, or ``flame`` without a path.

    Example:
        >>> load_face_model("open").n_vertices
        468
    """
    if name == "open":
        from microface.face.open_model import OpenFaceModel

        return OpenFaceModel()
    if name == "flame":
        from microface.face.flame import FlameFaceModel

        if path is None:
            raise ValueError("face model 'flame' needs the path to generic_model.pkl or flame2023.pkl")
        return FlameFaceModel(path)
    raise ValueError(f"unknown face model {name!r}: expected 'open' or 'flame'")
