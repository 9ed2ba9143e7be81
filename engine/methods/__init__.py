"""Compression methods as budget policies, selectable by name (see `base.py` for the contract).

`get_method(name, model_name=..., **params)` builds one; `model_name` is passed on only to the methods that read
packaged score files (HeadKV, CompressKV) and ignored by the others, so the engine can always pass it. The registry
is `registry.py`; the exports below load on first use, so that importing a torch-free submodule (`score_kinds`, the
CLI's `commands`) loads neither torch nor the method classes.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"METHODS": ".registry", "get_method": ".registry", "method_parameters": ".registry",
            "not_a_method": ".registry", "Method": ".base", "ModelShape": ".base", "Scoring": ".base"}


def __getattr__(name: str) -> object:
    """The exports, imported on first use, so that `raggedkv methods --help` loads neither torch nor transformers."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = ["METHODS", "Method", "ModelShape", "Scoring", "get_method", "method_parameters", "not_a_method"]
