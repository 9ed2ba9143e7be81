"""raggedkv.kernels: Triton kernels for a packed ragged KV cache, their torch references, and torch ops.

Layout of one layer's cache (`k_cache`, `v_cache`: `[total_slots, head_dim]`)::

    segment s = b * num_kv_heads + h          rows kv_indptr[s] .. kv_indptr[s + 1]   (its capacity)
    | kept prompt tokens (position order) | window (last w prompt tokens) | generated | free headroom |
    |<---------------------------- kv_lens[s] valid rows ------------------------------>|

Query head `q` of sequence `b` reads segment `b * num_kv_heads + q // group_size`.
"""

from .append import append_kv
from .decode import plan_decode, ragged_decode_attention
from .metadata import SegmentPlan, plan_segments
from .reference import append_kv_ref, ragged_decode_attention_ref, select_and_pack_ref, window_scores_ref
from .select_pack import select_and_pack
from .window_scores import window_scores

from . import ops  # noqa: E402  registers torch.ops.raggedkv.* (needs the launchers above)

__all__ = [
    "window_scores",
    "select_and_pack",
    "append_kv",
    "ragged_decode_attention",
    "plan_decode",
    "SegmentPlan",
    "plan_segments",
    "window_scores_ref",
    "select_and_pack_ref",
    "append_kv_ref",
    "ragged_decode_attention_ref",
]
