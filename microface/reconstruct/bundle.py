"""The reconstruct checkpoint bundle: face model, encoder, DEM and DGMD in one file."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microface.reconstruct.errors import ReconstructionError

BUNDLE_FORMAT = "microface-reconstruct-v1"


FACE_MODELS = ("open", "flame")


CHECKPOINT_HELP = ("train the models with `snakemake all --cores 2 --configfile config/cpu.yaml`, then export them "
                   "with `python tools/export_checkpoint.py --profile cpu --dgmd-checkpoint "
                   "results/cpu/dgmd/checkpoints/dgmd.pt`, or pass --checkpoint PATH")


def default_checkpoint_path() -> Path:
    """The packaged checkpoint: ``microface/assets/checkpoints/open_dem_dgmd.pt`` (may not exist yet)."""
    return Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "open_dem_dgmd.pt"


def _plain(value: Any) -> Any:
    """Configs as plain dicts / lists (dataclasses and tuples unrolled) so the bundle loads with weights_only."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cpu_state(state: dict) -> dict:
    return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _state_size(state: dict, key: str, path: Path | str, axis: int = 0) -> int:
    if key not in state:
        raise ValueError(f"{path}: state dict has no {key!r}; is it a DEM (resp. DGMD) state dict?")
    return int(state[key].shape[axis])


def save_bundle(path: str | Path, *, face_model_name: str, image_size: int, flow_method: str, encoder_cfg: dict,
                dem_cfg: dict, dem_state: dict, dgmd_cfg: dict, dgmd_state: dict, provenance: dict,
                flow_options: dict | None = None, refine_size: int | None = None) -> Path:
    """Write a reconstruction checkpoint bundle (atomically) and return its path.

    face_model_name: "open" | "flame"; image_size: crop size S DEM was trained on (S x S); refine_size: DGMD's
    own crop size R (its flow, landmarks and rasterization; the profile's ``dgmd.image_size``), None: S; flow_method:
    "dis" | "tvl1" (flow_options: extra ``compute_flow`` keywords, e.g. dis_preset); encoder_cfg / dem_cfg: the
    ``build_dem`` arguments; dem_state: ``DEM.state_dict()``; dgmd_cfg: ``DGMDConfig`` keys; dgmd_state:
    ``DGMD.state_dict()``; provenance: JSON-able dict (what was trained on what, by which command). The face
    model's sizes (n_shape S, n_expression E, n_vertices V) are read off the state dicts and recorded, so a
    mismatched face model is caught at load time.
    """
    from microface import __version__
    from microface.data.flow import FLOW_METHODS
    from microface.utils.io import atomic_torch_save

    if face_model_name not in FACE_MODELS:
        raise ValueError(f"face_model_name: expected one of {FACE_MODELS}, got {face_model_name!r}")
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    refine_size = int(image_size) if refine_size is None else int(refine_size)
    if refine_size < 8:
        raise ValueError(f"refine_size: expected >= 8 pixels (or None: image_size), got {refine_size}")
    if flow_method not in FLOW_METHODS:
        raise ValueError(f"flow_method: expected one of {FLOW_METHODS} (a flow real videos can have), got {flow_method!r}")
    json.dumps(provenance)  # fail now, not when someone reads summary.json
    bundle = {
        "format": BUNDLE_FORMAT,
        "face_model": {
            "name": face_model_name,
            "n_shape": _state_size(dem_state, "coarse_encoder.shape_head.weight", path),
            "n_expression": _state_size(dem_state, "coarse_encoder.expression_head.weight", path),
            "n_vertices": _state_size(dgmd_state, "vertex_region", path),
        },
        "image_size": int(image_size),
        "refine_size": refine_size,
        "flow": {"method": flow_method, "options": _plain(dict(flow_options or {}))},
        "encoder_cfg": _plain(dict(encoder_cfg or {})),
        "dem_cfg": _plain(with_ode_condition(dem_cfg or {})),
        "dgmd_cfg": _plain(dgmd_cfg or {}),
        "dem_state": _cpu_state(dem_state),
        "dgmd_state": _cpu_state(dgmd_state),
        "provenance": _plain(dict(provenance)),
        "created": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "microface": __version__,
                    "torch": str(torch.__version__)},
    }
    path = Path(path)
    atomic_torch_save(bundle, path)
    return path


def read_bundle(path: str | Path) -> dict:
    """Read and check a bundle written by ``save_bundle`` -> its dict (plus "sha256" and "path" of the file).

    An older bundle without "refine_size" gets refine_size = image_size (DGMD then ran at DEM's crop size).
    Missing file -> FileNotFoundError saying how to produce one; anything else unusable -> ReconstructionError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no reconstruction checkpoint at {path}: {CHECKPOINT_HELP}")
    data = path.read_bytes()
    try:
        bundle = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, a pickle with foreign objects, not a torch file at all
        reason = (str(err).strip().splitlines() or [""])[0][:200]  # torch's own messages run to a page
        raise ReconstructionError(f"checkpoint {path} could not be read ({type(err).__name__}: {reason}); "
                                  f"re-export it: {CHECKPOINT_HELP}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
        hint = (" (it looks like a training checkpoint: convert it with tools/export_checkpoint.py)"
                if isinstance(bundle, dict) and "model" in bundle else "")
        raise ReconstructionError(f"checkpoint {path} is not a reconstruction bundle: expected format "
                                  f"{BUNDLE_FORMAT!r}, found {found!r}{hint}")
    missing = sorted({"face_model", "image_size", "flow", "encoder_cfg", "dem_cfg", "dgmd_cfg", "dem_state",
                      "dgmd_state", "provenance"} - set(bundle))
    if missing:
        raise ReconstructionError(f"checkpoint {path} lacks {missing}; re-export it with tools/export_checkpoint.py")
    bundle["refine_size"] = bundle_refine_size(bundle, path)
    bundle["path"] = str(path)
    bundle["sha256"] = hashlib.sha256(data).hexdigest()
    return bundle


def bundle_refine_size(bundle: dict, source: str | Path | None = None) -> int:
    """DGMD's crop size R of a bundle dict: its "refine_size", or its "image_size" when absent or None (bundles
    written before DGMD had its own resolution). A value below 8 -> ReconstructionError naming ``source``."""
    value = bundle.get("refine_size")
    size = bundle["image_size"] if value is None else value
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 8:
        raise ReconstructionError(f"checkpoint {source or bundle.get('path', 'the bundle')} has refine_size "
                                  f"{size!r}, expected an int >= 8 pixels; re-export it with "
                                  "tools/export_checkpoint.py")
    return int(size)


def with_ode_condition(dem_cfg: dict) -> dict:
    """``dem_cfg`` with its ``DEMConfig.ode_condition`` written out (the default when the profile leaves it out), so
    a bundle says which DEM wiring its weights were trained with."""
    from microface.models.dem import DEMConfig

    return {**dem_cfg, "ode_condition": DEMConfig.from_dict(dem_cfg).ode_condition}


def bundle_dem_cfg(bundle: dict, still_field: bool = False) -> dict:
    """The ``build_dem`` config of a bundle's DEM. Bundles without ``ode_condition`` were exported before DEM's
    ODE read the residual fusion (issue 18): their weights are of the "motion" wiring, and load as such.

    still_field: turn ``DEMConfig.still_field`` on (no parameters: a "motion"-wired field then vanishes without
    motion too; "fusion"-wired fields always do)."""
    dem_cfg = {"ode_condition": "motion", **bundle["dem_cfg"]}
    return {**dem_cfg, "still_field": True} if still_field else dem_cfg


def bundle_meta(bundle: dict) -> dict:
    """Everything in a bundle but the weights (JSON-able)."""
    return {k: v for k, v in bundle.items() if k not in ("dem_state", "dgmd_state")}


def models_from_bundle(bundle: dict, face_model,
                       still_field: bool = False) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(DEM, DGMD, meta) from a ``read_bundle`` dict, in eval mode on the face model's device.

    still_field: build DEM with ``DEMConfig.still_field`` on (its ODE field is exactly zero without motion: a still
    clip stays at its onset). It has no parameters, so any bundle loads with it; ``reconstruct`` turns it on.

    meta: ``bundle_meta`` (no weights), with "image_size" (DEM's crop size S) and "refine_size" (DGMD's, R).
    Raises ReconstructionError when the face model does not match the one the bundle was trained for.
    """
    from microface.models.dgmd import build_dgmd
    from microface.training.dem import build_dem

    source = bundle.get("path", "the bundle")
    expected = bundle["face_model"]
    found = {"n_shape": int(face_model.n_shape), "n_expression": int(face_model.n_expression),
             "n_vertices": int(face_model.v_template.shape[0])}
    wrong = {k: (expected[k], v) for k, v in found.items() if int(expected[k]) != v}
    if wrong:
        details = ", ".join(f"{k} {a} in the checkpoint vs {b} in the model" for k, (a, b) in wrong.items())
        raise ReconstructionError(f"checkpoint {source} was trained for a {expected['name']!r} face model of other "
                                  f"sizes ({details}); use the face model it was trained with")
    try:
        dem = build_dem(face_model, bundle["encoder_cfg"], bundle_dem_cfg(bundle, still_field), seed=0)
        dem.load_state_dict(bundle["dem_state"])
        dgmd = build_dgmd(face_model, bundle["dgmd_cfg"], seed=0)
        dgmd.load_state_dict(bundle["dgmd_state"])
    except (RuntimeError, ValueError, TypeError) as err:
        raise ReconstructionError(f"checkpoint {source} does not fit the current model code ({err}); re-export it "
                                  "with tools/export_checkpoint.py from its training checkpoints") from None
    device = face_model.v_template.device
    meta = {**bundle_meta(bundle), "refine_size": bundle_refine_size(bundle, source)}
    return dem.to(device).eval(), dgmd.to(device).eval(), meta


def load_bundle(path: str | Path, face_model) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(DEM, DGMD, meta) from a bundle file for ``face_model`` (see ``read_bundle``, ``models_from_bundle``)."""
    return models_from_bundle(read_bundle(path), face_model)


def build_face_model(name: str, flame_path: str | Path | None = None, n_shape: int | None = None,
                     n_expression: int | None = None):
    """The face model a checkpoint needs: "open" (embedded) or "flame" (``flame_path`` required, sizes as trained)."""
    if name == "open":
        from microface.face.open_model import OpenFaceModel

        return OpenFaceModel()
    if name == "flame":
        if flame_path is None:
            raise ReconstructionError("--face-model flame needs --flame PATH, the FLAME model pickle (registration at "
                                      "flame.is.tue.mpg.de); the embedded open model needs none")
        from microface.face.flame import FlameFaceModel

        sizes = {k: int(v) for k, v in (("n_shape", n_shape), ("n_expression", n_expression)) if v is not None}
        return FlameFaceModel(flame_path, **sizes)
    raise ReconstructionError(f"face model: expected one of {FACE_MODELS}, got {name!r}")


def check_device(device: str) -> torch.device:
    """A torch device that can be used here, or ReconstructionError saying why not (e.g. cuda on a CPU build)."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ReconstructionError(f"device: {device!r} is not a torch device; use cpu, cuda, cuda:1, mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(parsed.type, True):
        raise ReconstructionError(f"device {device!r}: torch {torch.__version__} here has no {parsed.type} device; "
                                  "use --device cpu")
    return parsed
