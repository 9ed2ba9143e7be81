"""Read a cubin back with the `cuobjdump`/`nvdisasm` that Triton's nvidia backend ships, and parse the SASS.

What is read:
    registers, stack frame, static shared memory: `cuobjdump -res-usage` (`REG:`, `STACK:`, `SHARED:`, `LOCAL:`).
    spill bytes: every `STL*` (store) / `LDL*` (load) in the SASS, weighted by its access width (`.64` 8 bytes,
        `.128` 16, `.U8`/`.S8` 1, `.U16`/`.S16` 2, else 4); per thread, static count (not per executed iteration).
        Triton kernels have no local arrays, so local-memory traffic is register spilling.
    instruction mix: MMA (`HMMA`, `HGMMA`, `IMMA`, `DMMA`, `QGMMA`, `IGMMA`), `FFMA`, and async copies
        (`LDGSTS` = `cp.async`, `UTMALDG` = TMA loads, `UBLKCP` = bulk copies); `NOP` padding is not counted.
    main loop: the innermost loop, found from the control flow: every branch whose target lies before it
        (a backward branch) closes a loop spanning `[target, branch]`; a loop whose span contains no other loop's
        span is innermost; the main loop is the innermost loop with the most instructions (mbarrier retry loops
        and the like are a few instructions). Its count is the instructions from the target to the branch,
        inclusive: one iteration of the compiled loop (after Triton's software pipelining). Code the body
        jumps to outside that span (rare: out-of-line slow paths) is not counted.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MMA_OPCODES = ("HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "QGMMA")
ASYNC_COPY_OPCODES = ("LDGSTS", "UTMALDG", "UBLKCP")

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.IGNORECASE)
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_PREDICATE = re.compile(r"^@!?U?P(?:\d+|T)\s+")
_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_WIDTH_BYTES = {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2}


def nvidia_tool(name: str) -> Path:
    """Path of `name` (`cuobjdump`, `nvdisasm`) inside Triton's nvidia backend.

    Raises:
        FileNotFoundError: Triton has no nvidia backend, or the backend ships no such tool.
    """
    try:
        import triton.backends.nvidia as nvidia_backend
    except ImportError as err:
        raise FileNotFoundError(f"Triton's nvidia backend is not installed ({err}); cannot read a cubin") from err
    path = Path(nvidia_backend.__file__).parent / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not shipped with Triton's nvidia backend (looked for {path})")
    return path


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: its byte offset, full opcode with modifiers (`STL.64`), and branch target label."""

    offset: int
    opcode: str
    target: str | None

    @property
    def base(self) -> str:
        """The opcode without modifiers (`STL.64` -> `STL`)."""
        return self.opcode.split(".", 1)[0]


@dataclass(frozen=True)
class InstructionMix:
    """Counts over a run of instructions (the whole kernel, or one loop body)."""

    instructions: int
    mma: int
    ffma: int
    async_copy: int


@dataclass(frozen=True)
class SassStats:
    """Everything the report takes from one cubin. Bytes are per thread except shared memory (per block)."""

    registers: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    kernel: InstructionMix
    main_loop: InstructionMix | None


def parse_sass(text: str) -> tuple[list[Instruction], dict[str, int]]:
    """Instructions (NOPs dropped) and label -> offset from `nvdisasm -c` output of one kernel."""
    instructions: list[Instruction] = []
    labels: dict[str, int] = {}
    pending_labels: list[str] = []
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending_labels.append(label.group(1))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        offset = int(match.group(1), 16)
        for name in pending_labels:
            labels[name] = offset
        pending_labels.clear()
        body = _PREDICATE.sub("", match.group(2))
        opcode = body.split()[0]
        if opcode == "NOP":
            continue
        target = _BRANCH_TARGET.search(body)
        instructions.append(Instruction(offset, opcode, target.group(1) if target else None))
    return instructions, labels


def spill_bytes(instructions: list[Instruction], base: str) -> int:
    """Bytes per thread moved by the `base` (`STL` or `LDL`) instructions, by access width."""
    total = 0
    for ins in instructions:
        if ins.base == base:
            widths = [_WIDTH_BYTES[m] for m in ins.opcode.split(".")[1:] if m in _WIDTH_BYTES]
            total += widths[0] if widths else 4
    return total


def instruction_mix(instructions: list[Instruction]) -> InstructionMix:
    """Instruction, MMA, FFMA and async-copy counts of `instructions`."""
    bases = [ins.base for ins in instructions]
    return InstructionMix(
        instructions=len(bases),
        mma=sum(b in MMA_OPCODES for b in bases),
        ffma=sum(b == "FFMA" for b in bases),
        async_copy=sum(b in ASYNC_COPY_OPCODES for b in bases),
    )


def main_loop(instructions: list[Instruction], labels: dict[str, int]) -> list[Instruction] | None:
    """The body of the largest innermost loop (see the module docstring), or None for straight-line code."""
    spans = []
    for ins in instructions:
        start = labels.get(ins.target) if ins.target else None
        if start is not None and start < ins.offset:
            spans.append((start, ins.offset))
    innermost = [
        (lo, hi)
        for lo, hi in spans
        if not any((lo, hi) != (a, b) and lo <= a and b <= hi for a, b in spans)
    ]
    if not innermost:
        return None
    bodies = [[ins for ins in instructions if lo <= ins.offset <= hi] for lo, hi in innermost]
    return max(bodies, key=len)


def parse_res_usage(text: str) -> tuple[int, int, int, int]:
    """`(registers, stack, static shared, local)` from `cuobjdump -res-usage` output of a one-kernel cubin."""
    match = _RES_USAGE.search(text)
    if not match:
        raise ValueError(f"no 'REG:.. STACK:.. SHARED:.. LOCAL:..' line in cuobjdump -res-usage output:\n{text}")
    registers, stack, shared, local = (int(g) for g in match.groups())
    return registers, stack, shared, local


def sass_stats(sass: str, res_usage: str) -> SassStats:
    """Combine the parsed SASS and resource usage of one kernel."""
    instructions, labels = parse_sass(sass)
    registers, stack, shared, local = parse_res_usage(res_usage)
    loop = main_loop(instructions, labels)
    return SassStats(
        registers=registers,
        stack_bytes=stack,
        local_bytes=local,
        static_shared_bytes=shared,
        spill_store_bytes=spill_bytes(instructions, "STL"),
        spill_load_bytes=spill_bytes(instructions, "LDL"),
        kernel=instruction_mix(instructions),
        main_loop=instruction_mix(loop) if loop is not None else None,
    )


def read_cubin(cubin: bytes) -> SassStats:
    """Run `cuobjdump -res-usage` and `nvdisasm -c` on `cubin` (one kernel) and parse both."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        res_usage = _run(nvidia_tool("cuobjdump"), "-res-usage", path)
        sass = _run(nvidia_tool("nvdisasm"), "-c", path)
    return sass_stats(sass, res_usage)


def _run(tool: Path, *args: object) -> str:
    result = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{tool.name} {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
    return result.stdout
