"""The tensor-parallel half of tests/test_tensor_parallel.py, run by `torchrun --nproc-per-node 2` (gloo, CPU).

    torchrun --nproc-per-node 2 tests/tensor_parallel_worker.py MODELS_DIR OUT.json

Every rank loads each tiny model in `MODELS_DIR` with `tp_plan="auto"` and generates with every method (through the
`Engine`, and for `COMPRESSED` through `raggedkv.compressed`), plus the rank-balance and sampling checks; rank 0
writes what it saw, and whether all ranks agreed, to `OUT.json`. The test compares that with single-process runs of
the same settings (`PROMPT_LENGTHS`, `KV_SIZE`, `MAX_NEW_TOKENS`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import raggedkv
from raggedkv.engine import Engine
from raggedkv.engine.methods import METHODS, get_method

MODELS = ("llama", "mistral")  # sub-folders of MODELS_DIR
PROMPT_LENGTHS = (44, 31)
KV_SIZE = 12
MAX_NEW_TOKENS = 6
BALANCED = ("headkv-r", 0.0)  # (method, rank_balance) of the balance check
COMPRESSED = ("headkv-r", "ada-snapkv")  # methods also run through raggedkv.compressed + model.generate


def method_params(method: str, models_dir: Path) -> dict:
    """The score files a method needs on the tiny models (written by the test next to them)."""
    scores = {"head_scores": str(models_dir / "heads.json")}
    if method == "compresskv":
        return {**scores, "layer_scores": str(models_dir / "layers.json")}
    return scores if method in ("headkv-r", "headkv-r2") else {}


def build_method(method: str, models_dir: Path):
    """`method` built with the tiny models' score files."""
    return get_method(method, **method_params(method, models_dir))


def prompts() -> list[list[int]]:
    """The same seeded prompts (of `PROMPT_LENGTHS` tokens) on every rank and in the test."""
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 90, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def record(results) -> list[dict]:
    """What the test compares: each sequence's tokens and the stats that cover every rank."""
    return [{"tokens": r.token_ids, "kept": r.stats.kept_tokens, "kv_bytes_kept": r.stats.kv_bytes_kept,
             "kv_bytes_allocated": r.stats.kv_bytes_allocated,
             "rank_kept_tokens": r.stats.rank_kept_tokens, "slowest_rank_factor": r.stats.slowest_rank_factor,
             "tensor_parallel": r.stats.tensor_parallel} for r in results]


def agreed(value) -> bool:
    """Whether every rank holds the same `value`."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def main(models_dir: Path, out: Path) -> None:
    report: dict = {}
    for family in MODELS:
        path = models_dir / family
        engine = Engine.from_pretrained(path, method="full", tp_plan="auto", backend="torch")
        model = engine.model
        runs = {}
        for method in sorted(METHODS):
            engine = Engine.from_model(model, method=build_method(method, models_dir), backend="torch")
            runs[method] = record(engine.generate_ids(prompts(), kv_size=KV_SIZE, max_new_tokens=MAX_NEW_TOKENS))
        name, epsilon = BALANCED
        balanced = Engine.from_model(model, method=build_method(name, models_dir), backend="torch",
                                     rank_balance=epsilon)
        runs["balanced"] = record(balanced.generate_ids(prompts(), kv_size=KV_SIZE, max_new_tokens=MAX_NEW_TOKENS))
        for method in COMPRESSED:
            with raggedkv.compressed(model, method=build_method(method, models_dir), kv_size=KV_SIZE, backend="torch"):
                ids = prompts()[0]
                generated = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            runs[f"compressed:{method}"] = generated[0, len(ids):].tolist()
        sampled = engine.generate_ids(prompts(), kv_size=KV_SIZE, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
        runs["sampled_ranks_agree"] = agreed([r.token_ids for r in sampled])
        runs["greedy_ranks_agree"] = agreed({k: v for k, v in runs.items() if k != "sampled_ranks_agree"})
        report[family] = runs
    if dist.get_rank() == 0:
        out.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
