"""Docstrings of the public API of face/, render/, mesh/ and models/ keep one form.

Every public function, class and method (no leading underscore; ``forward`` included) has a
docstring; it has an ``Args:`` section when it takes arguments besides ``self`` / ``cls``, and a
``Returns:`` (or ``Yields:``) section when it returns something. A class documents the arguments
of its own ``__init__`` in its docstring. Properties read as attributes: a one-line docstring is
enough. Shapes are written one way, ``(B, V, 3)``: no ``[B, V, 3]``, no ``B x V x 3``, no
``(B,V,3)``, no ``:math:``.

The checks read the source with ``ast`` (nothing is imported), so they also cover modules whose
optional dependencies are absent.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "microface"
PACKAGES = ("face", "render", "mesh", "models")
FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py"))

# A shape in square brackets, e.g. "[B, V, 3]" (not an index such as "[:, :3]" or "[..., 0]",
# nor an interval such as "[0, 1]": a shape names at least one dimension with a capital letter).
_DIM = r"(?:[A-Z][A-Za-z0-9_']*|\d+|\*)"
SQUARE_SHAPE = re.compile(rf"\[\s*{_DIM}(?:\s*,\s*{_DIM})+\s*\]")
# "B x V x 3", "BxVx3", "H×W" (a kernel size such as "3x3" names no dimension and is fine).
TIMES_SHAPE = re.compile(r"\b(?:[A-Z]|\d+)(?:\s*[x×]\s*(?:[A-Z]|\d+))+\b")


# "(B,V,3)": a shape whose dimensions are not separated by ", ".
_ANY_DIM = r"(?:[A-Za-z][\w'*+/]*|\d+|\*|\.\.\.)"
COMPACT_SHAPE = re.compile(rf"\((?:[A-Z][\w']*|\d+|\*)(?:\s*,\s*{_ANY_DIM})+\)")


def _bad_shapes(doc: str) -> list[str]:
    found = [m.group(0) for p in (SQUARE_SHAPE, TIMES_SHAPE) for m in p.finditer(doc)]
    found += [m.group(0) for m in COMPACT_SHAPE.finditer(doc) if re.search(r",\S", m.group(0))]
    return [f for f in found if re.search(r"[A-Z]", f)]


def _returns_value(fn: ast.FunctionDef) -> bool:
    if fn.returns is not None:
        return not (isinstance(fn.returns, ast.Constant) and fn.returns.value is None)
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _n_args(fn: ast.FunctionDef, method: bool) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def _is_property(fn: ast.FunctionDef) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id in ("property", "cached_property"))
        or (isinstance(d, ast.Attribute) and d.attr in ("setter", "cached_property"))
        for d in fn.decorator_list
    )


def _public_api(tree: ast.Module):
    """Yield (qualified name, node, is_method) for the public functions, classes and methods."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield node.name, node, False
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    yield f"{node.name}.{sub.name}", sub, True


def _sections(doc: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*(\w+):\s*$", doc, flags=re.M)}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path.name
    problems = []
    docs = [("module", ast.get_docstring(tree) or "")]
    if not docs[0][1]:
        problems.append(f"{rel}: no module docstring")
    for name, node, is_method in _public_api(tree):
        doc = ast.get_docstring(node)
        if not doc:
            problems.append(f"{rel}:{node.lineno} {name}: no docstring")
            continue
        docs.append((name, doc))
        sections = _sections(doc)
        if isinstance(node, ast.ClassDef):
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
            )
            if init is not None and _n_args(init, method=True) and "Args" not in sections:
                problems.append(f"{rel}:{node.lineno} {name}: __init__ takes arguments, no 'Args:' section")
            continue
        if _is_property(node):
            continue
        if _n_args(node, method=is_method) and "Args" not in sections:
            problems.append(f"{rel}:{node.lineno} {name}: takes arguments, no 'Args:' section")
        if _returns_value(node) and not sections & {"Returns", "Yields"}:
            problems.append(f"{rel}:{node.lineno} {name}: returns a value, no 'Returns:' section")
    for name, doc in docs:
        for shape in _bad_shapes(doc):
            problems.append(f"{rel} {name}: shape written as {shape!r}; write it as (B, V, 3)")
        if ":math:" in doc:
            problems.append(f"{rel} {name}: ':math:' shape; write plain (B, V, 3)")
    return problems


def test_the_checked_packages_exist():
    assert len(FILES) >= 20, [str(p) for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_public_docstrings_have_one_form(path):
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_checker_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Module."""\n'
        "def no_doc(x):\n    return x\n"
        'def no_args(x) -> int:\n    """Do it.\n\n    Returns:\n        one.\n    """\n    return 1\n'
        'def no_returns(x):\n    """Do it.\n\n    Args:\n        x: input.\n    """\n    return x\n'
        'def square(x) -> None:\n    """Do it, shape [B, V, 3], (B,T,E), in [0, 1], 3x3 kernel.\n\n    Args:\n        x: B x V x 3.\n    """\n'
        "class Net:\n"
        '    """A net."""\n'
        "    def __init__(self, size):\n        self.size = size\n"
        '    def forward(self) -> None:\n        """Run."""\n'
        "    def _private(self, x):\n        return x\n"
    )
    problems = "\n".join(_problems(bad))
    assert "no_doc: no docstring" in problems
    assert "no_args: takes arguments" in problems
    assert "no_returns: returns a value" in problems
    assert "'[B, V, 3]'" in problems and "'B x V x 3'" in problems
    assert "[0, 1]" not in problems and "3x3" not in problems
    assert "'(B,T,E)'" in problems
    assert "Net: __init__ takes arguments" in problems
    assert "forward" not in problems and "_private" not in problems
    good = tmp_path / "good.py"
    good.write_text(
        '"""Module."""\n'
        'def f(x, y=1) -> int:\n    """Add.\n\n    Args:\n        x: points, shape (B, V, 3).\n'
        '        y: offset.\n\n    Returns:\n        the sum, index x[:, :3] and x[..., 0] are fine.\n    """\n'
        "    return x + y\n"
    )
    assert _problems(good) == []


DOCTEST_MODULES = sorted(
    ".".join(p.relative_to(ROOT.parent).with_suffix("").parts) for p in FILES if ">>>" in p.read_text()
)


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_docstring_examples_run(module_name):
    """The ``>>>`` examples are true (a docstring example that drifts from the code misleads)."""
    import doctest
    import importlib

    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{module_name}: {result.failed} of {result.attempted} examples failed"
