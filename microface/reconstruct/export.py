"""Trained DEM + DGMD checkpoints -> one ``microface reconstruct`` bundle (``save_bundle``), with provenance.

``export`` reads a profile config (``data.size``, ``data.flow_method``, ``dem.encoder``, ``dem.model``,
``dgmd.image_size``), the DEM and DGMD training checkpoints (``microface.training.loop`` format) and the DGMD config
(a JSON file, else the one recorded in the checkpoint, else the profile's ``dgmd.model``), rebuilds both models and
loads the checkpoints strictly, so a bundle that would not load is never written. Used by ``tools/export_checkpoint.py``
(the command line) and notebook 07 (the profile's own models).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git_commit(folder: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def _section(config: dict, path: str, config_path: Path):
    value = config
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"{config_path} has no `{path}`; expected a profile config with data.size, "
                             "data.flow_method, dem.encoder and dem.model")
        value = value[key]
    return value


def refine_size_of(config: dict, config_path: Path, image_size: int) -> int:
    """DGMD's crop size from a profile config: ``dgmd.image_size``, or ``image_size`` (data.size) when the key is
    absent or null; checked as notebook 02 checks it (``RefineBenchmarkSettings``), errors naming the config file."""
    from microface.experiments.refine import RefineBenchmarkSettings

    section = config.get("dgmd")
    try:
        size = RefineBenchmarkSettings(image_size=section.get("image_size") if isinstance(section, dict) else None)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    return int(image_size) if size.image_size is None else size.image_size


def _read_train_checkpoint(path: Path, what: str) -> dict:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {path} not found: train it first (snakemake all with the profile's "
                                "config) or pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{what} checkpoint {path} could not be read ({type(err).__name__}); "
                         "is it complete?") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a microface.training.loop checkpoint (no 'model' entry)")
    return state


def dgmd_config_of(dgmd_state: dict, dgmd_config: Path | None, profile_config: dict) -> tuple[dict, str]:
    """The DGMD config dict and where it came from: the JSON file, the checkpoint's record, or the profile."""
    if dgmd_config is not None:
        return json.loads(Path(dgmd_config).read_text()), str(dgmd_config)
    recorded = ((dgmd_state.get("config") or {}).get("extra") or {}).get("dgmd")
    if isinstance(recorded, dict):
        return recorded, "recorded in the DGMD checkpoint"
    section = (profile_config.get("dgmd") or {}).get("model")
    if isinstance(section, dict):
        return section, "the profile's dgmd.model section"
    raise ValueError("no DGMD config: pass --dgmd-config FILE.json (DGMDConfig keys)")


def export(profile: str, dgmd_checkpoint: Path, *, root: Path, config_path: Path | None = None,
           dem_checkpoint: Path | None = None, dgmd_config: Path | None = None, face_model: str = "open",
           flame: Path | None = None, out: Path | None = None, seed: int = 0) -> Path:
    """Build the models, load the checkpoints and write the bundle; returns its path."""
    from microface.models.dgmd import build_dgmd
    from microface.reconstruct.bundle import build_face_model, default_checkpoint_path, save_bundle
    from microface.training.dem import build_dem
    from microface.utils.io import portable_path

    config_path = Path(config_path) if config_path else root / "config" / f"{profile}.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"config {config_path} not found; pass --config or --profile smoke|cpu|full")
    config = yaml.safe_load(config_path.read_text())
    image_size = int(_section(config, "data.size", config_path))
    refine_size = refine_size_of(config, config_path, image_size)
    flow_method = _section(config, "data.flow_method", config_path)
    encoder_cfg = _section(config, "dem.encoder", config_path)
    dem_cfg = _section(config, "dem.model", config_path)
    dem_path = Path(dem_checkpoint) if dem_checkpoint else root / "results" / profile / "dem" / "checkpoints" / "dem.pt"
    dem_state = _read_train_checkpoint(dem_path, "DEM")
    dgmd_state = _read_train_checkpoint(Path(dgmd_checkpoint), "DGMD")
    dgmd_cfg, dgmd_cfg_source = dgmd_config_of(dgmd_state, dgmd_config, config)

    weights = dem_state["model"]
    sizes = {"n_shape": weights["coarse_encoder.shape_head.weight"].shape[0],
             "n_expression": weights["coarse_encoder.expression_head.weight"].shape[0]}
    model = build_face_model(face_model, flame, **sizes)
    dem = build_dem(model, encoder_cfg, dem_cfg, seed)
    dgmd = build_dgmd(model, dgmd_cfg, seed)
    try:
        dem.load_state_dict(weights)
        dgmd.load_state_dict(dgmd_state["model"])
    except RuntimeError as err:
        raise ValueError(f"the checkpoints do not fit the models built from {config_path} and the DGMD config "
                         f"({dgmd_cfg_source}): {str(err).splitlines()[0]}") from None
    # paths as portable_path writes them (relative to the compendium, or ~/...): the bundle ships to other machines
    provenance = {
        "profile": profile,
        "config": {"path": portable_path(config_path, root), "sha256": _sha256(config_path)},
        "dem_checkpoint": {"path": portable_path(dem_path, root), "sha256": _sha256(dem_path),
                           "epoch": dem_state.get("epoch"), "train_config": dem_state.get("config")},
        "dgmd_checkpoint": {"path": portable_path(dgmd_checkpoint, root), "sha256": _sha256(Path(dgmd_checkpoint)),
                            "epoch": dgmd_state.get("epoch"), "train_config": dgmd_state.get("config")},
        "dgmd_config_source": portable_path(dgmd_config, root) if dgmd_config is not None else dgmd_cfg_source,
        "git_commit": _git_commit(root),
        "command": " ".join([Path(sys.argv[0]).name,
                             *(portable_path(arg, root) if Path(arg).is_absolute() else arg for arg in sys.argv[1:])]),
    }
    provenance = json.loads(json.dumps(provenance, default=str))  # training configs may hold non-JSON values
    return save_bundle(out if out is not None else default_checkpoint_path(), face_model_name=face_model,
                       image_size=image_size, flow_method=flow_method, encoder_cfg=encoder_cfg, dem_cfg=dem_cfg,
                       dem_state=dem.state_dict(), dgmd_cfg=dgmd_cfg, dgmd_state=dgmd.state_dict(),
                       provenance=provenance, refine_size=refine_size)
