"""The command line every bench shares, the message without a GPU, and the `Report` a run returns."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RESULTS_DIR


def parse_args(name: str, title: str, argv: Sequence[str] | None, provider_ids: Iterable[str] = (),
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               kernel: bool = True) -> argparse.Namespace:
    """The shared CLI; `kernel=False` leaves out the kernel-timing options (reference check, graphs, warm-up).

    Adds `mode` ("dry", "quick" or "full") and `command` (the command line, for the JSON) to the namespace.
    """
    provider_ids = list(provider_ids)
    parser = argparse.ArgumentParser(prog=f"python -m bench.bench_{name}", description=title)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small subset of the grid (the default)")
    size.add_argument("--full", action="store_true", help="the whole grid")
    parser.add_argument("--providers", nargs="+", metavar="ID",
                        help=f"providers to run, space- or comma-separated, from: {', '.join(provider_ids)} "
                             "(default: every available one; bench_e2e: its grid's)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes (default bench/results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every provider on tiny shapes (CPU: Triton interpreter) and write nothing")
    if kernel:
        parser.add_argument("--no-refcheck", action="store_true", help="skip the check against the reference")
        parser.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays instead of launches")
        parser.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up per timing (default 25)")
        parser.add_argument("--rep-ms", type=float, default=100.0, help="timed calls per timing, in ms (default 100)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.mode = "dry" if args.dry_run else ("full" if args.full else "quick")
    args.command = shlex.join(["python", "-m", f"bench.bench_{name}",
                               *(argv if argv is not None else sys.argv[1:])])
    if args.providers:
        args.providers = [p for item in args.providers for p in item.split(",") if p]
        unknown = sorted(set(args.providers) - set(provider_ids))
        if unknown:
            parser.error(f"--providers {','.join(unknown)} unknown; choose from {', '.join(provider_ids)}")
    return args


def no_gpu_message(name: str, out: Path) -> str:
    """What a timed run says (on stderr) where there is no CUDA device."""
    return (f"bench_{name}: no CUDA device here, so nothing was timed and nothing was written to {out}. "
            f"Timings need a GPU; `python -m bench.bench_{name} --dry-run` checks every provider on tiny shapes "
            "on the CPU (Triton interpreter) without writing anything.")


@dataclass(slots=True)
class Report:
    """What a run produced: the exit code, the JSON document (also for dry runs) and where it was written."""

    exit_code: int
    doc: dict[str, Any] | None = None
    path: Path | None = None
