"""The ragged KV cache of a batch: every layer and every sequence in one allocation.

Rows of the single `[2, total_rows, head_dim]` buffer (index 0 = keys, 1 = values), layer-major::

    | layer 0: region (0, seq 0) | region (0, seq 1) | ... | layer 1: region (1, seq 0) | ...

A region holds the `num_kv_heads` segments of one (layer, sequence) and has `layer_total + num_kv_heads * headroom`
rows, where `layer_total` is the row sum of `method.plan(...)` for that layer and sequence: region sizes are fixed
before prefill. The split of a region between its heads may depend on the layer's window scores (`method.adapt`),
so a region's `kv_indptr` entries are written when that layer of that sequence is packed (`pack`).

A cache built with `reserve` (tensor parallelism, where a layer-wide `adapt` moves budget between ranks: see
`parallel.RankSplitMethod.reserve`) sizes each region from an upper bound instead; `pack` then lays out segments whose
budgets sum to at most that bound, and the unused rows stay at the end of the region. `kv_indptr` is one CSR array
per layer (a sequence's last segment ends where the next region starts), so those spare rows fall inside the span
of the region's last segment there; `kv_lens` and the host `capacities` describe the real segments, so the kernels
read and the decode plan sizes only the segments' rows.

Per layer, `kv_indptr` (`[batch * num_kv_heads + 1]` int32) and `kv_lens` (`[batch * num_kv_heads]` int32) are
row views of `[num_layers, ...]` tensors, and offsets are relative to the layer's first row, so a layer is exactly
the `(k_cache, v_cache, kv_indptr, kv_lens)` the kernels take (`layer(l)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from raggedkv.kernels import plan_segments

from .backend import Backend


class LayerCache(NamedTuple):
    """One layer's view of the cache, in the kernels' argument order."""

    k_cache: torch.Tensor  # [layer_rows, head_dim]
    v_cache: torch.Tensor  # [layer_rows, head_dim]
    kv_indptr: torch.Tensor  # [batch * num_kv_heads + 1] int32, rows relative to the layer's first row
    kv_lens: torch.Tensor  # [batch * num_kv_heads] int32


@dataclass(frozen=True)
class KVMemory:
    """Bytes of K and V together, int64 `[num_layers, batch]` each (host tensors).

    allocated: rows reserved (kept prompt tokens plus decode headroom, plus any spare rows of a `reserve`).
    valid: rows holding a token now.
    full: what an uncompressed cache would hold for the same sequences now (every prompt token in every head,
        plus the tokens appended so far).
    """

    allocated: torch.Tensor
    valid: torch.Tensor
    full: torch.Tensor

    def per_layer(self) -> dict[str, list[int]]:
        """Each kind summed over the batch: `num_layers` ints."""
        return {kind: getattr(self, kind).sum(dim=1).tolist() for kind in ("allocated", "valid", "full")}

    def total(self) -> dict[str, int]:
        """Each kind summed over layers and sequences."""
        return {kind: int(getattr(self, kind).sum()) for kind in ("allocated", "valid", "full")}


class RaggedKVCache:
    """All layers' ragged K/V for a batch of sequences, in one allocation.

    Args:
        layer_totals: int64 `[num_layers, batch]`, rows each (layer, sequence) keeps at prefill, window included.
        prompt_lens: tokens in each sequence's prompt (for the full-cache accounting).
        num_kv_heads, head_dim: the model's attention shape.
        headroom: rows reserved in every segment for generated tokens.
        dtype, device: of the K/V buffer.
        backend: the kernels that write it.
        reserve: int64 `[num_layers, batch]` rows to reserve per (layer, sequence) for prefill tokens instead of
            `layer_totals` (each entry >= its `layer_total`), or None for exactly `layer_totals`. With it, `pack`
            accepts budgets summing to at most the reserve; without it, to exactly the layer total.
    """

    def __init__(
        self,
        layer_totals: torch.Tensor,
        prompt_lens: list[int],
        *,
        num_kv_heads: int,
        head_dim: int,
        headroom: int,
        dtype: torch.dtype,
        device: torch.device,
        backend: Backend,
        reserve: torch.Tensor | None = None,
    ) -> None:
        num_layers, batch = layer_totals.shape
        if len(prompt_lens) != batch:
            raise ValueError(f"prompt_lens has {len(prompt_lens)} entries for a batch of {batch}")
        self.num_layers, self.batch, self.num_kv_heads, self.head_dim = num_layers, batch, num_kv_heads, head_dim
        self.headroom = headroom
        self.prompt_lens = list(prompt_lens)
        self.backend = backend

        prefill_rows = layer_totals.to(torch.int64).cpu()
        if reserve is not None:
            reserve = reserve.to(torch.int64).cpu()
            if reserve.shape != layer_totals.shape or bool((reserve < prefill_rows).any()):
                raise ValueError(
                    f"reserve must be int64 {tuple(layer_totals.shape)} with every entry >= its layer total "
                    f"{prefill_rows.tolist()}, got {reserve.tolist()}"
                )
            prefill_rows = reserve
        self.reserved = reserve is not None
        region_rows = prefill_rows + num_kv_heads * headroom  # [L, B]
        self.region_rows = region_rows
        self.region_start = region_rows.cumsum(dim=1) - region_rows  # [L, B], relative to the layer's first row
        layer_rows = region_rows.sum(dim=1)
        self.layer_start = [int(x) for x in layer_rows.cumsum(0) - layer_rows]
        self.layer_rows = [int(x) for x in layer_rows]

        self.kv = torch.zeros(2, int(layer_rows.sum()), head_dim, dtype=dtype, device=device)
        self.kv_indptr = torch.zeros(num_layers, batch * num_kv_heads + 1, dtype=torch.int32, device=device)
        self.kv_lens = torch.zeros(num_layers, batch * num_kv_heads, dtype=torch.int32, device=device)
        self.capacities = torch.zeros(num_layers, batch * num_kv_heads, dtype=torch.int64)  # host copy
        # Tokens appended to every segment of every layer so far: a host counter that the decode loop
        # (`ModelRunner.decode`) advances after each step; `append` leaves it alone, so a step changes no host state.
        self.decode_steps = 0

    @property
    def row_bytes(self) -> int:
        """Bytes of one token of one head, K and V together."""
        return 2 * self.head_dim * self.kv.element_size()

    def layer(self, layer: int) -> LayerCache:
        """The kernels' view of one layer."""
        rows = slice(self.layer_start[layer], self.layer_start[layer] + self.layer_rows[layer])
        return LayerCache(self.kv[0, rows], self.kv[1, rows], self.kv_indptr[layer], self.kv_lens[layer])

    def pack(
        self,
        layer: int,
        seq: int,
        budgets: torch.Tensor,
        scores: torch.Tensor,
        k_src: torch.Tensor,
        v_src: torch.Tensor,
    ) -> None:
        """Lay out the segments of (layer, seq) and fill them with each head's kept tokens plus the window.

        Args:
            budgets: int64 `[num_kv_heads]` host tensor, tokens each head keeps, window included; their sum must be
                the layer total given at construction (with a `reserve`: at most the rows reserved).
            scores: fp32 `[num_kv_heads, n - w]` scores of the prefix tokens (the last `w` are the window).
            k_src, v_src: `[num_kv_heads, n, head_dim]` post-RoPE keys and values of the whole prompt.
        """
        window = k_src.shape[1] - scores.shape[1]
        heads = slice(seq * self.num_kv_heads, (seq + 1) * self.num_kv_heads)
        plan = plan_segments(budgets, self.headroom, start=int(self.region_start[layer, seq]), device=self.kv.device)
        region = int(self.region_rows[layer, seq])
        if plan.total_slots > region or (plan.total_slots != region and not self.reserved):
            raise ValueError(
                f"layer {layer}: budgets sum to {int(budgets.sum())}, but the cache reserved "
                f"{region - self.num_kv_heads * self.headroom} rows for this layer"
            )
        indptr = plan.kv_indptr.clone()
        indptr[-1] = int(self.region_start[layer, seq]) + region  # spare rows (a reserve) end the last span
        self.kv_indptr[layer, seq * self.num_kv_heads : (seq + 1) * self.num_kv_heads + 1] = indptr
        self.capacities[layer, heads] = budgets + self.headroom
        prefix = (budgets - window).to(device=self.kv.device, dtype=torch.int32)
        self.backend.select_and_pack(
            scores, prefix, k_src, v_src, *self.layer(layer), first_segment=seq * self.num_kv_heads
        )

    def append(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Append one token to every segment of `layer` (`k_new`, `v_new`: `[batch * num_kv_heads, head_dim]`).

        Device work only: no host state changes and nothing is read back, so a decode step can be captured. The
        headroom guard is the caller's (`ModelRunner` checks `decode_steps < headroom` before each step); a segment
        that is already full is left unchanged by the kernel.
        """
        self.backend.append_kv(k_new, v_new, *self.layer(layer))

    def reset(self) -> None:
        """Empty every segment (lengths to zero), keeping the allocation and the layout."""
        self.kv_lens.zero_()
        self.decode_steps = 0

    def memory(self) -> KVMemory:
        """Measured bytes per layer and sequence (reads `kv_lens` from the device once)."""
        valid_rows = self.kv_lens.view(self.num_layers, self.batch, self.num_kv_heads).sum(dim=2).cpu()
        tokens = torch.tensor(self.prompt_lens, dtype=torch.int64) + self.decode_steps  # [B]
        return KVMemory(
            allocated=self.region_rows * self.row_bytes,
            valid=valid_rows.to(torch.int64) * self.row_bytes,
            full=tokens.expand(self.num_layers, -1) * self.num_kv_heads * self.row_bytes,
        )
