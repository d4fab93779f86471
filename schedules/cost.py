"""The heuristic's analytic cost: what a tiling plan makes each unit do, in cycles, before any data is seen.

:func:`estimate` counts, for one :class:`~.schedule.TilingPlan`, the terms the lower bound of
:mod:`.bounds` counts for the workload, but as this plan incurs them: the Filtering Unit's low-bit MACs
(twice in ``recompute`` mode) and compares, the Attention Unit's MACs, exponentials and per-instruction
pipeline fill, and the loader's DMA instructions (each waits the DRAM latency, of which up to
``dram_outstanding_requests`` overlap, plus its transfer) with the bytes this plan moves: Q, bias and
output once per tile, K's bit-planes once per head (resident) or per tile, round and pass (streamed), and
gathered K/V once per head (resident) or per query tile (chunk slots; with one slot, gathers and
attention take turns). The DRAM channel is shared by loader and store.

Sparsity is not known when a program is compiled, so the estimate assumes it: a round with threshold
coefficient ``alpha`` keeps a third of its candidates at alpha 0, falling linearly to none at 1 and
rising linearly to all at -1 (the default rounds then keep 0.17 of the pairs; structured Q/K keep
0.18-0.24; the other rules' assumptions are :func:`round_keep`'s), and a key is in the union of ``n``
rows' kept sets with probability ``1 - (1 - kept) ** n`` (rows keep keys independently). The units
overlap as far as the tile slots let them: with ``tile_slots`` query tiles in flight the non-binding
units' time adds to the binding one's by :data:`OVERLAP` of it (all of it with one slot: each unit
waits for the previous one's tile; two slots across a long head overlap as three do,
:data:`LONG_HEAD_TILES`). These factors are what measured schedules show (docs/scheduler.md):
the heuristic ranks tilings by this estimate, it does not predict cycles to the percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..isa.config import HardwareConfig, price_actions
from ..isa.errors import ScheduleError
from ..isa.instructions import BiasMode, ThresholdRule
from .schedule import TilingPlan

#: share of the non-binding units' time that adds to the binding unit's, by query tiles in flight (a
#: fourth slot where it fits: edge BERT-base S=128 MP-MRF 46,861 -> 42,348 cycles, the main job's 100,261
#: -> 88,427; dense within 0.1% of three slots, docs/scheduler.md)
OVERLAP = {1: 1.0, 2: 0.5, 3: 0.15, 4: 0.1}
#: ... and with two tiles in flight, K/V in chunk slots, a head's planes resident and at least this many
#: query tiles a head: the loader then runs two tiles ahead of the gathers (``TilingPlan.lead``) across
#: a long head, which overlaps as three slots do (measured on edge S=512 and server S=2048,
#: docs/scheduler.md; with one or two tiles a head, as at S=128, or with streamed planes, it does not)
LONG_HEAD_TILES = 4


@dataclass(frozen=True)
class CostEstimate:
    """Estimated busy cycles per unit, DRAM bytes moved, and the estimate of the whole run."""

    fu_cycles: float
    au_cycles: float
    load_cycles: float     # the loader's instructions, latency included
    dram_cycles: float     # the DRAM channel's transfers (loads and stores)
    dram_bytes: float
    cycles: float
    energy_pj: float
    sram_bytes: Mapping[str, float] = field(compare=False)  # bytes written plus read, per buffer


#: what a schedule is ranked by: its cycles, its energy (pJ) or their product; the heuristic and the
#: tuner take the same names
OBJECTIVES = ("cycles", "energy", "edp")
#: the heuristic's ranking when none is asked for: the energy-delay product, so that of two schedules
#: about as fast the one moving far fewer bytes wins (dense BERT-base S=2048 on edge: 1.04x the cycles
#: of the fastest at 0.56x its energy, docs/scheduler.md). A tuning session's default stays cycles
DEFAULT_OBJECTIVE = "edp"


def resolve_objective(objective: str | None) -> str:
    """``objective``, or :data:`DEFAULT_OBJECTIVE` when None; a ScheduleError naming the choices when it is
    none of :data:`OBJECTIVES`."""
    objective = DEFAULT_OBJECTIVE if objective is None else objective
    if objective not in OBJECTIVES:
        raise ScheduleError(f"objective = {objective!r}; one of {', '.join(OBJECTIVES)}")
    return objective


#: the assumed fraction of its candidates a round with threshold at the mean (alpha 0) keeps
KEEP_AT_MEAN = 1 / 3


#: the assumed fraction of its candidates a gap-rule round keeps per logit of gap (saturating at all of
#: them): kept ~ min(1, KEEP_AT_GAP_1 * gap ** GAP_EXPONENT). Fitted to the kept ratios measured on the
#: real models of docs/accuracy.md at gap 8 then 4 (0.78-0.91 after round 1, 0.51-0.59 of those after
#: round 2)
KEEP_AT_GAP_1 = 0.11
GAP_EXPONENT = 1.0


#: the assumed fraction of its candidates a Sanger round keeps: kept ~ min(1, KEEP_AT_SANGER_1PCT *
#: (probability / 0.01) ** -SANGER_EXPONENT), all of them at probability 0. A rough fit (least squares in
#: log-log) to the kept ratios of one Q4xK4 round on the structured Q/K of bench/scheduler.py (MiniLM S=128
#: D=32, BERT-base S=128 and S=512 D=64) at probabilities 0.001 to 0.1: 0.026-0.063 at 0.01, 0.070-0.115
#: at 0.001, 0.0044-0.020 at 0.1. The kept fraction falls with the row length too (a probability is shared
#: by more keys), which this estimate leaves out: at 0.01 it is 1.5x the measured at S=512, 0.65x at S=128
KEEP_AT_SANGER_1PCT = 0.04
SANGER_EXPONENT = 0.44


def round_keep(r) -> float:
    """The assumed fraction of a round's candidates it keeps. MP-MRF's rule: :data:`KEEP_AT_MEAN` at alpha
    0, falling linearly to none at alpha 1 and rising linearly to all at alpha -1. The gap rule:
    :data:`KEEP_AT_GAP_1` at one logit, growing with the gap. Top-k: its fraction. Sanger's rule:
    :data:`KEEP_AT_SANGER_1PCT` at probability 0.01, falling as a power of the probability. Per-head
    values count by their mean."""
    values = r.head_values if r.head_values is not None else (r.value,)
    return float(np.mean([_keep(r.rule, v) for v in values]))


def _keep(rule: str, alpha: float) -> float:
    if rule == "gap":
        return min(1.0, KEEP_AT_GAP_1 * alpha ** GAP_EXPONENT)
    if rule == "topk":
        return alpha
    if rule == "sanger":
        return 1.0 if alpha <= 0 else min(1.0, KEEP_AT_SANGER_1PCT * (alpha / 0.01) ** -SANGER_EXPONENT)
    if alpha >= 0:
        return max(0.0, KEEP_AT_MEAN * (1.0 - alpha))
    return min(1.0, KEEP_AT_MEAN + (1.0 - KEEP_AT_MEAN) * -alpha)


def estimate(plan: TilingPlan, cfg: HardwareConfig) -> CostEstimate:
    """The analytic cost of ``plan`` (which is assumed to fit)."""
    w, s = plan.workload, plan.schedule
    heads, d, sq, sk = w.batch * w.heads, w.head_dim, w.seq_q, w.seq_k
    pairs = heads * sq * sk * (0.5 if w.causal else 1.0)
    tiles = heads * plan.tiles
    chunks_per_tile = plan.key_chunks
    if w.causal:
        chunks_per_tile = sum(plan.chunk_count(q0, rows) for q0, rows, _, _ in plan.head_tiles()) / plan.tiles
    rounds = w.params.rounds
    passes = 1 if s.filter_mode == "store" else 2

    fu_mac_passes, candidates, round_candidates = 0.0, pairs, []
    for r in rounds:
        fu_mac_passes += passes * candidates * d * cfg.fu_passes(r.q_bits, r.k_bits)
        round_candidates.append(candidates)
        candidates *= round_keep(r)
    kept_pairs = candidates
    # candidate building, then each round's select at its rule's compares per (row, key)
    compares = (1 + sum(ThresholdRule.of(r.rule).compares for r in rounds)) * pairs
    fu = fu_mac_passes / cfg.fu_macs_per_cycle + compares / cfg.fu_select_per_cycle
    shares = len(plan.filter_tiles(plan.rows))  # filter sub-tiles of a tile: each runs every round
    fu_instructions = tiles * (1 if plan.whole_row else chunks_per_tile) * (1 + 2 * len(rounds) * shares)
    fu = max(fu, fu_instructions)

    attn_instructions = tiles * chunks_per_tile
    au = max(2 * kept_pairs * d / cfg.au_macs_per_cycle, (kept_pairs + heads * sq) / cfg.au_exp_per_cycle)
    au += heads * sq * d / cfg.au_macs_per_cycle + (attn_instructions + tiles) * cfg.au_pipeline_cycles

    kept = kept_pairs / pairs if pairs else 0.0
    key_bytes = d * 2
    covered = sk * (0.5 if w.causal else 1.0)  # keys a tile's chunks reach, on average

    def union(rows: int) -> float:
        return 1.0 - (1.0 - kept) ** rows

    if plan.kv_resident:
        kv_bytes = 2 * heads * sk * union(sq) * key_bytes
    else:
        kv_bytes = 2 * tiles * covered * union(plan.rows) * key_bytes
    plane_key_bytes = d / 8
    if not rounds:
        plane_bytes, plane_loads = 0.0, 0
    elif s.plane_mode == "head":
        plane_bytes = heads * sk * plane_key_bytes * plan.plane_bits
        plane_loads = heads * len({r.k_bits for r in rounds}) * (1 if plan.whole_row else plan.key_chunks)
    else:
        plane_bytes = tiles * covered * plane_key_bytes * passes * sum(r.k_bits for r in rounds)
        plane_loads = tiles * chunks_per_tile * passes * len(rounds)
    bias_bytes = 0.0
    bias_loads = 0
    if plan.bias_mode == BiasMode.TILE:  # every tile's own rows, chunk by chunk
        bias_bytes = tiles * plan.bias_rows * covered * 4
        bias_loads = tiles * chunks_per_tile
    elif plan.bias_mode == BiasMode.ROW:  # a padding row over all of Sk, once per bias group
        bias_bytes = plan.bias_groups * sk * 4
        bias_loads = plan.bias_groups * (1 if plan.whole_row else len(plan.chunks(0, sq)))
    q_bytes, out_bytes = heads * sq * d * 2, heads * sq * d * 4
    loads = tiles * (1 + chunks_per_tile) + plane_loads + bias_loads + 1
    load_bytes = q_bytes + kv_bytes + plane_bytes + bias_bytes
    per_byte = 1 / cfg.dram_bytes_per_cycle
    requests = loads  # a segment per transfer at least (a gather's K and V rows interleave per key)
    # transfers in flight together share their latency: the loader waits it once per dram_outstanding_requests
    load = (loads * cfg.dram_latency_cycles / cfg.dram_outstanding_requests + load_bytes * per_byte
            + requests * cfg.dram_request_cycles)
    channel = (load_bytes + out_bytes) * per_byte + (requests + tiles) * cfg.dram_request_cycles

    if not plan.kv_resident and s.kv_slots == 1:
        # one chunk slot: each chunk's gather waits for the previous chunk's attention, and it for the gather
        au += attn_instructions * cfg.dram_latency_cycles + kv_bytes * per_byte
    units = (fu, au, max(load, channel))
    binding = max(units)
    long_head = (s.tile_slots == 2 and plan.lead == 2 and s.plane_mode == "head"
                 and plan.tiles >= LONG_HEAD_TILES)
    overlap = OVERLAP[3] if long_head else OVERLAP.get(s.tile_slots, min(OVERLAP.values()))
    cycles = cfg.dram_latency_cycles + binding + overlap * (sum(units) - binding)

    # each buffer's bytes written plus read: filter instructions (F.SCORE, and F.RESELECT when scores are
    # recomputed) read a sub-tile's Q rows, its chunk's planes and bias; F.CAND the bias; every A.ATTN the
    # tile's Q, its bias and the kept K/V rows of its chunk; stored scores are written and read once per
    # candidate of their round
    # (a whole-row filter instruction reads the whole key row, causal or not; each filter share reads the
    # padding row again, and its own rows of a per-row bias)
    filter_reads = passes * len(rounds)
    filter_instructions = 1 if plan.whole_row else chunks_per_tile
    filter_keys = sk if plan.whole_row else covered
    row_bias = 4 * tiles * plan.bias_rows  # bytes of every tile's bias per key
    sram = {
        "q": q_bytes * (1 + filter_reads * filter_instructions + chunks_per_tile),
        "kplane": plane_bytes + passes * tiles * shares * filter_keys * plane_key_bytes * sum(r.k_bits for r in rounds),
        "score": (2 * sum(c * b for c, b in zip(round_candidates, plan.score_bytes))
                  if s.filter_mode == "store" else 0.0),
        "bias": bias_bytes + row_bias * (filter_keys * (1 + filter_reads * (shares if plan.bias_rows == 1 else 1))
                                         + covered),
        "kv": kv_bytes + 2 * tiles * covered * union(plan.rows) * key_bytes,
        "out": 2 * out_bytes,
    }
    energy = price_actions(cfg, fu_mac_passes=fu_mac_passes, compares=compares, au_macs=2 * kept_pairs * d,
                           exps=kept_pairs + heads * sq, norms=heads * sq * d, sram_bytes=sram,
                           dram_bytes=load_bytes + out_bytes, cycles=cycles)["total"]
    return CostEstimate(fu, au, load, channel, load_bytes + out_bytes, cycles, energy, MappingProxyType(sram))


def cost_key(plan: TilingPlan, cfg: HardwareConfig, objective: str = DEFAULT_OBJECTIVE) -> tuple[float, ...]:
    """How the heuristic ranks a fitting plan, by ``objective`` (one of :data:`OBJECTIVES`): estimated
    cycles, then DRAM bytes; estimated energy, then cycles; or their product."""
    objective = resolve_objective(objective)
    e = estimate(plan, cfg)
    if objective == "cycles":
        return math.floor(e.cycles), e.dram_bytes
    if objective == "energy":
        return e.energy_pj, e.cycles
    return e.cycles * e.energy_pj, e.cycles
