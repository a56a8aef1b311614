"""Progress bars in logs: under MICROFACE_PROGRESS=log (set by the Snakefile for every job) each refresh is a whole
line, so a papermill log shows the bar moving instead of its first state only."""
from __future__ import annotations

import io
from pathlib import Path

from microface.utils.runtime import progress


def test_log_mode_writes_whole_lines_up_to_the_end(monkeypatch):
    monkeypatch.setenv("MICROFACE_PROGRESS", "log")
    monkeypatch.delenv("MICROFACE_NO_PROGRESS", raising=False)
    stream = io.StringIO()
    for _ in progress(range(4), desc="epochs", file=stream, mininterval=0.0, miniters=1):
        pass
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("epochs:   0%") and lines[-1].startswith("epochs: 100%")
    assert len(lines) >= 3  # intermediate states too, each on its own line


def test_log_mode_drops_the_cursor_moves_of_nested_bars(monkeypatch):
    monkeypatch.setenv("MICROFACE_PROGRESS", "log")
    monkeypatch.delenv("MICROFACE_NO_PROGRESS", raising=False)
    stream = io.StringIO()
    for _ in progress(range(2), desc="outer", file=stream, mininterval=0.0, miniters=1):
        for _ in progress(range(2), desc="inner", file=stream, mininterval=0.0, miniters=1, position=1,
                          leave=False):
            pass
    assert "\x1b" not in stream.getvalue() and "inner" in stream.getvalue()


def test_default_mode_is_tqdm_auto_and_the_snakefile_sets_log_mode(monkeypatch):
    monkeypatch.delenv("MICROFACE_PROGRESS", raising=False)
    monkeypatch.delenv("MICROFACE_NO_PROGRESS", raising=False)  # CI switches bars off; this test needs one drawn
    stream = io.StringIO()
    for _ in progress(range(3), desc="x", file=stream, mininterval=0.0, miniters=1):
        pass
    assert "\r" in stream.getvalue()  # a terminal-style bar: what a log must not get
    snakefile = (Path(__file__).resolve().parents[1] / "Snakefile").read_text()
    commands = [line for line in snakefile.splitlines() if "papermill --log-output" in line or "microface mer-fold" in line
                or "microface real-video" in line]
    assert len(commands) == 4 and all("MICROFACE_PROGRESS=log " in line for line in commands)
