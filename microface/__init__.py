"""microface: fine-grained 3D reconstruction and recognition of facial micro-expressions."""

__version__ = "0.1.0"
