"""Networks: per-frame encoders, DEM, DGMD, and the micro-expression recognisers (FDP, MOL, trajectory)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar


