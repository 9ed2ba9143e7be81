"""Theoretical occupancy: resident warps per SM from registers, shared memory, warp and block limits.

The arithmetic of CUDA's occupancy calculator (`cuda_occupancy.h`) for compute capability 8.0 and 9.0:
    registers: a warp is allocated `roundup(regs_per_thread * 32, 256)` registers; each of the SM's 4
        sub-partitions holds `65536 / 4` registers, so it fits `floor(16384 / per_warp)` warps; blocks by registers
        = `floor(4 * that / warps_per_block)`.
    shared memory: a block occupies `roundup(dynamic + max(static, 1 KB), 128)` bytes. The CUDA runtime reserves
        1 KB of shared memory per block on these architectures; sm_90 cubins that use it report it as 1 KB of
        static shared (`.nv.reservedSmem`), so it is counted once. Blocks by shared = `floor(smem_per_sm / that)`,
        with the largest carve-out (164 KB on sm_80, 228 KB on sm_90).
    warps: `floor(64 / warps_per_block)` blocks; blocks: at most 32 per SM.
Resident warps = `min(those block counts) * warps_per_block`; the limiter is the resource (or resources, joined
with "+") giving the minimum. A block fits when it needs at most 255 registers per thread and at most the opt-in
per-block shared maximum (163 KB on sm_80, 227 KB on sm_90).
This is the ceiling the compiled code allows, not what a run achieves (tail effects, grid size, scheduling).
"""

from __future__ import annotations

from dataclasses import dataclass

WARP_SIZE = 32
RESERVED_SHARED_PER_BLOCK = 1024
SHARED_ALLOCATION_UNIT = 128
REGISTER_ALLOCATION_UNIT = 256  # registers, per warp
SUB_PARTITIONS = 4


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability."""

    name: str
    capability: int
    shared_per_sm: int
    shared_per_block_max: int
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32


ARCHS = {
    "sm_80": ArchLimits("sm_80", 80, shared_per_sm=164 * 1024, shared_per_block_max=163 * 1024),
    "sm_90": ArchLimits("sm_90", 90, shared_per_sm=228 * 1024, shared_per_block_max=227 * 1024),
}


@dataclass(frozen=True)
class Occupancy:
    """Theoretical residency of one kernel configuration on one SM."""

    blocks_per_sm: int
    warps_per_sm: int
    limiter: str
    fits: bool
    shared_per_block: int


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def theoretical_occupancy(
    arch: ArchLimits, *, registers: int, num_warps: int, dynamic_shared: int, static_shared: int
) -> Occupancy:
    """Blocks and warps per SM of a `num_warps`-warp block with the given registers per thread and shared bytes.

    Raises:
        ValueError: `num_warps` or `registers` below 1.
    """
    if num_warps < 1 or registers < 1:
        raise ValueError(f"num_warps={num_warps} and registers={registers} must both be >= 1")
    shared_per_block = dynamic_shared + static_shared
    footprint = _round_up(dynamic_shared + max(static_shared, RESERVED_SHARED_PER_BLOCK), SHARED_ALLOCATION_UNIT)
    regs_per_warp = _round_up(registers * WARP_SIZE, REGISTER_ALLOCATION_UNIT)
    warps_by_registers = SUB_PARTITIONS * (arch.registers_per_sm // SUB_PARTITIONS // regs_per_warp)
    limits = {
        "registers": warps_by_registers // num_warps,
        "shared": arch.shared_per_sm // footprint,
        "warps": arch.max_warps_per_sm // num_warps,
        "blocks": arch.max_blocks_per_sm,
    }
    too_big = [
        name
        for name, over in (
            ("registers>max", registers > arch.max_registers_per_thread),
            ("shared>max", shared_per_block > arch.shared_per_block_max),
        )
        if over
    ]
    blocks = 0 if too_big else min(limits.values())
    limiter = "+".join(too_big) or "+".join(name for name, value in limits.items() if value == blocks)
    return Occupancy(blocks, blocks * num_warps, limiter, blocks > 0, shared_per_block)
