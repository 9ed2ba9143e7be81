"""The engine's subcommands: `raggedkv generate`, `raggedkv sweep` and `raggedkv demo`.

Every knob of `Engine.from_pretrained`, `Engine.generate` and `Engine.sweep` has a flag with the API's default (a
test compares them). The module imports neither torch nor transformers, so `raggedkv generate --help` is fast;
`run_generate` and `run_sweep` load them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import BACKEND_NAMES, DEFAULT_MAX_NEW_TOKENS, parse_value
from .default_model import DEFAULT_MODEL
from .outputs import format_kv_memory, format_stats, result_json

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def positive_int(text: str) -> int:
    """`text` as an int >= 1 (for --threads)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return int(text)


def non_negative_float(text: str) -> float:
    """`text` as a finite float >= 0 (for --rank-balance)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, str]:
    """Parse NAME=VALUE (a --param)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. window=16)")
    return name.strip(), value.strip()


def method_params(method: str, pairs: list[tuple[str, str]]) -> dict[str, object]:
    """The `--param NAME=VALUE` pairs as `method`'s typed parameters, checked by name against what it declares.

    Raises:
        ValueError: an unknown method, a parameter `method` does not have, a repeated one, or a value of the wrong type
            (the message names the flag, the value and what is accepted).
    """
    from .methods import METHODS, method_parameters

    if method not in METHODS:
        raise ValueError(f"--method {method!r} is unknown; choose one of {sorted(METHODS)} (see `raggedkv methods`)")
    cls, accepted = METHODS[method], method_parameters(method)
    params: dict[str, object] = {}
    for name, text in pairs:
        if name not in accepted or name in cls.score_files:
            plain = sorted(set(accepted) - set(cls.score_files))
            files = "; score files go in --head-scores/--layer-scores" if cls.score_files else ""
            raise ValueError(f"--param {name}={text}: method {method!r} has no parameter {name!r}; its parameters are "
                             f"{plain}{files}")
        if name in params:
            raise ValueError(f"--param {name} is given twice")
        try:
            params[name] = parse_value(cls.accepts[name], text)
        except ValueError as err:
            raise ValueError(f"--param {name}={text}: {name} {err}") from None
    return params


def check_score_files(method: str, paths: dict[str, Path | None]) -> None:
    """Refuse a score-file flag (`--head-scores` or `--layer-scores` -> its path or None) that `method` does not read.

    Raises:
        ValueError: naming the flag, its path and the methods that read such a file.
    """
    from .methods import METHODS

    for flag, path in paths.items():
        key = flag.removeprefix("--").replace("-", "_")
        if path is not None and key not in METHODS[method].score_files:
            readers = [name for name, cls in METHODS.items() if key in cls.score_files]
            raise ValueError(f"{flag} {str(path)!r}: method {method!r} reads no such file; {readers} do")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `Engine.from_pretrained` other than the method: model, score files, backend, CUDA-graph decode,
    device, dtype, threads, tensor parallelism and its rank balance."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{DEFAULT_MODEL!r}, a local HF folder or a Hub id in the local HF cache")
    parser.add_argument("--head-scores", type=Path, metavar="PATH",
                        help="head-score JSON for headkv-r, headkv-r2, compresskv (default: the model's packaged one)")
    parser.add_argument("--layer-scores", type=Path, metavar="PATH",
                        help="layer-score JSON for compresskv (default: the model's packaged one)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="auto")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="decode eagerly on CUDA (default: one captured decode step replayed per token)")
    parser.add_argument("--device", default=None, help="where the model runs (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="weights' dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tp-plan", choices=("auto",), default=None,
                        help="tensor parallelism over the ranks of `torchrun --nproc-per-node N raggedkv ...` (each "
                             "rank holds its KV heads; every rank prints the same results; default: one device)")
    parser.add_argument("--rank-balance", type=non_negative_float, default=None, metavar="EPSILON",
                        help="with --tp-plan: cap each rank's KV per layer at (1 + EPSILON) x the mean "
                             "(default: the method's budgets)")


def add_prompt_flags(parser: argparse.ArgumentParser) -> None:
    """The prompt (text or file), the chat-template switch, the sampling flags and --json."""
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="tokenize the prompt as is instead of as a user turn of the model's chat template")
    parser.add_argument("--no-question-window", dest="question_window", action="store_false",
                        help="score with the last prompt tokens (the chat template's assistant header) instead of the "
                             "window before the header, which every head then keeps (default: question window on)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="upper bound on generated tokens (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus filtering when sampling (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable samples")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate`, `sweep` and `demo` to the `raggedkv` parser."""
    generate = subparsers.add_parser("generate", help="answer one prompt with a compressed KV cache")
    generate.add_argument("--method", default="snapkv", help="compression method or variant, e.g. snapkv:window=16 "
                          "(default snapkv; `raggedkv methods` lists them with their parameters)")
    generate.add_argument("--param", type=key_value, action="append", default=[], metavar="NAME=VALUE",
                          help="a method parameter, e.g. --param window=16 --param beta=2 (repeatable; booleans: "
                               "true/false)")
    generate.add_argument("--kv-size", type=int, default=None,
                          help="tokens kept per KV head per layer, window included (default: keep everything)")
    add_prompt_flags(generate)
    add_model_flags(generate)
    generate.set_defaults(func=run_generate)

    sweep = subparsers.add_parser(
        "sweep", help="answer one prompt under several methods and KV budgets with a single prefill",
        description="Answer one prompt under every (method, kv_size) pair of --methods x --kv-sizes, with one "
        "prefill (Engine.sweep): the prompt runs through the model once, each layer is compressed once per pair, "
        "and all pairs decode together as one batch. `full` is answered once, uncompressed.",
    )
    sweep.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                       help="methods or variants, e.g. full snapkv headkv-r2 headkv-r2:beta=2,window=16")
    sweep.add_argument("--kv-sizes", type=int, nargs="+", required=True, metavar="TOKENS",
                       help="tokens kept per KV head per layer, window included, e.g. 32 64 128")
    add_prompt_flags(sweep)
    add_model_flags(sweep)
    sweep.set_defaults(func=run_sweep)

    demo = subparsers.add_parser(
        "demo", help="needle in a ~2K-token haystack with the default model, snapkv at kv_size=64, on the CPU"
    )
    demo.add_argument("--method", default="snapkv", help="compression method (default snapkv; e.g. headkv-r2)")
    demo.add_argument("--kv-size", type=int, default=64, help="tokens kept per KV head per layer (default 64)")
    demo.set_defaults(func=run_demo)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt of --prompt or --prompt-file.

    Raises:
        ValueError: --prompt-file does not exist.
    """
    if args.prompt_file is None:
        return args.prompt
    if not args.prompt_file.is_file():
        raise ValueError(f"--prompt-file {str(args.prompt_file)!r} does not exist")
    return args.prompt_file.read_text(encoding="utf-8")


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads to torch."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The generation keywords shared by `Engine.generate` and `Engine.sweep`."""
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "seed": args.seed, "chat_template": args.chat_template, "question_window": args.question_window}


def run_generate(args: argparse.Namespace) -> int:
    from .generate import Engine

    base = args.method.partition(":")[0]  # a variant spelling's own parameters are typed by get_method
    params = method_params(base, args.param)
    check_score_files(base, {"--head-scores": args.head_scores, "--layer-scores": args.layer_scores})
    if args.layer_scores is not None:
        params["layer_scores"] = args.layer_scores
    prompt_text = read_prompt(args)
    set_threads(args)
    engine = Engine.from_pretrained(args.model, method=args.method, head_scores=args.head_scores, device=args.device,
                                    dtype=args.dtype, backend=args.backend, cuda_graph=args.cuda_graph,
                                    tp_plan=args.tp_plan, rank_balance=args.rank_balance, **params)
    result = engine.generate(prompt_text, kv_size=args.kv_size, **sampling_kwargs(args))
    if args.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print(result.text.strip())
        print()
        print(format_stats(result))
    return 0


def sweep_variants(methods: list[str], kv_sizes: list[int], score_files: dict[str, Path | None]) -> list:
    """((method, score-file keywords), kv_size) pairs of --methods x --kv-sizes, `full` once with no kv_size; each
    method gets the --head-scores/--layer-scores files it reads (`score_files`: flag -> path or None).

    Raises:
        ValueError: an unknown method, or a score-file flag that none of `methods` reads.
    """
    from .methods import METHODS

    bases = [method.partition(":")[0] for method in methods]
    for method, base in zip(methods, bases):
        if base not in METHODS:
            raise ValueError(f"--methods {method!r} is unknown; choose from {sorted(METHODS)} (see `raggedkv methods`)")
    files = {flag.removeprefix("--").replace("-", "_"): path for flag, path in score_files.items() if path is not None}
    for key, path in files.items():
        if not any(key in METHODS[base].score_files for base in bases):
            readers = [name for name, cls in METHODS.items() if key in cls.score_files]
            raise ValueError(f"--{key.replace('_', '-')} {str(path)!r}: none of --methods {methods} reads such a "
                             f"file; {readers} do")
    pairs = []
    for method, base in zip(methods, bases):
        own = {key: path for key, path in files.items() if key in METHODS[base].score_files}
        pairs.extend([((method, own), None)] if base == "full" else [((method, own), kv) for kv in kv_sizes])
    return pairs


def run_sweep(args: argparse.Namespace) -> int:
    from .generate import Engine
    from .methods import get_method

    score_files = {"--head-scores": args.head_scores, "--layer-scores": args.layer_scores}
    pairs = sweep_variants(args.methods, args.kv_sizes, score_files)
    prompt_text = read_prompt(args)
    set_threads(args)
    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, backend=args.backend,
                                    cuda_graph=args.cuda_graph, tp_plan=args.tp_plan, rank_balance=args.rank_balance)
    model_name = engine.model.name_or_path or None
    variants = [(get_method(method, model_name=model_name, **files) if files else method, kv_size)
                for (method, files), kv_size in pairs]
    results = engine.sweep(prompt_text, variants, **sampling_kwargs(args))
    if args.json:
        print(json.dumps([result_json(result) for result in results], indent=2))
        return 0
    for result in results:
        stats = result.stats
        budget = "full cache" if stats.kv_size is None else f"kv_size {stats.kv_size}"
        print(f"== {stats.method}, {budget}: {format_kv_memory(stats)} kept")
        print(result.text.strip())
        print()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    return 0 if demo(method=args.method, kv_size=args.kv_size).correct else 1
