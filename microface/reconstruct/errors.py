"""The error `microface reconstruct` raises on bad input: it names the file and what is wrong."""
from __future__ import annotations


class ReconstructionError(ValueError):
    """A video, checkpoint or output folder that ``reconstruct_video`` cannot use; the message says what to do."""
