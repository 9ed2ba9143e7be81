"""Shared launcher helpers: argument checks that name the bad argument, interpreter detection, and `Launch`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def is_interpreter() -> bool:
    """True when Triton kernels run under the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    contiguous: bool = False,
    last_dim_contiguous: bool = False,
) -> torch.Tensor:
    """Validate a launcher argument; raise an error that names it, its value and what is accepted.

    Raises:
        TypeError: `t` is not a tensor, or has a dtype outside `dtypes`.
        ValueError: wrong number of dims, wrong device, or a layout the kernel cannot read.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        accepted = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).removeprefix('torch.')}; accepted: {accepted}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, but the other arguments are on {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {t.stride()} for shape {tuple(t.shape)})")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim, got strides {t.stride()}")
    return t


def check_same_shape(name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """Raise ValueError naming both arguments when their shapes differ."""
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {like_name} has shape {tuple(like.shape)}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ValueError naming the argument when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    if t.device.type != "cuda" and not is_interpreter():
        raise ValueError(
            f"{name} is on {t.device}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
            "raggedkv.kernels is imported); use the *_ref functions in raggedkv.kernels.reference on the CPU"
        )


def next_power_of_2(x: int) -> int:
    """Smallest power of two >= max(x, 1)."""
    return 1 << max(int(x) - 1, 0).bit_length()


@dataclass(frozen=True)
class Launch:
    """One kernel launch exactly as a launcher issues it: kernel, grid, runtime arguments and compile options.

    Every launcher builds its launches with a pure function (`_<name>_launches(...) -> list[Launch]`, no device
    reads, no allocation other than its outputs and scratch) and then calls each one. The kernel resource report
    (`bench/kernel_report.py`) calls the same functions with `device="meta"` tensors, so what it compiles ahead of
    time is the launcher's own configuration (block sizes, warps, stages, argument specialisation), never a copy.

    kernel: the `@triton.jit` function. grid: program counts per axis. args: positional runtime arguments
    (tensors, ints, floats) in the kernel's order. constexprs: `tl.constexpr` arguments by name.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2

    @property
    def name(self) -> str:
        """The kernel's Python name, e.g. `_decode_stage1_kernel`."""
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def __call__(self) -> None:
        """Launch it (skipped when the grid is empty)."""
        if all(g > 0 for g in self.grid):
            self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)
