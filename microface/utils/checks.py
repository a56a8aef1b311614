"""Argument checks shared by every layer: config dataclasses from YAML mappings, image tensors, point pairs,
mesh arrays."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import torch

ConfigT = TypeVar("ConfigT")


def check_supervision(values: Mapping[str, Any], weights_cls: type, name: str, example: str) -> None:
    """Loss weights added on top of a profile's own (its ``supervision`` rows): known terms, each > 0.

    Args:
        values: term -> weight, from the config.
        weights_cls: the loss-weights dataclass whose ``from_dict`` names the known terms (unknown keys fail there).
        name: the config key, for the error (e.g. "dem.supervision").
        example: a valid value, for the error (e.g. "{param: 1.0}").

    Raises:
        ValueError: an unknown term, no term, or a weight that is not > 0.
    """
    weights_cls.from_dict(values)
    if not values or any(not value > 0 for value in values.values()):
        raise ValueError(f"{name}: expected loss weights > 0 (e.g. {example}), got {values}")


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


def check_point_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str] = ("first", "second"),
                     layout: str = "(..., V, 3)") -> None:
    """Raise ValueError unless ``first`` and ``second`` are 3D points of one shape laid out as ``layout``.

    Args:
        first, second: the two point sets (e.g. predicted and target vertices).
        names: their argument names, for the message.
        layout: ``"(..., V, 3)"`` (any number of leading axes, at least V) or a fixed rank such as ``"(B, V, 3)"``.

    Example:
        >>> check_point_pair(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3), ("refined", "coarse"), "(B, V, 3)")
        Traceback (most recent call last):
        ...
        ValueError: refined and coarse: expected the same (B, V, 3), got (2, 5, 3) and (2, 4, 3)
    """
    axes = [axis.strip() for axis in layout.strip("()").split(",")]
    rank_ok = first.ndim >= len(axes) - 1 if axes[0] == "..." else first.ndim == len(axes)
    if first.shape != second.shape or not rank_ok or first.shape[-1] != 3:
        raise ValueError(f"{names[0]} and {names[1]}: expected the same {layout}, got {tuple(first.shape)} "
                         f"and {tuple(second.shape)}")


def check_mesh_arrays(vertices, faces, values=None, name: str = "", values_name: str = "values",
                      check_indices: bool = False) -> None:
    """Raise ValueError unless ``vertices`` (V, 3), ``faces`` (F, 3) and ``values`` (V,) (if given) fit together.

    Args:
        vertices, faces, values: arrays or tensors (anything with ``ndim`` and ``shape``).
        name: prefixed to every message (e.g. ``"error_maps[2]"``); empty for none.
        values_name: what ``values`` holds, for the message.
        check_indices: also require face indices in ``[0, V)``.
    """
    prefix = f"{name} " if name else ""
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{prefix}vertices: expected (V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{prefix}faces: expected (F, 3), got {tuple(faces.shape)}")
    if check_indices and faces.shape[0] and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(f"{prefix}faces: expected indices in [0, {vertices.shape[0]}), got "
                         f"[{faces.min()}, {faces.max()}]")
    if values is not None and tuple(values.shape) != (vertices.shape[0],):
        raise ValueError(f"{prefix}{values_name}: expected ({vertices.shape[0]},) one value per vertex, got "
                         f"{tuple(values.shape)}")


def check_image_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str] = ("first", "second"),
                     channels: int = 3) -> None:
    """Raise ValueError unless ``first`` and ``second`` are images (B, channels, H, W) of one shape.

    Example:
        >>> check_image_pair(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 6), ("rendered", "target"))
        Traceback (most recent call last):
        ...
        ValueError: target: expected the shape of rendered (2, 3, 8, 8), got (2, 3, 8, 6)
    """
    check_images(first, channels, names[0])
    check_images(second, channels, names[1])
    if second.shape != first.shape:
        raise ValueError(f"{names[1]}: expected the shape of {names[0]} {tuple(first.shape)}, "
                         f"got {tuple(second.shape)}")
