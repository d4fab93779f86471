"""The engine: a worked timing example, traps, timing-only mode, traces and reports."""

import json

import numpy as np
import pytest
from energon_tvm.isa.errors import EnergonError
from energon_tvm.isa.instructions import Unit, make
from energon_tvm.runtime_sim import (
    BufferOverflow,
    Deadlock,
    DramOutOfRange,
    IllegalInstruction,
    InstructionBudgetExceeded,
    Simulator,
    UninitializedRead,
)
from energon_tvm.runtime_sim.report import chrome_trace, csv_report, markdown_report
from simkit import image, program, sync

D, SQ, SK = 32, 8, 16


def worked_example(cfg):
    body = [
        make("LD.PARAM", dram=0, heads=1, buf=0),
        make("LD.Q", dram=0x100, rows=8, buf=0),
        make("LD.KP", dram=0x1000, keys=16, plane_lo=0, plane_hi=2, buf=0),
        sync(Unit.LOAD, 0),
        sync(Unit.FILTER, 0, "WAIT"),
        make("F.CAND", rows=8, q0=0, k0=0, keys=16, idx=0, bias=0, head=0),
        make("F.SCORE", qb=4, kb=2, rows=8, q=0, kp=0, keys=16, sc=0, idx=0, bias=0, head=0, first=1),
        make("F.SELECT", round=1, alpha=-1024, rows=8, q0=0, k0=0, keys=16, sc=0, idx=0, head=0),
        sync(Unit.FILTER, 1),
        sync(Unit.FILTER, 2),
        sync(Unit.LOAD, 1, "WAIT"),
        make("LD.KV", dram=0x2000, keys=16, rows=8, idx=0, buf=0),
        sync(Unit.LOAD, 3),
        sync(Unit.ATTEND, 2, "WAIT"),
        make("A.INIT", rows=8),
        sync(Unit.ATTEND, 3, "WAIT"),
        make("A.ATTN", rows=8, q=0, keys=16, kv=0, idx=0, bias=0, head=0),
        make("A.NORM", rows=8, out=0, head=0),
        sync(Unit.ATTEND, 4),
        sync(Unit.STORE, 4, "WAIT"),
        make("ST.OUT", dram=0x8000, rows=8, buf=0),
    ]
    return program(cfg, body, d=D, sq=SQ, sk=SK, v_offset=SK * D * 2)


def _worked_dram():
    return image((0, np.array([1e-9, 1e-4])), (0x100, np.ones((8, 32), np.int16)),
                 (0x1000, np.zeros((16, 16, 4), np.uint8)), (0x2000, np.ones((2, 16, 32), np.int16)))


def test_worked_timing_example(cfg):
    """Cycle count by hand, edge config: DRAM latency 100 cycles, 4 cycles per request, 64-byte bursts
    at 25.6 B/cycle = 2.5 cycles each, 4 transfers in flight per DMA unit; FU 512 MACs/cycle and 64
    compares/cycle; AU 128 MACs/cycle, 8 exp/cycle, 8 pipeline cycles. One DRAM channel."""
    assert (cfg.dram_latency_cycles, cfg.dram_request_cycles, cfg.dram_burst_cycles) == (100, 4, 2.5)
    assert cfg.dram_outstanding_requests == 4
    # LOAD  issues LD.PARAM, LD.Q and LD.KP at cycle 0 (three of its four slots); the channel takes them in
    #       turn: LD.PARAM 16 B: 0 + 100 latency, 4 + 1 burst * 2.5 = 6.5 -> ceil(106.5) = 107
    #       LD.Q 8 rows x 64 B = 512 B: channel free at 107 (> 0 + 100), + 4 + 8 * 2.5 = 24 -> 131
    #       LD.KP 2 planes x 64 B: 131 + 2 * (4 + 2.5) = 13 -> 144; SIGNAL t0 when all three are in: 144
    # FILTER waits t0 until 144; F.CAND 128 compares / 64 = 2 -> 146; F.SCORE 128 pairs x 32 dims
    #       = 4096 MACs / 512 = 8 -> 154; F.SELECT 128 / 64 = 2 -> 156; signals t1, t2 at 156
    # LOAD  waits t1 (idle from 144, its last completion): 12 cycles; LD.KV all 16 keys kept (alpha = -1):
    #       one run of K rows, 1024 B, and V's rows follow them in DRAM (V_OFFSET = the K rows' 1024 B), so
    #       one segment of 2048 B = 32 bursts: 156 + 100 = 256, + 4 + 32 * 2.5 = 84 -> 340
    # ATTEND waits t2 until 156; A.INIT 1 cycle -> 157; waits t3 until 340; A.ATTN 128 pairs:
    #       2 * 128 * 32 = 8192 MACs / 128 = 64 cycles vs (128 + 8) exp / 8 = 17 -> 64 + 8 = 72 -> 412;
    #       A.NORM 8 x 32 = 256 / 128 = 2 + 8 = 10 -> 422; signal t4
    # STORE waits t4 until 422; ST.OUT 1024 B: 422 + 100 = 522, + 4 + 16 * 2.5 = 44 -> 566
    r = Simulator(cfg).run(worked_example(cfg), _worked_dram())
    s = r.stats
    assert s["cycles"] == 566
    assert s["units"]["load"]["busy"] == 144 + 184  # something in flight: 0..144 and 156..340
    assert s["units"]["filter"]["busy"] == 2 + 8 + 2
    assert s["units"]["attend"]["busy"] == 1 + 72 + 10
    assert s["units"]["store"]["busy"] == 144
    assert s["units"]["filter"]["stall"] == {"wait:load": 144}
    assert s["units"]["load"]["stall"] == {"wait:filter": 12}
    assert s["units"]["attend"]["stall"] == {"wait:filter": 156, "wait:load": 183}
    assert s["units"]["store"]["stall"] == {"wait:attend": 422}
    assert s["macs"] == {"fu_int4xint2": 4096, "au_int16": 8192}
    assert s["dram_bytes"]["read_total"] == 16 + 512 + 128 + 2048
    assert s["energy_pj"]["total"] == pytest.approx(sum(v for k, v in s["energy_pj"].items() if k != "total"))
    assert s["energy_pj"]["leakage"] == pytest.approx(cfg.energy.leakage_mw * 566)


@pytest.mark.parametrize("depth, cycles, load_busy", [
    # one transfer at a time: every load waits its own latency
    #   LD.PARAM 0 + 100 + 6.5 -> 107; LD.Q 107 + 100 + 24 -> 231; LD.KP 231 + 100 + 13 -> 344 (t0);
    #   filter 344 -> 356; LD.KV 356 + 100 + 84 -> 540; A.ATTN 540 -> 612, A.NORM -> 622; ST.OUT -> 766
    (1, 766, 107 + 124 + 113 + 184),
    # two in flight: LD.PARAM and LD.Q issue at 0 (-> 107, 131); LD.KP takes LD.PARAM's slot at 107:
    #   107 + 100 = 207 + 13 -> 220 (t0); filter 220 -> 232; LD.KV 232 + 100 + 84 -> 416; A.ATTN 416 -> 488,
    #   A.NORM -> 498; ST.OUT 498 + 100 + 44 -> 642
    (2, 642, 220 + 184),
])
def test_transfers_in_flight_are_bounded_by_the_config(cfg, depth, cycles, load_busy):
    cfg = cfg.replace(dram_outstanding_requests=depth)
    s = Simulator(cfg).run(worked_example(cfg), _worked_dram()).stats
    assert (s["cycles"], s["units"]["load"]["busy"]) == (cycles, load_busy)


def test_a_dma_signal_waits_for_the_units_transfers():
    """LOAD issues both loads at once and signals; the filter's wait ends when the second completes."""
    from energon_tvm.isa.config import load_config

    cfg = load_config("edge")
    r = Simulator(cfg).run(worked_example(cfg), _worked_dram(), trace=True)
    first_filter = min(e[3] for e in r.events if e[0] == Unit.FILTER)
    kp = next(e for e in r.events if e[2] == "LD.KP")
    assert kp[3] == 0 and first_filter == kp[4] == 144


@pytest.mark.parametrize("depth, cycles, contention", [(1, 380, 154), (4, 280, 54)])
def test_dram_contention_is_attributed(cfg, depth, cycles, contention):
    """The store's request waits for the loader's long transfer on the one DRAM channel."""
    cfg = cfg.replace(dram_outstanding_requests=depth)
    body = [make("LD.PARAM", dram=0, heads=1, buf=0), sync(Unit.LOAD, 0), make("LD.Q", dram=0x100, rows=64, buf=0),
            sync(Unit.ATTEND, 0, "WAIT"), make("A.INIT", rows=1), make("A.NORM", rows=1, out=0, head=0),
            sync(Unit.ATTEND, 1), sync(Unit.STORE, 1, "WAIT"), make("ST.OUT", dram=0x8000, rows=1, buf=0)]
    r = Simulator(cfg).run(program(cfg, body, d=D, sq=64, sk=64), image((0, np.array([1.0, 1.0]))))
    # LD.PARAM 0..107 (signal t0 at 107); LD.Q 64 bursts: 4 + 64 * 2.5 = 164 on the channel from 107 -> 271
    # (issued at 0 with 4 slots: its latency overlaps LD.PARAM's; with 1 slot issued at 107: 207 -> 371)
    # A.INIT 107..108, A.NORM 32 / 128 -> 1 + 8 -> 117; ST.OUT issues at 117, its transfer could begin
    # at 217 but the channel is busy until 271 (371): 54 (154) cycles of contention, then 4 + 2 * 2.5 = 9
    assert r.cycles == cycles
    assert r.stats["units"]["store"]["stall"] == {"dram:contention": contention, "wait:attend": 117}
    assert r.stats["units"]["store"]["busy"] == cycles - 117 - contention


def _trap(cfg, body, **kw):
    return Simulator(cfg, **kw).run(program(cfg, body, d=D, sq=SQ, sk=SK), image())


@pytest.mark.parametrize("body, trap, text", [
    ([make("LD.Q", dram=0, rows=8, buf=0), make("SETR", reg=0, value=64)], IllegalInstruction, "SETR after"),
    ([sync(Unit.LOAD, 3), sync(Unit.FILTER, 3)], IllegalInstruction, "token 3 is signaled by both load and filter"),
    ([make("F.SELECT", round=1, alpha=0, rows=8, q0=0, k0=0, keys=16, sc=0, idx=0, head=0)],
     UninitializedRead, "index buffer"),
    ([make("F.CAND", rows=8, q0=0, k0=4, keys=8, idx=0, bias=0, head=0)], IllegalInstruction, "k0 = 4"),
    ([make("F.CAND", rows=8, q0=0, k0=8, keys=16, idx=0, bias=0, head=0)], IllegalInstruction, "exceeds SEQ_Q"),
    ([make("LD.Q", dram=(1 << 30) - 100, rows=8, buf=0)], DramOutOfRange, "beyond DRAM size"),
    ([make("LD.Q", dram=0, rows=8, buf=16384 - 256)], BufferOverflow, "the q buffer has 16384 bytes"),
    ([make("F.SCORE", qb=4, kb=2, rows=8, q=0, kp=0, keys=16, sc=0, idx=0, bias=0, head=0, first=1)],
     UninitializedRead, "never written"),
    ([make("LD.KP", dram=0, keys=16, plane_lo=3, plane_hi=2, buf=0)], IllegalInstruction, "plane_lo = 3"),
    ([sync(Unit.FILTER, 5, "WAIT"), sync(Unit.ATTEND, 6, "WAIT"), sync(Unit.LOAD, 6)], Deadlock,
     "filter at pc 5 waits on token 5"),
    ([make("A.ATTN", rows=8, q=0, keys=16, kv=0, idx=0, bias=0, head=0)], IllegalInstruction, "A.INIT"),
])
def test_traps_name_the_pc_and_instruction(cfg, body, trap, text):
    with pytest.raises(trap) as err:
        _trap(cfg, body)
    msg = str(err.value)
    assert text in msg, msg
    if err.value.pc is not None and err.value.pc < 5 + len(body):
        assert f"pc {err.value.pc}" in msg
        assert body[err.value.pc - 5].op.mnemonic.lower() in msg


def test_a_decoded_program_runs_as_the_program_does_and_only_for_itself(cfg):
    """Simulator.decode once, many runs: the same statistics and outputs as runs that decode for
    themselves; a program decoded for another program or configuration is refused."""
    from energon_tvm.isa.config import load_config
    from energon_tvm.isa.errors import ConfigError

    prog, sim = worked_example(cfg), Simulator(cfg)
    decoded = sim.decode(prog)
    fresh = sim.run(prog, _worked_dram())
    for _ in range(2):
        again = sim.run(prog, _worked_dram(), decoded=decoded)
        assert again.stats == fresh.stats and np.array_equal(again.dram.data, fresh.dram.data)
    with pytest.raises(ConfigError, match="another program"):
        sim.run(worked_example(cfg), _worked_dram(), decoded=decoded)  # equal, but another object
    other = load_config("server" if cfg.name != "server" else "edge")
    with pytest.raises(ConfigError, match="another configuration"):
        Simulator(other).run(prog, _worked_dram(), decoded=decoded)
    with pytest.raises(InstructionBudgetExceeded, match="budget is 4"):
        Simulator(cfg, budget=4).run(prog, _worked_dram(), decoded=decoded)


def test_missing_halt_and_budget(cfg):
    from energon_tvm.isa.program import MemoryMap, Program

    no_halt = Program.build(cfg, [make("SETR", reg=0, value=32)], MemoryMap(()))
    with pytest.raises(IllegalInstruction, match="does not end with HALT"):
        Simulator(cfg).run(no_halt, image())
    with pytest.raises(InstructionBudgetExceeded, match="budget is 4"):
        _trap(cfg, [make("A.INIT", rows=1)], budget=4)


def test_mutated_programs_never_crash_or_hang(cfg):
    """Random field values in a real program: the run completes or traps with a project error."""
    base = worked_example(cfg)
    rng = np.random.default_rng(7)
    dram = image((0x100, np.ones((8, 32), np.int16)))
    outcomes = set()
    for _ in range(300):
        code = list(base.code)
        pc = int(rng.integers(5, len(code) - 1))
        ins = code[pc]
        if not ins.args:
            continue
        from energon_tvm.isa.encoding import _layout

        layout, _ = _layout(ins.op, cfg)
        args = list(ins.args)
        i = int(rng.integers(len(args)))
        lo, hi = layout[i][3], layout[i][4]
        args[i] = int(rng.integers(lo, hi + 1))
        code[pc] = type(ins)(ins.op, tuple(args))
        prog = type(base)(base.config, tuple(code), base.memory_map, base.meta)
        try:
            Simulator(cfg).run(prog, dram)
            outcomes.add("ok")
        except EnergonError as err:
            outcomes.add(type(err).__name__)
    assert "ok" in outcomes and len(outcomes) >= 4, outcomes


def test_trace_and_reports(cfg, tmp_path):
    dram = image((0, np.array([1e-9, 1e-4])), (0x100, np.ones((8, 32), np.int16)))
    r = Simulator(cfg).run(worked_example(cfg), dram, trace=True)
    trace = chrome_trace(r, cfg.clock_ghz)
    json.dumps(trace)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in spans} >= {"LD.Q", "F.SCORE", "A.ATTN", "ST.OUT"}
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(r.cycles / 1e3)
    # LD.PARAM, LD.Q and LD.KP are in flight together: three load tracks, no two spans of a track overlap
    tracks = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert [tracks[t] for t in sorted(tracks)] == ["load", "filter", "attend", "store", "load 2", "load 3"]
    for tid in tracks:
        mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e["tid"] == tid)
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(mine, mine[1:]))
    md = markdown_report(r.stats)
    assert "| cycles | 566 |" in md and "## energy" in md
    csv = csv_report(r.stats)
    assert csv.splitlines()[0] == "section,metric,value" and "run,cycles,566" in csv
    with pytest.raises(ValueError, match="trace=True"):
        chrome_trace(Simulator(cfg).run(worked_example(cfg), dram))
