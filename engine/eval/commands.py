"""`raggedkv eval {niah,reasoning,longbench,fidelity}`: the evaluation commands (`register` adds them to the CLI).

Lists are comma- or space-separated (`--kv-sizes 32,64 128`); integer lists also take inclusive ranges
(`--lengths 1000:8000:1000`). A run writes its results JSON after every answered prompt (by default under
`raggedkv-eval/` in the current folder) and resumes from it when rerun with the same settings and grid; `--merge`
adds a run over another grid to it. SIGINT and SIGTERM stop a run with every finished answer saved. A run prints
a fixed-width summary table and the files it wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import BACKEND_NAMES
from ..default_model import DEFAULT_MODEL

DEFAULT_OUT_DIR = Path("raggedkv-eval")  # in the current folder; never the repository's committed eval-results/


def int_list(text: str) -> list[int]:
    """Parse "32,64", "1000:8000:1000" (inclusive) or a mix into integers."""
    values = []
    for part in filter(None, text.split(",")):
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() for p in pieces):
                raise argparse.ArgumentTypeError(f"{part!r} is not START:STOP or START:STOP:STEP")
            start, stop, step = (int(p) for p in (*pieces, "1")[:3])
            if step < 1:
                raise argparse.ArgumentTypeError(f"{part!r} needs a positive STEP")
            values.extend(range(start, stop + 1, step))
        else:
            try:
                values.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not an integer") from None
    return values


def str_list(text: str) -> list[str]:
    """Parse "a,b" into names."""
    return [part.strip() for part in text.split(",") if part.strip()]


def method_list(text: str) -> list[str]:
    """Parse "a,b" into methods, keeping variant spellings whole: "headkv-r2:beta=2,window=16,snapkv" is
    ["headkv-r2:beta=2,window=16", "snapkv"] (a `param=value` part continues the variant before it)."""
    methods: list[str] = []
    for part in str_list(text):
        if "=" in part and ":" not in part and methods and ":" in methods[-1]:
            methods[-1] += "," + part
        else:
            methods.append(part)
    return methods


def method_path(text: str) -> tuple[str, str]:
    """Parse METHOD=PATH."""
    method, sep, path = text.partition("=")
    if not sep or not method or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not METHOD=PATH")
    return method, path


def _flat(lists: list[list] | None) -> list | None:
    return None if lists is None else [value for values in lists for value in values]


def _common(parser: argparse.ArgumentParser, default_kv_sizes: str) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model name, local HF folder or cached Hub id ({DEFAULT_MODEL})")
    parser.add_argument("--methods", type=method_list, nargs="+",
                        help="compression methods or variants, e.g. snapkv headkv-r2:beta=2,window=16 (default: all)")
    parser.add_argument("--kv-sizes", type=int_list, nargs="+", default=[int_list(default_kv_sizes)],
                        help=f"average tokens kept per head per layer (default {default_kv_sizes})")
    parser.add_argument("--out", type=Path, help="results JSON, written after every answered prompt and resumed "
                        "when rerun with the same settings and grid; plots go next to it "
                        f"(default {DEFAULT_OUT_DIR}/<command>-<model>.json in the current folder)")
    parser.add_argument("--merge", action="store_true", help="add this run's cells to an --out file over another "
                        "grid (other methods, budgets, lengths, ...; same settings); its table and plots then "
                        "cover both")
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES, help="engine backend")
    parser.add_argument("--no-chat", action="store_true", help="do not put prompts in the model's chat template")
    parser.add_argument("--no-question-window", dest="question_window", action="store_false",
                        help="score with the last prompt tokens (the chat template's assistant header) instead of the "
                        "window before the header (the default, as in `raggedkv generate`)")
    parser.add_argument("--head-scores", type=method_path, action="append", metavar="METHOD=PATH",
                        help="head-score file for a method (headkv-r, headkv-r2, compresskv); repeatable")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _needle_parser(parser: argparse.ArgumentParser, needles: int) -> None:
    _common(parser, "32,64,128,256")
    parser.add_argument("--lengths", type=int_list, nargs="+", default=[int_list("1000,2000,4000,8000")],
                        help="prompt lengths in tokens (default 1000,2000,4000,8000)")
    parser.add_argument("--depths", type=int_list, nargs="+", default=[int_list("0,25,50,75,100")],
                        help="needle depths in percent (default 0,25,50,75,100)")
    parser.add_argument("--needles", type=int, default=needles, help=f"needles per (length, depth) (default {needles})")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length (default 32)")


def _shared_kwargs(args: argparse.Namespace, task: str) -> dict:
    from ..methods.head_scores import model_slug

    out = args.out if args.out is not None else DEFAULT_OUT_DIR / f"{task}-{model_slug(args.model)}.json"
    return {
        "model": args.model,
        "methods": _flat(args.methods),
        "kv_sizes": _flat(args.kv_sizes),
        "out": out,
        "backend": args.backend,
        "chat": not args.no_chat,
        "head_scores": dict(args.head_scores or []),
        "progress": not args.no_progress,
        "merge": args.merge,
        "question_window": args.question_window,
    }


def _needle_kwargs(args: argparse.Namespace, task: str) -> dict:
    return {
        **_shared_kwargs(args, task),
        "lengths": _flat(args.lengths),
        "depths": _flat(args.depths),
        "needles": args.needles,
        "max_new_tokens": args.max_new_tokens,
    }


def _fidelity_kwargs(args: argparse.Namespace) -> dict:
    return {
        **_shared_kwargs(args, "fidelity"),
        "lengths": _flat(args.lengths),
        "depths": _flat(args.depths),
        "facts": args.facts,
        "baseline": args.baseline,
        "top_heads": args.top_heads,
        "question_agnostic": args.question_agnostic,
        "compare": args.compare,
    }


def _fidelity_parser(parser: argparse.ArgumentParser) -> None:
    _common(parser, "32,64,128,256")
    parser.add_argument("--lengths", type=int_list, nargs="+", default=[int_list("1000,2000")],
                        help="prompt lengths in tokens (default 1000,2000)")
    parser.add_argument("--depths", type=int_list, nargs="+", default=[int_list("10,50,90")],
                        help="fact depths in percent (default 10,50,90)")
    parser.add_argument("--facts", type=int, default=10, help="facts per (length, depth), the SE clusters (default 10)")
    parser.add_argument("--baseline", default="snapkv",
                        help="method (as spelled in --methods) the paired differences are taken against (snapkv)")
    parser.add_argument("--top-heads", type=float, default=0.1,
                        help="fraction of KV heads, by Retrieval score, for the top-heads needle-kept share (0.1)")
    parser.add_argument("--compare", metavar="METHOD",
                        help="also print METHOD (as spelled in --methods) minus every other compressed method, with "
                        "SEs and the methods it does not lead by more than 2 SEs (reporting only: a finished --out is "
                        "reused)")
    parser.add_argument("--question-agnostic", action="store_true",
                        help="compress the diary alone and ask the question of the compressed cache (the setting of "
                        "Engine.generate(context, questions=...)); default: the whole prompt, question included, is "
                        "compressed")


def _report(result) -> int:
    print(result.table)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from . import run_fidelity, run_longbench, run_niah, run_reasoning
    from ..interrupts import Interrupted, signals_interrupt

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be a positive integer")
        torch.set_num_threads(args.threads)
    with signals_interrupt():
        try:  # bad arguments raise ValueError, which the raggedkv entry point reports
            if args.eval_command == "longbench":
                kwargs = {**_shared_kwargs(args, "longbench"), "data_dir": args.data_dir,
                          "datasets": _flat(args.datasets), "limit": args.limit, "max_length": args.max_length,
                          "max_new_tokens": args.max_new_tokens}
                return _report(run_longbench(**kwargs))
            if args.eval_command == "fidelity":
                return _report(run_fidelity(**_fidelity_kwargs(args)))
            run = run_niah if args.eval_command == "niah" else run_reasoning
            return _report(run(**_needle_kwargs(args, args.eval_command)))
        except KeyboardInterrupt as interrupt:
            print("interrupted: every finished answer is in the results file; rerun the same command to resume",
                  file=sys.stderr)
            return interrupt.exit_status if isinstance(interrupt, Interrupted) else 130


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `eval` with its sub-commands `niah`, `reasoning`, `longbench` and `fidelity`; each sets `func(args) -> int`."""
    parser = subparsers.add_parser("eval", help="accuracy against KV budget: NIAH, reasoning needles, LongBench",
                                   description=__doc__)
    tasks = parser.add_subparsers(dest="eval_command", required=True, metavar="{niah,reasoning,longbench,fidelity}")
    niah = tasks.add_parser("niah", help="needle in a haystack over prompt lengths x needle depths",
                            description="Needle-in-a-haystack accuracy per method and KV budget, with heatmaps.")
    _needle_parser(niah, needles=1)
    reasoning = tasks.add_parser("reasoning", help="retrieval-reasoning needles with distractors",
                                 description="Retrieval-reasoning accuracy per method and KV budget.")
    _needle_parser(reasoning, needles=3)
    longbench = tasks.add_parser("longbench", help="LongBench from local JSONL files",
                                 description="LongBench scores per dataset, method and KV budget (no downloads).")
    _common(longbench, "128")
    longbench.add_argument("--data-dir", type=Path, required=True, help="folder with LongBench's <dataset>.jsonl")
    longbench.add_argument("--datasets", type=str_list, nargs="+", help="datasets (default: the 16 English ones)")
    longbench.add_argument("--limit", type=int, help="only the first N examples of each dataset")
    longbench.add_argument("--max-new-tokens", type=int,
                           help="cap every dataset's answer length (quick checks; default: the official lengths)")
    longbench.add_argument("--max-length", type=int,
                           help="truncate prompts to N tokens (default: context minus answer and chat template)")
    fidelity = tasks.add_parser(
        "fidelity", help="teacher-forced answer log-probability, KL and needle tokens kept against the full cache",
        description="Fidelity to the full cache per method and KV budget on facts of its own: answer log-probability "
                    "(nats), KL(full || method), top-1 agreement, needle tokens kept; SEs clustered by fact, paired "
                    "differences against --baseline. One prefill per prompt for every variant.")
    _fidelity_parser(fidelity)
    for sub in (niah, reasoning, longbench, fidelity):
        sub.set_defaults(func=_run)
    return parser
