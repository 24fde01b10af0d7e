"""Benchmarks run by `fhgs-bench NAME`: each module has ``run(argv) -> int``, prints a table and
writes ``bench/results/NAME.json`` (relative to the working directory)."""

from __future__ import annotations

import os


def write_results(path: str | os.PathLike, results: object) -> None:
    """Write a benchmark's results as JSON, atomically, creating the folder; says where."""
    from pathlib import Path

    from fhgs_ros.core.fileio import atomic_write_json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(p, results)
    print(f"wrote {p}")
