"""Checks of command-line values made before any work starts, as one-line errors."""

from __future__ import annotations

from ..training.config import check_device

__all__ = ["check_at_least", "check_device"]


def check_at_least(flag: str, value: int | None, low: int) -> None:
    """ValueError "<flag> must be >= <low>" unless `value` is None (not given) or >= low."""
    if value is not None and value < low:
        raise ValueError(f"{flag} must be >= {low}, got {value}")
