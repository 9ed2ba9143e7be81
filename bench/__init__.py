"""raggedkv benchmarks (not installed): run from the repository root as `python -m bench.bench_<name>`."""
