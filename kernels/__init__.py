"""raggedkv.kernels: Triton kernels for a packed ragged KV cache, their torch references, and torch ops.

Layout of one layer's cache (`k_cache`, `v_cache`: `[total_slots, head_dim]`)::

    segment s = b * num_kv_heads + h          rows kv_indptr[s] .. kv_indptr[s + 1]   (its capacity)
    | kept prompt tokens (position order) | window (last w prompt tokens) | generated | free headroom |
    |<---------------------------- kv_lens[s] valid rows ------------------------------>|

Query head `q` of sequence `b` reads segment `b * num_kv_heads + q // group_size`.

Contract for embedders (the launchers, their `*_ref` twins and `torch.ops.raggedkv.*` alike):

- Checked on the host, per call, where it costs no device read: dtypes, ranks, shapes, layouts and devices;
  `kv_indptr` has `num_segments + 1` entries; `kv_indptr`/`kv_lens` are int32 or int64 (each its own). The ops
  apply the same checks on their CPU (reference) path as the Triton launchers, with the same messages.
  `select_and_pack` also reads `budgets` and `kv_indptr` on the host (once, at prefill) and refuses a budget
  outside `[0, m]` or over a segment's capacity and a segment outside the buffer.
- `kv_lens` is never trusted: every kernel and reference clamps it to `[0, capacity]` on the device (no host
  sync), `capacity = max(kv_indptr[s + 1] - kv_indptr[s], 0)`. A negative length counts as 0 (an append writes
  the segment's first row and stores 1; a decode gives zeros); a length at or over capacity counts as full (an
  append leaves the segment unchanged, stored length included; a decode attends to the whole segment). So nothing
  is read or written outside rows `kv_indptr[s] .. kv_indptr[s + 1]`.
- The caller's side (checking it would need a device read each call): `kv_indptr` non-decreasing, from `>= 0` to
  `<= total_slots`. `append_kv` and `select_and_pack` still never write a row outside the buffer when it is
  broken (masked on the device); segments that overlap are not detected.
- `import raggedkv.kernels` registers the ops. `append.py` and `select_pack.py` build their launches with pure
  functions (`_append_kv_launches`, `_select_and_pack_launches`: shapes only, meta tensors work).
"""

from .append import append_kv
from .decode import plan_decode, ragged_decode_attention
from .flashinfer_layout import FlashInferLayout, flashinfer_layout
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
    "FlashInferLayout",
    "flashinfer_layout",
    "window_scores_ref",
    "select_and_pack_ref",
    "append_kv_ref",
    "ragged_decode_attention_ref",
]
