"""Runtime: seeding, deterministic kernels, thread budgets and progress bars that stay readable in logs."""
from __future__ import annotations

import os
import random
import re
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm


def use_deterministic_kernels() -> None:
    """Make torch pick deterministic kernels (same config -> bitwise the same numbers).

    Needed on CPU too: the backward of advanced indexing (``index_put_`` with accumulate, used by every
    ``x[:, index]`` gather here) is order-dependent across threads otherwise. ``warn_only``: an op with no
    deterministic kernel (some CUDA ones) warns instead of stopping a GPU run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on GPU nodes
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch and switch to deterministic kernels; return a torch Generator seeded the
    same way for data order."""
    use_deterministic_kernels()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # nested bars move the cursor; a log has no cursor


@contextmanager
def split_threads(stages: int = 2) -> Iterator[int]:
    """Share torch's thread budget between pipeline stages that run at the same time (``microface.utils.prefetch``):
    torch and OpenCV each get ``max(1, budget // stages)`` threads for the duration, restored after. Without it both
    libraries' pools spread over the same cores and fight: ``reconstruct`` on 2 cores ran at 58 frames/s with 2
    threads each and at 79 with 1 each.

    Yields the threads each stage gets.
    """
    import cv2

    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    each = max(1, torch_before // stages)
    torch.set_num_threads(each)
    cv2.setNumThreads(each)
    try:
        yield each
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


class LineStream:
    """A file for tqdm that writes every refresh as a whole line (no carriage returns, no widget): what a log
    file or papermill's ``--log-output`` can show. Wraps ``stream`` (e.g. ``sys.stdout``)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = _CURSOR_MOVES.sub("", text.replace("\r", "")).strip("\n")
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """tqdm that stays readable in logs: plain ASCII to stdout, refreshed at most every few seconds.

    With the environment variable ``MICROFACE_PROGRESS=log`` (the Snakefile sets it for every job: papermill
    notebooks, fold and video jobs), a plain text bar writes one line per refresh, at most every 10 s: in a log
    a carriage-return bar keeps only its first state, and in a kernel ``tqdm.auto`` draws a widget that papermill's
    log shows as "0%" for the whole run. Otherwise ``tqdm.auto`` (a widget in JupyterLab). ``MICROFACE_NO_PROGRESS=1``
    switches bars off.
    """
    kwargs.setdefault("ascii", True)
    kwargs.setdefault("dynamic_ncols", False)
    kwargs.setdefault("disable", os.environ.get("MICROFACE_NO_PROGRESS") == "1")
    if os.environ.get("MICROFACE_PROGRESS") == "log":
        from tqdm.std import tqdm as plain_tqdm

        kwargs.setdefault("mininterval", 10.0)
        kwargs["file"] = LineStream(kwargs.get("file", sys.stdout))
        return plain_tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("file", sys.stdout)
    stream = kwargs["file"]
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.setdefault("position", 0)  # a log, not a terminal: nested bars print lines, no cursor-up escapes
    return tqdm(iterable, **kwargs)
