"""Paper-style figures: a qualitative sequence grid, AU displacement curves, and a metric bar chart (matplotlib).

Every function returns a matplotlib Figure; save it with :func:`save_figure` (re-exported from
:mod:`microface.viz.data`: PNG and PDF, each written to a temporary file and renamed). No backend is forced:
a notebook kernel shows the figures inline, and a headless run falls back to Agg.
Meshes are drawn as :mod:`microface.viz.mesh` draws them: frontal, +x (subject's left) to the
right, +y up, triangles painted back to front by depth (+z toward the viewer).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.tri import Triangulation

from microface.utils.checks import check_mesh_arrays
from microface.viz.save import save_figure  # noqa: F401  (re-exported)

ROW_TITLES = ("input", "coarse", "refined", "error (mm)")
BEST_COLOUR, OTHER_COLOUR = "tab:orange", "0.65"


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------ key frames
def key_frames(onset: int, apex: int, offset: int, columns: int = 5) -> tuple[list[int], list[str]]:
    """Frame indices for a qualitative figure: onset ... apex ... offset, evenly spaced on each side of the apex.

    onset <= apex <= offset (frame indices), columns >= 3 -> (indices (<= columns,), labels), e.g.
    ``key_frames(0, 6, 10)`` -> ([0, 3, 6, 8, 10], ["onset (0)", "3", "apex (6)", "8", "offset (10)"]).
    Half of the in-between columns go before the apex (the extra one when odd, as onsets are the slower
    phase of a micro-expression). Short clips give fewer columns: repeated indices are dropped.
    """
    onset, apex, offset = int(onset), int(apex), int(offset)
    if not 0 <= onset <= apex <= offset:
        raise ValueError(f"onset, apex, offset: expected 0 <= onset <= apex <= offset, got {onset}, {apex}, {offset}")
    if columns < 3:
        raise ValueError(f"columns: expected >= 3 (onset, apex, offset), got {columns}")
    between = columns - 3
    before, after = between - between // 2, between // 2
    rising = np.rint(np.linspace(onset, apex, before + 2)).astype(int)
    falling = np.rint(np.linspace(apex, offset, after + 2)).astype(int)[1:]
    indices = list(dict.fromkeys(int(i) for i in np.concatenate([rising, falling])))  # ordered, unique
    named = {onset: f"onset ({onset})", offset: f"offset ({offset})"}
    named[apex] = f"apex ({apex})"  # the apex names a frame it shares with the onset or offset
    return indices, [named.get(i, str(i)) for i in indices]


# ------------------------------------------------------------------------------------------------ qualitative grid
def _check_frames(images, name: str, count: int | None) -> np.ndarray:
    images = _as_numpy(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        hint = " (channels first? use .permute(0, 2, 3, 1))" if images.ndim == 4 and images.shape[1] == 3 else ""
        raise ValueError(f"{name}: expected (T, H, W, 3) colour or (T, H, W) grey frames, got {images.shape}{hint}")
    if count is not None and images.shape[0] != count:
        raise ValueError(f"{name}: expected {count} frames like frames, got {images.shape[0]}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float in [0, 1], got dtype {images.dtype}")
    return np.clip(images, 0.0, 1.0)


def _check_error_maps(error_maps, count: int) -> list:
    """-> list of T items, each an (H, W) float array or a (vertices (V,3), faces (F,3), values (V,)) triple."""
    if isinstance(error_maps, (list, tuple)):
        if len(error_maps) != count:
            raise ValueError(f"error_maps: expected {count} maps (one per frame), got {len(error_maps)}")
        checked = []
        for t, item in enumerate(error_maps):
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ValueError(f"error_maps[{t}]: expected (vertices (V, 3), faces (F, 3), error (V,)), got {type(item)}")
            vertices, faces, values = (_as_numpy(x) for x in item)
            vertices, faces, values = vertices.astype(float), faces.astype(int), values.astype(float)
            check_mesh_arrays(vertices, faces, values, f"error_maps[{t}]", values_name="error",
                              check_indices=True)
            checked.append((vertices, faces, values))
        return checked
    maps = _as_numpy(error_maps).astype(float)
    if maps.ndim != 3 or maps.shape[0] != count:
        raise ValueError(f"error_maps: expected ({count}, H, W) per-pixel errors in mm or a list of {count} "
                         f"(vertices, faces, error) triples, got an array of shape {maps.shape}")
    return list(maps)


def _draw_vertex_map(axis, vertices: np.ndarray, faces: np.ndarray, values: np.ndarray, cmap, norm):
    """Frontal tripcolor of a mesh coloured per vertex, triangles back to front (tripcolor paints in order)."""
    order = np.argsort(vertices[faces, 2].mean(axis=1))
    triangulation = Triangulation(vertices[:, 0], vertices[:, 1], faces[order])
    mesh = axis.tripcolor(triangulation, values, shading="gouraud", cmap=cmap, norm=norm)
    axis.set_aspect("equal")
    return mesh


def _bare(axis) -> None:
    # keep the axis (not axis("off")) so the row title, an ylabel, stays visible
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


def qualitative_sequence_figure(frames, coarse_renders, refined_renders, error_maps,
                                frame_labels: Sequence[str] | None = None, title: str = "",
                                vmax: float | None = None, row_titles: Sequence[str] = ROW_TITLES,
                                cmap: str = "inferno", panel_size: float = 1.6):
    """Grid of a reconstructed clip: rows input / coarse / refined / error map, one column per chosen frame.

    frames (T, H, W, 3) or (T, H, W), uint8 or float in [0, 1] (tensors or arrays); coarse_renders and
    refined_renders (T, h, w, 3) likewise (sizes may differ between rows, T may not); error_maps either an
    array (T, H', W') of per-pixel errors in mm (NaN where nothing is covered: left blank) or a list of T
    triples (vertices (V, 3) mm, faces (F, 3), per-vertex error (V,) mm) drawn as frontal meshes;
    frame_labels: T column titles (e.g. from :func:`key_frames`), default "frame t".
    The error row shares one colour scale, 0 to ``vmax`` (default: the largest finite error), with one colour
    bar in mm. -> Figure with 4 T panels + 1 colour bar axis.
    """
    frames = _check_frames(frames, "frames", None)
    count = frames.shape[0]
    if count == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    rows = [frames, _check_frames(coarse_renders, "coarse_renders", count),
            _check_frames(refined_renders, "refined_renders", count)]
    maps = _check_error_maps(error_maps, count)
    if frame_labels is None:
        frame_labels = [f"frame {t}" for t in range(count)]
    if len(frame_labels) != count:
        raise ValueError(f"frame_labels: expected {count} labels, got {len(frame_labels)}")
    if len(row_titles) != 4:
        raise ValueError(f"row_titles: expected 4 (input, coarse, refined, error), got {len(row_titles)}")

    errors = np.concatenate([(m[2] if isinstance(m, tuple) else m).ravel() for m in maps])
    top = float(vmax) if vmax is not None else float(np.nanmax(errors)) if np.isfinite(errors).any() else 1.0
    norm = Normalize(vmin=0.0, vmax=max(top, 1e-9))

    figure, axes = plt.subplots(4, count, figsize=(panel_size * count + 0.9, panel_size * 4.2),
                                squeeze=False, layout="constrained")
    for row, images in enumerate(rows):
        for t in range(count):
            axes[row, t].imshow(images[t], cmap="gray" if images.ndim == 3 else None, vmin=0,
                                vmax=255 if images.dtype == np.uint8 else 1)
    for t, item in enumerate(maps):
        if isinstance(item, tuple):
            _draw_vertex_map(axes[3, t], *item, cmap=cmap, norm=norm)
        else:
            axes[3, t].imshow(item, cmap=cmap, norm=norm)
    for axis in axes.ravel():
        _bare(axis)
    for t, label in enumerate(frame_labels):
        axes[0, t].set_title(str(label), fontsize=8)
    for row, name in enumerate(row_titles):
        axes[row, 0].set_ylabel(name, fontsize=9)
    colour_bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[3]), fraction=0.05, pad=0.02)
    colour_bar.set_label("error (mm)", fontsize=8)
    colour_bar.ax.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# ------------------------------------------------------------------------------------------------ AU curves
def au_displacement_figure(times, predicted: Mapping[str, object], truth=None, title: str = "",
                           onset: float | None = None, apex: float | None = None, offset: float | None = None,
                           xlabel: str = "time (s)", ylabel: str = "AU displacement (mm)", ax=None):
    """Displacement of one action unit over a clip, each method against the ground truth.

    times (T,); predicted {method: (T,) mm}; truth (T,) mm or None (real data has no 3D ground truth);
    onset / apex / offset: times (same unit as ``times``), each optional, marked by dashed vertical lines and
    named on a secondary x axis at the top;
    ax: draw into this axis (for a grid of AUs) instead of a new figure. -> Figure (ground truth as a thick
    black line, one coloured line per method, a legend).
    """
    times = _as_numpy(times).astype(float)
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"times: expected (T,) with T >= 2, got {times.shape}")
    if not predicted:
        raise ValueError("predicted: expected at least one method -> (T,) curve, got none")
    curves = {}
    for method, values in predicted.items():
        values = _as_numpy(values).astype(float)
        if values.shape != times.shape:
            raise ValueError(f"predicted[{method!r}]: expected {times.shape} like times, got {values.shape}")
        curves[str(method)] = values
    if truth is not None:
        truth = _as_numpy(truth).astype(float)
        if truth.shape != times.shape:
            raise ValueError(f"truth: expected {times.shape} like times, got {truth.shape}")

    if ax is None:
        figure, ax = plt.subplots(figsize=(5.0, 3.0), layout="constrained")
    else:
        figure = ax.figure
    if truth is not None:
        ax.plot(times, truth, color="black", linewidth=2.2, label="ground truth", zorder=3)
    colours = plt.get_cmap("tab10")
    for k, (method, values) in enumerate(curves.items()):
        ax.plot(times, values, color=colours(k % 10), linewidth=1.4, label=method)
    phases = {name: float(when) for name, when in (("onset", onset), ("apex", apex), ("offset", offset))
              if when is not None}
    for when in phases.values():
        ax.axvline(when, color="0.5", linestyle="--", linewidth=0.8)
    if phases:  # named on a top axis, where they cannot collide with the curves or the legend
        top = ax.secondary_xaxis("top")
        top.set_xticks(list(phases.values()), list(phases), fontsize=7, color="0.35")
        top.tick_params(length=0, pad=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(times.min(), times.max())
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return figure


# ------------------------------------------------------------------------------------------------ bar chart
def table_bar_figure(table, metric: str, method_column: str = "method", error_column: str | None = None,
                     lower_is_better: bool = True, unit: str | None = None, title: str = "", ax=None):
    """Bar chart of one metric across methods, the best bar highlighted.

    table: pandas DataFrame with one row per method; metric: the column to plot; error_column: a column of
    error-bar half-widths (e.g. a std over folds or seeds), NaN for none; unit: appended to the axis label
    as "metric (unit)" (leave None if the column name carries it); lower_is_better picks the best bar
    (min or max over the finite values) and is stated on the axis (down / up arrow). Each bar carries its
    value. ax: draw into this axis. -> Figure.
    """
    for argument, column in (("metric", metric), ("method_column", method_column), ("error_column", error_column)):
        if column is not None and column not in table.columns:
            raise ValueError(f"{argument}: column {column!r} is not in the table; its columns are {list(table.columns)}")
    if len(table) == 0:
        raise ValueError("table: expected at least one row (one per method), got an empty table")
    methods = [str(m) for m in table[method_column]]
    if len(set(methods)) != len(methods):
        repeated = sorted({m for m in methods if methods.count(m) > 1})
        raise ValueError(f"table: expected one row per {method_column!r}, found repeats {repeated}; "
                         "aggregate first (e.g. table.groupby(method_column).mean())")
    values = np.asarray(table[metric], dtype=float)
    if not np.isfinite(values).any():
        raise ValueError(f"metric: column {metric!r} has no finite value")
    errors = np.asarray(table[error_column], dtype=float) if error_column is not None else None
    finite = np.where(np.isfinite(values), values, np.inf if lower_is_better else -np.inf)
    best = int(np.argmin(finite) if lower_is_better else np.argmax(finite))

    longest = max(len(m) for m in methods)
    tilted = len(methods) > 6 or longest > 8
    if ax is None:
        width = max(3.0, len(methods) * (0.55 if tilted else max(0.7, 0.085 * longest)) + 1.2)
        figure, ax = plt.subplots(figsize=(width, 3.0), layout="constrained")
    else:
        figure = ax.figure
    colours = [BEST_COLOUR if k == best else OTHER_COLOUR for k in range(len(methods))]
    positions = np.arange(len(methods))
    ax.bar(positions, np.nan_to_num(values, nan=0.0), color=colours, edgecolor="black", linewidth=0.6,
           yerr=errors, capsize=3 if errors is not None else 0, error_kw=dict(elinewidth=0.8, ecolor="black"))
    for position, value, error in zip(positions, values, errors if errors is not None else np.zeros_like(values)):
        if np.isfinite(value):  # the value above its error bar, where the two cannot overlap
            top = value + (error if np.isfinite(error) and value >= 0 else 0.0)
            ax.annotate(f"{value:.3g}", (position, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(positions, methods, rotation=30 if tilted else 0, ha="right" if tilted else "center")
    ax.get_xticklabels()[best].set_fontweight("bold")
    arrow = "\u2193 lower is better" if lower_is_better else "\u2191 higher is better"
    ax.set_ylabel(f"{metric} ({unit})\n{arrow}" if unit else f"{metric}\n{arrow}", fontsize=9)
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return figure
