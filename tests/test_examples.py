"""examples/ragged_decode_loop.py runs as a script (small arguments) and prints what its docstring promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ragged_decode_loop.py"


def run_example(*args: str, interpret: bool = False) -> list[str]:
    """Run the example in a fresh interpreter; return its stdout lines after checking it exited 0.

    Without `interpret` the CPU path is the ops' pure-torch references (conftest's TRITON_INTERPRET is dropped).
    One intra-op thread: the tiny ops only lose time to thread hand-offs on a busy shared CPU."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout.splitlines()


def check_run(lines: list[str], batch: int, steps: int, backend: str) -> None:
    mode = "cuda-graph" if torch.cuda.is_available() else "eager"
    assert re.match(rf"device=\w+ backend={backend} mode={mode} batch={batch} ", lines[0]), lines[0]
    generated = [line for line in lines if line.startswith("generated[")]
    assert len(generated) == batch
    for b, line in enumerate(generated):
        tokens = re.fullmatch(rf"generated\[{b}\]: \[([\d, ]+)\]", line)
        assert tokens is not None, line
        assert len(tokens.group(1).split(",")) == steps + 1  # the prefill's token, then one per step
    assert any(line.startswith("ops vs ragged_decode_attention_ref: max abs diff") for line in lines)
    assert lines[-1] == "OK"


def test_compressed_decode_loop_runs_and_matches_the_reference():
    backend = "triton" if torch.cuda.is_available() else "reference"
    lines = run_example("--batch", "3", "--prompt-len", "32", "--window", "4", "--max-budget", "12", "--steps", "5")
    check_run(lines, batch=3, steps=5, backend=backend)
    kept = re.match(r"kept rows per segment after prefill: \[([\d, ]+)\]", lines[1])
    assert kept is not None, lines[1]
    assert all(4 <= int(n) <= 16 for n in kept.group(1).split(","))  # window + a budget in [0, 12]


def test_uncompressed_decode_loop_matches_a_dense_decode():
    backend = "triton" if torch.cuda.is_available() else "reference"
    lines = run_example("--batch", "2", "--prompt-len", "24", "--steps", "4", "--keep-all")
    check_run(lines, batch=2, steps=4, backend=backend)
    assert "kept rows per segment after prefill: [24, 24, 24, 24]" in lines[1]
    assert any(line.startswith("dense check: max |decode logits - dense logits|") for line in lines)


@pytest.mark.slow
def test_decode_loop_under_the_triton_interpreter():
    lines = run_example("--batch", "1", "--prompt-len", "16", "--steps", "2", "--keep-all", interpret=True)
    check_run(lines, batch=1, steps=2, backend="triton")
