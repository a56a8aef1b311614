"""Profile configuration: load ``config/<profile>.yaml``, validate it against ``config/schema.yaml``, resolve paths,
and hand the merged config to the notebooks (``results/<profile>/config.yaml``, written by the Snakefile)."""
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
        raise FileNotFoundError(f"config {path} not found: expected a profile YAML such as config/smoke.yaml, "
                                f"cpu.yaml, full.yaml or a copy of one")
    schema = path.parent / "schema.yaml"  # a copy outside config/ is checked against the compendium's schema
    return validate_config(yaml.safe_load(path.read_text()), schema if schema.is_file() else None)


def config_text(config: dict) -> str:
    """``config`` as YAML text, keys in their given order (what papermill's ``-f`` reads back as the same values)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None, width=120)


def write_config(config: dict, path: str | Path) -> bool:
    """Write ``config`` as YAML to ``path`` atomically, only when the text differs from what is there.

    The Snakefile calls this at every parse with the merged config; an unchanged file keeps its modification time,
    so Snakemake reruns nothing, and a changed value (another ``--configfile`` or ``--config key=value``) makes the
    notebooks that read ``path`` newer-input stale.

    Args:
        config: the validated profile config (nested dicts, lists, numbers, strings).
        path: where the notebooks read it, ``results/<profile>/config.yaml``.

    Returns:
        True when the file was (re)written, False when it already held this config.
    """
    path = Path(path)
    text = config_text(config)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    from microface.utils.io import write_text_atomic  # imports torch: only when there is something to write

    write_text_atomic(text, path)
    return True


def _plain(value):
    """Mappings and sequences (Snakemake's config may hold its own subclasses) as plain dicts and lists."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
