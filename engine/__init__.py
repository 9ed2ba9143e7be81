"""raggedkv.engine: compressed generation on the ragged KV cache.

    from raggedkv.engine import Engine
    engine = Engine.from_pretrained("smollm2-135m-instruct", method="snapkv")   # or a local HF folder
    out = engine.generate(prompt, kv_size=128, max_new_tokens=64)               # str or list[str]
    out.text, out.token_ids, out.stats
"""

from .generate import Engine
from .outputs import GenerationResult, GenerationStats

__all__ = ["Engine", "GenerationResult", "GenerationStats"]
