"""Head-importance estimation (`raggedkv score-heads`): needle-in-a-haystack runs that score every query head.

Modules, one job each: `haystack` (the project's own filler text), `needles`, `prompt` (prompt layout and answer
span), `trace` (greedy decoding recording per-head attention), `scoring` (the three per-step rules),
`acceptance` (the published answer checks), `trial` (one trial), `run` (the resumable grid), `output`
(HeadKV's file format), `sidecar`, `heatmap`, `commands` (the CLI). Reading score files is
`raggedkv.engine.methods.head_scores`.
"""

from .run import KINDS, RunSettings, run_grid
from .scoring import STEP_RULES, reasoning_step, retrieval_step, semantic_step

__all__ = ["KINDS", "STEP_RULES", "RunSettings", "reasoning_step", "retrieval_step", "run_grid", "semantic_step"]
