"""Rewrite each notebook's ``parameters`` cell so its config sections hold the smoke profile's values.

The cell's defaults are what nbval and a plain "Run all" use, and they must match ``config/smoke.yaml`` (what
papermill injects in the chain); tests/test_compendium.py checks it. Usage: ``python tools/sync_notebook_parameters.py``
(every notebook under notebooks/), or pass notebook paths. Non-config parameters (results_dir, ...) are kept.
"""
from __future__ import annotations

import ast
import json
import pprint
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def synced_source(source: str, config: dict) -> str:
    """The parameters cell with every ``name = value`` whose name is a key of ``config`` and whose value differs
    from it rewritten to the config's value; every other line (comments, other parameters) is kept as it is."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in reversed(tree.body):  # bottom-up, so earlier line numbers stay valid
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"parameters cell: expected only `name = value` lines, found {ast.dump(node)[:80]}")
        name = node.targets[0].id
        if name not in config or ast.literal_eval(node.value) == config[name]:
            continue
        value = config[name]
        text = pprint.pformat(value, width=110, sort_dicts=False) if isinstance(value, (dict, list)) else json.dumps(value)
        lines[node.lineno - 1: node.end_lineno] = f"{name} = {text}".splitlines()
    return "\n".join(lines)


def sync(path: Path, config: dict) -> bool:
    """Rewrite ``path``'s parameters cell in place (atomically); -> whether it changed."""
    from microface.utils.io import write_text_atomic

    notebook = json.loads(path.read_text())
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged `parameters`, found {len(cells)}")
    cell = cells[0]
    old = "".join(cell["source"])
    new = synced_source(old, config)
    if new == old:
        return False
    cell["source"] = new.splitlines(keepends=True)
    write_text_atomic(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", path)
    return True


def main(argv: list[str]) -> int:
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{path}: {'updated' if sync(path, config) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
