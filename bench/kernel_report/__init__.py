"""Kernel resource report: every Triton kernel at its launcher's shipped configurations, compiled ahead of time
for sm_80 and sm_90 on a machine without a GPU, with registers, spills, shared memory, theoretical occupancy and
instruction mix read back from the cubin.

Run `python -m bench.kernel_report [--arch sm_80 sm_90] [--shape ...] [--kernel ...] [--json PATH] [--check]`.
Modules: `configs` (shapes and launches), `aot` (binding and compiling a `Launch`), `sass` (reading the cubin),
`occupancy` (theoretical warps per SM), `report` (rows and table), `__main__` (command line).
"""
