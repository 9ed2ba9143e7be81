"""How an output is compared with its reference: the one rule the tests and the benchmarks share.

An output is close to its reference when its max absolute error is at most `rel * max |reference|`, after both
are cast to fp64 (a reference of all zeros leaves no room for error). A shape mismatch or a NaN where the other
has none is never close. `assert_close` raises with where and by how much (tests); `compare` returns the error
and a verdict over a tensor or a tuple of tensors (benchmarks' reference check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# The scale under a reference of all zeros: the error must then be 0 up to fp64 rounding.
TINY_SCALE = 1e-30


@dataclass(frozen=True, slots=True)
class Closeness:
    """The comparison of one tensor with its reference.

    max_abs_err: max |actual - expected| over the elements (inf on a shape or NaN-pattern mismatch).
    scale: max |expected| (at least TINY_SCALE); the tolerance is `rel * scale`.
    problem: None when close at the `rel` asked for, else a sentence saying where and by how much.
    """

    max_abs_err: float
    scale: float
    problem: str | None


def closeness(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "output") -> Closeness:
    """Compare `actual` with `expected` (any dtypes; computed in fp64 on `actual`'s device) at tolerance `rel`."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Closeness(math.inf, math.nan,
                         f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    actual64 = actual.detach().double()
    expected64 = expected.detach().to(actual64.device, torch.float64)
    nan_mismatch = torch.isnan(actual64) != torch.isnan(expected64)
    if bool(nan_mismatch.any()):
        return Closeness(math.inf, math.nan, f"{what}: NaN mismatch at {nan_mismatch.nonzero()[:5].tolist()}")
    if actual64.numel() == 0:
        return Closeness(0.0, TINY_SCALE, None)
    err = (actual64 - expected64).abs().nan_to_num(0.0)
    scale = max(expected64.abs().nan_to_num(0.0).max().item(), TINY_SCALE)
    worst = err.max().item()
    if worst <= rel * scale:
        return Closeness(worst, scale, None)
    idx = tuple(torch.nonzero(err == worst)[0].tolist())
    bad = int((err > rel * scale).sum())
    return Closeness(worst, scale, (
        f"{what}: max abs error {worst:.3e} > {rel:.1e} x {scale:.3e} at {list(idx)} "
        f"(actual {actual64[idx].item():.6e}, expected {expected64[idx].item():.6e}); "
        f"{bad}/{err.numel()} elements out of tolerance"
    ))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "output") -> None:
    """Raise AssertionError (where and by how much) unless `actual` is close to `expected` at `rel`."""
    problem = closeness(actual, expected, rel, what).problem
    if problem is not None:
        raise AssertionError(problem)


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    raise TypeError(f"an output to compare must be a tensor or a tuple of tensors, got {type(x).__name__}")


def compare(actual: Any, expected: Any, rel: float) -> tuple[float, bool]:
    """(max abs error over all tensors, all close): tensors or (nested) tuples of tensors, paired in order.

    Each tensor is judged against its own reference's scale; a different number of tensors is an infinite error.
    """
    got, want = _tensors(actual), _tensors(expected)
    if len(got) != len(want):
        return math.inf, False
    results = [closeness(a, e, rel) for a, e in zip(got, want)]
    return max((r.max_abs_err for r in results), default=0.0), all(r.problem is None for r in results)
