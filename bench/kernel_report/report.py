"""Build the report: bind every shipped launch, compile each distinct one, read its cubin, judge it."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from .aot import BoundLaunch, bind_launch, compile_bound
from .configs import KERNEL_FAMILIES, shipped_cases
from .occupancy import ArchLimits, theoretical_occupancy
from .sass import InstructionMix, read_cubin


@dataclass
class Row:
    """One distinct compiled configuration and the engine calls that launch it. Bytes: spills per thread,
    shared per block."""

    arch: str
    kernel: str
    shape: str
    cases: list[dict]  # {"case": "<shape>: <description>", "grid": [programs per axis]} per engine call
    num_warps: int
    num_stages: int
    constexprs: dict[str, object]
    specialised: dict[str, object]
    signature: dict[str, str]
    error: str | None = None
    registers: int | None = None
    stack_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    shared_bytes: int | None = None
    warps_per_sm: int | None = None
    limiter: str | None = None
    kernel_mix: InstructionMix | None = None
    main_loop: InstructionMix | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        """A JSON-ready dict (instruction mixes as nested dicts)."""
        return {k: (asdict(v) if isinstance(v, InstructionMix) else v) for k, v in self.__dict__.items()}


def _short(kernel_name: str) -> str:
    return kernel_name.strip("_").removesuffix("_kernel")


def _case_text(row: Row) -> str:
    """The first engine call without its shape, and `(+N)` for the N others with the same result."""
    first = row.cases[0]["case"].split(": ", 1)[1]
    return first + (f" (+{len(row.cases) - 1})" if len(row.cases) > 1 else "")


def _judge(row: Row, arch: ArchLimits, dynamic_shared: int, static_shared: int) -> None:
    """Fill occupancy and the problems `--check` fails on: spills, a block that does not fit, 0 warps per SM."""
    occupancy = theoretical_occupancy(arch, registers=row.registers, num_warps=row.num_warps,
                                      dynamic_shared=dynamic_shared, static_shared=static_shared)
    row.shared_bytes = occupancy.shared_per_block
    row.warps_per_sm = occupancy.warps_per_sm
    row.limiter = occupancy.limiter
    if row.spill_store_bytes or row.spill_load_bytes or row.stack_bytes:
        row.problems.append(f"spills {row.spill_store_bytes} B stored / {row.spill_load_bytes} B loaded per thread "
                            f"(stack frame {row.stack_bytes} B)")
    if not occupancy.fits:
        row.problems.append(f"does not fit ({occupancy.limiter}: {row.registers} registers, "
                            f"{occupancy.shared_per_block} B shared; 0 warps per SM)")


def _compile_row(row: Row, bound: BoundLaunch, arch: ArchLimits) -> None:
    """Compile `bound`, read its cubin and judge it into `row` (a compiler error is recorded, not raised)."""
    try:
        compiled = compile_bound(bound)
    except Exception as err:  # noqa: BLE001 - any compiler failure is a reported result, not a crash
        row.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        row.problems.append(f"does not compile ({row.error})")
        return
    stats = read_cubin(compiled.cubin)
    row.registers = stats.registers
    row.stack_bytes = stats.stack_bytes
    row.spill_store_bytes = stats.spill_store_bytes
    row.spill_load_bytes = stats.spill_load_bytes
    row.kernel_mix = stats.kernel
    row.main_loop = stats.main_loop
    _judge(row, arch, compiled.dynamic_shared, stats.static_shared_bytes)


def build_rows(shapes: list[str], arch: ArchLimits, families: tuple[str, ...] = KERNEL_FAMILIES,
               reduced: bool = False, progress=sys.stderr) -> list[Row]:
    """One row per distinct (kernel, binding) over the shipped cases of `shapes` and `families` on `arch`
    (`reduced`: the test suite's subset, see `configs.shipped_cases`)."""
    rows: dict[str, tuple[Row, BoundLaunch]] = {}
    for shape in shapes:
        for case in shipped_cases(shape, arch, families, reduced):
            for launch in case.launches:
                bound = bind_launch(launch, arch)
                call = {"case": f"{case.shape}: {case.description}", "grid": list(launch.grid)}
                if bound.key in rows:
                    rows[bound.key][0].cases.append(call)
                    continue
                rows[bound.key] = (Row(
                    arch=arch.name, kernel=launch.name, shape=shape, cases=[call],
                    num_warps=launch.num_warps, num_stages=launch.num_stages,
                    constexprs=dict(launch.constexprs), specialised=bound.specialised,
                    signature={k: v for k, v in bound.signature.items() if v != "constexpr"},
                ), bound)
    for index, (row, bound) in enumerate(rows.values(), 1):
        print(f"[{arch.name} {index}/{len(rows)}] {row.kernel} {row.cases[0]['case']}", file=progress, flush=True)
        _compile_row(row, bound, arch)
    return [row for row, _ in rows.values()]


COLUMNS = (  # header, width, value of a table line
    ("arch", 5, lambda r: r.arch),
    ("kernel", 14, lambda r: _short(r.kernel)),
    ("shape", 12, lambda r: r.shape),
    ("case", 50, lambda r: _case_text(r)),
    ("w/st", 4, lambda r: f"{r.num_warps}/{r.num_stages}"),
    ("regs", 4, lambda r: r.registers),
    ("spill st/ld B", 13, lambda r: f"{r.spill_store_bytes}/{r.spill_load_bytes}"),
    ("smem KB", 7, lambda r: f"{r.shared_bytes / 1024:.1f}"),
    ("warps/SM", 21, lambda r: f"{r.warps_per_sm} ({r.limiter})"),
    ("MMA", 4, lambda r: r.kernel_mix.mma),
    ("FFMA", 5, lambda r: r.kernel_mix.ffma),
    ("async", 5, lambda r: r.kernel_mix.async_copy),
    ("loop ins", 8, lambda r: r.main_loop.instructions if r.main_loop else "-"),
    ("loop MMA/FFMA", 13, lambda r: f"{r.main_loop.mma}/{r.main_loop.ffma}" if r.main_loop else "-"),
    ("ok", 4, lambda r: "ok" if not r.problems else "FAIL"),
)
_SAME_RESULT = ("arch", "kernel", "shape", "num_warps", "num_stages", "error", "registers", "stack_bytes",
                "spill_store_bytes", "spill_load_bytes", "shared_bytes", "warps_per_sm", "limiter", "kernel_mix",
                "main_loop")


def collapse(rows: list[Row]) -> list[Row]:
    """Rows of one kernel and shape whose compiled results are identical (they differ only in a specialisation
    that changed nothing, e.g. an index pointer's alignment) merged into one, cases concatenated, in order."""
    merged: dict[tuple, Row] = {}
    for row in rows:
        key = tuple(repr(getattr(row, name)) for name in _SAME_RESULT)
        if key in merged:
            merged[key].cases.extend(row.cases)
        else:
            merged[key] = Row(**{**row.__dict__, "cases": list(row.cases), "problems": list(row.problems)})
    return list(merged.values())


def format_table(rows: list[Row]) -> str:
    """Fixed-width table of `collapse(rows)`, one line each; a configuration that did not compile shows its
    error instead of numbers. `(+N)`: N more engine calls with the same result."""
    lines = ["  ".join(f"{name:<{width}}" for name, width, _ in COLUMNS).rstrip()]
    lines.append("  ".join("-" * width for _, width, _ in COLUMNS))
    for row in collapse(rows):
        if row.error:
            head = "  ".join(f"{str(value(row)):<{width}}" for _, width, value in COLUMNS[:5])
            lines.append(f"{head}  does not compile: {row.error}")
            continue
        lines.append("  ".join(f"{str(value(row)):<{width}}" for _, width, value in COLUMNS).rstrip())
    return "\n".join(lines)
