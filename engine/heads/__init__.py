"""Head-importance estimation (`raggedkv score-heads`): needle-in-a-haystack runs that score every query head.

Modules, one job each: `haystack` (the project's own filler text), `needles`, `prompt` (prompt layout and answer
span), `trace` (greedy decoding recording per-head attention), `scoring` (the three per-step rules),
`acceptance` (the published answer checks), `trial` (one trial), `run` (the resumable grid), `output`
(HeadKV's file format), `sidecar`, `heatmap`, `commands` (the CLI). Reading score files is
`raggedkv.engine.methods.head_scores`. The exports load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"KINDS": ".run", "RunSettings": ".run", "run_grid": ".run", "STEP_RULES": ".scoring",
            "reasoning_step": ".scoring", "retrieval_step": ".scoring", "semantic_step": ".scoring"}


def __getattr__(name: str) -> object:
    """The exports, imported on first use, so that `raggedkv score-heads --help` loads neither torch nor
    transformers."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = ["KINDS", "STEP_RULES", "RunSettings", "reasoning_step", "retrieval_step", "run_grid", "semantic_step"]
