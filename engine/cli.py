"""The `raggedkv` command line: one argparse subcommand per feature, contributed by command modules.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its subcommands and sets
`func(args) -> int` (the exit status) as each one's default. To add commands, write such a module and list it here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import commands
from .eval import commands as eval_commands
from .heads import commands as heads_commands
from .methods import commands as methods_commands

COMMAND_MODULES = (commands, methods_commands, heads_commands, eval_commands)


def build_parser() -> argparse.ArgumentParser:
    """The `raggedkv` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="raggedkv", description="Head-level KV-cache compression on a packed ragged cache."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `raggedkv` console script. Bad arguments print `raggedkv: error: ...` and exit with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        parser.exit(2, f"raggedkv {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
