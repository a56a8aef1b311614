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
