"""Paper figures: qualitative sequence grid, AU displacement curves, metric bar chart."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer

from microface.viz.paper import (BEST_COLOUR, OTHER_COLOUR, _draw_vertex_map, au_displacement_figure, key_frames,
                                 qualitative_sequence_figure, save_figure, table_bar_figure)
import matplotlib.pyplot as plt  # noqa: E402  (after microface.viz.paper, which selects Agg)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _assert_saved(figure, path):
    written = save_figure(figure, path)
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_bytes()[:5] == b"%PDF-"
    assert not list(path.parent.glob("*.tmp.*"))  # temporaries renamed away


def _grid_mesh(n: int = 6, bump: float = 5.0):
    """(V, 3) mm, (F, 3): an n x n grid over [-30, 30]^2 mm, raised toward the viewer in the middle."""
    x, y = np.meshgrid(np.linspace(-30, 30, n), np.linspace(-30, 30, n))
    vertices = np.stack([x.ravel(), y.ravel(), bump * np.exp(-(x.ravel() ** 2 + y.ravel() ** 2) / 400)], -1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            v = r * n + c
            faces += [[v, v + 1, v + n], [v + 1, v + n + 1, v + n]]
    return vertices, np.array(faces)


# ---------------------------------------------------------------------------------------------- key frames
def test_key_frames_span_onset_apex_offset():
    indices, labels = key_frames(0, 6, 10, columns=5)
    assert indices == [0, 3, 6, 8, 10]
    assert labels == ["onset (0)", "3", "apex (6)", "8", "offset (10)"]
    assert key_frames(4, 9, 20, columns=3)[0] == [4, 9, 20]
    six, _ = key_frames(0, 10, 20, columns=6)  # the extra in-between column goes before the apex
    assert len(six) == 6 and sum(i < 10 for i in six) == 3 and six[3] == 10
    short, short_labels = key_frames(0, 1, 2, columns=7)  # fewer frames than columns: no repeats
    assert short == [0, 1, 2] and short_labels[1] == "apex (1)"
    with pytest.raises(ValueError, match="onset"):
        key_frames(5, 3, 10)
    with pytest.raises(ValueError, match="columns"):
        key_frames(0, 3, 10, columns=2)


# ---------------------------------------------------------------------------------------------- qualitative grid
def test_qualitative_sequence_with_image_error_maps(tmp_path):
    rng = np.random.default_rng(0)
    T = 3
    frames = rng.integers(0, 256, size=(T, 24, 20, 3), dtype=np.uint8)
    coarse = torch.rand(T, 16, 16, 3)
    refined = rng.uniform(size=(T, 16, 16, 3))
    errors = rng.uniform(0, 2.5, size=(T, 16, 16))
    errors[:, :2] = np.nan  # not covered
    figure = qualitative_sequence_figure(frames, coarse, refined, errors, frame_labels=["onset", "apex", "offset"],
                                         title="clip 1")
    assert len(figure.axes) == 4 * T + 1  # the grid + one shared colour bar
    grid = np.array(figure.axes[:4 * T]).reshape(4, T)
    assert [a.get_title() for a in grid[0]] == ["onset", "apex", "offset"]
    assert [a.get_ylabel() for a in grid[:, 0]] == ["input", "coarse", "refined", "error (mm)"]
    assert all(len(a.get_images()) == 1 for a in grid.ravel())
    colour_bar = figure.axes[-1]
    assert "mm" in colour_bar.get_ylabel()
    assert colour_bar.get_ylim() == pytest.approx((0.0, np.nanmax(errors)))
    assert all(a.get_images()[0].norm.vmax == pytest.approx(np.nanmax(errors)) for a in grid[3])
    _assert_saved(figure, tmp_path / "figs" / "qualitative.png")


def test_qualitative_sequence_with_per_vertex_error_meshes(tmp_path):
    vertices, faces = _grid_mesh()
    T = 2
    maps = [(vertices, faces, np.abs(vertices[:, 0]) / 30 * (t + 1)) for t in range(T)]
    frames = np.zeros((T, 8, 8), dtype=np.float32)  # grey frames
    renders = np.ones((T, 8, 8, 3), dtype=np.float32)
    figure = qualitative_sequence_figure(frames, renders, renders, maps, vmax=1.5)
    assert len(figure.axes) == 4 * T + 1
    error_axes = figure.axes[3 * T:4 * T]
    assert all(len(a.collections) == 1 for a in error_axes)  # one tripcolor mesh per frame
    assert [a.get_title() for a in figure.axes[:T]] == ["frame 0", "frame 1"]
    assert figure.axes[-1].get_ylim() == pytest.approx((0.0, 1.5))
    _assert_saved(figure, tmp_path / "mesh.png")


def test_vertex_map_paints_the_nearest_triangle_last():
    # two triangles at the same x, y; the front one (z = 10) is listed first but must be drawn on top
    vertices = np.array([[-1, -1, 10], [1, -1, 10], [0, 1, 10], [-1, -1, 0], [1, -1, 0], [0, 1, 0]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    values = np.array([1, 1, 1, 0, 0, 0], float)  # front bright, back black
    figure, axis = plt.subplots(figsize=(2, 2), dpi=50)
    _draw_vertex_map(axis, vertices, faces, values, cmap="gray", norm=plt.Normalize(0, 1))
    axis.set_axis_off()
    figure.subplots_adjust(0, 0, 1, 1)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())
    centre = pixels[int(pixels.shape[0] * 0.6), pixels.shape[1] // 2, :3]
    assert centre.min() > 200  # the bright front triangle, not the black one behind it


def test_qualitative_sequence_rejects_mismatched_inputs():
    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    renders = np.zeros((3, 8, 8, 3))
    errors = np.zeros((3, 8, 8))
    with pytest.raises(ValueError, match="coarse_renders"):
        qualitative_sequence_figure(frames, renders[:2], renders, errors)
    with pytest.raises(ValueError, match="refined_renders"):
        qualitative_sequence_figure(frames, renders, np.zeros((3, 3, 8, 8)), errors)
    with pytest.raises(ValueError, match="frames"):
        qualitative_sequence_figure(np.zeros((3, 3, 8, 8)), renders, renders, errors)
    with pytest.raises(ValueError, match="error_maps"):
        qualitative_sequence_figure(frames, renders, renders, errors[:2])
    vertices, faces = _grid_mesh()
    bad = [(vertices, faces, np.zeros(len(vertices)))] * 2 + [(vertices, faces, np.zeros(5))]
    with pytest.raises(ValueError, match=r"error_maps\[2\] error"):
        qualitative_sequence_figure(frames, renders, renders, bad)
    with pytest.raises(ValueError, match="frame_labels"):
        qualitative_sequence_figure(frames, renders, renders, errors, frame_labels=["a"])


# ---------------------------------------------------------------------------------------------- AU curves
def test_au_displacement_figure_draws_truth_methods_and_phase_markers(tmp_path):
    times = np.linspace(0, 0.5, 20)
    truth = 1.2 * np.sin(np.pi * times / 0.5)
    predicted = {"DEM": truth * 0.8, "DGMD": torch.from_numpy(truth * 0.95)}
    figure = au_displacement_figure(times, predicted, truth, title="AU12", onset=0.0, apex=0.25, offset=0.5)
    (axis,) = figure.axes
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["ground truth", "DEM", "DGMD"]
    assert len(axis.get_lines()) == 1 + 2 + 3  # truth, two methods, three phase lines
    (phase_axis,) = axis.child_axes
    assert [t.get_text() for t in phase_axis.get_xticklabels()] == ["onset", "apex", "offset"]
    np.testing.assert_allclose(phase_axis.get_xticks(), [0.0, 0.25, 0.5])
    np.testing.assert_allclose(axis.get_lines()[2].get_ydata(), truth * 0.95)
    assert "mm" in axis.get_ylabel()
    _assert_saved(figure, tmp_path / "au.png")

    shared, axes = plt.subplots(1, 2)
    assert au_displacement_figure(times, {"DEM": truth}, None, ax=axes[1]) is shared  # no truth: real data
    assert len(axes[1].get_lines()) == 1 and len(axes[0].get_lines()) == 0 and not axes[1].child_axes


def test_au_displacement_figure_rejects_mismatched_curves():
    times = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match=r"predicted\['DEM'\]"):
        au_displacement_figure(times, {"DEM": np.zeros(9)}, np.zeros(10))
    with pytest.raises(ValueError, match="truth"):
        au_displacement_figure(times, {"DEM": np.zeros(10)}, np.zeros((10, 1)))
    with pytest.raises(ValueError, match="predicted"):
        au_displacement_figure(times, {}, np.zeros(10))


# ---------------------------------------------------------------------------------------------- bar chart
def _table() -> pd.DataFrame:
    return pd.DataFrame({"method": ["coarse", "DEM", "DGMD", "broken"],
                         "vertex error": [1.2, 0.9, 0.7, np.nan],
                         "std": [0.1, 0.05, 0.08, np.nan]})


def test_table_bar_figure_highlights_the_best_and_draws_error_bars(tmp_path):
    figure = table_bar_figure(_table(), "vertex error", error_column="std", unit="mm")
    (axis,) = figure.axes
    assert len(axis.patches) == 4
    colours = [bar.get_facecolor() for bar in axis.patches]
    assert colours[2] == to_rgba(BEST_COLOUR)  # DGMD, the lowest finite value
    assert all(c == to_rgba(OTHER_COLOUR) for k, c in enumerate(colours) if k != 2)
    (bars,) = [c for c in axis.containers if isinstance(c, BarContainer)]
    assert bars.errorbar is not None and len(bars.errorbar.lines[2][0].get_segments()) == 4
    assert "(mm)" in axis.get_ylabel() and "lower" in axis.get_ylabel()
    assert [t.get_text() for t in axis.get_xticklabels()] == ["coarse", "DEM", "DGMD", "broken"]
    _assert_saved(figure, tmp_path / "bars.png")

    higher = table_bar_figure(_table(), "vertex error", lower_is_better=False)
    colours = [bar.get_facecolor() for bar in higher.axes[0].patches]
    assert colours.index(to_rgba(BEST_COLOUR)) == 0 and colours.count(to_rgba(BEST_COLOUR)) == 1
    assert not [c for c in higher.axes[0].containers if isinstance(c, ErrorbarContainer)]


def test_table_bar_figure_rejects_bad_tables():
    with pytest.raises(ValueError, match="metric: column 'UF1'"):
        table_bar_figure(_table(), "UF1")
    with pytest.raises(ValueError, match="error_column"):
        table_bar_figure(_table(), "vertex error", error_column="sem")
    with pytest.raises(ValueError, match="method_column"):
        table_bar_figure(_table(), "vertex error", method_column="model")
    with pytest.raises(ValueError, match="one row per"):
        table_bar_figure(pd.concat([_table(), _table()]), "vertex error")
    with pytest.raises(ValueError, match="no finite"):
        table_bar_figure(_table().assign(**{"vertex error": np.nan}), "vertex error")
