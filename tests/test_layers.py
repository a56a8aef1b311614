"""The package's layers import only downward, so the tree tells a reader where each concept lives.

Every ``from microface.X import ...`` (at module level or inside a function) must name a layer at or below the
importing module's own; a module may import its own layer's siblings.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import microface

# lowest first; a module may import from its own layer and any layer before it
LAYERS = (
    ("utils", "config"),
    ("mesh",),
    ("face",),
    ("render",),
    ("fit",),
    ("data",),
    ("losses",),
    ("metrics",),
    ("models",),
    ("training",),
    ("viz",),
    ("experiments",),
    ("reconstruct",),
    ("cli",),
)
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(microface.__file__).parent


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "microface" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "microface":  # `from microface import x`: x is the subpackage
                found += [(node.lineno, f"microface.{alias.name}") for alias in node.names if alias.name != "__version__"]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, module) for line, module in found if _top(module)]


def _module_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name not in ("__init__.py",))


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    unknown = (packages | modules) - set(LAYER_OF)
    assert not unknown, f"give these a layer in LAYERS: {sorted(unknown)}"


@pytest.mark.parametrize("path", _module_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_downward(path: Path):
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    upward = [f"line {line}: {module}" for line, module in _imports(path)
              if LAYER_OF[_top(module)] > LAYER_OF[own]]
    assert not upward, f"{rel} ({own}) imports from a higher layer: {upward}"


def test_losses_never_import_models():
    for path in (PACKAGE / "losses").glob("*.py"):
        assert not [m for _, m in _imports(path) if _top(m) == "models"], path


def test_every_module_imports():
    """Plain imports of the package's own modules: a broken import fails here, never shows as a skip."""
    for info in pkgutil.walk_packages(microface.__path__, "microface."):
        importlib.import_module(info.name)
