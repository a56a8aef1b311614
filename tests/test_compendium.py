"""The compendium's own contracts: configs validate, every config key is read, notebooks are clean and chained."""
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from microface.cli import app
from microface.config import load_config, project_root, validate_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "cpu", "full")


def leaf_keys(mapping, prefix=()):
    for key, value in mapping.items():
        if isinstance(value, dict) and key not in ("weights", "encoder", "model", "param_weights"):
            yield from leaf_keys(value, prefix + (key,))
        else:
            yield prefix + (key,)


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate_and_are_keyed_by_name(profile):
    config = load_config(ROOT / "config" / f"{profile}.yaml")
    assert config["profile"] == profile


def test_schema_rejects_unknown_and_bad_keys():
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    with pytest.raises(ValueError, match="config key data/flow_method"):
        validate_config({**config, "data": {**config["data"], "flow_method": "raft"}}, ROOT / "config" / "schema.yaml")
    with pytest.raises(ValueError, match="unexpected|Additional properties"):
        validate_config({**config, "epochs": 3}, ROOT / "config" / "schema.yaml")


def test_every_config_key_is_read_somewhere():
    sources = "\n".join(p.read_text() for p in (ROOT / "microface").rglob("*.py"))
    sources += "\n".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    sources += (ROOT / "Snakefile").read_text()
    for profile in PROFILES:
        config = yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text())
        for path in leaf_keys(config):
            name = path[-1]
            assert re.search(rf"[\"'\[]{re.escape(name)}[\"'\]]|\b{re.escape(name)}\b\s*[=:]|\.{re.escape(name)}\b",
                             sources), f"config key {'.'.join(path)} ({profile}) is read nowhere"


def notebooks():
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_notebook_has_parameters_cell_and_no_outputs(path):
    notebook = json.loads(path.read_text())
    tagged = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert not any(c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    assert notebook["metadata"]["kernelspec"]["name"] == "microface"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_parameters_cell_holds_the_smoke_profile(path):
    """What nbval and "Run all" use is what papermill injects in the smoke chain (tools/sync_notebook_parameters.py
    rewrites the cells after a config change)."""
    import ast

    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    notebook = json.loads(path.read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body}
    stale = sorted(name for name, value in values.items() if name in config and value != config[name])
    assert not stale, f"{path.name}: parameters {stale} differ from config/smoke.yaml; run tools/sync_notebook_parameters.py"


def test_every_numbered_notebook_has_a_papermill_rule():
    snakefile = (ROOT / "Snakefile").read_text()
    for path in notebooks():
        assert f'notebook="notebooks/{path.name}"' in snakefile, f"{path.name} has no Snakemake rule"
    assert snakefile.count("{params.papermill}") == len(notebooks())


def test_project_root_found_from_notebooks_folder():
    assert project_root(ROOT / "notebooks") == ROOT


def test_cli_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "index", "prepare"):
        assert command in result.output


@pytest.mark.parametrize("path", [*notebooks(), ROOT / "notebooks" / "demo.ipynb"], ids=lambda p: p.name)
def test_every_notebook_cell_has_a_unique_id(path):
    """nbformat 4.5 cells carry ids (nbformat warns today and will refuse later): one per cell, none repeated."""
    import nbformat

    notebook = json.loads(path.read_text())
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), path.name
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
