"""Shared pieces of the benchmark scripts: timing and Markdown tables."""

from __future__ import annotations

import time


def best_of(fn, repeat: int = 3):
    """(best wall time in seconds, last result) of ``repeat`` calls."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A Markdown table; numbers right-aligned."""
    out = [f"\n## {title}\n"] if title else []
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
