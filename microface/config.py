"""Profile configuration: load ``config/<profile>.yaml``, validate it against ``config/schema.yaml``, resolve paths."""
from __future__ import annotations

from pathlib import Path

import yaml


def project_root(start: str | Path | None = None) -> Path:
    """The compendium's top folder (the one holding the Snakefile), searched upward from ``start`` or the cwd.

    Notebooks call this so their relative paths work whether papermill runs them from the repository root
    or nbval from ``notebooks/``.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Snakefile").is_file() and (folder / "config").is_dir():
            return folder
    raise FileNotFoundError(f"no microface compendium (a folder with Snakefile and config/) above {here}")


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """A path relative to the compendium root (absolute paths are kept)."""
    path = Path(path)
    return path if path.is_absolute() else (root or project_root()) / path


def validate_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Check a profile config against the JSON schema; raise ValueError naming the offending key."""
    import jsonschema

    schema_path = Path(schema_path) if schema_path else project_root() / "config" / "schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"config key {where}: {err.message}") from err
    return config


def load_config(path: str | Path) -> dict:
    """Read and validate one profile YAML."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found: expected one of config/smoke.yaml, cpu.yaml, full.yaml")
    return validate_config(yaml.safe_load(path.read_text()), path.parent / "schema.yaml")
