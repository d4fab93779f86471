"""The traps that keep a program's arithmetic meaningful: DMA inside DRAM, aligned, inside one region
of the right element type; aligned buffer accesses; finite head parameters; no NaN or infinity on
the way to the output. One small hand-written attention pipeline, run clean, then broken one way at a
time."""

import numpy as np
import pytest
from energon_tvm.isa.instructions import Unit, make
from energon_tvm.runtime_sim import (
    DramOutOfRange,
    MisalignedAccess,
    NumericFault,
    RegionViolation,
    Simulator,
    SimulatorTrap,
    SparsityProfile,
)
from simkit import image, program, sync

D, SQ, SK = 32, 8, 16
A_PARAM, A_Q, A_KP, A_K, A_V, A_BIAS, A_OUT = 0x0, 0x100, 0x1000, 0x2000, 0x2400, 0x3000, 0x8000
REGIONS = [("param", A_PARAM, "float64", (1, 2)), ("q", A_Q, "int16", (SQ, D)),
           ("kplanes", A_KP, "uint8", (16, SK, D // 8)), ("k", A_K, "int16", (SK, D)), ("v", A_V, "int16", (SK, D)),
           ("bias", A_BIAS, "float32", (SQ, SK)), ("out", A_OUT, "float32", (SQ, D))]
RNG = np.random.default_rng(1)
Q16 = RNG.integers(-32767, 32768, (SQ, D)).astype(np.int16)
K16 = RNG.integers(-32767, 32768, (SK, D)).astype(np.int16)
V16 = RNG.integers(-32767, 32768, (SK, D)).astype(np.int16)


def pipeline(**changes):
    """One tile, one chunk, dense: load, candidates (bias tile), gather, attend, normalise, store.
    ``changes`` replaces fields of instructions by mnemonic (``LD_Q={"dram": ...}``)."""
    body = [make("LD.PARAM", dram=A_PARAM, heads=1, buf=0),
            make("LD.Q", dram=A_Q, rows=SQ, buf=0),
            make("LD.KP", dram=A_KP, keys=SK, plane_lo=0, plane_hi=2, buf=0),
            make("LD.BIAS", dram=A_BIAS, rows=SQ, keys=SK, buf=0),
            sync(Unit.LOAD, 0), sync(Unit.FILTER, 0, "WAIT"),
            make("F.CAND", rows=SQ, q0=0, k0=0, keys=SK, idx=0, bias=0, head=0, biasmode=1),
            sync(Unit.FILTER, 1), sync(Unit.FILTER, 2), sync(Unit.LOAD, 1, "WAIT"),
            make("LD.KV", dram=A_K, keys=SK, rows=SQ, idx=0, buf=0),
            sync(Unit.LOAD, 3), sync(Unit.ATTEND, 2, "WAIT"), make("A.INIT", rows=SQ), sync(Unit.ATTEND, 3, "WAIT"),
            make("A.ATTN", rows=SQ, q=0, keys=SK, kv=0, idx=0, bias=0, head=0, biasmode=1),
            make("A.NORM", rows=SQ, out=0, head=0),
            sync(Unit.ATTEND, 4), sync(Unit.STORE, 4, "WAIT"),
            make("ST.OUT", dram=A_OUT, rows=SQ, buf=0)]
    for name, fields in changes.items():
        mnemonic = name.replace("_", ".")
        body = [make(mnemonic, **{**i.as_dict(), **fields}) if i.op.mnemonic == mnemonic else i for i in body]
    return body


def dram(params=(1e-9, 1e-4), bias=None):
    bias = np.zeros((SQ, SK), np.float32) if bias is None else bias
    return image((A_PARAM, np.array(params, np.float64)), (A_Q, Q16), (A_K, K16), (A_V, V16), (A_BIAS, bias))


def run(cfg, body, regions=REGIONS, params=(1e-9, 1e-4), bias=None, **kw):
    prog = program(cfg, body, regions, d=D, sq=SQ, sk=SK, v_offset=A_V - A_K)
    return Simulator(cfg).run(prog, dram(params, bias), **kw)


def trap(cfg, kind, text, body, **kw):
    with pytest.raises(kind) as err:
        run(cfg, body, **kw)
    msg = str(err.value)
    assert text in msg and "\n" not in msg, msg
    assert err.value.pc is not None and err.value.instruction is not None
    return err.value


def test_the_pipeline_runs_clean_in_its_regions(cfg):
    r = run(cfg, pipeline())
    out = r.dram.data[A_OUT:A_OUT + SQ * D * 4].view(np.float32)
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    assert r.stats["dram_bytes"]["write"] == {"out": SQ * D * 4}


@pytest.mark.parametrize("changes, kind, text", [
    ({"LD_Q": {"dram": A_Q + 1}}, MisalignedAccess, "int16 elements at DRAM 0x101: the address is not a multiple of 2"),
    ({"LD_PARAM": {"dram": A_PARAM + 4}}, MisalignedAccess, "not a multiple of 8"),
    ({"LD_BIAS": {"dram": A_BIAS + 2}}, MisalignedAccess, "not a multiple of 4"),
    ({"ST_OUT": {"dram": A_OUT + 1}}, MisalignedAccess, "float32 elements at DRAM 0x8001"),
    # one row further: the last row runs 128 bytes past the end of "out"
    ({"ST_OUT": {"dram": A_OUT + D * 4}}, RegionViolation, "128 byte(s) past the end of region 'out'"),
    # the last K plane's chunk one byte past the planes
    ({"LD_KP": {"dram": A_KP + 1, "plane_hi": 16}}, RegionViolation, "1 byte(s) past the end of region 'kplanes'"),
    ({"LD_Q": {"dram": 0x4000}}, RegionViolation, "0x4000 lies in no memory-map region"),
    ({"LD_Q": {"dram": A_OUT}}, RegionViolation, "moves int16 elements at 0x8000; region 'out' there holds float32"),
    ({"LD_KV": {"dram": A_V}}, RegionViolation, "V rows (V_OFFSET further) at DRAM 0x2800 lies in no"),
    ({"LD_Q": {"dram": (1 << 30) - 100}}, DramOutOfRange, "beyond DRAM size"),
])
def test_dma_traps(cfg, changes, kind, text):
    trap(cfg, kind, text, pipeline(**changes))


def test_a_program_without_regions_addresses_dram_as_one_untyped_region(cfg):
    """Hand-written tests name no regions: only the DRAM's bounds and alignment apply."""
    run(cfg, pipeline(LD_Q={"dram": 0x4000}), regions=())
    trap(cfg, MisalignedAccess, "not a multiple of 2", pipeline(LD_Q={"dram": 0x4001}), regions=())


@pytest.mark.parametrize("changes, text", [
    ({"LD_Q": {"buf": 1}}, "q buffer address 0x1 is not a multiple of 2: the q buffer holds int16 elements"),
    ({"LD_PARAM": {"buf": 8}}, "param buffer address 0x8 is not a multiple of 16"),
    ({"LD_BIAS": {"buf": 2}}, "bias buffer address 0x2"),
    ({"LD_KV": {"buf": 1}}, "kv buffer address 0x1"),
    ({"A_ATTN": {"q": 3}}, "q buffer address 0x3"),
    ({"A_NORM": {"out": 2}, "ST_OUT": {"buf": 2}}, "out buffer address 0x2 is not a multiple of 4"),
])
def test_misaligned_buffer_accesses_trap(cfg, changes, text):
    trap(cfg, MisalignedAccess, text, pipeline(**changes))


@pytest.mark.parametrize("params, text", [((np.nan, 1e-4), "head 0's qk_scale loaded from DRAM 0x0 is nan"),
                                          ((1e-9, np.inf), "head 0's sv loaded from DRAM 0x8 is inf")])
def test_non_finite_head_parameters_trap_at_ld_param(cfg, params, text):
    err = trap(cfg, NumericFault, text, pipeline(), params=params)
    assert err.instruction.op.mnemonic == "LD.PARAM"


def test_a_zero_qk_scale_traps_where_a_bias_is_divided_by_it(cfg):
    """Without a bias nothing divides by qk_scale (scores are then just 0); with one, the round's
    bias quantisation would be 0/0 = NaN cast to INT32: a trap instead."""
    body = pipeline()
    at = next(i for i, ins in enumerate(body) if ins.op.mnemonic == "F.CAND") + 1
    body.insert(at, make("F.SCORE", qb=4, kb=2, rows=SQ, q=0, kp=0, keys=SK, sc=0, idx=0, bias=0, head=0, first=1,
                         biasmode=1))
    err = trap(cfg, NumericFault, "head 0's qk_scale is 0", body, params=(0.0, 1e-4))
    assert err.instruction.op.mnemonic == "F.SCORE"
    run(cfg, pipeline(), params=(0.0, 1e-4))  # no F.SCORE: zero is harmless


def test_non_finite_values_trap_at_the_instruction_that_makes_them(cfg):
    bias = np.zeros((SQ, SK), np.float32)
    bias[3, 5] = np.inf  # a logit of +inf: the online softmax would lose the row
    err = trap(cfg, NumericFault, "row 3's largest kept logit is inf", pipeline(), bias=bias)
    assert err.instruction.op.mnemonic == "A.ATTN"
    # finite but beyond FP32: acc * sv / l of ~3e4 * 1e300 cannot be stored
    err = trap(cfg, NumericFault, "outputs must be finite FP32", pipeline(), params=(1e-9, 1e300))
    assert err.instruction.op.mnemonic == "A.NORM"


def test_timing_only_runs_trap_on_addresses_too(cfg):
    masks = (np.ones((1, SQ, SK), bool),)
    run(cfg, pipeline(), profile=SparsityProfile(masks))
    with pytest.raises(SimulatorTrap, match="past the end of region 'out'"):
        prog = program(cfg, pipeline(ST_OUT={"dram": A_OUT + 4}), REGIONS, d=D, sq=SQ, sk=SK, v_offset=A_V - A_K)
        Simulator(cfg).run(prog, profile=SparsityProfile(masks))
