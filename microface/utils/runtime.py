"""Runtime: seeding, deterministic kernels and progress bars that stay readable in logs."""
from __future__ import annotations

import os
import random
import sys
from typing import Iterable

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


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm:
    """tqdm that stays readable in papermill logs: plain ASCII to stdout, refreshed at most every few seconds."""
    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("ascii", True)
    kwargs.setdefault("dynamic_ncols", False)
    kwargs.setdefault("file", sys.stdout)
    kwargs.setdefault("disable", os.environ.get("MICROFACE_NO_PROGRESS") == "1")
    stream = kwargs["file"]
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.setdefault("position", 0)  # a log, not a terminal: nested bars print lines, no cursor-up escapes
    return tqdm(iterable, **kwargs)
