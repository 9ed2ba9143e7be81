"""Compression methods as budget policies, selectable by name (see `base.py` for the contract)."""

from __future__ import annotations

from .base import Method, ModelShape, Scoring
from .uniform import Full, SnapKV

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Full, SnapKV)}


def get_method(name: str, **params) -> Method:
    """Instantiate the method called `name` with its parameters.

    Raises:
        ValueError: unknown method name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ValueError(f"method={name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[name](**params)


__all__ = ["METHODS", "Method", "ModelShape", "Scoring", "get_method"]
