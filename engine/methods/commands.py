"""CLI subcommands of the methods: `raggedkv methods`, `raggedkv calibrate-layers` and `raggedkv calibrate-defaults`.

`register(subparsers)` adds them to an `argparse` sub-parser set; each sets `func`, called as `args.func(args)`
and returning an exit code. The module imports neither torch nor the method classes (the commands import them when
they run), so `raggedkv methods --help` and the calibration commands' `--help` are fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPT_KEYS = ("prompt", "text", "input")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `methods`, `calibrate-layers` and `calibrate-defaults` subcommands."""
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
    _register_calibrate_defaults(subparsers)


def _register_calibrate_defaults(subparsers: argparse._SubParsersAction) -> None:
    from ..default_model import DEFAULT_MODEL
    from ..eval.commands import int_list

    defaults = subparsers.add_parser(
        "calibrate-defaults", help="choose HeadKV's beta per kv_size on the head-scoring needles and write the "
        "defaults sidecar", description="Sweep beta per kv_size for headkv-r and headkv-r2 on the head-scoring "
        "haystack's needles (never an evaluation's), measured by teacher-forced answer log-probability, and write "
        "engine/data/<model-slug>-defaults.json, which HeadKV reads when no beta is given.")
    defaults.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or local folder ({DEFAULT_MODEL})")
    defaults.add_argument("--methods", nargs="+", default=["headkv-r", "headkv-r2"],
                          help="methods to calibrate (headkv-r headkv-r2); the sidecar keeps the rows of the others, "
                          "so one command per method may run side by side")
    defaults.add_argument("--betas", type=float, nargs="+",  # default: calibrate_defaults.BETAS (imports torch)
                          help="candidate betas (1.01 1.25 1.5 1.75 2 3 5 10)")
    defaults.add_argument("--kv-sizes", type=int_list, nargs="+", default=[int_list("32,64,128,256")],
                          help="kv_sizes to calibrate (32,64,128,256)")
    defaults.add_argument("--lengths", type=int_list, nargs="+", default=[int_list("1500")],
                          help="calibration prompt lengths in tokens (1500)")
    defaults.add_argument("--depths", type=int_list, nargs="+", default=[int_list("30,50,70")],
                          help="needle depths in percent (30,50,70)")
    defaults.add_argument("--needles", nargs="+", help="calibration needle ids (default all: retrieval-0..2, "
                          "reasoning-0..5)")
    defaults.add_argument("--no-references", action="store_true",
                          help="skip the SnapKV and full-cache reference rows (faster)")
    defaults.add_argument("--no-chat", action="store_true", help="do not use the chat template")
    defaults.add_argument("--no-question-window", dest="question_window", action="store_false",
                          help="score with the last prompt tokens instead of the window before the chat template's "
                          "assistant header (the engine's default)")
    defaults.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"), help="engine backend")
    defaults.add_argument("--log", type=Path, help="resumable measurements file "
                          "(default raggedkv-eval/calibrate-defaults-<model>-<methods>.json)")
    defaults.add_argument("--out", type=Path, help="the sidecar (default engine/data/<model-slug>-defaults.json); "
                          "the rows of methods not calibrated by this run are kept")
    defaults.add_argument("--threads", type=int, help="torch CPU threads")
    defaults.add_argument("--no-progress", action="store_true", help="no progress bar")
    defaults.set_defaults(func=run_calibrate_defaults)


def run_calibrate_defaults(args: argparse.Namespace) -> int:
    from .calibrate_defaults import BETAS, calibrate_defaults
    from .head_scores import model_slug

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    methods = "-".join(args.methods)
    log = args.log or Path("raggedkv-eval") / f"calibrate-defaults-{model_slug(args.model)}-{methods}.json"
    flat = lambda lists: [v for values in lists for v in values]  # noqa: E731
    sidecar = calibrate_defaults(args.model, methods=args.methods, betas=args.betas or BETAS,
                                 kv_sizes=flat(args.kv_sizes), lengths=flat(args.lengths), depths=flat(args.depths),
                                 needles=args.needles,
                                 references=not args.no_references, chat=not args.no_chat,
                                 question_window=args.question_window,
                                 backend=args.backend, log=log, out=args.out, progress=not args.no_progress)
    for method, chosen in sidecar["defaults"].items():
        print(f"{method}: beta by kv_size {chosen['beta']}")
    return 0


def describe_parameter(cls: type, key: str) -> str:
    """What parameter `key` of method class `cls` accepts, as `raggedkv methods` prints it."""
    if key in cls.score_files:
        return f"a score file of kind {cls.score_files[key]!r} (a path or dict); None: the packaged one for the model"
    calibrated = getattr(cls, "calibrated", {}).get(key)
    return cls.accepts[key].describe() + (f"; {calibrated}" if calibrated else "")


def describe_methods() -> str:
    """One line per method (name and description), then one line per parameter: default and accepted values."""
    from .registry import METHODS, method_parameters

    width = max(map(len, METHODS))
    lines = []
    for name, cls in METHODS.items():
        lines.append(f"{name:<{width}}  {cls.description}")
        params = {f"{key}={value!r}": describe_parameter(cls, key) for key, value in method_parameters(name).items()}
        key_width = max(map(len, params))
        for (key, accepted), param in zip(params.items(), method_parameters(name)):
            lines.append(f"{'':<{width}}    {key:<{key_width}}  {accepted}")
            lines += [f"{'':<{width + key_width}}      {line}" for line in shipped_calibrations(name, param)]
    return "\n".join(lines)


def shipped_calibrations(name: str, param: str) -> list[str]:
    """One line per shipped sidecar that calibrates `param` of method `name`: `<model>: <value> at kv_size <n>, ...`
    (what runs when the user passes no value)."""
    from .defaults import packaged_sidecars, read_calibrated

    lines = []
    for slug, path in packaged_sidecars().items():
        table = read_calibrated(path, name, param)
        if table:
            values = (f"{value:g} at kv_size {size}" for size, value in sorted(table.items()))
            lines.append(f"{slug}: " + ", ".join(values))
    return lines


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
