"""What the recognisers see: the expression's motion in the prepared clips, at the size they were cut to, against the
motion between frames where the face does not move (notebook 03_mer).

Per labelled clip, over the face (the convex hull of the onset frame's 68 landmarks): the onset -> apex flow
magnitude (the prepared DIS flow, px at the prepared size), the grey-level change apex - onset, and the same two
between the onset and the frames BEFORE it, where the annotation says the face is still neutral: what the flow
estimator and the sensor give without any expression (the floor). A class whose apex motion does not clear that floor
cannot be told apart from the input alone, however the model is built. Uses the annotation (onset, apex), which no
model sees: it is a measurement of the data, not a method.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = ["clip_input_motion", "input_motion_table"]

COLUMNS = ("apex flow, mean px", "apex flow, 99th pct px", "still flow, mean px", "apex grey change",
           "still grey change")


def _face_mask(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W): inside the convex hull of the 68 points (px)."""
    mask = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(np.round(landmarks68).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def clip_input_motion(frames: np.ndarray, flow: np.ndarray, landmarks68: np.ndarray, onset: int, apex: int) -> dict:
    """The motion measures of one prepared clip.

    Args:
        frames: (T, S, S, 3) uint8 RGB crops; flow: (T, S, S, 2) onset -> t px; landmarks68: (T, 68, 2) crop px.
        onset, apex: frame indices (the annotation).

    Returns:
        {name: value} for ``COLUMNS`` (px at the crop size S, grey levels 0-255; the "still" ones NaN when the clip
        starts at its onset).
    """
    if not (0 <= onset < len(frames) and 0 <= apex < len(frames)):
        raise ValueError(f"onset {onset} / apex {apex} outside the clip's {len(frames)} frames")
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    mask = _face_mask(landmarks68[onset], grey.shape[1:])
    magnitude = np.linalg.norm(flow.astype(np.float32), axis=-1)  # (T, S, S)
    apex_flow = magnitude[apex][mask]
    still = list(range(onset))
    return {
        COLUMNS[0]: float(apex_flow.mean()),
        COLUMNS[1]: float(np.percentile(apex_flow, 99)),
        COLUMNS[2]: float(magnitude[still][:, mask].mean()) if still else float("nan"),
        COLUMNS[3]: float(np.abs(grey[apex] - grey[onset])[mask].mean()),
        COLUMNS[4]: float(np.abs(grey[still] - grey[onset])[:, mask].mean()) if still else float("nan"),
    }


def input_motion_table(prepared_dir: str | Path) -> pd.DataFrame:
    """Per class (and "all"), the mean of :func:`clip_input_motion` over the labelled prepared clips.

    Args:
        prepared_dir: notebook 00's ``prepared/`` folder (``manifest.json`` and the clips' ``.npz``).

    Returns:
        DataFrame with columns class, clips, size (px), ``COLUMNS``, and "apex / still flow" (the ratio of the
        means: the expression's motion in units of the motion of a still face).
    """
    prepared_dir = Path(prepared_dir)
    manifest_path = prepared_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: notebook 00_data prepares the clips")
    rows = []
    for key, entry in sorted(json.loads(manifest_path.read_text())["clips"].items()):
        with np.load(prepared_dir / entry["file"], allow_pickle=False) as clip:
            if "flow" not in clip.files:
                raise ValueError(f"{prepared_dir / entry['file']}: no flow (data.flow_method is off)")
            record = json.loads(str(clip["meta"]))["record"]
            if not record.get("label"):
                continue
            measures = clip_input_motion(clip["frames"], clip["flow"], clip["landmarks68"], int(record["onset"]),
                                         int(record["apex"]))
            rows.append({"class": record["label"], "size": clip["frames"].shape[1], **measures})
    if not rows:
        raise ValueError(f"{manifest_path}: no labelled clip")
    per_clip = pd.DataFrame(rows)
    table = per_clip.groupby("class").agg(clips=("size", "size"), size=("size", "first"),
                                          **{c: (c, "mean") for c in COLUMNS}).reset_index()
    overall = {"class": "all", "clips": len(per_clip), "size": int(per_clip["size"].iloc[0]),
               **{c: per_clip[c].mean() for c in COLUMNS}}
    table = pd.concat([table, pd.DataFrame([overall])], ignore_index=True)
    table["apex / still flow"] = table[COLUMNS[0]] / table[COLUMNS[2]]
    return table
