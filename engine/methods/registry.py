"""The method registry: every method class by name, and `get_method` building one from its name and parameters.

`get_method(name, model_name=..., **params)` builds one; `model_name` is passed on only to the methods that read
packaged score files (HeadKV, CompressKV) and ignored by the others, so the engine can always pass it.
"""

from __future__ import annotations

import inspect
from typing import Any

from .adakv import AdaSnapKV
from .base import Method
from .compresskv import CompressKV
from .headkv import HeadKVR, HeadKVR2
from .pyramid import PyramidKV
from .streaming import StreamingLLM
from .uniform import Full, SnapKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Full, StreamingLLM, SnapKV, PyramidKV, AdaSnapKV, HeadKVR, HeadKVR2, CompressKV)
}


def method_parameters(name: str) -> dict[str, Any]:
    """The user-facing constructor parameters of method `name` and their defaults (`model_name` excluded)."""
    signature = inspect.signature(METHODS[name].__init__)
    return {p.name: p.default for p in list(signature.parameters.values())[1:] if p.name != "model_name"}


def not_a_method(value: object) -> TypeError:
    """The error for a `method` argument that is neither a method name nor a `Method`."""
    return TypeError(f"method must be a method name (one of {sorted(METHODS)}) or a Method, got {value!r}")


def get_method(name: str, model_name: str | None = None, **params: Any) -> Method:
    """Instantiate the method called `name` with its parameters.

    Raises:
        TypeError: `name` is not a string, or a parameter has the wrong type.
        ValueError: unknown method name or parameter (the message lists the accepted ones), or a parameter
            outside its range.
    """
    if not isinstance(name, str):
        raise not_a_method(name)
    if name not in METHODS:
        raise ValueError(f"method={name!r} is unknown; choose one of {sorted(METHODS)}")
    accepted = method_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter {unknown[0]!r}; its parameters are {sorted(accepted)}")
    cls = METHODS[name]
    if "model_name" in inspect.signature(cls.__init__).parameters:
        params["model_name"] = model_name
    return cls(**params)

