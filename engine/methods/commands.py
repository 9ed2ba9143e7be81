"""CLI subcommands of the methods: `raggedkv methods` and `raggedkv calibrate-layers`.

`register(subparsers)` adds both to an `argparse` sub-parser set; each sets `func`, called as `args.func(args)`
and returning an exit code. The module imports neither torch nor the method classes (the commands import them when
they run), so `raggedkv methods --help` and `raggedkv calibrate-layers --help` are fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPT_KEYS = ("prompt", "text", "input")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `methods` and `calibrate-layers` subcommands."""
    listing = subparsers.add_parser("methods", help="list the compression methods and their parameters")
    listing.set_defaults(func=run_methods)

    calibrate = subparsers.add_parser(
        "calibrate-layers",
        help="compute a CompressKV layer-score file from each layer's attention-output error at a small budget",
    )
    calibrate.add_argument("--model", required=True, help="a local Hugging Face model folder, or a model name "
                           "the engine knows (e.g. smollm2-135m-instruct)")
    calibrate.add_argument("--prompts-file", required=True, type=Path,
                           help="JSONL (one string, or object with 'prompt'/'text'/'input' and an optional 'set', "
                                "per line) or plain text (one prompt per line)")
    calibrate.add_argument("--budget", type=int, default=32, help="tokens kept per head, window included (32)")
    calibrate.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per prompt (32)")
    calibrate.add_argument("--head-scores", type=Path, default=None,
                           help="semantic-retrieval head scores ('layer-head' JSON); default: all heads score")
    calibrate.add_argument("--out", required=True, type=Path, help="where to write the layer-score JSON")
    calibrate.add_argument("--device", default=None,
                           help="where the model runs (default: cuda when available, else cpu)")
    calibrate.add_argument("--no-progress", action="store_true", help="no progress bar")
    calibrate.set_defaults(func=run_calibrate_layers)


def describe_parameter(cls: type, key: str) -> str:
    """What parameter `key` of method class `cls` accepts, as `raggedkv methods` prints it."""
    if key in cls.score_files:
        return f"a score file of kind {cls.score_files[key]!r} (a path or dict); None: the packaged one for the model"
    return cls.accepts[key].describe()


def describe_methods() -> str:
    """One line per method (name and description), then one line per parameter: default and accepted values."""
    from .registry import METHODS, method_parameters

    width = max(map(len, METHODS))
    lines = []
    for name, cls in METHODS.items():
        lines.append(f"{name:<{width}}  {cls.description}")
        params = {f"{key}={value!r}": describe_parameter(cls, key) for key, value in method_parameters(name).items()}
        key_width = max(map(len, params))
        lines += [f"{'':<{width}}    {key:<{key_width}}  {accepted}" for key, accepted in params.items()]
    return "\n".join(lines)


def run_methods(args: argparse.Namespace) -> int:
    print(describe_methods())
    return 0


def read_prompts(path: Path) -> list[str] | dict[str, list[str]]:
    """Prompts from a JSONL or text file; JSONL objects with a "set" key give named prompt sets."""
    if not path.is_file():
        raise ValueError(f"--prompts-file {str(path)!r} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return lines
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        item = json.loads(line)
        if isinstance(item, dict):
            key = next((k for k in PROMPT_KEYS if isinstance(item.get(k), str)), None)
            if key is None:
                raise ValueError(f"{path}:{number}: an object needs one of the string fields {PROMPT_KEYS}")
            sets.setdefault(str(item.get("set", "prompts")), []).append(item[key])
        elif isinstance(item, str):
            sets.setdefault("prompts", []).append(item)
        else:
            raise ValueError(f"{path}:{number}: expected a string or an object, got {type(item).__name__}")
    return sets


def run_calibrate_layers(args: argparse.Namespace) -> int:
    from ..models import load_model
    from .calibrate import calibrate_layers

    prompts = read_prompts(args.prompts_file)
    model, tokenizer = load_model(args.model, args.device)
    result = calibrate_layers(model, tokenizer, prompts, budget=args.budget, max_new_tokens=args.max_new_tokens,
                              progress=not args.no_progress, head_scores=args.head_scores)
    result["meta"]["model"] = args.model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote layer scores of {len(result['avg_score'])} layers to {args.out}")
    return 0
