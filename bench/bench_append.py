"""O(1) append (`append_kv`) vs re-concatenating the cache every step, as the published HeadKV/AdaKV code does.

    python -m bench.bench_append [--quick|--full] [--providers ...] [--out DIR] [--no-refcheck] [--cuda-graph]
                                 [--dry-run]

One call appends one decode token to one layer: a new K and V row for every (sequence, KV head) segment holding
`kv_size` tokens. `append_kv` writes the rows in place and bumps `kv_lens` on the device; `reconcat` is Ada-KV's
flattened cache update (`update_flatten_view`, also used by HeadKV's code): allocate a buffer one row longer per
segment and copy the whole cache plus the new rows into it. `kv_lens` is restored between timed calls (untimed),
so every call appends at the same length.

Bytes: `append_kv` reads the new rows and writes them (K and V) plus the lengths; `reconcat` reads the whole
cache and the new rows and writes the new cache.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from bench.harness import kernel_run
from bench.harness.environment import launcher, missing_module, reference
from bench.harness.shapes import KERNEL_SHAPES, attention_shape
from bench.harness.spec import Bound, KernelBench, Provider

DTYPE = torch.bfloat16


def configs(mode: str) -> list[dict[str, Any]]:
    if mode == "dry":
        grid = [("llama3-8b", 1, 24), ("smollm2-135m", 2, 10)]
    elif mode == "quick":
        grid = [("llama3-8b", b, kv) for b in (1, 16) for kv in (2048, 32768)]
    else:
        grid = [(m, b, kv) for m in KERNEL_SHAPES for b in (1, 16) for kv in (128, 512, 2048, 8192, 32768)]
    return [{"model": m, "batch": b, "kv_size": kv} for m, b, kv in grid]


class AppendCase:
    """A ragged layer cache whose segments hold `kv_size` tokens, one new K/V row per segment, and the same
    tokens flattened back to back (Ada-KV's layout) for the re-concatenating baseline."""

    def __init__(self, config: dict[str, Any], device: torch.device):
        from raggedkv.kernels import plan_segments

        shape = attention_shape(config["model"])
        segments, kv_size, d = config["batch"] * shape.num_kv_heads, config["kv_size"], shape.head_dim
        self.lens0 = torch.full((segments,), kv_size, dtype=torch.int32, device=device)
        plan = plan_segments(self.lens0, 16, device=device)
        self.kv_indptr, self.kv_lens = plan.kv_indptr, plan.kv_lens
        self.kv_lens.copy_(self.lens0)
        self.k_cache = torch.randn(plan.total_slots, d, dtype=DTYPE, device=device)
        self.v_cache = torch.randn_like(self.k_cache)
        self.k_new = torch.randn(segments, d, dtype=DTYPE, device=device)
        self.v_new = torch.randn_like(self.k_new)
        self.new_rows = self.kv_indptr[:-1].long() + kv_size
        # Flattened copy (no headroom) and where its rows go after one append.
        self.k_flat = torch.randn(segments * kv_size, d, dtype=DTYPE, device=device)
        self.v_flat = torch.randn_like(self.k_flat)
        seg_of_row = torch.arange(segments, device=device).repeat_interleave(kv_size)
        self.flat_old_dst = torch.arange(segments * kv_size, device=device) + seg_of_row
        self.flat_new_dst = torch.arange(1, segments + 1, device=device) * (kv_size + 1) - 1
        self.cu_seqlens = torch.arange(segments + 1, dtype=torch.int32, device=device) * kv_size

    def args(self) -> tuple:
        return self.k_new, self.v_new, self.k_cache, self.v_cache, self.kv_indptr, self.kv_lens

    def reset(self) -> None:
        self.kv_lens.copy_(self.lens0)

    def clear_and_reset(self) -> None:
        """Before a checked call: also blank the rows it must write, so a call that writes nothing fails."""
        self.k_cache[self.new_rows] = 0
        self.v_cache[self.new_rows] = 0
        self.reset()

    def result(self) -> tuple[torch.Tensor, ...]:
        return self.k_cache[self.new_rows], self.v_cache[self.new_rows], self.kv_lens.clone()


def reconcat(case: AppendCase) -> tuple[torch.Tensor, ...]:
    """Ada-KV's flattened update: a new buffer with one more row per segment, old rows and new rows copied in."""
    total, segments = case.k_flat.shape[0], case.k_new.shape[0]
    k = case.k_flat.new_empty(total + segments, case.k_flat.shape[1])
    v = torch.empty_like(k)
    k.index_copy_(0, case.flat_old_dst, case.k_flat).index_copy_(0, case.flat_new_dst, case.k_new)
    v.index_copy_(0, case.flat_old_dst, case.v_flat).index_copy_(0, case.flat_new_dst, case.v_new)
    cu = case.cu_seqlens + torch.arange(segments + 1, dtype=torch.int32, device=k.device)
    return k, v, cu


def _reconcat(case: AppendCase) -> Bound:
    state: dict[str, Any] = {}

    def step() -> tuple[torch.Tensor, ...]:
        state["out"] = reconcat(case)
        return state["out"]

    def result() -> tuple[torch.Tensor, ...]:
        k, v, cu = state["out"]
        return k[case.flat_new_dst], v[case.flat_new_dst], (cu[1:] - cu[:-1])

    return Bound(step, result=result)


def _calling(get_fn):
    def setup(case: AppendCase) -> Bound:
        fn = get_fn()
        return Bound(lambda: fn(*case.args()), result=case.result, reset=case.clear_and_reset)
    return setup


def append_ref(case: AppendCase) -> tuple[torch.Tensor, ...]:
    return case.k_new, case.v_new, case.lens0 + 1


PROVIDERS = [
    Provider("reconcat", "Ada-KV/HeadKV flattened cache: new buffer + copy of the whole cache every step",
               _reconcat),
    Provider("triton", "raggedkv append_kv (in place, kv_lens += 1 on the device)",
               _calling(lambda: launcher("append_kv")),
               requires=functools.partial(missing_module, "raggedkv.kernels.append")),
    Provider("torch_ref", "raggedkv append_kv_ref (torch index writes)", _calling(lambda: reference("append_kv"))),
]


def nbytes(config: dict[str, Any], provider: str) -> int:
    shape = attention_shape(config["model"])
    segments = config["batch"] * shape.num_kv_heads
    row = shape.head_dim * DTYPE.itemsize
    if provider == "reconcat":
        return 2 * (2 * segments * config["kv_size"] + 2 * segments) * row
    return 2 * 2 * segments * row + 3 * segments * 4


BENCH = KernelBench(
    name="append",
    title="append_kv (one layer, one decode token) vs re-concatenating the cache",
    configs=configs,
    make_case=AppendCase,
    providers=PROVIDERS,
    references={"ref": append_ref},
    baseline=("reconcat",),
    metrics=("MiB", "p50_us", "p20_us", "p80_us", "GB/s", "peak_MiB", "speedup", "max_err"),
    rtol=0.0,
    nbytes=nbytes,
    notes=("kv_size = tokens per segment before the append; peak_MiB = memory a call allocates",),
)


def main(argv: list[str] | None = None) -> int:
    return kernel_run.main(BENCH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
