"""The end-to-end benchmark's parts (`bench/bench_e2e.py` is its command line): `fill` (one prefill copied into a
serving-size batch, for the engine and for transformers' caches) and `measure` (timed rows, the most sequences
that fit)."""
