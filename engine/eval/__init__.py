"""Accuracy against KV budget: needle in a haystack, retrieval-reasoning needles and LongBench; fidelity to the full
cache (teacher-forced answer log-probability, `run_fidelity`).

Python entry points (each returns an `EvalResult`: records, summary table, files written)::

    from raggedkv.engine.eval import run_niah, run_reasoning, run_longbench
    run_niah(methods=["full", "snapkv"], kv_sizes=[64], lengths=[2000], depths=[0, 50, 100], out="niah.json")

The CLI commands are `raggedkv eval niah|reasoning|longbench|fidelity` (`commands.py`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"run_fidelity": ".fidelity", "run_longbench": ".longbench", "run_niah": ".niah", "run_reasoning": ".reasoning", "EvalResult": ".report"}


def __getattr__(name: str) -> object:
    """The exports, imported on first use, so that `raggedkv eval --help` loads neither torch nor transformers."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = ["EvalResult", "run_fidelity", "run_longbench", "run_niah", "run_reasoning"]
