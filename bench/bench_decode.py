"""Decode attention over the ragged cache vs FlashAttention on the full cache.

    python -m bench.bench_decode [--quick|--full] [--providers ...] [--out DIR] [--no-refcheck] [--cuda-graph]
                                 [--dry-run]

One call = one decode step of one layer: `batch` sequences, one query token each, every (sequence, KV head)
segment holding its budget of tokens (`kv_size` on average per head; `uniform` or `skew` budgets with the same
total, planned by the engine's SnapKV and HeadKV-R: `harness/budgets.py`). The full-cache baselines attend to all `prompt` tokens of every head.

Bytes (GB/s uses 1e9): ragged providers read `sum(kv_lens) * head_dim * 2 (K and V) * 2 B` plus q and write the
output; full-cache providers read `batch * num_kv_heads * prompt * head_dim * 2 * 2 B` plus q and the output.
"""

from __future__ import annotations

import functools
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from bench.harness import kernel_run
from bench.harness.budgets import head_budgets
from bench.harness.environment import launcher, missing_module, reference
from bench.harness.shapes import KERNEL_SHAPES, attention_shape
from bench.harness.spec import Bound, KernelBench, Provider

DTYPE = torch.bfloat16
HEADROOM = 512  # decode rows reserved per segment (max_new_tokens), as the engine allocates
WINDOW = 8  # every head keeps at least its observation window


@functools.cache
def _lens(model: str, batch: int, prompt: int, kv_size: int, budgets: str) -> tuple[int, ...]:
    return tuple(head_budgets(model, batch, prompt, kv_size, budgets, window=WINDOW))


def segment_lens(config: dict[str, Any]) -> tuple[int, ...]:
    """Valid rows of every segment (`batch * num_kv_heads`), from the config (deterministic)."""
    return _lens(config["model"], config["batch"], config["prompt"], config["kv_size"], config["budgets"])


def _config(model: str, batch: int, prompt: int, kv_size: int, budgets: str) -> dict[str, Any]:
    lens = _lens(model, batch, prompt, kv_size, budgets)
    skew = max(lens) * len(lens) / sum(lens)
    return {"model": model, "batch": batch, "prompt": prompt, "kv_size": kv_size, "budgets": budgets,
            "max/mean": f"{skew:.2f}"}


def configs(mode: str) -> list[dict[str, Any]]:
    if mode == "dry":
        return [_config("llama3-8b", 2, 160, 24, "uniform"), _config("llama3-8b", 2, 160, 24, "skew"),
                _config("smollm2-135m", 1, 96, 16, "skew")]
    if mode == "quick":
        grid = [("llama3-8b", b, n, kv) for b in (1, 16) for n in (32768, 131072) for kv in (128, 2048)]
    else:
        grid = [(m, b, n, kv) for m in KERNEL_SHAPES for b in (1, 4, 16)
                for n in (4096, 8192, 16384, 32768, 65536, 131072) for kv in (64, 128, 512, 2048)]
    return [_config(m, b, n, kv, dist) for m, b, n, kv in grid for dist in ("uniform", "skew")]


class DecodeCase:
    """Inputs of one config: the query, the ragged cache (built eagerly) and, on demand, the dense full cache."""

    def __init__(self, config: dict[str, Any], device: torch.device):
        from raggedkv.kernels import plan_segments

        self.config, self.device = config, device
        self.shape = attention_shape(config["model"])
        self.batch, self.prompt = config["batch"], config["prompt"]
        lens = torch.tensor(segment_lens(config), dtype=torch.int32)
        headroom = HEADROOM if device.type == "cuda" else 4
        plan = plan_segments(lens, headroom, device=device)
        self.kv_indptr, self.kv_lens, self.capacities = plan.kv_indptr, plan.kv_lens, plan.capacities
        self.kv_lens.copy_(lens)
        self.q = torch.randn(self.batch, self.shape.num_qo_heads, self.shape.head_dim, dtype=DTYPE, device=device)
        self.k_cache = torch.randn(plan.total_slots, self.shape.head_dim, dtype=DTYPE, device=device)
        self.v_cache = torch.randn_like(self.k_cache)

    @cached_property
    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full cache `[batch, num_kv_heads, prompt, head_dim]` K and V (SDPA's layout)."""
        size = (self.batch, self.shape.num_kv_heads, self.prompt, self.shape.head_dim)
        return (torch.randn(size, dtype=DTYPE, device=self.device), torch.randn(size, dtype=DTYPE, device=self.device))

    @cached_property
    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The valid rows back to back (no headroom), as AdaKV stores them: K, V `[total, 1, D]`, cu_seqlens, max."""
        lens = self.kv_lens.long()
        rows = torch.repeat_interleave(self.kv_indptr[:-1].long(), lens)
        rows += torch.arange(rows.numel(), device=self.device) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        cu = torch.zeros(lens.numel() + 1, dtype=torch.int32, device=self.device)
        cu[1:] = lens.cumsum(0)
        return self.k_cache[rows][:, None], self.v_cache[rows][:, None], cu, int(lens.max())


# ---- references


def ragged_ref(case: DecodeCase) -> torch.Tensor:
    return reference("ragged_decode_attention")(case.q, case.k_cache, case.v_cache, case.kv_indptr, case.kv_lens)


def dense_ref(case: DecodeCase) -> torch.Tensor:
    """The same reference on the full cache, one sequence at a time (its fp32 gather of one sequence fits)."""
    ref = reference("ragged_decode_attention")
    k, v = case.dense
    heads, n, dim = case.shape.num_kv_heads, case.prompt, case.shape.head_dim
    indptr = torch.arange(heads + 1, dtype=torch.int32, device=case.device) * n
    lens = torch.full((heads,), n, dtype=torch.int32, device=case.device)
    return torch.cat([ref(case.q[b:b + 1], k[b].reshape(-1, dim), v[b].reshape(-1, dim), indptr, lens)
                      for b in range(case.batch)])


# ---- providers


def _triton(case: DecodeCase) -> Bound:
    from raggedkv.kernels.decode import plan_decode

    decode = launcher("ragged_decode_attention")
    chunk_size, max_chunks = plan_decode(case.capacities)  # once per generation, as the engine does
    out = torch.empty_like(case.q)
    return Bound(lambda: decode(case.q, case.k_cache, case.v_cache, case.kv_indptr, case.kv_lens,
                                  chunk_size=chunk_size, max_chunks=max_chunks, out=out))


def _triton_op(case: DecodeCase) -> Bound:
    import raggedkv.kernels.ops  # noqa: F401 - registers torch.ops.raggedkv.*
    from raggedkv.kernels.decode import plan_decode

    chunk_size, max_chunks = plan_decode(case.capacities)
    op = torch.ops.raggedkv.ragged_decode_attention
    return Bound(lambda: op(case.q, case.k_cache, case.v_cache, case.kv_indptr, case.kv_lens, None,
                              max_chunks, chunk_size))


def _torch_ref(case: DecodeCase) -> Bound:
    return Bound(lambda: ragged_ref(case))


def _sdpa_full(case: DecodeCase) -> Bound:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    k, v = case.dense
    q = case.q[:, :, None, :]
    return Bound(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)[:, :, 0],
                   context=lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION))


def _fa_full(case: DecodeCase) -> Bound:
    from flash_attn import flash_attn_with_kvcache

    k, v = case.dense
    q = case.q[:, None]  # [batch, 1, heads, dim]
    return Bound(lambda: flash_attn_with_kvcache(q, k.transpose(1, 2), v.transpose(1, 2))[:, 0])


def _fa_varlen(case: DecodeCase) -> Bound:
    """AdaKV's flattening: every (sequence, KV head) is one sequence of 1 query with `group` heads, 1 KV head."""
    from flash_attn import flash_attn_varlen_func

    k, v, cu_k, max_k = case.packed
    segments, group, dim = case.kv_lens.numel(), case.shape.group_size, case.shape.head_dim
    q = case.q.reshape(segments, group, dim)
    cu_q = torch.arange(segments + 1, dtype=torch.int32, device=case.device)
    return Bound(lambda: flash_attn_varlen_func(q, k, v, cu_q, cu_k, 1, max_k).reshape(case.q.shape))


def _ragged_key(config: dict[str, Any]) -> tuple:
    return config["model"], config["batch"], segment_lens(config)


def _full_key(config: dict[str, Any]) -> tuple:
    return config["model"], config["batch"], config["prompt"]


def _no_flash_attn() -> str | None:
    return missing_module("flash_attn")


_NEEDS_DECODE = functools.partial(missing_module, "raggedkv.kernels.decode")
_NEEDS_OPS = functools.partial(missing_module, "raggedkv.kernels.ops")

PROVIDERS = [
    Provider("fa_full", "flash_attn.flash_attn_with_kvcache on the full cache", _fa_full, ref="dense",
               requires=_no_flash_attn, key=_full_key),
    Provider("sdpa_full", "torch SDPA, FLASH_ATTENTION backend, enable_gqa=True, on the full cache", _sdpa_full,
               ref="dense", key=_full_key),
    Provider("triton", "raggedkv ragged_decode_attention (plan_decode once, out= preallocated)", _triton,
               requires=_NEEDS_DECODE, key=_ragged_key),
    Provider("triton_op", "torch.ops.raggedkv.ragged_decode_attention (same kernel via the dispatcher)",
               _triton_op, requires=_NEEDS_OPS, key=_ragged_key),
    Provider("fa_varlen", "flash_attn_varlen_func over (sequence, KV head) flattened (AdaKV/HeadKV)", _fa_varlen,
               requires=_no_flash_attn, key=_ragged_key),
    Provider("torch_ref", "raggedkv ragged_decode_attention_ref (pure torch, fp32)", _torch_ref,
               key=_ragged_key),
]


def nbytes(config: dict[str, Any], provider: str) -> int:
    shape = attention_shape(config["model"])
    item = DTYPE.itemsize
    q_and_out = 2 * config["batch"] * shape.num_qo_heads * shape.head_dim * item
    if provider.endswith("_full"):
        tokens = config["batch"] * shape.num_kv_heads * config["prompt"]
    else:
        tokens = sum(segment_lens(config))
    return tokens * shape.head_dim * 2 * item + q_and_out


BENCH = KernelBench(
    name="decode",
    title="ragged_decode_attention (one layer, one decode step) vs FlashAttention on the full cache",
    configs=configs,
    make_case=DecodeCase,
    providers=PROVIDERS,
    references={"ref": ragged_ref, "dense": dense_ref},
    baseline=("fa_full", "sdpa_full"),
    metrics=("MiB", "p50_us", "p20_us", "p80_us", "GB/s", "frac_copy", "speedup", "max_err"),
    rtol=2e-2,
    nbytes=nbytes,
    notes=("llama3-8b = Llama-3-8B and Mistral-7B attention (32 q / 8 kv heads, d 128); smollm2-135m = 9 / 3, d 64",
           "MiB = bytes the call touches (ragged: kept tokens; *_full: all prompt tokens); frac_copy = GB/s / copy",
           "identical measurements are shared between rows (full-cache providers do not depend on kv_size)"),
)


def main(argv: list[str] | None = None) -> int:
    return kernel_run.main(BENCH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
