"""The engine's subcommands: `raggedkv generate` and `raggedkv demo`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .backend import BACKEND_NAMES
from .default_model import DEFAULT_MODEL
from .outputs import format_stats, result_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate` and `demo` to the `raggedkv` parser."""
    generate = subparsers.add_parser("generate", help="answer one prompt with a compressed KV cache")
    generate.add_argument("--model", default=DEFAULT_MODEL, help=f"{DEFAULT_MODEL!r} or a local HF folder")
    generate.add_argument("--method", default="snapkv", help="compression method (default snapkv)")
    generate.add_argument("--kv-size", type=int, default=None,
                          help="tokens kept per KV head per layer, window included (default: keep everything)")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    generate.add_argument("--backend", choices=BACKEND_NAMES, default="auto")
    generate.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    generate.set_defaults(func=run_generate)

    demo = subparsers.add_parser(
        "demo", help="needle in a ~2K-token haystack with the default model, snapkv at kv_size=64, on the CPU"
    )
    demo.add_argument("--method", default="snapkv", help="compression method (default snapkv; e.g. headkv-r2)")
    demo.add_argument("--kv-size", type=int, default=64, help="tokens kept per KV head per layer (default 64)")
    demo.set_defaults(func=run_demo)


def run_generate(args: argparse.Namespace) -> int:
    from .generate import Engine

    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise ValueError(f"--prompt-file {str(args.prompt_file)!r} does not exist")
        prompt_text = args.prompt_file.read_text(encoding="utf-8")
    else:
        prompt_text = args.prompt
    engine = Engine.from_pretrained(args.model, method=args.method, backend=args.backend)
    result = engine.generate(prompt_text, kv_size=args.kv_size, max_new_tokens=args.max_new_tokens)
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
