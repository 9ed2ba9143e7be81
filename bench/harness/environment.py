"""Where a benchmark runs: the device, the package versions, the git SHA and the one-line header; and, without
CUDA, the switch that makes the Triton launchers run under the interpreter (for `--dry-run`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

# Module of every Triton launcher inside raggedkv.kernels (imported lazily: see prepare_cpu_interpreter).
LAUNCHER_MODULES = {
    "window_scores": "window_scores",
    "select_and_pack": "select_pack",
    "append_kv": "append",
    "ragged_decode_attention": "decode",
}


def has_cuda() -> bool:
    return torch.cuda.is_available()


def prepare_cpu_interpreter() -> None:
    """Without CUDA, make the Triton launchers run under the interpreter.

    `TRITON_INTERPRET` is read when `@triton.jit` decorates, so it must be set before any Triton module of
    raggedkv.kernels is imported; raises RuntimeError when one already was without it.
    """
    if has_cuda() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return
    loaded = [f"raggedkv.kernels.{m}" for m in LAUNCHER_MODULES.values() if f"raggedkv.kernels.{m}" in sys.modules]
    if loaded:
        raise RuntimeError(
            f"{', '.join(loaded)} was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on the "
            "CPU; run the dry run in a fresh process or export TRITON_INTERPRET=1 first"
        )
    os.environ["TRITON_INTERPRET"] = "1"


@contextlib.contextmanager
def one_cpu_thread(enabled: bool = True) -> Iterator[None]:
    """Run tiny CPU work on one thread (restored afterwards): with a busy CI box, torch's thread pool can make a
    64-wide matmul take 10 ms instead of 10 us."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launcher(name: str) -> Callable[..., Any]:
    """The Triton launcher `raggedkv.kernels.<module>.<name>` (imported on first use)."""
    return getattr(importlib.import_module(f"raggedkv.kernels.{LAUNCHER_MODULES[name]}"), name)


def reference(name: str) -> Callable[..., Any]:
    """The pure-torch twin `raggedkv.kernels.reference.<name>_ref`."""
    return getattr(importlib.import_module("raggedkv.kernels.reference"), f"{name}_ref")


def missing_module(module: str) -> str | None:
    """None when `module` imports, else the reason (for a provider's `requires`)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the provider unavailable
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (file-name safe)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return slug or "gpu"


def git_info() -> tuple[str, bool | None]:
    """(SHA, dirty) of the checkout; `RAGGEDKV_GIT_SHA` overrides where the tree is a copy without .git."""
    override = os.environ.get("RAGGEDKV_GIT_SHA")
    if override:
        return override, None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return sha, bool(status.strip())


def environment(command: str) -> dict[str, Any]:
    """Device, versions, git SHA, time and the command line, for the header and the JSON `env`."""
    import triton

    sha, dirty = git_info()
    env: dict[str, Any] = {"gpu": None, "gpu_slug": None, "sm": None, "num_sms": None, "gpu_mem_gib": None}
    if has_cuda():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, gpu_slug=gpu_slug(props.name), sm=f"{props.major}{props.minor}",
                   num_sms=props.multi_processor_count, gpu_mem_gib=round(props.total_memory / 2**30, 1))
    env.update(
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=triton.__version__,
        flash_attn=package_version("flash-attn") or package_version("flash_attn"),
        transformers=package_version("transformers"),
        python=sys.version.split()[0],
        triton_interpret=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        git_sha=sha,
        git_dirty=dirty,
        timestamp=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command,
    )
    return env


def header_line(bench: str, env: dict[str, Any], timing: str) -> str:
    """The first line every bench prints: device, versions, git SHA (`+dirty`) and how it timed."""
    device = f"{env['gpu']} (sm{env['sm']}, {env['num_sms']} SMs)" if env["gpu"] else "CPU (no CUDA device)"
    sha = (env["git_sha"] or "unknown")[:12] + ("+dirty" if env["git_dirty"] else "")
    return (f"# bench_{bench} | {device} | torch {env['torch']} (CUDA {env['cuda']}) | triton {env['triton']} | "
            f"flash_attn {env['flash_attn'] or '-'} | git {sha} | {timing}")
