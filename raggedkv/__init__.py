"""raggedkv: head-level KV-cache compression on a packed ragged cache.

    import raggedkv
    with raggedkv.compressed(model, method="snapkv", kv_size=64):   # any supported transformers causal LM
        out = model.generate(input_ids, max_new_tokens=100)

`raggedkv.compressed` (from `raggedkv.engine.compressed`) is imported on first use, so `import raggedkv` stays light.
`raggedkv.kernels` holds the Triton kernels, their pure-torch references and the torch.library ops;
`raggedkv.engine` holds the cache, the compression methods, the Hugging Face model wrapper and `Engine`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"compressed": "raggedkv.engine.compressed"}


def __getattr__(name: str) -> object:
    """The exports, imported on first use (torch and transformers load only then)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["compressed"]
