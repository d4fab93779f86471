"""The program's dependency graph and its critical path: which unit bounds a schedule.

Nodes are unit instructions; edges are program order within a unit and each token's k-th SIGNAL to
its k-th WAIT. Weighted by the durations a simulation measured, the longest path is the chain of
instructions that set the run time; its share per unit says what to make faster (or overlap better).
The shared DRAM channel is a resource, not a dependency, so contention shows up as the gap between the
critical path and the simulated cycle count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from ..isa.program import Program


def dependency_graph(program: Program) -> nx.DiGraph:
    g = nx.DiGraph()
    last: dict = {}
    signals, waits = defaultdict(list), defaultdict(list)
    for pc, ins in enumerate(program.code):
        unit = ins.unit
        if unit is None:  # SETR, HALT
            continue
        g.add_node(pc, unit=unit.label, op=ins.op.mnemonic)
        if unit in last:
            g.add_edge(last[unit], pc, kind="order")
        last[unit] = pc
        if ins.op.mnemonic == "SIGNAL":
            signals[ins.token].append(pc)
        elif ins.op.mnemonic == "WAIT":
            waits[ins.token].append(pc)
    for token, sends in signals.items():
        for s, w in zip(sends, waits.get(token, [])):
            g.add_edge(s, w, kind=f"token {token}")
    return g


@dataclass(frozen=True)
class CriticalPath:
    pcs: tuple[int, ...]
    cycles: int                  # sum of the durations along the path
    by_unit: dict[str, int]      # cycles of the path spent in each unit

    @property
    def bound_by(self) -> str:
        return max(self.by_unit, key=self.by_unit.get) if self.by_unit else "none"


def critical_path(program: Program, events) -> CriticalPath:
    """Longest path through the dependency graph, weighted by the durations in ``events`` (a
    simulation run with ``trace=True``: ``SimResult.events``)."""
    if events is None:
        raise ValueError("critical_path needs the events of a run made with trace=True")
    duration = {pc: end - start for _u, pc, _n, start, end, _l in events}
    g = dependency_graph(program)
    for a, b in g.edges:
        g.edges[a, b]["w"] = duration.get(a, 0)
    path = nx.dag_longest_path(g, weight="w")
    by_unit: dict[str, int] = defaultdict(int)
    for pc in path:
        by_unit[g.nodes[pc]["unit"]] += duration.get(pc, 0)
    return CriticalPath(tuple(path), sum(by_unit.values()), dict(by_unit))
