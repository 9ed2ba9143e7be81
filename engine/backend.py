"""Kernel backends: the four ragged-cache operations the engine runs, chosen by name.

* ``"torch"``: the vectorised references (`raggedkv.kernels.reference`); any device, the CPU default. Its scorer is
  `window_scores_chunked`, which scores the window a chunk of keys at a time (no `[heads, w, n]` tensor).
* ``"triton"``: the Triton launchers; CUDA tensors, or CPU tensors under the interpreter (`TRITON_INTERPRET=1` set
  before `raggedkv.kernels` is imported, as the tests do).
* ``"auto"``: ``"triton"`` on CUDA, ``"torch"`` otherwise.

Both kinds have the signatures and semantics of the `*_ref` functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from raggedkv.kernels import (
    append_kv,
    plan_decode,
    ragged_decode_attention,
    reference,
    select_and_pack,
    window_scores,
)
from raggedkv.kernels._utils import is_interpreter

from .arguments import BACKEND_NAMES


@dataclass(frozen=True)
class Backend:
    """The engine's kernels: callables with the signatures of the `*_ref` functions in `raggedkv.kernels.reference`.

    plan_decode: `(capacities, device) -> dict` of extra keyword arguments for `ragged_decode_attention`, computed
        once per generation from a layer's host-side int64 `[num_segments]` segment capacities, so a decode step
        never reads lengths back from the device.
    """

    name: str
    window_scores: Callable[..., torch.Tensor]
    select_and_pack: Callable[..., None]
    append_kv: Callable[..., None]
    ragged_decode_attention: Callable[..., torch.Tensor]
    plan_decode: Callable[[torch.Tensor, torch.device], dict]


def _no_decode_plan(capacities: torch.Tensor, device: torch.device) -> dict:
    return {}


TORCH_BACKEND = Backend(
    name="torch",
    window_scores=reference.window_scores_chunked,
    select_and_pack=reference.select_and_pack_ref,
    append_kv=reference.append_kv_ref,
    ragged_decode_attention=reference.ragged_decode_attention_ref,
    plan_decode=_no_decode_plan,
)

def _triton_plan_decode(capacities: torch.Tensor, device: torch.device) -> dict:
    # The interpreter runs programs one after another: plan for a single "SM" (fewest, longest chunks).
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    chunk_size, max_chunks = plan_decode(capacities, num_sms=num_sms)
    return {"chunk_size": chunk_size, "max_chunks": max_chunks}


TRITON_BACKEND = Backend(
    name="triton",
    window_scores=window_scores,
    select_and_pack=select_and_pack,
    append_kv=append_kv,
    ragged_decode_attention=ragged_decode_attention,
    plan_decode=_triton_plan_decode,
)


def get_backend(name: str, device: torch.device | str) -> Backend:
    """The backend called `name` for tensors on `device`.

    Raises:
        ValueError: an unknown name, or ``"triton"`` for CPU tensors without the interpreter.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is not supported; choose one of {list(BACKEND_NAMES)}")
    device = torch.device(device)
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TORCH_BACKEND
    if device.type != "cuda" and not is_interpreter():
        raise ValueError(
            f"backend='triton' needs a CUDA device, but the model is on {device} (the Triton interpreter runs on the "
            "CPU only with TRITON_INTERPRET=1 set before raggedkv is imported); use backend='torch' or 'auto'"
        )
    return TRITON_BACKEND
