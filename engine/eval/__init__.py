"""Accuracy against KV budget: needle in a haystack, retrieval-reasoning needles and LongBench.

Python entry points (each returns an `EvalResult`: records, summary table, files written)::

    from raggedkv.engine.eval import run_niah, run_reasoning, run_longbench
    run_niah(methods=["full", "snapkv"], kv_sizes=[64], lengths=[2000], depths=[0, 50, 100], out="niah.json")

The CLI commands are `raggedkv eval niah|reasoning|longbench` (`commands.py`).
"""

from .longbench import run_longbench
from .niah import run_niah
from .reasoning import run_reasoning
from .report import EvalResult

__all__ = ["EvalResult", "run_longbench", "run_niah", "run_reasoning"]
