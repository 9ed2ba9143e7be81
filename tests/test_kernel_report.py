"""The kernel resource report (bench/kernel_report): SASS parsing and occupancy arithmetic on known cases, the
binding of a launch to Triton's specialisation, a forced spill caught, and the reduced report of every kernel at
the Llama-3-8B bf16 shape on sm_90 with `--check` (no spills, compiles, fits), run in a subprocess without
TRITON_INTERPRET so the kernels are real JITFunctions. Needs Triton's nvidia backend and its bundled
cuobjdump/nvdisasm (no GPU); skipped with the reason where they are missing."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from bench.kernel_report.occupancy import ARCHS, theoretical_occupancy
from bench.kernel_report.sass import main_loop, parse_res_usage, parse_sass, sass_stats, spill_bytes

ROOT = Path(__file__).resolve().parent.parent

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   STL.64 [R1+0x8], R2 ;
        /*0020*/               @P0 EXIT ;
.L_x_0:
        /*0030*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
.L_x_1:
        /*0040*/                   FFMA R2, R3, R4, R2 ;
        /*0050*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64] ;
        /*0060*/              @!P1 BRA `(.L_x_1) ;
        /*0070*/                   LDL.LU R9, [R1+0x8] ;
        /*0080*/                   NOP ;
        /*0090*/               @P2 BRA `(.L_x_0) ;
.L_x_2:
        /*00a0*/                   LDL.128 R12, [R1+0x10] ;
        /*00b0*/              @!P3 BRA `(.L_x_2) ;
        /*00c0*/                   EXIT ;
.L_x_3:
        /*00d0*/                   BRA `(.L_x_3);
        /*00e0*/                   NOP;
"""
RES_USAGE = " Function k:\n  REG:88 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:632 TEXTURE:0 SURFACE:0 SAMPLER:0\n"


def _nvidia_tools_or_skip() -> None:
    try:
        from bench.kernel_report.sass import nvidia_tool

        nvidia_tool("cuobjdump")
        nvidia_tool("nvdisasm")
    except FileNotFoundError as err:
        pytest.skip(f"Triton's nvidia backend or its bundled tools are missing: {err}")


def test_sass_parsing_finds_spills_mix_and_the_innermost_loop() -> None:
    instructions, labels = parse_sass(SASS)
    assert "NOP" not in [ins.base for ins in instructions]
    assert labels == {".L_x_0": 0x30, ".L_x_1": 0x40, ".L_x_2": 0xA0, ".L_x_3": 0xD0}
    assert spill_bytes(instructions, "STL") == 8
    assert spill_bytes(instructions, "LDL") == 4 + 16
    loop = main_loop(instructions, labels)  # inner [0x40, 0x60] beats the 2-instruction retry loop and the outer
    assert [ins.offset for ins in loop] == [0x40, 0x50, 0x60]
    stats = sass_stats(SASS, RES_USAGE)
    assert (stats.registers, stats.stack_bytes, stats.static_shared_bytes) == (88, 16, 1024)
    assert (stats.kernel.instructions, stats.kernel.mma, stats.kernel.ffma, stats.kernel.async_copy) == (13, 1, 1, 1)
    assert (stats.main_loop.instructions, stats.main_loop.ffma, stats.main_loop.async_copy) == (3, 1, 1)


def test_straight_line_code_has_no_main_loop_and_bad_res_usage_is_named() -> None:
    instructions, labels = parse_sass(SASS.split(".L_x_0:")[0])
    assert main_loop(instructions, labels) is None
    with pytest.raises(ValueError, match="REG:"):
        parse_res_usage("no resource lines here")


@pytest.mark.parametrize(
    ("arch", "registers", "num_warps", "dynamic", "static", "warps", "limiter"),
    [
        ("sm_90", 255, 4, 57344, 1024, 8, "registers"),  # 8192 registers a warp: 2 warps per sub-partition
        ("sm_90", 88, 4, 22528, 1024, 20, "registers"),  # 2816 a warp: 5 per sub-partition
        ("sm_90", 32, 4, 99328, 0, 8, "shared"),  # 97 KB + 1 KB reserved: 2 blocks in 228 KB
        ("sm_80", 32, 4, 99328, 0, 4, "shared"),  # 1 block in 164 KB
        ("sm_90", 24, 1, 0, 0, 32, "blocks"),  # 32 blocks of 1 warp
        ("sm_80", 32, 8, 19456, 0, 64, "registers+shared+warps"),  # 8 blocks by every limit (20 KB blocks)
        ("sm_90", 32, 4, 233 * 1024, 0, 0, "shared>max"),
    ],
)
def test_theoretical_occupancy(arch, registers, num_warps, dynamic, static, warps, limiter) -> None:
    occupancy = theoretical_occupancy(ARCHS[arch], registers=registers, num_warps=num_warps,
                                      dynamic_shared=dynamic, static_shared=static)
    assert (occupancy.warps_per_sm, occupancy.limiter, occupancy.fits) == (warps, limiter, warps > 0)


def _scaled_rows(x_ptr, y_ptr, n, stride, one, scale, BLOCK: tl.constexpr):
    # x_ptr, y_ptr: [n, BLOCK] fp32 rows `stride` apart; y = sum over a loop of scaled rows.
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    for row in range(0, n):
        x = tl.load(x_ptr + row * stride * one + cols)
        acc += x[:, None] * x[None, :] * scale
    tl.store(y_ptr + cols[:, None] * BLOCK + cols[None, :], acc)


def _bound_scaled_rows():
    from bench.kernel_report.aot import bind_launch
    from raggedkv.kernels._utils import Launch

    x = torch.empty(4096, device="meta", dtype=torch.bfloat16)
    launch = Launch(JITFunction(_scaled_rows), (1,), (x[1:], x, 2**33, 64, 1, 0.5), {"BLOCK": 64}, num_warps=4)
    return bind_launch(launch, ARCHS["sm_90"])


def test_binding_follows_triton_specialisation() -> None:
    _nvidia_tools_or_skip()
    bound = _bound_scaled_rows()
    assert bound.signature == {"x_ptr": "*bf16", "y_ptr": "*bf16", "n": "i64", "stride": "i32", "one": "constexpr",
                               "scale": "fp32", "BLOCK": "constexpr"}
    assert bound.specialised == {"y_ptr": "div16", "n": "div16", "stride": "div16", "one": 1}  # x[1:]: 2 bytes off


def _forced_spill_row() -> dict:
    """Run in a process without TRITON_INTERPRET: `_scaled_rows` compiled for sm_90 capped at 32 registers."""
    from bench.kernel_report.report import Row, _compile_row

    bound = _bound_scaled_rows()
    squeezed = dataclasses.replace(bound, options=dataclasses.replace(bound.options, maxnreg=32))
    row = Row("sm_90", "_scaled_rows", "test", [{"case": "test: 32 registers", "grid": [1]}], 4, 3, {}, {}, {})
    _compile_row(row, squeezed, ARCHS["sm_90"])
    return row.as_json()


def _run_without_interpreter(args: list[str]) -> subprocess.CompletedProcess:
    """The real compiler cannot run where Triton was imported under TRITON_INTERPRET (as in this suite)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)


def test_a_forced_spill_is_caught() -> None:
    _nvidia_tools_or_skip()
    code = "import json; from tests.test_kernel_report import _forced_spill_row; print(json.dumps(_forced_spill_row()))"
    result = _run_without_interpreter(["-c", code])
    assert result.returncode == 0, result.stderr[-4000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["error"] is None and row["registers"] <= 32
    assert row["spill_store_bytes"] > 0 and row["spill_load_bytes"] > 0
    assert any("spills" in problem for problem in row["problems"])
    assert row["main_loop"] is not None and row["main_loop"]["ffma"] > 0


def _shipped_kernel_names() -> set[str]:
    """Every `*_kernel` Triton function (JIT or interpreted) of every module of `raggedkv.kernels`."""
    package = importlib.import_module("raggedkv.kernels")
    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"raggedkv.kernels.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, (JITFunction, InterpretedFunction)):
                names.add(name)
    return names


def test_reduced_report_every_kernel_compiles_fits_and_does_not_spill(tmp_path: Path) -> None:
    _nvidia_tools_or_skip()
    out = tmp_path / "report.json"
    result = _run_without_interpreter(["-m", "bench.kernel_report", "--arch", "sm_90", "--shape", "llama-bf16",
                                       "--reduced", "--json", str(out), "--check"])
    assert result.returncode == 0, f"kernel report --check failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    document = json.loads(out.read_text())
    assert document["kind"].startswith("static") and document["triton_version"] == triton.__version__
    rows = document["targets"]["sm_90"]
    assert {row["kernel"] for row in rows} == _shipped_kernel_names()
    for row in rows:
        where = f"{row['kernel']} [{row['cases'][0]['case']}]"
        assert row["error"] is None, where
        assert row["spill_store_bytes"] == row["spill_load_bytes"] == row["stack_bytes"] == 0, where
        assert row["warps_per_sm"] > 0 and row["problems"] == [], where
