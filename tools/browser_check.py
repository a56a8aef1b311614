"""Browser check: JupyterLab and a reconstruction's plotly viewer, opened in headless Chromium and screenshotted.

What it does (CI runs it after ``make test``; ``make browser-check`` runs it alone), in a temporary folder:

1. ``microface reconstruct`` on a 4-frame folder of ``skimage.data.astronaut()`` (a real face, public domain; each
   frame shifted by one more pixel), ``--stage dgmd``: the chain the Binder demo runs, writing ``viewer.html``.
2. JupyterLab from this environment (``python -m jupyterlab``) on a free port of 127.0.0.1 only, with a random
   token, its root the temporary folder (which also holds a copy of ``notebooks/demo.ipynb``).
3. Headless Chromium (Debian package ``chromium``; ``$CHROMIUM`` names another binary) takes three screenshots:
   ``jupyterlab.png`` (``/lab/tree/demo.ipynb``), ``viewer.png`` (``viewer.html`` as JupyterLab serves it,
   ``/files/recon/viewer.html``: plotly draws the mesh with WebGL, on SwiftShader without a GPU) and
   ``demo_viewer.png``: a notebook whose one cell, run on the ``microface`` kernel, shows the viewer the way
   ``notebooks/demo.ipynb`` does (``HTML(viewer_iframe(...))``), trusted as a notebook one has just run is.
4. Checks: the server answers ``/api/status``; the ``microface`` kernel is among its kernelspecs; the JupyterLab
   page's DOM has its shell (``jp-LabShell``) and its screenshot is not blank; the viewer's screenshot has the mesh
   (``mesh_fraction``: dark Inferno pixels in the plot, left of the colour bar) on at least ``MIN_MESH_FRACTION`` of it,
   and so has the notebook's output (JupyterLab's own page has no such pixels).
5. Stops the server (SIGTERM to its process group, then SIGKILL after ``STOP_TIMEOUT_S``) whatever happened.

Every step has a time limit (under 5 minutes in all; SIGTERM still stops the server); the check takes under a minute.
A failure exits 1 with one line that says what failed and what to do. Usage::

    .venv/bin/python tools/browser_check.py                          # screenshots into results/browser_check/
    .venv/bin/python tools/browser_check.py --out DIR                # elsewhere
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# wall-clock limits, seconds: all steps together stay under 5 minutes (CI allows this check 5)
RECONSTRUCT_TIMEOUT_S = 60.0
DEMO_CELL_TIMEOUT_S = 45.0  # the demo display cell on the microface kernel
SERVER_TIMEOUT_S = 45.0   # JupyterLab up and answering
CHROMIUM_TIMEOUT_S = 30.0  # each of the 4 Chromium runs
STOP_TIMEOUT_S = 15.0     # SIGTERM -> exit, else SIGKILL (5 s more)
MIN_MESH_FRACTION = 0.03  # of the viewer's plot area (900 x 700 window, colour bar excluded)
MIN_UI_FRACTION = 0.02    # non-white pixels of the JupyterLab page
MIN_UI_COLOURS = 16       # distinct colours of the JupyterLab page (a blank or error page has a handful)
MESH_DARK = 25            # R, G and B below this: Inferno's near-black end (JupyterLab's text is >= ~33)


class CheckFailed(RuntimeError):
    """A step of the browser check failed; the message says which and what to do."""


def free_port(host: str = HOST) -> int:
    """A TCP port of ``host`` that is free now (the OS picks it). Returns the port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_chromium() -> str:
    """The Chromium binary: ``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH.

    Raises CheckFailed naming the Debian package when none is found."""
    names = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else ["chromium", "chromium-browser",
                                                                          "google-chrome"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise CheckFailed(f"no Chromium found (tried {', '.join(names)}): install it with "
                      "`apt-get update && apt-get install -y chromium`, or set CHROMIUM=/path/to/chrome")


def chromium(binary: str, url: str, *, screenshot: Path | None = None, dump_dom: bool = False,
             size: tuple[int, int] = (1280, 800), budget_ms: int = 15000,
             timeout: float = CHROMIUM_TIMEOUT_S) -> str:
    """Open ``url`` in headless Chromium, let its page run ``budget_ms`` of virtual time, then screenshot or dump it.

    Args:
        binary: the Chromium executable.
        url: the page (only 127.0.0.1 or file:// here).
        screenshot: a PNG path to write, or None.
        dump_dom: return the serialised DOM (stdout) instead of nothing.
        size: window (width, height) in CSS pixels.
        budget_ms: virtual time the page gets before the capture (scripts, WebGL draws).
        timeout: wall-clock limit in seconds.

    Returns:
        the DOM when ``dump_dom``, else "".
    """
    with tempfile.TemporaryDirectory(prefix="browser_check_profile_") as profile:
        command = [binary, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                   "--disable-extensions", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                   f"--virtual-time-budget={int(budget_ms)}"]
        if screenshot is not None:
            command.append(f"--screenshot={screenshot}")
        if dump_dom:
            command.append("--dump-dom")
        try:
            done = subprocess.run(command + [url], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise CheckFailed(f"chromium: no result for {url.split('?')[0]} within {timeout:.0f} s") from error
    if screenshot is not None and not Path(screenshot).is_file():
        raise CheckFailed(f"chromium wrote no screenshot {screenshot} (exit {done.returncode}): "
                          f"{done.stderr.strip()[-400:]}")
    return done.stdout if dump_dom else ""


def read_png(path: Path) -> np.ndarray:
    """A screenshot as (H, W, 3) uint8 RGB. Raises CheckFailed if it cannot be read."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CheckFailed(f"{path}: not a readable PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def mesh_fraction(image: np.ndarray, plot_width: float = 0.8, top: float = 0.1, bottom: float = 0.75) -> float:
    """Fraction of the viewer's plot area covered by the mesh.

    The demo's viewer colours the mesh by DGMD offset on plotly's Inferno scale; a still face's offsets are near 0,
    i.e. Inferno's near-black end. Nothing else in the plot area is that dark: the scene background is
    (229, 236, 246), grid lines white, axis text (42, 63, 95). The colour bar (right of ``plot_width``), the title
    (above ``top``) and the slider (below ``bottom``) are left out.

    Args:
        image: (H, W, 3) uint8 RGB screenshot of viewer.html.
        plot_width, top, bottom: the plot area as fractions of the width and height.

    Returns:
        fraction in [0, 1] of the plot area whose pixels are all below ``MESH_DARK`` in R, G and B.
    """
    h, w, _ = image.shape
    plot = image[int(top * h):int(bottom * h), :int(plot_width * w)]
    return float((plot.max(axis=-1) < MESH_DARK).mean())


def ui_stats(image: np.ndarray) -> tuple[float, int]:
    """(fraction of non-white pixels, number of distinct colours) of a page screenshot: a blank page has ~0 and a
    handful. image (H, W, 3) uint8 RGB."""
    non_white = float((image.min(axis=-1) < 245).mean())
    colours = int(np.unique(image.reshape(-1, 3), axis=0).shape[0])
    return non_white, colours


def write_frames(folder: Path, n_frames: int = 4) -> Path:
    """``n_frames`` PNGs img1.png ... of skimage's astronaut, frame i shifted right by i pixels. Returns the folder."""
    import cv2
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    image = data.astronaut()
    for i in range(n_frames):
        cv2.imwrite(str(folder / f"img{i + 1}.png"), cv2.cvtColor(np.roll(image, i, axis=1), cv2.COLOR_RGB2BGR))
    return folder


def reconstruct(frames: Path, out: Path) -> Path:
    """``microface reconstruct FRAMES --out OUT --stage dgmd --window 4`` (this Python's package). Returns
    viewer.html; raises CheckFailed with the command's last output if it fails."""
    command = [sys.executable, "-m", "microface.cli", "reconstruct", str(frames), "--out", str(out), "--stage", "dgmd",
               "--window", "4"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RECONSTRUCT_TIMEOUT_S,
                              env={**os.environ, "MICROFACE_NO_PROGRESS": "1"})
    except subprocess.TimeoutExpired as error:
        raise CheckFailed(f"microface reconstruct took over {RECONSTRUCT_TIMEOUT_S:.0f} s") from error
    viewer = out / "viewer.html"
    if done.returncode != 0 or not viewer.is_file():
        output = (done.stdout + done.stderr).strip()[-600:]
        raise CheckFailed(f"microface reconstruct failed (exit {done.returncode}; is the landmarker bundle built? "
                          f"`python tools/build_face_landmarker_task.py`): {output}")
    return viewer


def get_json(url: str, timeout: float = 5.0) -> dict:
    """GET ``url`` and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
        return json.loads(response.read().decode())


def demo_notebook(work: Path, viewer: Path, data_dir: Path) -> Path:
    """Run a one-cell notebook that shows ``viewer`` as notebooks/demo.ipynb does, on the ``microface`` kernel, and
    sign it in ``data_dir`` (trusted, as the outputs of a notebook one has just run are: JupyterLab renders trusted
    HTML as is and sanitises untrusted HTML). Returns ``work/demo_viewer.ipynb``."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.sign import NotebookNotary

    source = (f"from IPython.display import HTML\nfrom microface.reconstruct.demo import viewer_iframe\n\n"
              f"HTML(viewer_iframe({str(viewer.relative_to(work))!r}))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {"name": "microface", "display_name": "microface", "language": "python"}
    try:
        NotebookClient(notebook, kernel_name="microface", timeout=DEMO_CELL_TIMEOUT_S, startup_timeout=30,
                       resources={"metadata": {"path": str(work)}}).execute()
    except Exception as error:  # nbclient raises its own errors (no kernel, cell error, timeout)
        raise CheckFailed(f"the demo display cell failed on the microface kernel: {str(error)[-600:]}") from error
    path = work / "demo_viewer.ipynb"
    nbformat.write(notebook, path)
    NotebookNotary(data_dir=str(data_dir)).sign(notebook)
    return path


def start_lab(root_dir: Path, port: int, token: str, log: Path, data_dir: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:``port`` with ``token``, no browser, serving ``root_dir``; its own process group.

    ``data_dir``: its JUPYTER_DATA_DIR (the notebook signatures of ``demo_notebook``; kernels and extensions of this
    environment are found under sys.prefix whatever it is), workspaces and user settings. Returns the process;
    waits until ``/api/status`` answers (at most ``SERVER_TIMEOUT_S``), else stops it and raises CheckFailed with
    the end of its log."""
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={HOST}",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root_dir}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate", f"--LabApp.workspaces_dir={data_dir / 'workspaces'}",
               f"--LabApp.user_settings_dir={data_dir / 'settings'}"]  # nothing written to the user's ~/.jupyter
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=root_dir,
                                  start_new_session=True, env={**os.environ, "JUPYTER_DATA_DIR": str(data_dir)})
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                break
            try:
                get_json(f"http://{HOST}:{port}/api/status?token={token}")
                return server
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(0.5)
    except BaseException:  # SIGTERM (SystemExit) or Ctrl-C while waiting: no server left behind
        stop_lab(server)
        raise
    stop_lab(server)
    raise CheckFailed(f"JupyterLab did not answer on {HOST}:{port} within {SERVER_TIMEOUT_S:.0f} s (exit "
                      f"{server.returncode}; is jupyterlab installed? `make setup`): {log.read_text()[-600:]}")


def stop_lab(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (kernels included), SIGKILL after ``STOP_TIMEOUT_S``."""
    if server.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM handler: raise SystemExit(143), so that a CI timeout still runs ``check``'s ``finally`` (the server
    is stopped)."""
    print("browser check FAILED: stopped by SIGTERM (a time limit?); stopping JupyterLab", file=sys.stderr)
    sys.exit(143)


def check(out: Path, work: Path) -> list[str]:
    """The whole browser check (see the module doc); screenshots into ``out``, scratch in ``work``. Returns the
    lines of its report; raises CheckFailed at the first failure."""
    started = time.monotonic()
    binary = find_chromium()
    out.mkdir(parents=True, exist_ok=True)
    viewer = reconstruct(write_frames(work / "frames"), work / "recon")
    shutil.copy(ROOT / "notebooks" / "demo.ipynb", work / "demo.ipynb")
    data_dir = work / ".jupyter_data"
    data_dir.mkdir()
    demo = demo_notebook(work, viewer, data_dir)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # again: nbclient resets SIGTERM to its default (exit at once)
    lines = [f"reconstruct: {viewer.stat().st_size / 1e6:.1f} MB viewer.html; {demo.name} run and signed"]

    port, token = free_port(), secrets.token_hex(16)
    server = start_lab(work, port, token, out / "jupyterlab.log", data_dir)
    try:
        base = f"http://{HOST}:{port}"
        specs = get_json(f"{base}/api/kernelspecs?token={token}")["kernelspecs"]
        if "microface" not in specs:
            raise CheckFailed(f"JupyterLab does not see the microface kernel (it has {sorted(specs)}): register it "
                              "with `python -m ipykernel install --sys-prefix --name microface` in this environment")
        lines.append(f"jupyterlab: up on {HOST}:{port}, kernels {sorted(specs)}")

        dom = chromium(binary, f"{base}/lab/tree/demo.ipynb?token={token}", dump_dom=True, budget_ms=20000)
        if "jp-LabShell" not in dom:
            raise CheckFailed(f"JupyterLab's page has no jp-LabShell: its UI did not load (DOM starts {dom[:300]!r})")
        chromium(binary, f"{base}/lab/tree/demo.ipynb?token={token}", screenshot=out / "jupyterlab.png",
                 budget_ms=20000)
        non_white, colours = ui_stats(read_png(out / "jupyterlab.png"))
        if non_white < MIN_UI_FRACTION or colours < MIN_UI_COLOURS:
            raise CheckFailed(f"{out / 'jupyterlab.png'} looks blank: {non_white:.1%} non-white, {colours} colours "
                              f"(expected >= {MIN_UI_FRACTION:.0%} and >= {MIN_UI_COLOURS})")
        lines.append(f"jupyterlab.png: jp-LabShell in the DOM, {non_white:.1%} non-white, {colours} colours")

        chromium(binary, f"{base}/files/recon/viewer.html?token={token}", screenshot=out / "viewer.png",
                 size=(900, 700), budget_ms=10000)
        fraction = mesh_fraction(read_png(out / "viewer.png"))
        if fraction < MIN_MESH_FRACTION:
            raise CheckFailed(f"{out / 'viewer.png'}: the mesh covers {fraction:.1%} of the plot (expected >= "
                              f"{MIN_MESH_FRACTION:.0%}): plotly drew no mesh (WebGL unavailable?)")
        lines.append(f"viewer.png: mesh on {fraction:.1%} of the plot area")

        chromium(binary, f"{base}/lab/tree/{demo.name}?token={token}", screenshot=out / "demo_viewer.png",
                 size=(1280, 900), budget_ms=25000)
        fraction = mesh_fraction(read_png(out / "demo_viewer.png"), plot_width=1.0, top=0.0, bottom=1.0)
        if fraction < MIN_MESH_FRACTION:
            raise CheckFailed(f"{out / 'demo_viewer.png'}: the mesh covers {fraction:.1%} of the page (expected >= "
                              f"{MIN_MESH_FRACTION:.0%}): JupyterLab did not show the demo's viewer output")
        lines.append(f"demo_viewer.png: the notebook's viewer output shows the mesh on {fraction:.1%} of the page")
    finally:
        stop_lab(server)
    lines.append(f"server stopped (exit {server.returncode}); {time.monotonic() - started:.0f} s in all")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "browser_check",
                        help="folder for jupyterlab.png, viewer.png, demo_viewer.png and jupyterlab.log")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="browser_check_") as work:
        try:
            lines = check(args.out.resolve(), Path(work))
        except CheckFailed as error:
            print(f"browser check FAILED: {error}", file=sys.stderr)
            return 1
    print("\n".join(["browser check passed:"] + [f"  {line}" for line in lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
