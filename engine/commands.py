"""The engine's subcommands: `raggedkv generate` and `raggedkv demo`.

Every knob of `Engine.from_pretrained` and `Engine.generate` has a flag with the API's default (a test compares
them). The module imports neither torch nor transformers, so `raggedkv generate --help` is fast; `run_generate`
loads them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import BACKEND_NAMES, DEFAULT_MAX_NEW_TOKENS, parse_value
from .default_model import DEFAULT_MODEL
from .outputs import format_stats, result_json

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def positive_int(text: str) -> int:
    """`text` as an int >= 1 (for --threads)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return int(text)


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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate` and `demo` to the `raggedkv` parser."""
    generate = subparsers.add_parser("generate", help="answer one prompt with a compressed KV cache")
    generate.add_argument("--model", default=DEFAULT_MODEL,
                          help=f"{DEFAULT_MODEL!r}, a local HF folder or a Hub id in the local HF cache")
    generate.add_argument("--method", default="snapkv", help="compression method or variant, e.g. snapkv:window=16 "
                          "(default snapkv; `raggedkv methods` lists them with their parameters)")
    generate.add_argument("--param", type=key_value, action="append", default=[], metavar="NAME=VALUE",
                          help="a method parameter, e.g. --param window=16 --param beta=2 (repeatable; booleans: "
                               "true/false)")
    generate.add_argument("--head-scores", type=Path, metavar="PATH",
                          help="head-score JSON for headkv-r, headkv-r2, compresskv (default: the model's packaged "
                               "one)")
    generate.add_argument("--layer-scores", type=Path, metavar="PATH",
                          help="layer-score JSON for compresskv (default: the model's packaged one)")
    generate.add_argument("--kv-size", type=int, default=None,
                          help="tokens kept per KV head per layer, window included (default: keep everything)")
    generate.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                          help="upper bound on generated tokens (default %(default)s)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus filtering when sampling (default 1.0)")
    generate.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable samples")
    generate.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                          help="tokenize the prompt as is instead of as a user turn of the model's chat template")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    generate.add_argument("--backend", choices=BACKEND_NAMES, default="auto")
    generate.add_argument("--device", default=None,
                          help="where the model runs (default: cuda when available, else cpu)")
    generate.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                          help="weights' dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    generate.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    generate.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    generate.set_defaults(func=run_generate)

    demo = subparsers.add_parser(
        "demo", help="needle in a ~2K-token haystack with the default model, snapkv at kv_size=64, on the CPU"
    )
    demo.add_argument("--method", default="snapkv", help="compression method (default snapkv; e.g. headkv-r2)")
    demo.add_argument("--kv-size", type=int, default=64, help="tokens kept per KV head per layer (default 64)")
    demo.set_defaults(func=run_demo)


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from .generate import Engine

    base = args.method.partition(":")[0]  # a variant spelling's own parameters are typed by get_method
    params = method_params(base, args.param)
    check_score_files(base, {"--head-scores": args.head_scores, "--layer-scores": args.layer_scores})
    if args.layer_scores is not None:
        params["layer_scores"] = args.layer_scores
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise ValueError(f"--prompt-file {str(args.prompt_file)!r} does not exist")
        prompt_text = args.prompt_file.read_text(encoding="utf-8")
    else:
        prompt_text = args.prompt
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained(args.model, method=args.method, head_scores=args.head_scores, device=args.device,
                                    dtype=args.dtype, backend=args.backend, **params)
    result = engine.generate(prompt_text, kv_size=args.kv_size, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                             chat_template=args.chat_template)
    if args.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print(result.text.strip())
        print()
        print(format_stats(result))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    return 0 if demo(method=args.method, kv_size=args.kv_size).correct else 1
