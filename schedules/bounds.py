"""Lower bounds on one attention call: the fewest cycles and DRAM bytes any schedule of it can take on a
machine, given the sparsity its data produced. A simulated figure is read against them (``1.32x the
bound (dram binds)``): how far a schedule is from what the machine itself allows.

This module owns that arithmetic and nothing else. The machine's rates come from
:class:`~energon_tvm.isa.config.HardwareConfig`, the DRAM layout from :func:`.emit.plan_memory`, what a
tiling must hold on chip from :func:`.schedule.buffer_usage` (through :func:`.schedule.fits`); the
work per instruction is the simulator's (``runtime_sim/semantics.py``, ``runtime_sim/work.py``), which
this module reads as documentation and never imports.

The three unit bounds, each at the unit's peak rate (the simulator's units run concurrently, so the call
takes at least the longest of them, after the first DRAM access's latency, before which no unit has
data):

* **filter** (Filtering Unit): every round r scores each of its candidates once (round 1's candidates
  are the unmasked, causal-allowed pairs, round r's the pairs round r-1 kept): ``C_r * D`` low-bit MACs
  of ``cfg.fu_passes(q_bits, k_bits)`` passes each, at ``fu_macs_per_cycle``; plus the compares of the
  threshold unit, which every schedule makes for candidate building and again for every round's
  selection over each row's causal-allowed keys at least (tiles cover those whatever the chunking), at
  ``fu_select_per_cycle``: one per key for candidate building, and per key of a select its rule's
  ``ThresholdRule.compares`` (1 for MP-MRF's and the gap rule, 2 for top-k, 3 for Sanger's). A workload
  with a ranking round (top-k, Sanger) is only scheduled whole-row (``TilingPlan.whole_row``), so each of
  its compares covers every key of every row, causal or not. A schedule that recomputes scores
  (F.RESELECT) does the MACs twice; the bound counts them once. MACs and compares add: an FU
  instruction does one after the other.
* **attention** (Attention Unit): ``2 * kept * D`` INT16 MACs (Q.K and P.V) against ``kept + rows``
  exponentials (rows: the query rows with any causal-allowed key), whichever is slower, plus the
  normalisation's ``Sq * D`` multiplies per head. Pipeline fill/drain is a per-instruction overhead,
  left out.
* **dram**: the tiling minimum below, rounded up to whole bursts where the rounding is compulsory, at
  ``cfg.dram_burst_cycles`` per burst. Request overheads are left out.

**Compulsory DRAM bytes** (what every schedule moves at least once): Q (INT16); the K bit-planes the
rounds need (plane p of a key is needed when the key is a candidate of the first round that uses
more than p bits: bits only grow from round to round); the K and V rows of every key some query of
the head keeps (the kept union per head); the bias elements some causal-allowed pair reads, in the
memory map's layout (broadcast dimensions stored once); the per-head params; the output (float32),
written once. Each tensor's bytes are rounded up to whole bursts once; gathered K/V (a key's K and V
rows lie together in the map) per run of consecutive kept keys (a DMA segment never spans a key
outside the union), when the masks are known.

**Tiling minimum DRAM bytes** (the fewest any fitting tiling moves). A tiling is a
:class:`~.schedule.Schedule`: K's planes are resident per head or streamed per query tile and round
(each round streams its bits for the tile's chunks); gathered K/V rows live in K/V chunk slots that
one query tile fills and the Attention Unit consumes (its online-softmax state holds one tile's rows).
Let ``R`` be the most query rows any fitting schedule tiles at once (the largest ``q_tile`` for which
the smallest schedule of a plane mode fits: rows drive the q, index, out and bias buffers, slots and
chunks only add to them). Then:

* if the kv buffer cannot hold a head's gathered K and V (``buffer_usage`` of a one-slot schedule whose
  chunk is the whole key row), every query tile gathers its own kept K/V: the union of its rows' kept
  keys. Tiles are runs of consecutive query rows (an instruction addresses a tile by ``q0`` and
  ``rows``), so the fewest gathers of any tiling is the split of each head's rows into runs of at most
  R rows whose unions add up to the least (:func:`tile_loads`, exact by dynamic programming). With
  counts only: ``ceil(kept / R)`` and the fewest keys that hold the kept pairs.
* if no head-mode schedule fits (a head's planes do not fit the kplane buffer), round r of every tile
  streams planes ``0 .. k_bits(r)`` of its candidates: the same fewest split, over round r's
  candidates.
* otherwise the operand counts once, as in the compulsory bytes. Q, the bias, the params and the output
  count once in any tiling.

With masks, every count is exact per head; with counts only (what a call's statistics report), the kept
union is the fewest (head, key) pairs whose causal row capacities hold the kept pairs, a weaker bound.

**Energy** (the least any schedule spends, at the config's energy table as ``runtime_sim/energy.py``
prices a run): the actions of the unit bounds once each (each round's low-bit MACs of its candidates,
the compares, the Attention Unit's MACs, exponentials and the live rows' divides), the tiling minimum's
DRAM bytes, each byte a buffer must take written once and read once (the live query rows' Q, read
also by every round; the needed planes; gathered K/V written as the tiling minimum gathers them and
read once per kept key; the output, written for live rows and stored whole; the needed bias), no
stored scores and no index or parameter traffic, and leakage over the bound's cycles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..isa.config import HardwareConfig, price_actions
from ..isa.errors import ScheduleError
from ..isa.instructions import ThresholdRule
from .emit import kv_rows, plan_memory
from .schedule import PLANE_MODES, Schedule, buffer_usage, check_fits, fits, ranking_rules
from .workload import AttentionWorkload

BINDS = ("filter", "attention", "dram")


@dataclass(frozen=True)
class CallBound:
    """Lower bounds of one call on one machine: per unit at peak rate (busy cycles), DRAM bytes, and the
    bound itself, ``cycles = latency_cycles + max(fu_cycles, au_cycles, dram_cycles)``, with the unit that
    ``binds``."""

    fu_cycles: int
    au_cycles: int
    dram_cycles: int
    compulsory_dram_bytes: int
    tiling_min_dram_bytes: int
    latency_cycles: int  # the first DRAM access's: no unit has data before it
    cycles: int
    binds: str
    from_counts: bool = False  # sparsity known by counts only: a weaker bound
    energy_pj: float = 0.0  # the least energy (pJ) of any schedule, the module's last bound

    def ratio(self, cycles: float) -> float:
        """A simulated cycle count over the bound (>= 1 for every schedule)."""
        return cycles / self.cycles if self.cycles else math.inf

    def energy_ratio(self, energy_pj: float) -> float:
        """A simulated energy (pJ) over the energy bound (>= 1 for every schedule)."""
        return energy_pj / self.energy_pj if self.energy_pj else math.inf

    def format(self, sim_cycles: float, sim_dram_bytes: float | None = None,
               sim_energy_pj: float | None = None) -> str:
        """``1.32x the bound (dram binds)``, with DRAM bytes ``; DRAM 1.10x the tiling minimum``, with
        energy ``; energy 1.25x its bound``."""
        text = f"{self.ratio(sim_cycles):.2f}x the bound ({self.binds} binds)"
        if sim_dram_bytes is not None and self.tiling_min_dram_bytes:
            text += f"; DRAM {sim_dram_bytes / self.tiling_min_dram_bytes:.2f}x the tiling minimum"
        if sim_energy_pj is not None and self.energy_pj:
            text += f"; energy {self.energy_ratio(sim_energy_pj):.2f}x its bound"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def total_bound(bounds: Sequence[CallBound]) -> CallBound:
    """The bound of calls run one after another: per-call bounds add (the calls do not overlap);
    ``binds`` names the unit that binds the most bound cycles."""
    share = {b: sum(x.cycles for x in bounds if x.binds == b) for b in BINDS}
    return CallBound(sum(x.fu_cycles for x in bounds), sum(x.au_cycles for x in bounds),
                     sum(x.dram_cycles for x in bounds), sum(x.compulsory_dram_bytes for x in bounds),
                     sum(x.tiling_min_dram_bytes for x in bounds), sum(x.latency_cycles for x in bounds),
                     sum(x.cycles for x in bounds),
                     max(BINDS, key=share.__getitem__), any(x.from_counts for x in bounds),
                     sum(x.energy_pj for x in bounds))


# -- the sparsity, reduced to what the bounds need -----------------------------------------------------
@dataclass(frozen=True)
class _Sparsity:
    """Totals over the call's heads. ``round_keys[r]`` / ``round_loads[r]``: (head, key) pairs that are a
    round-(r+1) candidate of some row, and tile loads of them with at most ``rows`` rows per tile;
    ``kv_*`` the same for the final kept set, with the bursts of their K and V rows."""

    candidates: tuple[int, ...]  # per round: the pairs it scores
    kept: int                    # pairs attention runs over
    round_keys: tuple[int, ...]
    round_loads: tuple[int, ...]
    kv_keys: int
    kv_loads: int
    kv_key_bursts: int
    kv_load_bursts: int


def _bursts(nbytes, cfg: HardwareConfig):
    return -(-nbytes // cfg.dram_burst_bytes)


def _allowed(w: AttentionWorkload) -> np.ndarray:
    """bool [Sq, Sk]: the pairs the causal rule lets be candidates (all of them without it)."""
    return w.causal_keep() if w.causal else np.ones((w.seq_q, w.seq_k), bool)


def _from_masks(w: AttentionWorkload, cfg: HardwareConfig, masks, rows: int, key_bytes: int) -> _Sparsity:
    masks = tuple(getattr(masks, "masks", masks))  # a SparsityProfile, or its masks
    rounds = len(w.params.rounds)
    shape = (w.batch * w.heads, w.seq_q, w.seq_k)
    if len(masks) != rounds + 1:
        raise ScheduleError(f"sparsity has {len(masks)} mask(s); workload {w.key()} has {rounds} filter round(s) "
                            f"and needs {rounds + 1} (candidates, then kept after each round)")
    for r, m in enumerate(masks):
        if not isinstance(m, np.ndarray) or m.dtype != bool or m.shape != shape:
            raise ScheduleError(f"sparsity mask {r} is {getattr(m, 'dtype', type(m).__name__)} "
                                f"{list(np.shape(m))}; bool [heads, Sq, Sk] = {list(shape)} expected")
        outside = m & ~masks[r - 1] if r else m & ~_allowed(w)[None]
        if outside.any():
            what = f"kept after round {r} is not a candidate of round {r}" if r else "is excluded by the causal rule"
            raise ScheduleError(f"sparsity mask {r} sets {int(outside.sum())} pair(s) that {what}")

    def keys_and_loads(m: np.ndarray) -> tuple[int, int, np.ndarray]:
        keys = np.count_nonzero(m.any(axis=1), axis=1)
        loads = tile_loads(m, rows)
        return int(keys.sum()), int(loads.sum()), loads

    rk, rl = zip(*(keys_and_loads(m)[:2] for m in masks[:-1])) if rounds else ((), ())
    kept = masks[-1]
    kv_keys, kv_loads, loads_h = keys_and_loads(kept)
    union = kept.any(axis=1)  # [heads, Sk]
    # runs of consecutive kept keys: a gather segment never spans a key outside its head's union
    edges = np.diff(np.pad(union, ((0, 0), (1, 1))).astype(np.int8), axis=1).ravel()
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    run_bursts = np.bincount(starts // (w.seq_k + 1), weights=_bursts((ends - starts) * key_bytes, cfg),
                             minlength=shape[0]).astype(np.int64)  # per head
    load_bursts = np.maximum(run_bursts, _bursts(loads_h * key_bytes, cfg))
    return _Sparsity(tuple(int(m.sum()) for m in masks[:-1]), int(kept.sum()), tuple(rk), tuple(rl),
                     kv_keys, kv_loads, int(run_bursts.sum()), int(load_bursts.sum()))


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def tile_loads(m: np.ndarray, rows: int) -> np.ndarray:
    """int64 [heads]: the fewest (tile, key) loads of any split of each head's query rows into tiles of at
    most ``rows`` consecutive rows (the ISA's tiles: ``q0`` and ``rows``), a tile loading the union of its
    rows' keys of ``m`` (bool [heads, Sq, Sk]). Exact, by dynamic programming over where tiles end:
    ``best[j] = min over l <= rows of best[j - l] + |union of rows j-l .. j-1|``."""
    heads, sq, _ = m.shape
    rows = max(1, min(int(rows), sq))
    packed = np.packbits(m, axis=2)  # [heads, Sq, Sk/8]
    union = np.zeros_like(packed)    # union[:, i] grows to rows i .. i+l-1
    big = np.iinfo(np.int64).max // 4
    cost = np.full((rows, heads, sq), big, np.int64)  # cost[l-1, h, i]: keys of rows i .. i+l-1
    for length in range(1, rows + 1):
        n = sq - length + 1
        union[:, :n] |= packed[:, length - 1:]
        cost[length - 1, :, :n] = _POPCOUNT[union[:, :n]].sum(axis=2, dtype=np.int64)
    best = np.zeros((heads, sq + 1), np.int64)
    for j in range(1, sq + 1):
        lengths = np.arange(1, min(rows, j) + 1)
        best[:, j] = (best[:, j - lengths] + cost[lengths - 1, :, j - lengths].T).min(axis=1)
    return best[:, sq]


def _from_counts(w: AttentionWorkload, cfg: HardwareConfig, candidates: int, kept_per_round: Sequence[int],
                 rows: int, key_bytes: int) -> _Sparsity:
    rounds = len(w.params.rounds)
    kept_per_round = [int(k) for k in kept_per_round]
    heads = w.batch * w.heads
    capacity = -np.sort(-_allowed(w).sum(axis=0))  # per key, descending: the rows that may have it
    most = heads * int(capacity.sum())
    if len(kept_per_round) != rounds:
        raise ScheduleError(f"{len(kept_per_round)} kept count(s) given; workload {w.key()} has {rounds} "
                            f"filter round(s)")
    counts = [int(candidates)] + kept_per_round
    if not 0 <= counts[0] <= most:
        raise ScheduleError(f"{counts[0]} candidate pairs: workload {w.key()} allows 0 .. {most}")
    for r in range(1, len(counts)):
        if not 0 <= counts[r] <= counts[r - 1]:
            raise ScheduleError(f"round {r} keeps {counts[r]} pairs of {counts[r - 1]} candidates")
    level = heads * np.concatenate([[0], np.cumsum(capacity)])

    def fewest_keys(n: int) -> int:
        """(head, key) pairs whose row capacities hold ``n`` pairs: take the widest keys of every head."""
        if n <= 0:
            return 0
        full = int(np.searchsorted(level, n, side="left")) - 1  # key levels that fall short of n
        return full * heads + -(-(n - int(level[full])) // int(capacity[full]))

    def loads(n: int) -> int:
        return max(fewest_keys(n), -(-n // rows))

    kept = counts[-1]
    return _Sparsity(tuple(counts[:-1]), kept, tuple(fewest_keys(n) for n in counts[:-1]),
                     tuple(loads(n) for n in counts[:-1]), fewest_keys(kept), loads(kept),
                     _bursts(fewest_keys(kept) * key_bytes, cfg), _bursts(loads(kept) * key_bytes, cfg))


# -- what the buffers allow ------------------------------------------------------------------------------
def _max_rows(w: AttentionWorkload, cfg: HardwareConfig, plane_mode: str) -> int:
    """The most query rows a schedule with ``plane_mode`` tiles at once (0: none fits). The smallest such
    schedule (one slot of everything, 8-key chunks, no stored scores) fits whenever any does with as many
    rows, and ``buffer_usage`` grows with the rows, so bisect on them."""
    def ok(rows: int) -> bool:
        return fits(w, Schedule(rows, 8, 1, 1, 1, plane_mode, "recompute"), cfg)

    lo, hi = 0, min(w.seq_q, cfg.max_query_tile)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _kv_resident(w: AttentionWorkload, cfg: HardwareConfig) -> bool:
    """Whether the kv buffer holds a head's gathered K and V (one slot, the whole key row as one chunk)."""
    whole_row = Schedule(1, -(-w.seq_k // 8) * 8, 1, 1, 1, "chunk", "recompute")
    return buffer_usage(w, whole_row, cfg)["kv"] <= cfg.buffer("kv")


# -- the bound -------------------------------------------------------------------------------------------
def call_bound(workload: AttentionWorkload, cfg: HardwareConfig, masks) -> CallBound:
    """The bound from the call's masks: ``masks[0]`` the candidates, ``masks[r]`` kept after round r, each
    bool [B*H, Sq, Sk] (a :class:`~energon_tvm.runtime_sim.SparsityProfile`'s ``masks``, or the profile)."""
    return _bound(workload, cfg, lambda *tiling: _from_masks(workload, cfg, masks, *tiling), False)


def call_bound_from_counts(workload: AttentionWorkload, cfg: HardwareConfig, candidates: int,
                           kept_per_round: Sequence[int]) -> CallBound:
    """The (weaker) bound from counts alone: candidate pairs and the pairs kept after each round."""
    return _bound(workload, cfg, lambda *tiling: _from_counts(workload, cfg, candidates, kept_per_round, *tiling),
                  True)


def call_bound_from_stats(workload: AttentionWorkload, cfg: HardwareConfig, stats) -> CallBound:
    """The count form from a call's statistics (the simulator's dict or an executor ``CallStats``)."""
    return call_bound_from_counts(workload, cfg, stats["candidates"], stats["kept_per_round"])


def _bound(w: AttentionWorkload, cfg: HardwareConfig, sparsity, from_counts: bool) -> CallBound:
    rows_by_mode = {mode: _max_rows(w, cfg, mode) for mode in PLANE_MODES}
    rows = max(rows_by_mode.values())
    if not rows:  # no tiling fits: say which buffers overflow, as default_schedule does
        check_fits(w, Schedule(1, 8, 1, 1, 1, "head" if ranking_rules(w) else "chunk", "recompute"), cfg)
        raise ScheduleError(f"no schedule of workload {w.key()} fits {cfg.name}")
    planes_streamed = rows_by_mode["head"] == 0
    mm = plan_memory(w)

    kv_key_bytes = kv_rows(mm)[1]  # one key's K and V rows, as the map lays them out
    sp: _Sparsity = sparsity(rows, kv_key_bytes)
    rounds = w.params.rounds
    heads, d = w.batch * w.heads, w.head_dim
    allowed = _allowed(w)

    fu = sum(c * d * cfg.fu_passes(r.q_bits, r.k_bits) for c, r in zip(sp.candidates, rounds)) / cfg.fu_macs_per_cycle
    # whole-row filtering (the only kind a ranking round runs under) compares every key of every row
    covered = w.seq_q * w.seq_k if any(r.ranking for r in rounds) else int(allowed.sum())
    compares = 1 + sum(ThresholdRule.of(r.rule).compares for r in rounds)
    fu += compares * heads * covered / cfg.fu_select_per_cycle
    live_rows = heads * int(allowed.any(axis=1).sum())
    au = max(2 * sp.kept * d / cfg.au_macs_per_cycle, (sp.kept + live_rows) / cfg.au_exp_per_cycle)
    au += heads * w.seq_q * d / cfg.au_macs_per_cycle

    planes_region = mm["kplanes"]
    plane_bytes = planes_region.nbytes // math.prod(planes_region.shape[:-1])  # one key's row of one plane
    bits = [r.k_bits for r in rounds]
    new_bits = [b - a for a, b in zip([0] + bits, bits)]
    fixed = {"q": mm["q"].nbytes, "param": mm["param"].nbytes, "out": mm["out"].nbytes,
             "bias": _bias_bytes(w, allowed, mm) if "bias" in mm else 0}
    planes = plane_bytes * sum(n * k for n, k in zip(new_bits, sp.round_keys))
    kv = sp.kv_keys * kv_key_bytes
    compulsory = sum(fixed.values()) + planes + kv
    bursts = sum(_bursts(n, cfg) for n in fixed.values()) + sp.kv_key_bursts
    if planes_streamed:
        tiling_planes = plane_bytes * sum(n * k for n, k in zip(bits, sp.round_loads))
    else:
        tiling_planes = planes
    bursts += _bursts(tiling_planes, cfg)
    if _kv_resident(w, cfg):
        tiling_kv = kv
    else:
        tiling_kv = sp.kv_loads * kv_key_bytes
        bursts += sp.kv_load_bursts - sp.kv_key_bursts
    tiling = compulsory - planes - kv + tiling_planes + tiling_kv
    dram = bursts * cfg.dram_burst_cycles

    units = dict(zip(BINDS, (math.ceil(fu), math.ceil(au), math.ceil(dram))))
    binds = max(BINDS, key=units.__getitem__)
    latency = cfg.dram_latency_cycles
    cycles = latency + units[binds]
    # the least energy: every action above once, the tiling minimum's DRAM bytes, each byte a buffer
    # must take written once and read once (the Q rows of live queries, those with an allowed key, also
    # once per round; the output stored whole but written only where a row attends), leakage over the
    # bound's cycles
    sram = {"q": live_rows * d * 2 * (2 + len(rounds)), "kplane": 2 * planes, "kv": tiling_kv + kv,
            "out": fixed["out"] + live_rows * d * 4, "bias": 2 * fixed["bias"]}
    energy = price_actions(
        cfg, fu_mac_passes=sum(c * d * cfg.fu_passes(r.q_bits, r.k_bits) for c, r in zip(sp.candidates, rounds)),
        compares=compares * heads * covered, au_macs=2 * sp.kept * d, exps=sp.kept + live_rows,
        norms=live_rows * d, sram_bytes=sram, dram_bytes=tiling, cycles=cycles)["total"]
    return CallBound(units["filter"], units["attention"], units["dram"], compulsory, tiling, latency,
                     cycles, binds, from_counts, energy)


def _bias_bytes(w: AttentionWorkload, allowed: np.ndarray, mm) -> int:
    """Bias bytes some causal-allowed pair reads, in the memory map's layout: an element broadcast over
    queries (or keys) is needed when any of the pairs it stands for is allowed."""
    region = mm["bias"]
    bb, bh, bq, bk = region.shape
    needed = allowed
    if bq == 1:
        needed = needed.any(axis=0, keepdims=True)
    if bk == 1:
        needed = needed.any(axis=1, keepdims=True)
    return bb * bh * int(needed.sum()) * (region.nbytes // math.prod(region.shape))
