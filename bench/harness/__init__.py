"""The benchmarks' shared machinery, one job per module.

environment  device, versions, git SHA, the header line; the Triton interpreter switch for CPU dry runs
timing       cold-L2 CUDA-event timing, the copy-bandwidth ceiling, peak memory of one call
spec         what a kernel bench declares: `KernelBench`, `Provider`, `Bound`
kernel_run   the driver of a kernel bench: `--dry-run` reference checks or GPU timing, table and JSON
cli          the shared command line and the `Report` a run returns
table        the fixed-width table and its metric columns
results      the JSON document (schema `ragged-kv-bench/1`) and its file name
shapes       the model shapes the benches use (HF configs with random weights; their attention shapes)
budgets      per-(sequence, KV head) budgets, planned by the engine's own methods
scores       the score files HeadKV / CompressKV read in the end-to-end bench: packaged or synthetic

The reference check itself is `raggedkv.closeness.compare`, the rule the tests use.
"""
