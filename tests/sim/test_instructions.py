"""One test per instruction, each checked against numpy (VTA-style): load operands, run the
instruction on the simulator, compare the buffer or DRAM it writes with an independent computation."""

import numpy as np
import pytest
from energon_tvm.isa.instructions import OPS, BiasMode, Unit, make
from energon_tvm.isa.numerics import to_bitplanes
from energon_tvm.runtime_sim import Simulator
from energon_tvm.runtime_sim.semantics import HANDLERS
from energon_tvm.runtime_sim.traps import IllegalInstruction, NumericFault
from simkit import image, program, sync

D, SQ, SK = 32, 16, 24
RNG = np.random.default_rng(0)
Q16 = RNG.integers(-32767, 32768, (SQ, D)).astype(np.int16)
K16 = RNG.integers(-32767, 32768, (SK, D)).astype(np.int16)
V16 = RNG.integers(-32767, 32768, (SK, D)).astype(np.int16)
BIAS = np.where(RNG.random((SQ, SK)) < 0.25, -np.inf, RNG.standard_normal((SQ, SK))).astype(np.float32)
PARAM = np.array([[3e-9, 2e-4], [5e-9, 1e-4]])  # per head: qk_scale, sv
# DRAM layout of these tests
A_PARAM, A_Q, A_KP, A_K, A_BIAS, A_OUT = 0x0, 0x100, 0x1000, 0x4000, 0x6000, 0x8000
A_V = A_K + SK * D * 2
PLANES = to_bitplanes(K16)  # [16, SK, D/8]
DRAM = image((A_PARAM, PARAM), (A_Q, Q16), (A_KP, PLANES), (A_K, K16), (A_V, V16), (A_BIAS, BIAS))


def run(cfg, body):
    prog = program(cfg, body, d=D, sq=SQ, sk=SK, v_offset=A_V - A_K)
    return Simulator(cfg).run(prog, DRAM.copy())


def buf(result, name, addr, nbytes, dtype=np.uint8):
    return result.state.buf[name].data[addr:addr + nbytes].view(dtype)


# tokens of these tests: the units run concurrently, so every hand-off needs one
LOADED, SELECTED, GATHERED = 0, 1, 2


def loads(rows=SQ, q0=0, kb=4, keys=SK, k0=0):
    """Q rows, K planes 0..kb of a chunk, the bias tile and the params, all at buffer address 0; then
    the filter may start."""
    return [make("LD.PARAM", dram=A_PARAM, heads=2, buf=0),
            make("LD.Q", dram=A_Q + q0 * D * 2, rows=rows, buf=0),
            make("LD.KP", dram=A_KP + k0 * D // 8, keys=keys, plane_lo=0, plane_hi=kb, buf=0),
            make("LD.BIAS", dram=A_BIAS + (q0 * SK + k0) * 4, rows=rows, keys=keys, buf=0),
            sync(Unit.LOAD, LOADED), sync(Unit.FILTER, LOADED, "WAIT")]


def test_every_unit_instruction_has_a_handler():
    unit_ops = {op.mnemonic for op in OPS if op.unit is not None}
    assert unit_ops == set(HANDLERS)


def test_ld_param_and_ld_q(cfg):
    r = run(cfg, loads()[:2])
    assert r.stats["units"]["load"]["instructions"] == 2
    np.testing.assert_array_equal(buf(r, "param", 0, 32, np.float64).reshape(2, 2), PARAM)
    np.testing.assert_array_equal(buf(r, "q", 0, SQ * D * 2, np.int16).reshape(SQ, D), Q16)


def test_ld_kp_loads_only_the_planes_asked_for(cfg):
    keys, k0 = 8, 16
    r = run(cfg, [make("LD.KP", dram=A_KP + k0 * D // 8, keys=keys, plane_lo=2, plane_hi=5, buf=64)])
    plane_bytes = keys * D // 8
    for p in range(2, 5):
        got = buf(r, "kplane", 64 + p * plane_bytes, plane_bytes).reshape(keys, D // 8)
        np.testing.assert_array_equal(got, PLANES[p, k0:k0 + keys])
    assert not r.state.buf["kplane"].written[64:64 + 2 * plane_bytes].any()
    assert r.stats["dram_segments"] == 3  # one segment per plane


def test_ld_bias(cfg):
    r = run(cfg, [make("LD.BIAS", dram=A_BIAS + (2 * SK + 8) * 4, rows=4, keys=8, buf=16)])
    np.testing.assert_array_equal(buf(r, "bias", 16, 4 * 8 * 4, np.float32).reshape(4, 8), BIAS[2:6, 8:16])


@pytest.mark.parametrize("causal, mode", [(0, BiasMode.NONE), (1, BiasMode.NONE), (0, BiasMode.TILE),
                                          (1, BiasMode.TILE), (0, BiasMode.ROW)])
def test_f_cand(cfg, causal, mode):
    q0, rows, k0, keys = 8, 8, 8, 16
    body = loads(rows, q0, keys=keys, k0=k0) + [
        make("F.CAND", rows=rows, q0=q0, k0=k0, keys=keys, idx=k0 // 8, bias=0, head=0, causal=causal,
             biasmode=int(mode))]
    r = run(cfg, body)
    expect = np.ones((rows, keys), bool)
    if causal:
        expect &= np.arange(k0, k0 + keys)[None, :] <= np.arange(q0, q0 + rows)[:, None]
    tile = BIAS[q0:q0 + rows, k0:k0 + keys]
    if mode == BiasMode.TILE:
        expect &= tile > -1e4
    if mode == BiasMode.ROW:
        expect &= tile[:1] > -1e4
    raw = r.state.buf["index"].data.reshape(-1)
    row_bytes = (SK + 7) // 8
    got = np.unpackbits(np.stack([raw[k0 // 8 + i * row_bytes:][:keys // 8] for i in range(rows)]), axis=1)
    np.testing.assert_array_equal(got.astype(bool), expect)
    assert r.stats["candidates"] == expect.sum()


def _filter_body(qb, kb, mode, alpha=None, head=1):
    body = loads() + [make("F.CAND", rows=SQ, q0=0, k0=0, keys=SK, idx=0, bias=0, head=head, causal=1,
                           biasmode=int(mode)),
                      make("F.SCORE", qb=qb, kb=kb, rows=SQ, q=0, kp=0, keys=SK, sc=0, idx=0, bias=0, head=head,
                           first=1, biasmode=int(mode))]
    if alpha is not None:
        body.append(make("F.SELECT", round=1, alpha=alpha, rows=SQ, q0=0, k0=0, keys=SK, sc=0, idx=0, head=head))
    return body


def _numpy_scores(qb, kb, mode, head=1):
    s = (Q16.astype(np.int64) >> (16 - qb)) @ (K16.astype(np.int64) >> (16 - kb)).T
    cand = np.tril(np.ones((SQ, SK), bool))
    if mode == BiasMode.TILE:
        scale = PARAM[head, 0] * 2.0 ** (16 - qb) * 2.0 ** (16 - kb)
        b = np.where(BIAS > -1e4, BIAS.astype(np.float64), 0.0)
        s = s + np.clip(np.rint(b / scale), -2**31, 2**31 - 1).astype(np.int64)
        cand &= BIAS > -1e4
    return np.clip(s, -2**31, 2**31 - 1), cand


@pytest.mark.parametrize("qb, kb, mode", [(4, 2, BiasMode.NONE), (4, 4, BiasMode.TILE), (8, 3, BiasMode.NONE),
                                          (16, 16, BiasMode.TILE)])
def test_f_score(cfg, qb, kb, mode):
    kb_loaded = max(kb, 4)
    body = [i if i.op.mnemonic != "LD.KP" else make("LD.KP", dram=A_KP, keys=SK, plane_lo=0, plane_hi=kb_loaded,
                                                       buf=0) for i in _filter_body(qb, kb, mode)]
    r = run(cfg, body)
    expect, cand = _numpy_scores(qb, kb, mode)
    got = buf(r, "score", 0, SQ * SK * 4, np.int32).reshape(SQ, SK)
    np.testing.assert_array_equal(got, expect)
    st = r.state
    np.testing.assert_array_equal(st.f_n[:SQ], cand.sum(1))
    np.testing.assert_array_equal(st.f_sum[:SQ], np.where(cand, expect, 0).sum(1))
    np.testing.assert_array_equal(st.f_max[:SQ], np.where(cand, expect, np.iinfo(np.int64).min).max(1))
    assert r.stats["macs"][f"fu_int{qb}xint{kb}"] == cand.sum() * D


@pytest.mark.parametrize("alpha", [-1024, -300, 0, 512, 1024])
def test_f_select(cfg, alpha):
    r = run(cfg, _filter_body(4, 4, BiasMode.TILE, alpha))
    s, cand = _numpy_scores(4, 4, BiasMode.TILE)
    n = cand.sum(1, keepdims=True)
    total = np.where(cand, s, 0).sum(1, keepdims=True)
    mean = total / np.maximum(n, 1)
    hi = np.where(cand, s, -np.inf).max(1, keepdims=True)
    lo = np.where(cand, s, np.inf).min(1, keepdims=True)
    a = alpha / 1024
    theta = mean + a * (hi - mean) if a >= 0 else mean + a * (mean - lo)
    expect = cand & (s >= theta - 1e-9)  # float form of the integer rule; no score sits that close here
    raw = r.state.buf["index"].data[:SQ * 3].reshape(SQ, 3)
    got = np.unpackbits(raw, axis=1)[:, :SK].astype(bool)
    np.testing.assert_array_equal(got, expect)
    assert r.stats["kept_per_round"] == [int(expect.sum())]
    if alpha == -1024:
        np.testing.assert_array_equal(got, cand)


@pytest.mark.parametrize("alpha", [-300, 0, 512])
@pytest.mark.parametrize("mode", [BiasMode.NONE, BiasMode.TILE])
def test_f_reselect(cfg, alpha, mode):
    """F.RESELECT recomputes the round's scores instead of reading the score buffer: the same kept bits
    as F.SELECT on stored scores, twice the low-bit MACs, and nothing read from the score buffer."""
    def kept_bits(body):
        r = run(cfg, body)
        raw = r.state.buf["index"].data[:SQ * 3].reshape(SQ, 3)
        return r, np.unpackbits(raw, axis=1)[:, :SK].astype(bool)

    stored, expect = kept_bits(_filter_body(4, 4, mode, alpha))
    body = [i if i.op.mnemonic != "F.SCORE" else make("F.SCORE", **{**i.as_dict(), "store": 0})
            for i in _filter_body(4, 4, mode)]
    body.append(make("F.RESELECT", qb=4, kb=4, round=1, alpha=alpha, rows=SQ, q0=0, k0=0, keys=SK, q=0, kp=0,
                     idx=0, bias=0, head=1, biasmode=int(mode)))
    r, got = kept_bits(body)
    np.testing.assert_array_equal(got, expect)
    assert 0 < got.sum() < _numpy_scores(4, 4, mode)[1].sum() or alpha < 0
    assert r.stats["macs"]["fu_int4xint4"] == 2 * stored.stats["macs"]["fu_int4xint4"]
    assert r.stats["sram_bytes"]["score"] == {"read": 0, "write": 0}


def test_filter_sees_a_rewritten_q_tile(cfg):
    """Decoded operands are reused across instructions only while their bytes are unchanged: a second
    round on new Q rows loaded to the same buffer address scores the new rows."""
    rows = 8
    body = loads(rows=rows) + [
        make("F.CAND", rows=rows, q0=0, k0=0, keys=SK, idx=0, bias=0, head=1, causal=0, biasmode=0),
        make("F.SCORE", qb=8, kb=4, rows=rows, q=0, kp=0, keys=SK, sc=0, idx=0, bias=0, head=1, first=1, store=0),
        sync(Unit.FILTER, SELECTED), sync(Unit.LOAD, SELECTED, "WAIT"),
        make("LD.Q", dram=A_Q + rows * D * 2, rows=rows, buf=0),  # rows 8..15 over rows 0..7
        sync(Unit.LOAD, GATHERED), sync(Unit.FILTER, GATHERED, "WAIT"),
        make("F.SCORE", qb=8, kb=4, rows=rows, q=0, kp=0, keys=SK, sc=0, idx=0, bias=0, head=1, first=1)]
    r = run(cfg, body)
    expect = (Q16[rows:2 * rows].astype(np.int64) >> 8) @ (K16.astype(np.int64) >> 12).T
    np.testing.assert_array_equal(buf(r, "score", 0, rows * SK * 4, np.int32).reshape(rows, SK), expect)
    np.testing.assert_array_equal(r.state.f_sum[:rows], expect.sum(1))


def _assert_kv_holds(r, keys: int, sel: np.ndarray) -> None:
    """The kv buffer's K and V tiles of ``keys`` keys hold exactly the selected keys' K and V rows, and
    nothing was written for the others."""
    kv = r.state.buf["kv"]
    k_tile = kv.data[:keys * D * 2].view(np.int16).reshape(keys, D)
    v_tile = kv.data[keys * D * 2:2 * keys * D * 2].view(np.int16).reshape(keys, D)
    np.testing.assert_array_equal(k_tile[sel], K16[:keys][sel])
    np.testing.assert_array_equal(v_tile[sel], V16[:keys][sel])
    assert not kv.written[:keys * D * 2].reshape(keys, -1)[~sel].any()


def _gather_body(rows, keys):
    """The bias tile's candidates of ``rows`` rows, then one LD.KV of the chunk's kept keys."""
    return [make("LD.BIAS", dram=A_BIAS, rows=rows, keys=keys, buf=0),
            sync(Unit.LOAD, LOADED), sync(Unit.FILTER, LOADED, "WAIT"),
            make("F.CAND", rows=rows, q0=0, k0=0, keys=keys, idx=0, bias=0, head=0, causal=0, biasmode=1),
            sync(Unit.FILTER, SELECTED), sync(Unit.LOAD, SELECTED, "WAIT"),
            make("LD.KV", dram=A_K, keys=keys, rows=rows, idx=0, buf=0)]


@pytest.mark.parametrize("rows", [1, 4])
def test_ld_kv_gathers_only_kept_rows(cfg, rows):
    keys = 16
    r = run(cfg, _gather_body(rows, keys))
    sel = (BIAS[:rows, :keys] > -1e4).any(0)
    _assert_kv_holds(r, keys, sel)
    # K and V in two areas: scattered keys cost a request per run of adjacent keys, for K and for V
    runs = np.count_nonzero(np.diff(np.concatenate([[0], sel.astype(int)])) == 1)
    assert runs >= 1 and (rows > 1 or runs > 1)
    assert r.stats["dram_segments"] == rows + 2 * runs  # + one per bias row


def test_ld_kv_from_interleaved_rows_is_one_segment_per_run(cfg):
    """K and V interleaved per key (V_OFFSET = D * 2, KV_STRIDE = D * 4): the same gather fills the
    same slots, and a run of adjacent kept keys is one DRAM request, not one for K and one for V."""
    keys, rows = 16, 1
    kv = np.stack([K16, V16], axis=1)  # [SK, (K row, V row), D]
    dram = image((A_PARAM, PARAM), (A_K, kv), (A_BIAS, BIAS))
    prog = program(cfg, _gather_body(rows, keys), d=D, sq=SQ, sk=SK, v_offset=D * 2, kv_stride=D * 4)
    r = Simulator(cfg).run(prog, dram)
    sel = (BIAS[:rows, :keys] > -1e4).any(0)
    _assert_kv_holds(r, keys, sel)
    runs = np.count_nonzero(np.diff(np.concatenate([[0], sel.astype(int)])) == 1)
    assert runs > 1
    assert r.stats["dram_segments"] == rows + runs
    assert r.stats["dram_bytes"]["read_total"] == rows * keys * 4 + 2 * sel.sum() * D * 2


@pytest.mark.parametrize("v_offset, kv_stride, message", [
    (D * 2, D * 2 - 2, r"KV_STRIDE = 62 bytes is less than a K row's 64"),
    (D * 2 - 2, D * 4, r"V_OFFSET = 62 bytes puts a V row over a K row of the chunk \(64-byte rows, one key every 128"),
    (D * 4, D * 4, r"V_OFFSET = 128 bytes puts a V row over a K row"),
    (0, 0, r"V_OFFSET = 0 bytes puts a V row over a K row"),
])
def test_ld_kv_refuses_rows_that_overlap(cfg, v_offset, kv_stride, message):
    prog = program(cfg, _gather_body(1, 16), d=D, sq=SQ, sk=SK, v_offset=v_offset, kv_stride=kv_stride)
    with pytest.raises(IllegalInstruction, match=message):
        Simulator(cfg).run(prog, DRAM.copy())


@pytest.mark.parametrize("kb", [4, 16])
def test_narrow_scores_select_as_wide_ones_and_trap_when_they_do_not_fit(cfg, kb):
    """F.SCORE / F.SELECT with INT16 scores keep exactly the keys INT32 scores keep, in half the score
    buffer bytes; a score beyond INT16 (Q8 x K16 over D = 32) traps rather than wrapping."""
    kept, moved = {}, {}
    for narrow in (0, 1):
        body = loads(kb=kb) + [
            make("F.CAND", rows=SQ, q0=0, k0=0, keys=SK, idx=0, bias=0, head=1, causal=0, biasmode=0),
            make("F.SCORE", qb=8, kb=kb, rows=SQ, q=0, kp=0, keys=SK, sc=0, idx=0, bias=0, head=1, first=1,
                 narrow=narrow),
            make("F.SELECT", round=1, alpha=0, rows=SQ, q0=0, k0=0, keys=SK, sc=0, idx=0, head=1, narrow=narrow)]
        if narrow and kb == 16:
            with pytest.raises(NumericFault, match="does not fit the INT16"):
                run(cfg, body)
            return
        r = run(cfg, body)
        kept[narrow] = buf(r, "index", 0, SQ * (-(-SK // 8))).copy()
        moved[narrow] = r.stats["sram_bytes"]["score"]
    np.testing.assert_array_equal(kept[1], kept[0])
    assert moved[1] == {"read": SQ * SK * 2, "write": SQ * SK * 2}
    assert moved[0] == {"read": SQ * SK * 4, "write": SQ * SK * 4}


@pytest.mark.parametrize("mode", [BiasMode.NONE, BiasMode.TILE])
def test_stored_scores_are_billed_for_the_candidates_only(cfg, mode):
    """F.SCORE computes, writes and F.SELECT reads back the scores of candidate pairs only (causal, and
    with a bias tile its -inf keys too): 4 bytes each way per candidate, as numpy counts them."""
    r = run(cfg, _filter_body(4, 4, mode, alpha=0))
    candidates = int(_numpy_scores(4, 4, mode)[1].sum())
    assert candidates < SQ * SK
    assert r.stats["sram_bytes"]["score"] == {"read": 4 * candidates, "write": 4 * candidates}
    assert r.stats["macs"]["fu_int4xint4"] == candidates * D


def test_ld_kvr_fetches_only_keys_not_yet_resident(cfg):
    """Two tiles of a head (row 0, then rows 1-3) gather into one resident K/V: the second fetches only
    the keys the first did not keep, and the resident bits end as the union."""
    keys, stride, res = 16, -(-SK // 8), 1024  # index rows are ceil(SEQ_K / 8) bytes apart
    body = [make("LD.BIAS", dram=A_BIAS, rows=4, keys=keys, buf=0),
            sync(Unit.LOAD, LOADED), sync(Unit.FILTER, LOADED, "WAIT"),
            make("F.CAND", rows=4, q0=0, k0=0, keys=keys, idx=0, bias=0, head=0, causal=0, biasmode=1),
            sync(Unit.FILTER, SELECTED), sync(Unit.LOAD, SELECTED, "WAIT"),
            make("LD.KVR", dram=A_K, keys=keys, rows=1, idx=0, res=res, buf=0, first=1),
            make("LD.KVR", dram=A_K, keys=keys, rows=3, idx=stride, res=res, buf=0, first=0)]
    r = run(cfg, body)
    kept = BIAS[:4, :keys] > -1e4
    first, union = kept[0], kept.any(0)
    assert (union & ~first).any()  # the second tile has keys of its own
    _assert_kv_holds(r, keys, union)
    np.testing.assert_array_equal(np.unpackbits(buf(r, "index", res, 2, np.uint8))[:keys].astype(bool), union)
    # each key once, K and V: the union's rows, not the tiles' sum (plus the bias tile)
    moved = r.stats["dram_bytes"]["read_total"] - 4 * keys * 4
    assert moved == 2 * union.sum() * D * 2 < 2 * (first.sum() + kept[1:].any(0).sum()) * D * 2


@pytest.mark.parametrize("mode", [BiasMode.NONE, BiasMode.TILE])
def test_attention_unit_over_two_chunks(cfg, mode):
    """A.INIT, A.ATTN on two key chunks (online softmax), A.NORM, ST.OUT against a one-shot softmax."""
    head, chunk = 1, 8
    bias_tiles = [make("LD.BIAS", dram=A_BIAS + k0 * 4, rows=SQ, keys=chunk, buf=4096 + c * SQ * chunk * 4)
                  for c, k0 in enumerate(range(0, SK, chunk))]
    body = bias_tiles + loads() + [
        make("F.CAND", rows=SQ, q0=0, k0=0, keys=SK, idx=0, bias=0, head=head, causal=1, biasmode=int(mode)),
        sync(Unit.FILTER, SELECTED), sync(Unit.LOAD, SELECTED, "WAIT"), make("A.INIT", rows=SQ)]
    for c, k0 in enumerate(range(0, SK, chunk)):
        body += [make("LD.KV", dram=A_K + k0 * D * 2, keys=chunk, rows=SQ, idx=k0 // 8, buf=c * 4096),
                 sync(Unit.LOAD, GATHERED), sync(Unit.ATTEND, GATHERED, "WAIT"),
                 make("A.ATTN", rows=SQ, q=0, keys=chunk, kv=c * 4096, idx=k0 // 8, bias=4096 + c * SQ * chunk * 4,
                      head=head, biasmode=int(mode))]
    body += [make("A.NORM", rows=SQ, out=0, head=head), sync(Unit.ATTEND, 3), sync(Unit.STORE, 3, "WAIT"),
             make("ST.OUT", dram=A_OUT, rows=SQ, buf=0)]
    r = run(cfg, body)
    kept = np.tril(np.ones((SQ, SK), bool))
    logits = (Q16.astype(np.float64) @ K16.astype(np.float64).T) * PARAM[head, 0]
    if mode == BiasMode.TILE:
        logits += BIAS
        kept &= BIAS > -1e4
    logits = np.where(kept, logits, -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    expect = (p @ V16.astype(np.float64)) * PARAM[head, 1] / p.sum(1, keepdims=True)
    got = r.dram.data[A_OUT:A_OUT + SQ * D * 4].view(np.float32).reshape(SQ, D)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
    assert r.stats["macs"]["au_int16"] == 2 * kept.sum() * D
    assert r.stats["dram_bytes"]["write_total"] == SQ * D * 4
