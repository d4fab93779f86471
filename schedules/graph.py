"""The program's dependency graph and its critical path: which unit bounds a schedule.

Nodes are unit instructions; an edge ``a -> b`` says ``b`` cannot start before ``a`` starts plus the
edge's ``lag``: ``"end"`` (``a`` must have ended) or ``"start"`` (issue order only). On the Filtering and
Attention Units every instruction follows the previous one's end. The DMA units (LOAD, STORE) issue in
program order and keep up to ``dram_outstanding_requests`` transfers in flight, so a transfer follows
the previous instruction's start, and the end of the transfer that many before it; a DMA unit's
``SIGNAL`` follows the end of the unit's last transfer before it (completions come in issue order).
Each token's k-th SIGNAL precedes its k-th WAIT. Weighted by the durations a simulation measured, the
longest path is the chain of instructions that set the run time; its share per unit says what to make
faster (or overlap better). The shared DRAM channel is a resource, not a dependency: a transfer's
duration, issue to completion, includes its wait for the channel.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from ..isa.instructions import Unit
from ..isa.program import Program

_DMA = (Unit.LOAD, Unit.STORE)


def dependency_graph(program: Program) -> nx.DiGraph:
    """Nodes: pcs of unit instructions (attributes ``unit``, ``op``); edges with ``kind`` (``order``,
    ``slot``, ``completion`` or ``token N``) and ``lag`` (``end`` or ``start``)."""
    g = nx.DiGraph()
    depth = program.config.dram_outstanding_requests
    last: dict = {}  # per unit, the instruction the next one follows in issue order (a DMA unit's SIGNALs aside)
    transfers: dict = defaultdict(list)  # per DMA unit, its transfers so far
    signals, waits = defaultdict(list), defaultdict(list)
    for pc, ins in enumerate(program.code):
        unit = ins.unit
        if unit is None:  # SETR, HALT
            continue
        op = ins.op.mnemonic
        g.add_node(pc, unit=unit.label, op=op)
        dma = unit in _DMA
        if op == "SIGNAL":
            signals[ins.token].append(pc)
        elif op == "WAIT":
            waits[ins.token].append(pc)
        if dma and op == "SIGNAL":
            if transfers[unit]:
                g.add_edge(transfers[unit][-1], pc, kind="completion", lag="end")
            if unit in last and not g.has_edge(last[unit], pc):
                g.add_edge(last[unit], pc, kind="order", lag="start")
            continue
        if unit in last:
            g.add_edge(last[unit], pc, kind="order", lag="start" if dma else "end")
        last[unit] = pc
        if dma and op != "WAIT":
            if len(transfers[unit]) >= depth:
                g.add_edge(transfers[unit][-depth], pc, kind="slot", lag="end")
            transfers[unit].append(pc)
    for token, sends in signals.items():
        for s, w in zip(sends, waits.get(token, [])):
            g.add_edge(s, w, kind=f"token {token}", lag="end")
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
    simulation run with ``trace=True``: ``SimResult.events``): an ``end`` edge weighs its source's
    duration, a ``start`` edge nothing, and the path ends with its last instruction's duration."""
    if events is None:
        raise ValueError("critical_path needs the events of a run made with trace=True")
    duration = {pc: end - start for _u, pc, _n, start, end, _l in events}
    g = dependency_graph(program)
    for a, _b, edge in g.edges(data=True):
        edge["w"] = duration.get(a, 0) if edge["lag"] == "end" else 0
    end = object()  # a sink after every instruction: the path's last one counts its own duration
    g.add_edges_from((pc, end, {"w": duration.get(pc, 0)}) for pc in list(g.nodes))
    path = nx.dag_longest_path(g, weight="w")
    by_unit: dict[str, int] = defaultdict(int)
    for a, b in zip(path, path[1:]):
        by_unit[g.nodes[a]["unit"]] += g.edges[a, b]["w"]
    return CriticalPath(tuple(pc for pc in path if pc is not end), sum(by_unit.values()), dict(by_unit))
