"""Ragged decode test cases: sentinel-filled caches, the fp64 expected output, and a host-sync detector."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from raggedkv.kernels import SegmentPlan
from raggedkv.kernels.decode import _pick_block_n, plan_decode, ragged_decode_attention
from raggedkv.kernels.reference import ragged_decode_attention_ref
from torch.utils._python_dispatch import TorchDispatchMode

from tests.utils import TOLERANCE, random_lengths_plan, sentinel_cache

CHUNK = 128  # chunk size of the edge-length cases: BLOCK_N is 32 or 64, so a chunk holds 2-4 tiles


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def output_tolerance(dtype: torch.dtype) -> float:
    """Relative error limit of an output in `dtype`: the compute limit plus one ulp for the cast on store."""
    return TOLERANCE[dtype] + torch.finfo(dtype).eps


def valid_rows(plan: SegmentPlan) -> torch.Tensor:
    """Row indices of every valid token, `[sum(kv_lens)]` int64."""
    starts, lens = plan.kv_indptr[:-1].tolist(), plan.kv_lens.tolist()
    rows = [torch.arange(start, start + n) for start, n in zip(starts, lens, strict=True)]
    return torch.cat([*rows, torch.zeros(0, dtype=torch.int64)])


def ragged_cache(plan: SegmentPlan, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A sentinel-filled `[total_slots, head_dim]` cache with random values in the valid rows of `plan`."""
    cache = sentinel_cache(plan.total_slots, head_dim, dtype, device)
    rows = valid_rows(plan).to(device)
    cache[rows] = torch.randn(rows.numel(), head_dim, device=device).to(dtype)
    return cache


def make_case(lens, batch, group, head_dim, dtype, device, *, headroom=3, q_dtype=None):
    """Query, K/V caches and plan for segments of `lens` tokens (`len(lens) == batch * num_kv_heads`)."""
    plan = random_lengths_plan(list(lens), headroom, device)
    num_qo_heads = len(lens) // batch * group
    q = torch.randn(batch, num_qo_heads, head_dim, device=device).to(q_dtype or dtype)
    k_cache = ragged_cache(plan, head_dim, dtype, device)
    v_cache = ragged_cache(plan, head_dim, dtype, device)
    return q, k_cache, v_cache, plan


def expected_output(q, k_cache, v_cache, plan, sm_scale=None):
    """The reference in fp64 from the same inputs."""
    return ragged_decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), plan.kv_indptr,
                                       plan.kv_lens, sm_scale)


def run_decode(q, k_cache, v_cache, plan, chunk_size, **kwargs):
    """The kernel with a capacity plan for `chunk_size` (the no-sync, CUDA-graph path)."""
    chunk_size, max_chunks = plan_decode(plan.capacities, chunk_size=chunk_size)
    return ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, chunk_size=chunk_size,
                                   max_chunks=max_chunks, **kwargs)


def edge_lengths(head_dim: int) -> list[int]:
    """Nine segment lengths that break ragged kernels, in random order: 0, 1, BLOCK_N +- 1, CHUNK +- 1, long."""
    block_n = _pick_block_n(head_dim, CHUNK)
    lens = [0, 1, block_n - 1, block_n, block_n + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
    return [lens[i] for i in torch.randperm(len(lens)).tolist()]


class _FailOnSync(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync: aten._local_scalar_dense")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Fail on any device-to-host scalar read: `.item()`, `.tolist()`, `bool()`/`int()`/`float()` of a tensor."""

    def fail(name):
        def raise_sync(*args, **kwargs):
            raise AssertionError(f"host sync: torch.Tensor.{name}")

        return raise_sync

    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            mp.setattr(torch.Tensor, name, fail(name))
        with _FailOnSync():
            yield
