"""Human-readable outputs of a run: a Chrome/Perfetto trace of unit activity, and Markdown/CSV reports.

The trace is the Trace Event Format (``chrome://tracing``, ui.perfetto.dev): one track per unit, one
complete event per instruction, timestamps in microseconds of simulated time. A DMA unit keeps several
transfers in flight, each from its issue to its completion; they overlap, so a DMA unit gets as many
tracks as it had transfers in flight at once ("load", "load 2", ...).
"""

from __future__ import annotations

import csv
import io

from ..isa.instructions import Unit
from .machine import SimResult


def chrome_trace(result: SimResult, clock_ghz: float = 1.0, name: str = "energon") -> dict:
    """Trace-event JSON (a dict) for a run made with ``trace=True``."""
    if result.events is None:
        raise ValueError("this run recorded no events; run with trace=True")
    to_us = 1.0 / (clock_ghz * 1e3)
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": name}}]
    lanes: dict[Unit, list[int]] = {u: [] for u in Unit}  # per unit, when each of its tracks is free again
    spans = []
    for unit, pc, mnemonic, start, end, label in result.events:
        ends = lanes[unit]
        lane = next((i for i, free in enumerate(ends) if free <= start), len(ends))
        ends[lane:lane + 1] = [end]
        spans.append({"name": mnemonic, "cat": unit.label, "ph": "X", "pid": 0, "tid": _track(unit, lane),
                      "ts": start * to_us, "dur": max(end - start, 0) * to_us,
                      "args": {"pc": pc, "tile": label, "start_cycle": start, "end_cycle": end}})
    events += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": _track(u, lane),
                "args": {"name": u.label if lane == 0 else f"{u.label} {lane + 1}"}}
               for u in Unit for lane in range(max(1, len(lanes[u])))]
    return {"traceEvents": events + spans, "displayTimeUnit": "ns"}


def _track(unit: Unit, lane: int) -> int:
    """Trace thread id of a unit's ``lane``-th track: the unit's number first, its extra tracks after all units."""
    return int(unit) + lane * len(Unit)


def _rows(stats: dict) -> list[tuple[str, str, str]]:
    """(section, metric, value) rows shared by the Markdown and CSV reports."""
    rows = [("run", "config", stats["config"]), ("run", "cycles", str(stats["cycles"])),
            ("run", "time_us", f"{stats['time_us']:.3f}"), ("run", "instructions", str(stats["instructions"]))]
    for unit, u in stats["units"].items():
        rows.append(("units", f"{unit} busy", f"{u['busy']} ({u['utilization']:.1%})"))
        for cause, cycles in u["stall"].items():
            rows.append(("units", f"{unit} stall {cause}", str(cycles)))
    for direction in ("read", "write"):
        for tensor, n in sorted(stats["dram_bytes"][direction].items()):
            rows.append(("dram", f"{direction} {tensor} bytes", str(n)))
    rows.append(("dram", "segments", str(stats["dram_segments"])))
    rows.append(("dram", "utilization", f"{stats['dram_utilization']:.1%}"))
    for kind, n in stats["macs"].items():
        rows.append(("compute", f"MACs {kind}", str(n)))
    rows.append(("compute", "exponentials", str(stats["exps"])))
    rows.append(("sparsity", "candidate pairs", str(stats["candidates"])))
    for i, (kept, ratio) in enumerate(zip(stats["kept_per_round"], stats["kept_ratio"]), 1):
        rows.append(("sparsity", f"kept after round {i}", f"{kept} ({ratio:.1%})"))
    for buf, acc in stats["sram_bytes"].items():
        if acc["read"] or acc["write"]:
            rows.append(("sram", f"{buf} read/write bytes", f"{acc['read']} / {acc['write']}"))
    for comp, pj in stats["energy_pj"].items():
        rows.append(("energy", f"{comp} (nJ)", f"{pj / 1e3:.2f}"))
    return rows


def markdown_report(stats: dict, title: str = "Energon simulation") -> str:
    out = [f"# {title}", ""]
    section = None
    for sec, metric, value in _rows(stats):
        if sec != section:
            out += ["", f"## {sec}", "", "| metric | value |", "|---|---:|"]
            section = sec
        out.append(f"| {metric} | {value} |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def csv_report(stats: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["section", "metric", "value"])
    writer.writerows(_rows(stats))
    return buf.getvalue()
