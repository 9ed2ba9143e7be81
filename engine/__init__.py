"""raggedkv.engine: compressed generation on the ragged KV cache.

    from raggedkv.engine import Engine
    engine = Engine.from_pretrained("smollm2-135m-instruct", method="snapkv")   # or a local HF folder or cached Hub id
    out = engine.generate(prompt, kv_size=128, max_new_tokens=64)               # str or list[str]
    out.text, out.token_ids, out.stats
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Engine": ".generate", "GenerationResult": ".outputs", "GenerationStats": ".outputs"}


def __getattr__(name: str) -> object:
    """The exports, imported on first use, so that the `raggedkv` CLI loads torch only for commands that need it."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = ["Engine", "GenerationResult", "GenerationStats"]
