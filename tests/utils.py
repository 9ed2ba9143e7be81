"""Test helpers: tolerances, the closeness check (from `raggedkv.closeness`, shared with the benchmarks), ragged
cases and sentinel-filled caches."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raggedkv.closeness import assert_close  # noqa: F401 - the tests import it from here
from raggedkv.kernels import plan_segments

# Relative-error limits against an fp64 reference, per input dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3, torch.float64: 1e-12}
SENTINEL = 1234.5


def sentinel_cache(total_slots: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A `[total_slots, head_dim]` cache whose every row holds SENTINEL, to detect writes outside a segment."""
    return torch.full((total_slots, head_dim), SENTINEL, dtype=dtype, device=device)


def random_lengths_plan(lens: list[int], headroom: int, device: torch.device):
    """A SegmentPlan for segments that keep `lens` tokens, with `kv_lens` set to `lens`."""
    plan = plan_segments(torch.tensor(lens, dtype=torch.int64), headroom, device=device)
    plan.kv_lens.copy_(torch.tensor(lens, dtype=torch.int32, device=device))
    return plan


class RecordOutputBytes(TorchDispatchMode):
    """Records the size in bytes of every tensor any aten op returns while active (allocation tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[str, tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.outputs.append((str(func), tuple(t.shape), t.numel() * t.element_size()))
        return out
