"""Compile a `Launch` ahead of time for an NVIDIA target, on a machine without a GPU.

The signature and the specialisation come from Triton's own binder, the code a real launch runs
(`triton.runtime.jit.create_function_from_signature` with the target's backend, then `JITFunction._pack_args`;
the same in Triton 3.6 and 3.9): a tensor becomes `*bf16`/`*fp16`/`*fp32`/`*i32`/`*i64`, an int `i32` or `i64`
by range, a float `fp32`; a pointer whose address is a multiple of 16 and an int divisible by 16 get
`tt.divisibility = 16`; an int equal to 1 becomes the constant 1. The report passes `device="meta"` tensors:
their address is `storage_offset * itemsize` (a fresh one is 0), the alignment a fresh CUDA allocation (256-byte
aligned) gives, so a view at an odd offset is specialised as a real launch of that view would be.
`triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))` then runs the whole pipeline (TTIR,
TTGIR, LLVM IR, PTX, ptxas) and returns the cubin; Triton's on-disk cache makes a repeated compile cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from raggedkv.kernels._utils import Launch

from .occupancy import WARP_SIZE, ArchLimits


@contextmanager
def _quiet_fp_fusion_default() -> Iterator[None]:
    """Silence Triton 3.9's notice that its FP-fusion default (on, as in 3.6 and as launches get) will change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        yield


@dataclass(frozen=True)
class BoundLaunch:
    """A launch bound for one target: what Triton compiles, and the key that tells two compiles apart."""

    kernel: JITFunction
    target: GPUTarget
    signature: dict[str, str]
    constexprs: dict[tuple, object]
    attrs: dict[tuple, list]
    options: object
    num_warps: int
    num_stages: int

    @property
    def key(self) -> str:
        """Equal for two launches that compile to the same cubin."""
        return repr((self.kernel.fn.__qualname__, self.target, self.signature, sorted(self.constexprs.items()),
                     sorted(self.attrs.items()), sorted(self.options.__dict__.items())))

    @property
    def specialised(self) -> dict[str, object]:
        """Runtime arguments Triton specialised: `name: 1` (a constant) or `name: "div16"` (divisibility 16)."""
        params = self.kernel.params
        found: dict[str, object] = {}
        for (index, *_), value in self.constexprs.items():
            if not params[index].is_constexpr:
                found[params[index].name] = value
        for (index, *_), hints in self.attrs.items():
            if any(hint[0] == "tt.divisibility" for hint in hints):
                found[params[index].name] = "div16"
        return found


@dataclass(frozen=True)
class CompiledLaunch:
    """The cubin of one bound launch and what the compiler's metadata says about it."""

    cubin: bytes
    dynamic_shared: int
    num_warps: int
    num_stages: int


def bind_launch(launch: Launch, arch: ArchLimits) -> BoundLaunch:
    """Signature, constants and attributes of `launch` as a launch from torch tensors would bind them for `arch`.

    Raises:
        TypeError: the launch's kernel is not a `JITFunction` (e.g. it was imported with TRITON_INTERPRET=1 set).
    """
    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise TypeError(
            f"{launch.name} is a {type(kernel).__name__}, not a triton JITFunction: import the kernels without "
            "TRITON_INTERPRET=1 to compile them"
        )
    target = GPUTarget("cuda", arch.capability, WARP_SIZE)
    backend = make_backend(target)
    kwargs = {**launch.constexprs, "num_warps": launch.num_warps, "num_stages": launch.num_stages}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialisation, options = binder(*launch.args, **kwargs)
    with _quiet_fp_fusion_default():
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialisation,
                                                                  options)
    return BoundLaunch(kernel, target, signature, constexprs, attrs, options, launch.num_warps, launch.num_stages)


def compile_bound(bound: BoundLaunch) -> CompiledLaunch:
    """Run Triton's whole pipeline (TTIR .. ptxas) for `bound`.

    Raises:
        Any error of Triton's compiler (for example a shape a `tl.dot` cannot take).
    """
    with _quiet_fp_fusion_default():
        source = ASTSource(bound.kernel, bound.signature, bound.constexprs, bound.attrs)
        compiled = triton.compile(source, target=bound.target, options=bound.options.__dict__)
    return CompiledLaunch(
        cubin=compiled.asm["cubin"],
        dynamic_shared=int(compiled.metadata.shared),
        num_warps=int(compiled.metadata.num_warps),
        num_stages=int(compiled.metadata.num_stages),
    )
