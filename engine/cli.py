"""The `raggedkv` command line: one argparse subcommand per feature, contributed by command modules.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its subcommands and sets `func(args) -> int`
(the exit status) as each one's default. Only the chosen command's module is imported (the others are listed by
name and help), so `raggedkv --help` and `raggedkv COMMAND --help` load neither torch nor transformers unless that
command's module needs them. To add commands, write such a module and list its commands here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {  # command -> (module that registers it, its one-line help)
    "generate": ("raggedkv.engine.commands", "answer one prompt with a compressed KV cache"),
    "sweep": ("raggedkv.engine.commands", "answer one prompt under several methods and KV budgets with a single prefill"),
    "demo": ("raggedkv.engine.commands",
             "needle in a ~2K-token haystack with the default model, snapkv at kv_size=64, on the CPU"),
    "methods": ("raggedkv.engine.methods.commands", "list the compression methods and their parameters"),
    "calibrate-layers": ("raggedkv.engine.methods.commands", "compute a CompressKV layer-score file from each "
                         "layer's attention-output error at a small budget"),
    "calibrate-defaults": ("raggedkv.engine.methods.commands", "choose HeadKV's beta per kv_size on the head-scoring "
                           "needles and write the defaults sidecar"),
    "score-heads": ("raggedkv.engine.heads.commands", "estimate head importance (retrieval / reasoning / semantic)"),
    "eval": ("raggedkv.engine.eval.commands", "accuracy against KV budget: NIAH, reasoning needles, LongBench"),
}


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `raggedkv` parser. `load`: the commands whose modules are imported and registered in full (None: all);
    every other command is only listed with its help."""
    parser = argparse.ArgumentParser(
        prog="raggedkv", description="Head-level KV-cache compression on a packed ragged cache."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {COMMANDS[name][0] for name in (COMMANDS if load is None else load)}
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module not in wanted:
            subparsers.add_parser(name, help=help_text)
        elif module not in registered:
            importlib.import_module(module).register(subparsers)
            registered.add(module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `raggedkv` console script. Bad arguments print `raggedkv: error: ...` and exit with 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(load=[command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        parser.exit(2, f"raggedkv {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
