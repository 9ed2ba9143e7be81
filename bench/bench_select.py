"""Select and pack (`select_and_pack`) vs torch.topk + gather per head in a Python loop.

    python -m bench.bench_select [--quick|--full] [--providers ...] [--out DIR] [--no-refcheck] [--cuda-graph]
                                 [--dry-run]

One call compresses one layer of `batch` sequences after prefill: each (sequence, KV head) keeps its own number
of top-scored prefix tokens (`kv_size - window` on average, `uniform` or `skew` budgets of equal total, as
`harness/budgets.py` plans them), in position order, plus the `window` last tokens, written into its segment of
the ragged cache.

Bytes (same for every provider): the kept K and V rows read and written, plus the scores read.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from bench.harness import kernel_run
from bench.harness.budgets import head_budgets
from bench.harness.environment import launcher, missing_module, reference
from bench.harness.shapes import KERNEL_SHAPES, attention_shape
from bench.harness.spec import Bound, KernelBench, Provider

DTYPE = torch.bfloat16
WINDOW = 32
HEADROOM = 512


@functools.cache
def _budgets(model: str, batch: int, prompt: int, kv_size: int, budgets: str, window: int) -> tuple[int, ...]:
    return tuple(b - window for b in head_budgets(model, batch, prompt, kv_size, budgets, window=window))


def prefix_budgets(config: dict[str, Any]) -> tuple[int, ...]:
    """Prefix tokens kept per segment (window excluded), deterministic from the config."""
    return _budgets(config["model"], config["batch"], config["prompt"], config["kv_size"], config["budgets"],
                    config["window"])


def _config(model: str, batch: int, prompt: int, kv_size: int, budgets: str, window: int = WINDOW) -> dict:
    kept = _budgets(model, batch, prompt, kv_size, budgets, window)
    skew = (max(kept) + window) * len(kept) / (sum(kept) + window * len(kept))
    return {"model": model, "batch": batch, "prompt": prompt, "window": window, "kv_size": kv_size,
            "budgets": budgets, "max/mean": f"{skew:.2f}"}


def configs(mode: str) -> list[dict[str, Any]]:
    if mode == "dry":
        return [_config("llama3-8b", 1, 200, 40, "skew", 8), _config("smollm2-135m", 2, 120, 24, "uniform", 8)]
    if mode == "quick":
        grid = [("llama3-8b", 1, n, kv) for n in (32768, 131072) for kv in (128, 2048)]
    else:
        grid = [(m, 1, n, kv) for m in KERNEL_SHAPES for n in (4096, 16384, 32768, 131072) for kv in (128, 512, 2048)]
        grid += [("llama3-8b", 8, 32768, kv) for kv in (128, 2048)]
    return [_config(m, b, n, kv, dist) for m, b, n, kv in grid for dist in ("uniform", "skew")]


class SelectCase:
    def __init__(self, config: dict[str, Any], device: torch.device):
        from raggedkv.kernels import plan_segments

        shape = attention_shape(config["model"])
        n, w = config["prompt"], config["window"]
        self.budget_list = list(prefix_budgets(config))
        segments = len(self.budget_list)
        self.budgets = torch.tensor(self.budget_list, dtype=torch.int64, device=device)
        self.scores = torch.randn(segments, n - w, dtype=torch.float32, device=device)  # tie-free
        self.k_src = torch.randn(segments, n, shape.head_dim, dtype=DTYPE, device=device)
        self.v_src = torch.randn_like(self.k_src)
        plan = plan_segments(self.budgets + w, HEADROOM if device.type == "cuda" else 4, device=device)
        self.kv_indptr, self.kv_lens = plan.kv_indptr, plan.kv_lens
        self.k_cache = torch.zeros(plan.total_slots, shape.head_dim, dtype=DTYPE, device=device)
        self.v_cache = torch.zeros_like(self.k_cache)
        lens = (self.budgets + w).to(device)
        rows = torch.repeat_interleave(self.kv_indptr[:-1].long(), lens)
        self.valid_rows = rows + torch.arange(rows.numel(), device=device) - torch.repeat_interleave(
            lens.cumsum(0) - lens, lens)

    def args(self) -> tuple:
        return (self.scores, self.budgets, self.k_src, self.v_src, self.k_cache, self.v_cache, self.kv_indptr,
                self.kv_lens)

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.kv_lens.zero_()

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the call must have written: the valid rows of K and V, and `kv_lens`."""
        return self.k_cache[self.valid_rows], self.v_cache[self.valid_rows], self.kv_lens.clone()


def naive_select(case: SelectCase) -> None:
    """One head at a time: torch.topk of its budget, sort the indices, gather its rows and the window."""
    m = case.scores.shape[1]
    starts = case.kv_indptr.tolist()
    for s, budget in enumerate(case.budget_list):
        keep = torch.cat([torch.topk(case.scores[s], budget).indices.sort().values,
                          torch.arange(m, case.k_src.shape[1], device=case.scores.device)])
        start = starts[s]
        case.k_cache[start:start + keep.numel()] = case.k_src[s, keep]
        case.v_cache[start:start + keep.numel()] = case.v_src[s, keep]
        case.kv_lens[s] = keep.numel()


def _calling(get_fn):
    """A provider setup that calls `get_fn()(*case.args())`, checked through `case.result` after `case.reset`."""
    def setup(case: SelectCase) -> Bound:
        fn = get_fn()
        return Bound(lambda: fn(*case.args()), result=case.result, reset=case.reset)
    return setup


def select_ref(case: SelectCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    case.reset()
    reference("select_and_pack")(*case.args())
    return case.result()


PROVIDERS = [
    Provider("naive", "torch.topk + sort + gather per head in a Python loop (published code)",
               lambda c: Bound(lambda: naive_select(c), result=c.result, reset=c.reset)),
    Provider("triton", "raggedkv select_and_pack (batched sort + one gather kernel)",
               _calling(lambda: launcher("select_and_pack")),
               requires=functools.partial(missing_module, "raggedkv.kernels.select_pack")),
    Provider("torch_ref", "raggedkv select_and_pack_ref (vectorised torch)",
               _calling(lambda: reference("select_and_pack"))),
]


def nbytes(config: dict[str, Any], provider: str) -> int:
    shape = attention_shape(config["model"])
    kept = prefix_budgets(config)
    rows = sum(kept) + config["window"] * len(kept)
    return 4 * rows * shape.head_dim * DTYPE.itemsize + len(kept) * (config["prompt"] - config["window"]) * 4


BENCH = KernelBench(
    name="select",
    title="select_and_pack (one layer after prefill) vs topk + gather per head",
    configs=configs,
    make_case=SelectCase,
    providers=PROVIDERS,
    references={"ref": select_ref},
    baseline=("naive",),
    metrics=("MiB", "p50_us", "p20_us", "p80_us", "GB/s", "frac_copy", "peak_MiB", "speedup", "max_err"),
    rtol=0.0,
    nbytes=nbytes,
    notes=("kv_size = tokens kept per head on average, window included; scores are random fp32 (tie-free)",
           "MiB = kept K/V rows read and written + scores read; peak_MiB = extra memory of a call"),
)


def main(argv: list[str] | None = None) -> int:
    return kernel_run.main(BENCH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
