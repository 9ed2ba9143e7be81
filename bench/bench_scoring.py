"""Observation-window scoring (`window_scores`) vs the materialised way of the published SnapKV/HeadKV code.

    python -m bench.bench_scoring [--quick|--full] [--providers ...] [--out DIR] [--no-refcheck] [--cuda-graph]
                                  [--dry-run]

One call scores one layer of one sequence: the last `window` queries against all `prompt` keys, reduced over the
window (mean) and the GQA group (mean), max-pooled with kernel 7 (SnapKV's defaults), fp32 `[kv_heads, n - w]`.

`naive` is the published approach: repeat_kv (a copy of K per query head), `Q_w K^T` materialised as
`[heads, w, n]` in the model dtype, a causal mask added, softmax in fp32 cast back, then the reductions.
`prefill_attn` is not a scorer but the yardstick: the layer's causal prefill attention (SDPA FLASH_ATTENTION), so
`pct_prefill` = 100 * time / prefill attention time of the same layer (the target is < 2% at 32K tokens).
peak_MiB = peak memory one call allocates (its output included).
"""

from __future__ import annotations

import functools
import math
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from bench.harness import kernel_run
from bench.harness.environment import launcher, missing_module, reference
from bench.harness.shapes import attention_shape
from bench.harness.spec import Bound, KernelBench, Provider

DTYPE = torch.bfloat16
VARIANT = {"window_reduce": "mean", "group_reduce": "mean", "pool": "max", "pool_size": 7}


def configs(mode: str) -> list[dict[str, Any]]:
    if mode == "dry":
        grid = [("llama3-8b", 96, 8), ("smollm2-135m", 80, 16)]
    elif mode == "quick":
        grid = [("llama3-8b", 32768, 32), ("smollm2-135m", 8192, 32)]
    else:
        grid = [("llama3-8b", n, 32) for n in (4096, 8192, 16384, 32768, 65536, 131072)]
        grid += [("llama3-8b", 32768, w) for w in (8, 64)]
        grid += [("smollm2-135m", n, 32) for n in (4096, 8192, 32768)]
    return [{"model": m, "prompt": n, "window": w} for m, n, w in grid]


class ScoringCase:
    def __init__(self, config: dict[str, Any], device: torch.device):
        self.shape = attention_shape(config["model"])
        self.n, self.w, self.device = config["prompt"], config["window"], device
        d = self.shape.head_dim
        self.q_win = torch.randn(self.shape.num_qo_heads, self.w, d, dtype=DTYPE, device=device)
        self.k = torch.randn(self.shape.num_kv_heads, self.n, d, dtype=DTYPE, device=device)

    @cached_property
    def prefill_qv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All prompt queries `[1, qo_heads, n, d]` and values `[1, kv_heads, n, d]` for the prefill yardstick."""
        d = self.shape.head_dim
        q = torch.randn(1, self.shape.num_qo_heads, self.n, d, dtype=DTYPE, device=self.device)
        return q, torch.randn(1, self.shape.num_kv_heads, self.n, d, dtype=DTYPE, device=self.device)


def naive_window_scores(q_win: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The published SnapKV/HeadKV scoring (materialised, model dtype), with the reductions of `VARIANT`."""
    num_qo_heads, w, d = q_win.shape
    num_kv_heads, n, _ = k.shape
    group = num_qo_heads // num_kv_heads
    keys = k[:, None].expand(num_kv_heads, group, n, d).reshape(num_qo_heads, n, d)  # repeat_kv: a copy
    attn = torch.matmul(q_win, keys.transpose(1, 2)) / math.sqrt(d)  # [heads, w, n] in the model dtype
    mask = torch.full((w, w), float("-inf"), dtype=attn.dtype, device=attn.device).triu(1)
    attn[:, :, -w:] += mask
    attn = F.softmax(attn, dim=-1, dtype=torch.float32).to(q_win.dtype)
    scores = attn[:, :, : n - w].mean(dim=1).view(num_kv_heads, group, n - w).mean(dim=1).float()
    size = VARIANT["pool_size"]
    return F.max_pool1d(scores[:, None], size, stride=1, padding=size // 2)[:, 0]


def scores_ref(case: ScoringCase) -> torch.Tensor:
    return reference("window_scores")(case.q_win, case.k, **VARIANT)


def _triton(case: ScoringCase) -> Bound:
    window_scores = launcher("window_scores")
    return Bound(lambda: window_scores(case.q_win, case.k, **VARIANT))


def _prefill_attn(case: ScoringCase) -> Bound:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, v = case.prefill_qv
    k = case.k[None]
    return Bound(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                   context=lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION))


PROVIDERS = [
    Provider("naive", "published SnapKV/HeadKV way: repeat_kv + materialised [heads, w, n] attention in bf16",
               lambda c: Bound(lambda: naive_window_scores(c.q_win, c.k)), rtol=5e-2),
    Provider("triton", "raggedkv window_scores (two passes, nothing [heads, w, n] allocated)", _triton,
               requires=functools.partial(missing_module, "raggedkv.kernels.window_scores")),
    Provider("torch_ref", "raggedkv window_scores_ref (materialised, fp32)",
               lambda c: Bound(lambda: scores_ref(c))),
    Provider("prefill_attn", "yardstick, not a scorer: the layer's causal prefill attention (SDPA flash)",
               _prefill_attn, ref=None),
]


def nbytes(config: dict[str, Any], provider: str) -> int:
    s, n, w = attention_shape(config["model"]), config["prompt"], config["window"]
    item = DTYPE.itemsize
    if provider == "prefill_attn":  # q, k, v read, out written
        return (2 * s.num_qo_heads + 2 * s.num_kv_heads) * n * s.head_dim * item
    return (s.num_kv_heads * n + s.num_qo_heads * w) * s.head_dim * item + s.num_kv_heads * (n - w) * 4


def flops(config: dict[str, Any], provider: str) -> float:
    """Nominal: one `Q_w K^T` for the scorers; causal `QK^T` + `PV` for the prefill attention."""
    s, n, w = attention_shape(config["model"]), config["prompt"], config["window"]
    if provider == "prefill_attn":
        return 2.0 * s.num_qo_heads * n * n * s.head_dim  # 4 * h * n^2 * d / 2 (causal)
    return 2.0 * s.num_qo_heads * w * n * s.head_dim


def derive(rows: list[dict[str, Any]]) -> None:
    prefill = next((r["ms_p50"] for r in rows if r["provider"] == "prefill_attn"), None)
    for r in rows:
        r["pct_prefill"] = 100 * r["ms_p50"] / prefill if prefill and r["ms_p50"] else None


BENCH = KernelBench(
    name="scoring",
    title="window_scores (one layer, one sequence) vs materialised window attention",
    configs=configs,
    make_case=ScoringCase,
    providers=PROVIDERS,
    references={"ref": scores_ref},
    baseline=("naive",),
    metrics=("p50_us", "p20_us", "p80_us", "TFLOP/s", "peak_MiB", "pct_prefill", "speedup", "max_err"),
    rtol=1e-3,
    nbytes=nbytes,
    flops=flops,
    derive=derive,
    notes=("variant: window mean, group mean, max pool 7 (SnapKV defaults); TFLOP/s counts one Q_w K^T",
           "pct_prefill = 100 * time / the same layer's causal prefill attention; peak_MiB = extra memory of a call"),
)


def main(argv: list[str] | None = None) -> int:
    return kernel_run.main(BENCH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
