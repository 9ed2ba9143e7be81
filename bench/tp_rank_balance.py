"""What tensor-parallel rank balancing costs in fidelity and gains in balance (README, "Rank balance").

    python3 bench/tp_rank_balance.py [--method headkv-r2] [--ranks 3] [--out results.json]

SmolLM2-135M-Instruct on the CPU. Budgets are planned as an `--ranks`-rank tensor-parallel run plans them
(`RankSplitMethod(..., rank=None)`: the same arithmetic in one process; tests/test_tensor_parallel.py shows a
torchrun run gives the same tokens). Five needle prompts of 2048 tokens (the demo's needle with five numbers at
depths 10-90%), one prefill each shared by every variant, the answer "The magic number is N." teacher-forced
(`ModelRunner.teacher_force`); reported per variant: mean log-probability of the number's tokens, their top-1
agreement, and the mean slowest-rank factor. Prints one line per variant and writes the JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from raggedkv.engine import Engine
from raggedkv.engine.default_model import DEFAULT_MODEL
from raggedkv.engine.eval.haystack import fit_haystack
from raggedkv.engine.hf import ATTENTION_NAME
from raggedkv.engine.methods import get_method
from raggedkv.engine.models import attention_implementation
from raggedkv.engine.parallel import RankSplitMethod
from raggedkv.engine.parallel_budgets import slowest_rank_factor
from raggedkv.engine.runner import Variant

PROMPT_TOKENS = 2048
NEEDLES = ((10, 7301), (30, 4186), (50, 5923), (70, 8064), (90, 2719))  # (depth %, magic number)
KV_SIZES = (64, 128)
EPSILONS = (None, 0.25, 0.1, 0.0)  # None: the method's own budgets


def variants(method: str) -> list[tuple[str, int | None, float | None]]:
    """(method, kv_size, rank_balance): full, then per kv_size SnapKV and `method` at every epsilon."""
    rows = [("full", None, None)]
    for kv_size in KV_SIZES:
        rows += [("snapkv", kv_size, None)] + [(method, kv_size, epsilon) for epsilon in EPSILONS]
    return rows


def needle_prompt(engine: Engine, depth: int, number: int) -> tuple[list[int], int, list[int], int]:
    """(prompt ids, chat header length, answer ids, where the number's tokens start in the answer)."""
    def render(context: str) -> str:
        return f"{context}\n\nAnswer the question from the text above. What is the magic number?"

    needle = f"Remember this: the magic number is {number}."
    prompt, _ = fit_haystack(render, lambda text: len(engine.encode(text)), PROMPT_TOKENS, [(depth, needle)])
    ids, header = engine.encode_with_header(prompt)
    tokenizer = engine.tokenizer
    prefix = tokenizer("The magic number is", add_special_tokens=False)["input_ids"]
    answer = tokenizer(f"The magic number is {number}.", add_special_tokens=False)["input_ids"]
    if answer[: len(prefix)] != prefix:
        raise RuntimeError(f"the answer's tokens {answer} do not start with the prefix's {prefix}")
    return ids, header, answer, len(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="headkv-r2")
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    engine = Engine.from_pretrained(DEFAULT_MODEL, method="full", device="cpu", backend="torch")
    rows = variants(args.method)
    methods = []
    for name, _, epsilon in rows:
        inner = get_method(name, model_name=DEFAULT_MODEL)
        methods.append(inner if epsilon is None else
                       RankSplitMethod(inner, engine.shape, args.ranks, None, rank_balance=epsilon))
    logprob, top1, factor = ([[] for _ in rows] for _ in range(3))
    for depth, number in NEEDLES:
        ids, header, answer, number_start = needle_prompt(engine, depth, number)
        with torch.inference_mode(), attention_implementation(engine.model, ATTENTION_NAME):
            batch = [Variant(0, method, kv_size, header) for method, (_, kv_size, _) in zip(methods, rows)]
            state = engine.runner.prefill([ids], batch, len(answer))
            forced = engine.runner.teacher_force(state, torch.tensor([answer[:-1]] * len(batch)))
            logits = torch.cat([state.logits.float()[:, None], forced], dim=1)  # [variants, len(answer), vocab]
        target = torch.tensor(answer)
        digits = slice(number_start, len(answer) - 1)  # the number's tokens, not the final period
        token_logprob = logits.log_softmax(-1)[:, torch.arange(len(answer)), target]
        for i in range(len(rows)):
            logprob[i].append(float(token_logprob[i, digits].sum()))
            top1[i].append(float((logits[i].argmax(-1) == target)[digits].float().mean()))
            factor[i].append(slowest_rank_factor(state.kept[i], args.ranks))
        print(f"needle at {depth}% done", file=sys.stderr, flush=True)
    results = []
    for i, (name, kv_size, epsilon) in enumerate(rows):
        results.append({"method": name, "kv_size": kv_size, "rank_balance": epsilon, "ranks": args.ranks,
                        "answer_logprob": sum(logprob[i]) / len(NEEDLES), "number_top1": sum(top1[i]) / len(NEEDLES),
                        "slowest_rank_factor": sum(factor[i]) / len(NEEDLES)})
        row = results[-1]
        print(f"{name:10s} kv_size={kv_size} rank_balance={epsilon}: log-prob {row['answer_logprob']:.3f}, "
              f"top-1 {row['number_top1']:.2f}, slowest rank {row['slowest_rank_factor']:.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
