"""Tensor parallelism on transformers' own distributed engine: each rank's ragged cache holds its own KV heads.

Loaded with `distributed_config=DistributedConfig(tp_plan="auto")` under `torchrun` (`models.load_model(...,
tp_plan="auto")`), a model shards `q_proj`/`k_proj`/`v_proj` column-wise: rank `r`'s attention function gets plain
tensors of its contiguous block of query and KV heads (query `[1, Hq / N, S, D]`, key `[1, Hkv / N, S, D]`), and
the cache's `update` gets those KV heads only. The rest of the engine is unchanged; this module gives it the
rank's view:

* `TensorParallel.of(model)`: the TP world (size, rank, process group) read from the model's device mesh, or None
  for a model that is not tensor-parallel; heads that do not split evenly are refused.
* `RankSplitMethod`: a method wrapper that plans the budgets of the WHOLE model once (`inner.plan` on the global
  shape, optionally rank-balanced by `parallel_budgets.balance_ranks`) and hands the engine the rank's slice, so
  every rank's cache is sized from its own heads. Adaptive methods see the whole layer: `adapt` all-gathers the
  layer's window scores from every rank (one collective per layer at prefill, none per decode step), runs the
  inner `adapt` on all heads and returns the rank's slice, so every head keeps exactly the single-process budget.
  A rank's total then depends on scores it sees only at prefill, while its cache regions are sized before, so
  `reserve` gives each (layer, sequence) region rows for any outcome (`parallel_budgets.adapted_rank_bound`; the
  spare rows stay unused: up to TP size x the compressed KV of that method, reported as allocated bytes). With
  `rank_balance`, the adapted budgets are instead moved back to each rank's planned (balanced) total, so the
  ranks stay balanced and nothing is reserved. Scorings shared across heads (CompressKV) are summed over every rank's
  heads, in place, so the selection that follows uses the layer's shared row. With `rank=None` the wrapper runs
  the same arithmetic for all ranks in one process, which is what a single-process reference of a TP run is.
* `gather_prefill_stats`: the kept budgets and KV bytes of all ranks, so every rank reports the whole model.
* `shared_seed`: one sampling seed for all ranks (identical logits + identical generator = identical tokens).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from .cache import KVMemory
from .methods import Method, ModelShape
from .models import model_shape
from .parallel_budgets import (
    adapted_rank_bound,
    balance_ranks,
    check_heads_split,
    check_rank_balance,
    fit_rank_totals,
    rank_heads,
    rank_totals,
    slowest_rank_factor,
)


def rank_shape(shape: ModelShape, size: int) -> ModelShape:
    """The attention shape of one of `size` ranks: `1 / size` of the query and KV heads (they divide evenly)."""
    return replace(shape, num_qo_heads=shape.num_qo_heads // size, num_kv_heads=shape.num_kv_heads // size)


@dataclass(frozen=True)
class TensorParallel:
    """The tensor-parallel world of a model: `size` ranks, this process's `rank`, their process `group`, the
    `device` collectives run on (the model's: NCCL needs CUDA tensors), the model's global attention `shape`, and
    the optional `rank_balance` epsilon (None = budgets as planned)."""

    size: int
    rank: int
    group: Any
    device: torch.device
    shape: ModelShape
    rank_balance: float | None = None

    @classmethod
    def of(cls, model: Any, rank_balance: float | None = None) -> TensorParallel | None:
        """The TP world of a model loaded with a tensor-parallel plan (None when it has none, or TP size 1).

        Raises:
            ValueError: the plan does not shard the attention heads, or the heads do not split evenly over the
                ranks (transformers' `get_kv_heads_per_rank` returns None), or other parallel dimensions are used.
        """
        from transformers.distributed.tensor_parallel import get_kv_heads_per_rank

        size = getattr(model, "_tp_size", None) or 1
        if size <= 1:
            if rank_balance is not None:
                raise ValueError(f"rank_balance={rank_balance!r} needs a tensor-parallel model (tp_plan='auto')")
            return None
        shape = model_shape(model.config)
        check_heads_split(shape.num_qo_heads, shape.num_kv_heads, size)
        if get_kv_heads_per_rank(model.tp_plan, shape.num_kv_heads, size) != shape.num_kv_heads // size:
            raise ValueError(f"the model's tp_plan does not shard k_proj column-wise: {model.tp_plan}")
        mesh = model._device_mesh
        if mesh.size() != size:
            raise ValueError(f"only tensor parallelism is supported; the device mesh is {mesh}")
        tp_mesh = mesh["tp"]
        if rank_balance is not None:
            check_rank_balance(rank_balance)
        device = next(model.parameters()).device
        return cls(size, tp_mesh.get_local_rank(), tp_mesh.get_group(), device, shape, rank_balance)

    @property
    def local_shape(self) -> ModelShape:
        """The attention shape one rank sees: its own query and KV heads."""
        return rank_shape(self.shape, self.size)

    def split(self, method: Method) -> RankSplitMethod:
        """`method` as this rank sees it."""
        return RankSplitMethod(method, self.shape, self.size, self.rank, self.group, self.rank_balance)

    def shared_seed(self) -> int:
        """A random seed drawn on rank 0 and broadcast to every rank."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(self.device)
        dist.broadcast(seed, group_src=0, group=self.group)
        return int(seed)

    def gather_prefill_stats(self, kept: torch.Tensor, memory: KVMemory) -> tuple[torch.Tensor, KVMemory]:
        """(kept int64 `[batch, num_layers, num_kv_heads]` of the whole model, KV bytes summed over ranks) from
        this rank's kept `[batch, num_layers, num_kv_heads / size]` and `memory`."""
        kept = kept.to(self.device)
        parts = [torch.empty_like(kept) for _ in range(self.size)]
        dist.all_gather(parts, kept, group=self.group)
        summed = []
        for part in (memory.allocated, memory.valid, memory.full):
            part = part.to(self.device, copy=True)
            dist.all_reduce(part, group=self.group)
            summed.append(part.cpu())
        return torch.cat(parts, dim=-1).cpu(), KVMemory(*summed)


def rank_stats(kept: torch.Tensor, parallel: TensorParallel | None) -> dict:
    """`GenerationStats`' tensor-parallel fields for one sequence's kept budgets int64 `[num_layers, num_kv_heads]`
    (the whole model's): nothing without tensor parallelism."""
    if parallel is None:
        return {}
    return {
        "tensor_parallel": parallel.size,
        "rank_kept_tokens": rank_totals(kept, parallel.size).sum(dim=0).tolist(),
        "slowest_rank_factor": slowest_rank_factor(kept, parallel.size),
    }


class RankSplitMethod(Method):
    """`inner` planned for the whole model, seen by one rank (or, with `rank=None`, by all ranks in one process).

    Args:
        inner: the method. shape: the model's global attention shape. size: TP ranks.
        rank: this process's rank, or None to plan and adapt for all ranks at once (the single-process
            reference: same arithmetic, global budgets, no communication).
        group: the TP process group (None with `rank=None`).
        rank_balance: epsilon of `balance_ranks`, or None to keep the method's own budgets.

    Stateless: `adapt` gathers the layer's planned budgets with its scores, so one wrapper serves a whole batch.
    """

    name = "rank-split"
    description = "a method's budgets planned for the whole model and sliced to one tensor-parallel rank"

    def __init__(self, inner: Method, shape: ModelShape, size: int, rank: int | None, group: Any = None,
                 rank_balance: float | None = None) -> None:
        self.inner, self.global_shape, self.size, self.rank, self.group = inner, shape, size, rank, group
        self.rank_balance = rank_balance
        heads = shape.num_kv_heads
        self.kv_heads = slice(0, heads) if rank is None else rank_heads(heads, size, rank)
        self.qo_heads = slice(0, shape.num_qo_heads) if rank is None else rank_heads(shape.num_qo_heads, size, rank)
        self.scoring = inner.scoring
        self.label = inner.label

    @property
    def min_kv_size(self) -> int:
        return self.inner.min_kv_size

    @property
    def shape(self) -> ModelShape:
        """The shape the engine plans with: the rank's heads (the whole model with `rank=None`)."""
        return self.global_shape if self.rank is None else rank_shape(self.global_shape, self.size)

    def check_shape(self, shape: ModelShape) -> None:
        if shape != self.shape:
            raise ValueError(f"{self.inner.label} split over {self.size} ranks plans for {self.shape}, got {shape}")
        self.inner.check_shape(self.global_shape)

    def plan(self, shape: ModelShape, prompt_len: int, kv_size: int) -> torch.Tensor:
        budgets = self._inner().plan(self.global_shape, prompt_len, kv_size).to(torch.int64).cpu()
        low = min(self.scoring.window, prompt_len)
        if self.rank_balance is not None:
            budgets = balance_ranks(budgets, self.size, self.rank_balance, low, prompt_len)
        if self._communicates():
            self._check_all_or_none_full(budgets, prompt_len)
        return budgets[:, self.kv_heads].clone()

    def adapt(self, layer: int, budgets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.scoring.share_across_heads and self.rank is not None:
            dist.all_reduce(scores, group=self.group)  # each rank's row summed over its heads -> the layer's row
        if not self._adaptive():
            return budgets
        # the engine adapts only layers it compresses, so the prompt is longer than the kept tail (window + header)
        tail = self.scoring.window
        prompt_len = scores.shape[1] + tail
        planned, layer_scores = self._gather(budgets, scores)
        adapted = self._inner().adapt(layer, planned.to(budgets.device), layer_scores).to(torch.int64).cpu()
        if int(adapted.sum()) != int(planned.sum()):
            raise ValueError(f"{self.inner.label}.adapt changed layer {layer}'s total from {int(planned.sum())} to "
                             f"{int(adapted.sum())}; it must stay the same")
        if self.rank_balance is not None:
            adapted = fit_rank_totals(adapted, rank_totals(planned, self.size), tail, prompt_len)
        return adapted[self.kv_heads].to(budgets.device)

    def reserve(self, prompt_len: int, kv_size: int | None) -> torch.Tensor | None:
        """int64 `[num_layers]`: rows this rank's region of each layer must hold for any outcome of the layer-wide
        `adapt` (`parallel_budgets.adapted_rank_bound`, Ada-SnapKV's own arithmetic where it applies), or None
        when the rank's planned totals are final: a method without `adapt`, `rank_balance` (totals moved back to
        the plan), `rank=None`, or nothing compressed. Call it on the view `plan_budgets` planned with (the window
        grown by the prompt's header: `compress.with_header`)."""
        if self.rank is None or self.rank_balance is not None or not self._adaptive():
            return None
        if kv_size is None or kv_size >= prompt_len:
            return None
        planned = self._inner().plan(self.global_shape, prompt_len, kv_size).to(torch.int64).cpu()
        low = min(self.scoring.window, prompt_len)
        alpha = getattr(self.inner, "alpha", None) if self.inner.name == "ada-snapkv" else None
        if getattr(self.inner, "faithful", False):
            alpha = None  # the published rounding: only the generic bound holds
        return adapted_rank_bound(planned, self.size, self.rank, low, prompt_len, alpha)

    def qo_head_weights(self, layer: int) -> torch.Tensor | None:
        weights = self.inner.qo_head_weights(layer)
        return None if weights is None else weights[self.qo_heads]

    def _inner(self) -> Method:
        """The inner method with this wrapper's scoring (a copy when `compress.with_header` widened the window)."""
        if self.inner.scoring == self.scoring:
            return self.inner
        view = copy.copy(self.inner)
        view.scoring = self.scoring
        return view

    def _adaptive(self) -> bool:
        """Whether the inner method moves budget between heads once the scores are known."""
        return type(self.inner).adapt is not Method.adapt

    def _communicates(self) -> bool:
        """Whether `adapt` runs a collective (then every rank must reach it, layer for layer)."""
        return self.rank is not None and (self.scoring.share_across_heads or self._adaptive())

    def _gather(self, budgets: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int64 `[num_kv_heads]` planned budgets, fp32 `[num_kv_heads, candidates]` scores) of the whole layer, in
        head order, from this rank's; one all-gather (the budgets ride as a first fp32 column, exact below 2**24)."""
        if self.rank is None:
            return budgets.to(torch.int64).cpu(), scores
        rows = torch.cat([budgets.to(device=scores.device, dtype=scores.dtype)[:, None], scores], dim=1)
        parts = [torch.empty_like(rows) for _ in range(self.size)]
        dist.all_gather(parts, rows, group=self.group)
        layer = torch.cat(parts, dim=0)
        return layer[:, 0].to(torch.int64).cpu(), layer[:, 1:].contiguous()

    def _check_all_or_none_full(self, budgets: torch.Tensor, prompt_len: int) -> None:
        """The engine skips scoring a layer whose heads all keep the whole prompt; a collective in `adapt` needs
        every rank to skip the same layers."""
        full = (budgets >= prompt_len).view(budgets.shape[0], self.size, -1).all(dim=-1)  # [L, size]
        mixed = (full.any(dim=1) & ~full.all(dim=1)).nonzero().flatten().tolist()
        if mixed:
            raise ValueError(
                f"{self.inner.label} under tensor parallelism: in layers {mixed} some ranks keep the whole prompt "
                "in every head and others do not, so they would not meet in the layer's score exchange"
            )
