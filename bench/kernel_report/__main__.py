"""Command line: `python -m bench.kernel_report [--arch ...] [--shape ...] [--kernel ...] [--reduced] [--json PATH]
[--check]`.

Prints the fixed-width table and writes JSON: by default one file per target,
`bench/results/kernel_report_<arch>.json`; with `--json PATH`, one file holding every target. The JSON says it
is a static compile (no GPU ran anything) and which Triton produced it. `--check` exits 1 when any shipped
configuration does not compile, does not fit on an SM (0 warps), or spills, and prints which.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import triton

from .configs import KERNEL_FAMILIES, SHAPES
from .occupancy import ARCHS
from .report import build_rows, format_table

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _document(arch_rows: dict[str, list]) -> str:
    """The JSON text: what produced it, then one line per row (readable diffs between runs)."""
    header = {
        "kind": "static ahead-of-time compile (no GPU): cubin read back with cuobjdump/nvdisasm",
        "triton_version": triton.__version__,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.kernel_report " + " ".join(sys.argv[1:]),
    }
    targets = ",\n".join(
        f" {json.dumps(arch)}: [\n" + ",\n".join(f"  {json.dumps(row.as_json())}" for row in rows) + "\n ]"
        for arch, rows in arch_rows.items()
    )
    return json.dumps(header, indent=1)[:-2] + ',\n "targets": {\n' + targets + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the report; returns the exit status (1 only for `--check` with a failing configuration)."""
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_report", description=(
        "Compile every shipped kernel configuration ahead of time for sm_80/sm_90 (no GPU) and report registers, "
        "spills, shared memory, theoretical occupancy and instruction mix read back from the cubin."))
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    parser.add_argument("--shape", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--kernel", nargs="+", choices=KERNEL_FAMILIES, default=list(KERNEL_FAMILIES),
                        help="launcher families to compile")
    parser.add_argument("--reduced", action="store_true",
                        help="the test suite's subset: layer 0, one decode plan, SnapKV scoring only")
    parser.add_argument("--json", type=Path, help="write all targets to this file instead of bench/results/")
    parser.add_argument("--check", action="store_true", help="exit 1 if a configuration fails, does not fit or spills")
    args = parser.parse_args(argv)

    arch_rows = {arch: build_rows(args.shape, ARCHS[arch], tuple(args.kernel), args.reduced) for arch in args.arch}
    for arch, rows in arch_rows.items():
        print(format_table(rows))
        print()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(_document(arch_rows))
    else:
        RESULTS.mkdir(exist_ok=True)
        for arch, rows in arch_rows.items():
            (RESULTS / f"kernel_report_{arch}.json").write_text(_document({arch: rows}))
    failing = [row for rows in arch_rows.values() for row in rows if row.problems]
    total = sum(len(rows) for rows in arch_rows.values())
    print(f"{total} distinct compiled configurations, {len(failing)} with problems "
          f"(Triton {triton.__version__}, static compile)")
    if args.check and failing:
        for row in failing:
            print(f"FAIL {row.arch} {row.kernel} [{row.cases[0]['case']}]: {'; '.join(row.problems)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
