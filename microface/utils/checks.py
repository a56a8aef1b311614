"""Argument checks shared by every layer: config dataclasses from YAML mappings, image tensors."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import torch

ConfigT = TypeVar("ConfigT")


def config_from_dict(config_cls: type[ConfigT], values: Mapping[str, Any] | None, name: str) -> ConfigT:
    """Build a model config dataclass from a YAML mapping; unknown keys raise so no setting is silently ignored.

    Lists become tuples so configs stay hashable and compare equal after a YAML round trip.
    """
    values = dict(values or {})
    # dataclasses.fields, not a bare `fields`: the submodule microface.models.fields rebinds that package name
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{name} config: unknown keys {unknown}; expected a subset of {sorted(known)}")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def check_images(images: torch.Tensor, channels: int = 3, name: str = "image") -> None:
    """Raise ValueError unless ``images`` is (B, channels, H, W)."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"{name}: expected (B, {channels}, H, W), got {tuple(images.shape)}")
