"""Shared pieces of the benchmark scripts: timing and Markdown tables."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    best: float    # seconds
    median: float  # seconds
    result: object  # what the last call returned


def timed(fns: dict, repeat: int = 5) -> dict[str, Timing]:
    """Wall time of each named function over ``repeat`` rounds. Each round calls every function once, in
    turn, so on a shared machine a slow spell hits all of them rather than one: their ratio is what a
    row of these tables compares."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(min(t), statistics.median(t), results[name]) for name, t in times.items()}


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A Markdown table; numbers right-aligned."""
    out = [f"\n## {title}\n"] if title else []
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
