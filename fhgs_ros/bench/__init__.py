"""Benchmarks run by `fhgs-bench NAME`: each module has ``run(argv) -> int``, prints a table and
writes ``bench/results/NAME.json`` (relative to the working directory)."""
