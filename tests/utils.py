"""Test helpers: tolerances, a verbose closeness check, ragged cases and sentinel-filled caches."""

from __future__ import annotations

import torch

from raggedkv.kernels import plan_segments

# Relative-error limits against an fp64 reference, per input dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3, torch.float64: 1e-12}
SENTINEL = 1234.5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "output") -> None:
    """Max abs error <= rel * max(|expected|, tiny); on failure print where and by how much."""
    actual64 = actual.detach().to("cpu", torch.float64)
    expected64 = expected.detach().to("cpu", torch.float64)
    assert actual64.shape == expected64.shape, f"{what}: shape {tuple(actual64.shape)} != {tuple(expected64.shape)}"
    nan_mismatch = torch.isnan(actual64) != torch.isnan(expected64)
    assert not nan_mismatch.any(), f"{what}: NaN mismatch at {nan_mismatch.nonzero()[:5].tolist()}"
    if actual64.numel() == 0:
        return
    err = (actual64 - expected64).abs().nan_to_num(0.0)
    scale = max(expected64.abs().nan_to_num(0.0).max().item(), 1e-30)
    worst = err.max().item()
    if worst > rel * scale:
        idx = torch.nonzero(err == err.max())[0].tolist()
        bad = int((err > rel * scale).sum())
        raise AssertionError(
            f"{what}: max abs error {worst:.3e} > {rel:.1e} x {scale:.3e} at {idx} "
            f"(actual {actual64[tuple(idx)].item():.6e}, expected {expected64[tuple(idx)].item():.6e}); "
            f"{bad}/{err.numel()} elements out of tolerance"
        )


def sentinel_cache(total_slots: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A `[total_slots, head_dim]` cache whose every row holds SENTINEL, to detect writes outside a segment."""
    return torch.full((total_slots, head_dim), SENTINEL, dtype=dtype, device=device)


def random_lengths_plan(lens: list[int], headroom: int, device: torch.device):
    """A SegmentPlan for segments that keep `lens` tokens, with `kv_lens` set to `lens`."""
    plan = plan_segments(torch.tensor(lens, dtype=torch.int64), headroom, device=device)
    plan.kv_lens.copy_(torch.tensor(lens, dtype=torch.int32, device=device))
    return plan
