"""The score-file kinds, in one torch-free home so that the CLI's help and choices read them without loading torch.

`HEAD_SCORE_KINDS` are the per-head files `raggedkv score-heads --kind` computes, `LAYER_SCORE_KIND` the
per-layer file `raggedkv calibrate-layers` computes. Methods declare the kinds they read in `Method.score_files`;
reading the files is `head_scores.py`.
"""

from __future__ import annotations

HEAD_SCORE_KINDS = ("retrieval", "reasoning", "semantic")  # per-head files: `raggedkv score-heads --kind`
LAYER_SCORE_KIND = "layer-scores"  # per-layer file: `raggedkv calibrate-layers`
SCORE_KINDS = (*HEAD_SCORE_KINDS, LAYER_SCORE_KIND)
