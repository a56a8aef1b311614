"""``microface reconstruct``: a video, a photo or a folder of frames in, a 3D face mesh per frame out.

See :mod:`microface.reconstruct.pipeline`.

``video`` reads and tracks, ``pipeline`` reconstructs windows of frames, ``output`` writes the folder,
``bundle`` holds the checkpoint format, ``errors`` the error raised on bad input.
"""
from microface.reconstruct.bundle import default_checkpoint_path, load_bundle, read_bundle, save_bundle
from microface.reconstruct.errors import ReconstructionError
from microface.reconstruct.pipeline import reconstruct_video, summary_lines
from microface.reconstruct.video import frames_to_video

__all__ = ["ReconstructionError", "default_checkpoint_path", "frames_to_video", "load_bundle", "read_bundle",
           "reconstruct_video", "save_bundle", "summary_lines"]
