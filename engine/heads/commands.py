"""`raggedkv score-heads`: estimate every query head's importance with needle-in-a-haystack runs.

Writes into `--out`: `<model-slug>-<kind>.json` (HeadKV's format), `<model-slug>-<kind>.meta.json` (sidecar),
`<model-slug>-<kind>.png` (heatmap) and `<model-slug>-<kind>.trials.jsonl` (the trial log, rewritten atomically after
every finished trial; a rerun with the same settings resumes it, SIGINT/SIGTERM exit 130/143 keeping every finished
trial).
`register(subparsers)` adds the subcommand; it sets `func`, called as `args.func(args)`, returning an exit code.
The module imports neither torch nor transformers (`run_score_heads` imports what it runs), so
`raggedkv score-heads --help` is fast.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from ..default_model import DEFAULT_MODEL
from ..methods.score_kinds import HEAD_SCORE_KINDS

DEFAULT_LENGTHS = (500, 1000, 1500, 2000)  # the grid of the shipped SmolLM2 retrieval and semantic files
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
DESCRIPTION = """Estimate every query head's importance with needle-in-a-haystack runs on the model.

Writes into --out: <model-slug>-<kind>.json (HeadKV's format: {"layer-head": [score per accepted trial]}),
<model-slug>-<kind>.meta.json (how it was made), <model-slug>-<kind>.png (heatmap) and
<model-slug>-<kind>.trials.jsonl (one line per finished trial, saved after each: rerunning the same command
after an interrupt resumes it; a log from other settings is refused and left untouched)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `score-heads` subcommand."""
    parser = subparsers.add_parser("score-heads", help="estimate head importance (retrieval / reasoning / semantic)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{DEFAULT_MODEL!r}, a local Hugging Face folder or a Hub id in the local HF cache "
                        f"(default {DEFAULT_MODEL})")
    parser.add_argument("--kind", required=True, choices=HEAD_SCORE_KINDS,
                        help="the head-score kind to compute (`raggedkv methods` lists the methods that read each)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), metavar="TOKENS",
                        help="context lengths in tokens (default %(default)s; the paper: 0 2500 5000 7500 10000)")
    parser.add_argument("--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS), metavar="PERCENT",
                        help="needle depths in percent (default %(default)s; the paper: 0 11 22 33 44 56 67 78 89 100)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="plain prompt even if the tokenizer has a chat template")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="decode steps per trial (default 50)")
    parser.add_argument("--device", default=None,
                        help="where the model runs (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_score_heads)
    return parser


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    parts = ["raggedkv", "score-heads", "--model", str(args.model), "--kind", args.kind,
             "--lengths", *map(str, args.lengths), "--depths", *(f"{d:g}" for d in args.depths), "--out", str(args.out)]
    if args.no_chat_template:
        parts.append("--no-chat-template")
    if args.max_new_tokens != 50:
        parts += ["--max-new-tokens", str(args.max_new_tokens)]
    return shlex.join(parts)


def run_score_heads(args: argparse.Namespace) -> int:
    """Run (or resume) the grid, then write the score file, its sidecar and its heatmap; SIGINT/SIGTERM stop it
    with every finished trial in the trial log and exit 130/143."""
    import sys

    from ..interrupts import Interrupted, signals_interrupt

    with signals_interrupt():
        try:
            return _score_heads(args)
        except KeyboardInterrupt as interrupt:
            print("interrupted: every finished trial is in the trial log; rerun the same command to resume",
                  file=sys.stderr)
            return interrupt.exit_status if isinstance(interrupt, Interrupted) else 130


def _score_heads(args: argparse.Namespace) -> int:
    """The run itself, without the signal handling."""
    from transformers import AutoConfig, AutoTokenizer

    from ..default_model import resolve_model
    from ..methods.head_scores import model_slug
    from ..models import load_model, model_shape
    from .heatmap import save_heatmap
    from .output import head_score_lists, mean_table, split_half_agreement, summarize, write_json
    from .run import RunSettings, read_trial_log, run_grid
    from .sidecar import build_sidecar

    started = time.perf_counter()
    folder = resolve_model(args.model)  # config and tokenizer first: a bad grid or trial log is refused before
    tokenizer = AutoTokenizer.from_pretrained(folder)  # any weights load
    chat = not args.no_chat_template and tokenizer.chat_template is not None
    settings = RunSettings(args.model, args.kind, tuple(args.lengths), tuple(args.depths), chat, args.max_new_tokens)
    context = AutoConfig.from_pretrained(folder).max_position_embeddings
    if max(args.lengths) + args.max_new_tokens > context:
        raise ValueError(f"--lengths {max(args.lengths)} plus --max-new-tokens {args.max_new_tokens} exceeds the "
                         f"model's context of {context} tokens")
    name = f"{model_slug(args.model)}-{args.kind}"
    path = {ext: args.out / f"{name}{ext}" for ext in (".json", ".meta.json", ".png", ".trials.jsonl")}
    if path[".trials.jsonl"].exists():
        read_trial_log(path[".trials.jsonl"], settings.header())
    model, tokenizer = load_model(folder, args.device)
    records = run_grid(model, tokenizer, settings, path[".trials.jsonl"], progress=not args.no_progress)

    shape = model_shape(model.config)
    layers, heads = shape.num_layers, shape.num_qo_heads
    lists = head_score_lists(records, layers, heads)
    table = mean_table(lists, layers, heads)
    needles = [r["needle"] for r in records if r["accepted"]]
    summary = {**summarize(table), "split_half": split_half_agreement(lists, needles)}
    accepted = sum(r["accepted"] for r in records)
    model_info = {"device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
    sidecar = build_sidecar(settings, records, summary, canonical_command(args), model_info,
                            time.perf_counter() - started)
    write_json(path[".json"], lists)
    write_json(path[".meta.json"], sidecar, indent=1)
    save_heatmap(table, path[".png"],
                 f"{model_slug(args.model)} {args.kind} heads: {accepted}/{len(records)} trials accepted")
    print(f"{args.kind}: {accepted}/{len(records)} trials accepted; {summary['zero_score_heads']}/"
          f"{summary['heads']} heads score 0; top heads {summary['top_heads'][:3]}")
    if summary["split_half"] is not None:
        half = summary["split_half"]
        print(f"split by needle ({half['split']}): the halves' mean scores correlate at r = {half['pearson']}; "
              f"{half['top_heads_shared'][0]} of their top {half['top_heads_shared'][1]} heads are shared")
    print("wrote " + ", ".join(str(p) for p in path.values()))
    return 0
