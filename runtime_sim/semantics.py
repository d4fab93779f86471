"""What each unit instruction does: its functional effect on the machine state and the work it costs.

One handler per instruction of :data:`energon_tvm.isa.instructions.OPS` that runs on a unit,
registered under the same mnemonic, so the ISA declaration is the single source of dispatch. Handlers
are vectorised over the whole tile (numpy over rows x keys x D); none loops over elements, keys,
queries or cycles. In a timing-only run (``run.functional`` false) they skip the arithmetic and take
the candidate/kept bits from the sparsity profile instead, which leaves every cost unchanged.

What a handler costs in simulation is kept apart from what it costs the machine. Operands decoded from a
buffer (Q's low-bit views, K's views from bit-planes, kept bits, bias tiles, head parameters) are
memoised until their bytes are written again (:meth:`Sram.decoded`), and F.RESELECT reuses the scores
F.SCORE computed from the same operands; the ``Work`` each instruction reports is unchanged by either.
Integer products are float64 matrix products, and exact: operands of at most 16 bits over D <= 128 give
partial sums below 2**37 < 2**53.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..isa.instructions import BiasMode, Reg, ThresholdRule
from ..isa.numerics import ALPHA_ONE, GAP_ONE, KEEP_ONE, MASK_THRESHOLD, SANGER_EXP, SANGER_STEPS, from_bitplanes
from .traps import BufferOverflow, IllegalInstruction, NumericFault, UninitializedRead
from .work import Work

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT16_MAX = 2**15 - 1
BIG = np.iinfo(np.int64).max
FLOAT32_MAX = float(np.finfo(np.float32).max)

HANDLERS: dict[str, Callable] = {}


def executes(mnemonic: str):
    def register(fn):
        HANDLERS[mnemonic] = fn
        return fn
    return register


# -- shared pieces ----------------------------------------------------------------------------------

def _frozen(array: np.ndarray) -> np.ndarray:
    """Mark a memoised operand read-only: it is shared by every instruction that reads the same bytes."""
    array.flags.writeable = False
    return array


def _dma_in(run, w: Work, buf: str, addr: int, dram: int, nbytes: int, dtype: str, pc) -> None:
    """One contiguous DMA segment of ``dtype`` elements from DRAM into a buffer (both ends checked)."""
    st = run.state
    st.dram_map.check(dram, nbytes, dtype, pc)
    w.dram(dram, nbytes)
    w.wrote(buf, nbytes)
    if run.functional:
        st.buf[buf].write(addr, st.dram.data[dram:dram + nbytes], pc)
    else:
        st.buf[buf].reserve(addr, nbytes, pc)


def _index_bits(run, w: Work, idx: int, rows: int, keys: int, pc, what: str, decode):
    """``decode(bits)`` of the candidate/kept bits [rows, keys] of a tile x chunk in the index buffer,
    memoised as ``what`` until those rows are written again."""
    nb = (keys + 7) // 8
    w.read("index", rows * nb)
    buf, stride = run.state.buf["index"], run.state.index_row_bytes

    def load():
        return decode(_frozen(np.unpackbits(buf.read_rows(idx, rows, nb, stride, pc), axis=1, count=keys).view(bool)))
    return buf.decoded(idx, (rows - 1) * stride + nb, (what, rows, keys, stride), load)


def _read_bits(run, w: Work, idx: int, rows: int, keys: int, pc) -> np.ndarray:
    """Candidate/kept bits [rows, keys] of a tile x chunk (read-only: shared by the instructions that
    read the same rows)."""
    return _index_bits(run, w, idx, rows, keys, pc, "bits", lambda bits: bits)


def _gathered(run, w: Work, idx: int, rows: int, keys: int, pc) -> tuple[np.ndarray, np.ndarray]:
    """The kept bits [rows, keys] and the chunk's keys kept by at least one row of the tile: the K/V
    rows LD.KV gathers and A.ATTN reads."""
    return _index_bits(run, w, idx, rows, keys, pc, "gathered",
                       lambda bits: (bits, _frozen(np.flatnonzero(bits.any(axis=0)))))


def _write_bits(run, w: Work, idx: int, bits: np.ndarray, pc) -> None:
    packed = np.packbits(bits, axis=1)
    run.state.buf["index"].write_rows(idx, packed, run.state.index_row_bytes, pc)
    w.wrote("index", packed.size)


def _q_operand(run, w: Work, addr: int, rows: int, bits: int, pc) -> np.ndarray | None:
    """The Q tile's ``bits``-bit MSB view [rows, D] (``bits`` = 16: Q itself) as exact float64, the form
    in which the integer products are computed (None in timing-only runs, after the same checks)."""
    d = run.state.head_dim
    nbytes = rows * d * 2
    w.read("q", nbytes)
    buf = run.state.buf["q"]
    if not run.functional:
        buf.read(addr, nbytes, pc)
        return None

    def load():
        raw = buf.read(addr, nbytes, pc)
        return _frozen((raw.view(np.int16).reshape(rows, d).astype(np.int64) >> (16 - bits)).astype(np.float64))
    return buf.decoded(addr, nbytes, ("q", rows, d, bits), load)


def _bias_tile(run, w: Work, a: dict, rows: int, keys: int, pc) -> np.ndarray | None:
    """The bias operand as stored, [rows, keys] or one shared row [1, keys] (either broadcasts against
    the tile), or None without bias."""
    mode = a["biasmode"]
    if mode == BiasMode.NONE:
        return None
    stored = rows if mode == BiasMode.TILE else 1
    nbytes = stored * keys * 4
    w.read("bias", nbytes)
    buf = run.state.buf["bias"]
    return buf.decoded(a["bias"], nbytes, ("bias", stored, keys),
                       lambda: _frozen(buf.read(a["bias"], nbytes, pc).view(np.float32).reshape(stored, keys).copy()))


def _head_params(run, w: Work, head: int, pc) -> tuple[float, float]:
    w.read("param", 16)
    buf = run.state.buf["param"]
    return buf.decoded(head * 16, 16, "params",
                       lambda: tuple(float(x) for x in buf.read(head * 16, 16, pc).view(np.float64)))


def _check_chunk(run, k0: int, keys: int, q0: int, rows: int, pc, ins) -> None:
    regs = run.state.regs
    if k0 % 8:
        raise IllegalInstruction(f"key chunk starts at k0 = {k0}; chunks start at multiples of 8", pc, ins)
    if k0 + keys > regs[Reg.SEQ_K] or q0 + rows > regs[Reg.SEQ_Q]:
        raise IllegalInstruction(f"tile q{q0}+{rows} x k{k0}+{keys} exceeds SEQ_Q = {regs[Reg.SEQ_Q]}, "
                                 f"SEQ_K = {regs[Reg.SEQ_K]}", pc, ins)


# -- LOAD -------------------------------------------------------------------------------------------

@executes("LD.PARAM")
def ld_param(run, a, pc, ins) -> Work:
    w = Work()
    _dma_in(run, w, "param", a["buf"], a["dram"], a["heads"] * 16, "float64", pc)
    if run.functional:  # a NaN or infinite scale would poison every score and output of its head
        values = run.state.buf["param"].data[a["buf"]:a["buf"] + a["heads"] * 16].view(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.argmin(finite))
            raise NumericFault(f"head {i // 2}'s {('qk_scale', 'sv')[i % 2]} loaded from DRAM "
                               f"{a['dram'] + 8 * i:#x} is {float(values[i])!r}; head parameters must be finite",
                               pc, ins)
    return w


@executes("LD.Q")
def ld_q(run, a, pc, ins) -> Work:
    w = Work()
    _dma_in(run, w, "q", a["buf"], a["dram"], a["rows"] * run.state.head_dim * 2, "int16", pc)
    return w


@executes("LD.KP")
def ld_kp(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    lo, hi = a["plane_lo"], a["plane_hi"]
    if lo >= hi:
        raise IllegalInstruction(f"plane_lo = {lo} must be below plane_hi = {hi}", pc, ins)
    plane_bytes = a["keys"] * st.head_dim // 8
    dram_stride = st.regs[Reg.SEQ_K] * st.head_dim // 8
    for p in range(lo, hi):  # one DMA segment per plane (at most 16)
        _dma_in(run, w, "kplane", a["buf"] + p * plane_bytes, a["dram"] + p * dram_stride, plane_bytes, "uint8", pc)
    return w


@executes("LD.BIAS")
def ld_bias(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, width = a["rows"], a["keys"] * 4
    stride = st.regs[Reg.SEQ_K] * 4
    st.dram_map.check(a["dram"], (rows - 1) * stride + width, "float32", pc, "bias rows")
    if rows == 1 or stride == width:  # one contiguous segment
        w.dram(a["dram"], rows * width)
    else:
        w.dram(a["dram"] + np.arange(rows) * stride, np.full(rows, width))
    w.wrote("bias", rows * width)
    if run.functional:
        src = a["dram"] + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
        st.buf["bias"].write_rows(a["buf"], st.dram.data[src], width, pc)
    else:
        st.buf["bias"].reserve(a["buf"], rows * width, pc)
    return w


@dataclass(frozen=True)
class _KVLayout:
    """Where a K/V gather's rows lie in DRAM: key j's K row at ``dram + j * stride``, its V row
    ``v_offset`` further, ``row_bytes`` each."""

    row_bytes: int
    stride: int
    v_offset: int


def _kv_chunk(run, a, pc) -> _KVLayout:
    """Check a K/V gather's operands (the kv tiles, the chunk's K and V rows in DRAM); its row layout."""
    st = run.state
    keys, row_bytes = a["keys"], st.head_dim * 2
    _kv_tile_fits(st.buf["kv"], a["buf"], keys, row_bytes, pc)
    stride = st.regs[Reg.KV_STRIDE] or row_bytes
    if stride < row_bytes:
        raise IllegalInstruction(f"KV_STRIDE = {stride} bytes is less than a K row's {row_bytes} (D * 2): "
                                 f"adjacent keys' rows would overlap", pc)
    v_off = st.regs[Reg.V_OFFSET]
    if keys and _nearest_row_gap(v_off, stride, keys) < row_bytes:
        raise IllegalInstruction(f"V_OFFSET = {v_off} bytes puts a V row over a K row of the chunk "
                                 f"({row_bytes}-byte rows, one key every {stride} bytes)", pc)
    # the chunk's K rows and its V rows, each one span in one region, whichever rows are kept
    span = (keys - 1) * stride + row_bytes
    st.dram_map.check(a["dram"], span, "int16", pc, "K rows")
    st.dram_map.check(a["dram"] + v_off, span, "int16", pc, "V rows (V_OFFSET further)")
    return _KVLayout(row_bytes, stride, v_off)


def _nearest_row_gap(v_off: int, stride: int, keys: int) -> int:
    """The least distance in bytes from a V row (``v_off`` after its key's K row) to any K row of a
    chunk of ``keys`` keys ``stride`` bytes apart."""
    last = keys - 1  # key offsets run from -last to last
    return min(abs(max(-last, min(last, m)) * stride - v_off) for m in (v_off // stride, -(-v_off // stride)))


def _segments(addrs: np.ndarray, row_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The DRAM segments of rows of ``row_bytes`` at ``addrs`` (sorted): rows that follow one another
    in DRAM are one segment."""
    if addrs.size == 0:
        return addrs, addrs
    breaks = np.flatnonzero(np.diff(addrs) != row_bytes) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [addrs.size]])
    return addrs[starts], (ends - starts) * row_bytes


def _gather_rows(run, w: Work, a: dict, sel: np.ndarray, layout: _KVLayout) -> None:
    """Move the K and V rows of the chunk's keys ``sel`` (sorted) into their slots of the kv tiles at
    ``a["buf"]``: rows adjacent in DRAM are one segment (a run of adjacent keys is one segment for K
    and one for V, or one for both where they are interleaved per key)."""
    st, keys, kv = run.state, a["keys"], run.state.buf["kv"]
    rb, base = layout.row_bytes, a["dram"]
    rows = base + sel * layout.stride
    w.dram(*_segments(np.sort(np.concatenate([rows, rows + layout.v_offset])), rb))
    w.wrote("kv", 2 * sel.size * rb)
    if sel.size:
        tile = keys * rb
        slots = slice(None) if sel.size == keys else sel  # every key of the chunk: one block copy
        for src, dst in ((base, a["buf"]), (base + layout.v_offset, a["buf"] + tile)):
            if run.functional:  # whole rows at a time: a [keys, row_bytes] view of DRAM, the kept ones copied
                chunk = _row_view(st.dram.data, src, keys, layout)
                kv.data[dst:dst + tile].reshape(keys, rb)[slots] = chunk[slots]
            kv.written[dst:dst + tile].reshape(keys, rb)[slots] = True
            kv.touched(dst, tile)


def _row_view(data: np.ndarray, start: int, keys: int, layout: _KVLayout) -> np.ndarray:
    """A read-only [keys, row_bytes] view of ``data``: key j's row at ``start + j * stride`` (the span
    was checked against the DRAM by :func:`_kv_chunk`)."""
    span = data[start:start + (keys - 1) * layout.stride + layout.row_bytes]
    if span.size < (keys - 1) * layout.stride + layout.row_bytes:
        raise AssertionError(f"K/V rows at {start:#x} run past the DRAM: _kv_chunk checks this first")
    return np.lib.stride_tricks.as_strided(span, (keys, layout.row_bytes), (layout.stride, 1), writeable=False)


@executes("LD.KV")
def ld_kv(run, a, pc, ins) -> Work:
    w = Work()
    layout = _kv_chunk(run, a, pc)
    _, sel = _gathered(run, w, a["idx"], a["rows"], a["keys"], pc)
    _gather_rows(run, w, a, sel, layout)
    return w


@executes("LD.KVR")
def ld_kvr(run, a, pc, ins) -> Work:
    w = Work()
    keys = a["keys"]
    layout = _kv_chunk(run, a, pc)
    _, sel = _gathered(run, w, a["idx"], a["rows"], keys, pc)
    if a["first"]:
        resident = np.zeros(keys, bool)
    else:
        resident = _read_bits(run, w, a["res"], 1, keys, pc)[0]
    _gather_rows(run, w, a, sel[~resident[sel]], layout)
    marked = resident.copy()
    marked[sel] = True
    _write_bits(run, w, a["res"], marked[None, :], pc)
    return w


def _kv_tile_fits(kv, addr: int, keys: int, row_bytes: int, pc) -> None:
    """K and V tiles of ``keys`` slots each must fit from ``addr`` on (an INT16 address)."""
    kv.check_aligned(addr, pc)
    nbytes = 2 * keys * row_bytes
    if addr + nbytes > kv.capacity:
        raise BufferOverflow(f"{kv.name} buffer K/V tiles of {nbytes} bytes at {addr:#x} end at {addr + nbytes:#x}; "
                          f"the {kv.name} buffer has {kv.capacity} bytes", pc)


# -- FILTER -----------------------------------------------------------------------------------------

@executes("F.CAND")
def f_cand(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, keys, q0, k0 = a["rows"], a["keys"], a["q0"], a["k0"]
    _check_chunk(run, k0, keys, q0, rows, pc, ins)
    w.compares = rows * keys
    bias = _bias_tile(run, w, a, rows, keys, pc)
    if run.profile is not None:
        bits = run.profile.bits(0, a["head"], q0, rows, k0, keys)
    else:
        bits = np.ones((rows, keys), bool)
        if a["causal"]:
            shift = st.regs[Reg.CAUSAL_SHIFT]
            bits &= (k0 + np.arange(keys))[None, :] <= (q0 + np.arange(rows))[:, None] + shift
        if bias is not None:
            bits &= bias > MASK_THRESHOLD
    _write_bits(run, w, a["idx"], bits, pc)
    run.record_bits(0, a["head"], q0, k0, bits)
    return w


def _k_view_t(run, addr: int, kb: int, keys: int, d: int, pc) -> np.ndarray:
    """K's kb-bit view, transposed [D, keys] as exact float64, decoded from the planes at ``addr``
    (memoised: a head's resident planes serve every query tile and both passes of a round)."""
    buf, nbytes = run.state.buf["kplane"], kb * keys * d // 8

    def load():
        planes = buf.read(addr, nbytes, pc).reshape(kb, keys, d // 8)
        return _frozen(np.ascontiguousarray(from_bitplanes(planes, kb).T, np.float64))
    return buf.decoded(addr, nbytes, ("k", kb, keys, d), load)


def _filter_scores(run, w: Work, a: dict, pc) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(candidate bits, integer scores, the head's qk_scale) [rows, keys] of a round for a tile x chunk,
    the scores as exact float64 (None in timing-only runs), counting the low-bit MACs of the candidate
    pairs and the operand reads. The accumulator saturates at INT32."""
    st = run.state
    rows, keys, qb, kb = a["rows"], a["keys"], a["qb"], a["kb"]
    d = st.head_dim
    cand = _read_bits(run, w, a["idx"], rows, keys, pc)
    q = _q_operand(run, w, a["q"], rows, qb, pc)
    plane_bytes = keys * d // 8
    w.read("kplane", kb * plane_bytes)
    bias = _bias_tile(run, w, a, rows, keys, pc)
    qk_scale, _ = _head_params(run, w, a["head"], pc)
    w.fu_macs = int(np.count_nonzero(cand)) * d
    w.fu_passes = st.cfg.fu_passes(qb, kb)
    w.fu_precision = f"int{qb}xint{kb}"
    if not run.functional:
        st.buf["kplane"].read(a["kp"], kb * plane_bytes, pc)
        return cand, None, qk_scale
    k = _k_view_t(run, a["kp"], kb, keys, d, pc)
    # F.RESELECT recomputes what F.SCORE computed from the same operands: the simulator counts that work
    # (above) but reuses the result; the operands are memoised objects, so identity means equal bytes
    key = (id(q), id(k), id(bias), qb, kb, qk_scale)
    hit = run.scores.get(key)
    if hit is not None and hit[0] is q and hit[1] is k and hit[2] is bias:
        return cand, hit[3], qk_scale
    scores = q @ k
    if bias is not None:
        if qk_scale == 0:
            raise NumericFault(f"head {a['head']}'s qk_scale is 0: the bias cannot be quantised into the round's "
                               f"integer domain (bias / qk_scale); a head's scales are positive", pc)
        round_scale = qk_scale * float(2 ** (16 - qb)) * float(2 ** (16 - kb))
        b64 = np.where(bias > MASK_THRESHOLD, bias.astype(np.float64), 0.0)
        scores += np.clip(np.rint(b64 / round_scale), INT32_MIN, INT32_MAX)
    if bias is not None or (d << (qb + kb - 2)) > INT32_MAX:  # else |q.k| <= D * 2**(qb-1) * 2**(kb-1) fits
        np.clip(scores, INT32_MIN, INT32_MAX, out=scores)
    if len(run.scores) >= 16:
        run.scores.clear()
    run.scores[key] = (q, k, bias, _frozen(scores))
    return cand, scores, qk_scale


def _latched_unit(run, a: dict, rows: int, pc) -> np.ndarray:
    """The logits one score step of the round stands for, per row (latched with the statistics)."""
    unit = run.state.f_unit[:rows]
    if not np.all(np.isfinite(unit) & (unit > 0)):
        raise NumericFault(f"head {a['head']}'s latched score unit is {float(unit.min()):g}: the threshold cannot "
                           f"be turned into score steps; a head's qk_scale must be positive and finite", pc)
    return unit


def _check_whole_row(run, a: dict, rule: ThresholdRule, pc, ins) -> None:
    """A ranking rule's select must see every key of its rows: theta depends on the whole row."""
    seq_k = run.state.seq_k
    if a["k0"] != 0 or a["keys"] != seq_k:
        raise IllegalInstruction(f"{rule.name.lower()} select covers keys {a['k0']}..{a['k0'] + a['keys'] - 1} of "
                                 f"SEQ_K = {seq_k}: a ranking rule sees the whole row at once, so its select "
                                 f"must cover keys 0..{seq_k - 1} (k0 = 0, keys = {seq_k})", pc, ins)


def _ranked_threshold(run, a: dict, rule: ThresholdRule, cand: np.ndarray, scores: np.ndarray, pc) -> np.ndarray:
    """Every row's theta under a ranking rule, from the select's whole row of scores, its candidate bits
    and the latched count (top-k) or max and unit (Sanger); BIG for a row without candidates."""
    st, rows = run.state, cand.shape[0]
    if rule == ThresholdRule.TOPK:
        n = st.f_n[:rows]
        k = np.minimum(np.maximum(1, -(-(a["keep"] * n) // KEEP_ONE)), cand.shape[1])
        ranked = -np.sort(-np.where(cand, scores, -BIG), axis=1)  # descending, non-candidates last
        return np.where(n > 0, np.take_along_axis(ranked, (k - 1)[:, None], axis=1)[:, 0], BIG)
    # Sanger: weight = SANGER_EXP[min(floor(d * unit * SANGER_STEPS), 255)] for d steps below the row's max
    unit = _latched_unit(run, a, rows, pc)
    steps = np.where(cand, st.f_max[:rows, None] - scores, 0).astype(np.float64)
    index = np.minimum(np.floor(steps * unit[:, None] * SANGER_STEPS), len(SANGER_EXP) - 1)
    weight = np.where(cand, SANGER_EXP[index.astype(np.int64)], 0)
    total = weight.sum(axis=1, keepdims=True)
    keep = cand & ((KEEP_ONE * weight >= a["keep"] * total) | (steps == 0))
    return np.where(keep, scores, BIG).min(axis=1)  # weights fall as scores do: the lowest kept score


def _select(run, w: Work, a: dict, cand: np.ndarray, scores: np.ndarray | None, pc, ins) -> None:
    """Threshold a round's scores under the select's rule; write the kept bits."""
    st, rows, keys = run.state, a["rows"], a["keys"]
    _check_chunk(run, a["k0"], keys, a["q0"], rows, pc, ins)  # q0 and k0 place the tile's statistics
    rule = ThresholdRule(a["rule"])
    if rule.ranking:
        _check_whole_row(run, a, rule, pc, ins)
    w.compares += rows * keys * rule.compares
    if not st.f_valid[:rows].all():
        raise IllegalInstruction("selection without statistics: no F.SCORE with first=1 for these rows", pc, ins)
    if run.profile is not None:
        kept = run.profile.bits(a["round"], a["head"], a["q0"], rows, a["k0"], keys)
        if np.any(kept & ~cand):
            raise IllegalInstruction("sparsity profile keeps a key that is not a candidate here: the profile "
                                     "does not belong to this program", pc, ins)
    elif rule.ranking:
        kept = cand & (scores >= _ranked_threshold(run, a, rule, cand, scores, pc)[:, None])
    elif rule == ThresholdRule.GAP:
        # theta = max - floor(gap / (GAP_ONE * unit)): the gap in logits as whole score steps (FP64)
        unit = _latched_unit(run, a, rows, pc)
        steps = np.floor(a["gap"] / (GAP_ONE * unit))
        some = st.f_n[:rows] > 0  # a row without candidates keeps nothing (and its max is -BIG)
        threshold = np.where(some, st.f_max[:rows] - np.clip(np.where(some, steps, 0), 0, 2.0 ** 40).astype(np.int64),
                             BIG)
        kept = cand & (scores >= threshold[:, None])
    else:
        alpha = a["alpha"]
        n, total = st.f_n[:rows], st.f_sum[:rows]
        spread = n * st.f_max[:rows] - total if alpha >= 0 else total - n * st.f_min[:rows]
        # kept iff ALPHA_ONE * n * score >= ALPHA_ONE * total + alpha * spread; for an integer score and
        # n > 0 that is score >= ceil(rhs / (ALPHA_ONE * n)), one exact integer per row (|.| < 2**34)
        rhs = ALPHA_ONE * total + alpha * spread
        threshold = -(-rhs // (ALPHA_ONE * np.maximum(n, 1)))
        kept = cand & (scores >= threshold[:, None])
    _write_bits(run, w, a["idx"], kept, pc)
    run.record_bits(a["round"], a["head"], a["q0"], a["k0"], kept)


def _score_bytes(a: dict) -> int:
    """Bytes of one stored score: INT16 with ``narrow``, else INT32."""
    return 2 if a["narrow"] else 4


def _candidate_score_bytes(cand: np.ndarray, a: dict) -> int:
    """Score-buffer bytes F.SCORE writes and F.SELECT reads back: the candidates' scores only (a
    non-candidate's score is neither computed nor ever read; the tile's layout still holds every pair)."""
    return int(np.count_nonzero(cand)) * _score_bytes(a)


@executes("F.SCORE")
def f_score(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, keys = a["rows"], a["keys"]
    cand, scores, qk_scale = _filter_scores(run, w, a, pc)
    lanes = slice(0, rows)
    if a["first"]:
        st.f_n[lanes], st.f_sum[lanes] = 0, 0
        st.f_max[lanes], st.f_min[lanes] = -BIG, BIG
        st.f_unit[lanes] = qk_scale * float(2 ** (16 - a["qb"])) * float(2 ** (16 - a["kb"]))
        st.f_valid[lanes] = True
    elif not st.f_valid[lanes].all():
        raise IllegalInstruction("F.SCORE continues a round whose first chunk (first=1) never ran", pc, ins)
    if a["store"]:
        nbytes = rows * keys * _score_bytes(a)
        w.wrote("score", _candidate_score_bytes(cand, a))
        if scores is None:
            st.buf["score"].reserve(a["sc"], nbytes, pc)
        elif a["narrow"]:
            if np.abs(scores).max(initial=0) > INT16_MAX:
                r, c = np.unravel_index(int(np.argmax(np.abs(scores))), scores.shape)
                raise NumericFault(f"score {float(scores[r, c]):.0f} (row {r}, key {c}) does not fit the INT16 of a "
                                   f"narrow store (|score| <= {INT16_MAX})", pc, ins)
            st.buf["score"].write(a["sc"], scores.astype(np.int16), pc)
        else:
            st.buf["score"].write(a["sc"], scores.astype(np.int32), pc)
    if scores is not None:  # exact: |score| < 2**31 and at most 65535 keys keep every sum below 2**53
        n = np.count_nonzero(cand, axis=1)
        st.f_n[lanes] += n
        if n.min() == keys:  # every pair a candidate (no mask, first round): no masking needed
            total, hi, lo = scores.sum(axis=1), scores.max(axis=1), scores.min(axis=1)
        else:  # non-candidates as NaN, which fmax/fmin skip; a row without candidates stays NaN
            total = np.einsum("ij,ij->i", cand.astype(np.float64), scores)
            masked = np.where(cand, scores, np.nan)
            hi, lo = np.fmax.reduce(masked, axis=1), np.fmin.reduce(masked, axis=1)
        some = n > 0
        hi, lo = np.where(some, hi, 0.0), np.where(some, lo, 0.0)
        st.f_sum[lanes] += total.astype(np.int64)
        st.f_max[lanes] = np.where(some, np.maximum(st.f_max[lanes], hi.astype(np.int64)), st.f_max[lanes])
        st.f_min[lanes] = np.where(some, np.minimum(st.f_min[lanes], lo.astype(np.int64)), st.f_min[lanes])
    return w


@executes("F.SELECT")
def f_select(run, a, pc, ins) -> Work:
    w = Work()
    rows, keys = a["rows"], a["keys"]
    cand = _read_bits(run, w, a["idx"], rows, keys, pc)
    nbytes = rows * keys * _score_bytes(a)
    raw = run.state.buf["score"].read(a["sc"], nbytes, pc)
    w.read("score", _candidate_score_bytes(cand, a))
    dtype = np.int16 if a["narrow"] else np.int32
    scores = raw.view(dtype).reshape(rows, keys).astype(np.int64) if run.functional else None
    _select(run, w, a, cand, scores, pc, ins)
    return w


@executes("F.RESELECT")
def f_reselect(run, a, pc, ins) -> Work:
    w = Work()
    cand, scores, _ = _filter_scores(run, w, a, pc)
    _select(run, w, a, cand, scores, pc, ins)
    return w


# -- ATTEND -----------------------------------------------------------------------------------------

@executes("A.INIT")
def a_init(run, a, pc, ins) -> Work:
    st, lanes = run.state, slice(0, a["rows"])
    st.a_m[lanes], st.a_l[lanes], st.a_acc[lanes] = -np.inf, 0.0, 0.0
    st.a_valid[lanes] = True
    return Work()


@executes("A.ATTN")
def a_attn(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, keys, d = a["rows"], a["keys"], st.head_dim
    if not st.a_valid[:rows].all():
        raise IllegalInstruction("A.ATTN on rows whose state was never reset by A.INIT", pc, ins)
    kept, sel = _gathered(run, w, a["idx"], rows, keys, pc)
    q = _q_operand(run, w, a["q"], rows, 16, pc)
    bias = _bias_tile(run, w, a, rows, keys, pc)
    qk_scale, _ = _head_params(run, w, a["head"], pc)
    kv, row_bytes = st.buf["kv"], d * 2
    _kv_tile_fits(kv, a["kv"], keys, row_bytes, pc)
    tile = keys * row_bytes
    for base in (a["kv"], a["kv"] + tile):  # the whole tile written (the common case) covers the kept rows
        if not (kv.written[base:base + tile].all() or kv.written[base:base + tile].reshape(keys, row_bytes)[sel].all()):
            raise UninitializedRead("a kept key's K or V row was never gathered into the kv buffer", pc, ins)
    pairs = int(np.count_nonzero(kept))
    w.read("kv", 2 * sel.size * row_bytes)
    w.au_macs = 2 * pairs * d
    w.exps = pairs + rows
    if not run.functional:
        return w
    k16 = kv.data[a["kv"]:a["kv"] + tile].view(np.int16).reshape(keys, d)
    v16 = kv.data[a["kv"] + tile:a["kv"] + 2 * tile].view(np.int16).reshape(keys, d)
    raw = (q @ k16.T.astype(np.float64)) * qk_scale
    if bias is not None:
        raw += bias.astype(np.float64)
    lanes = slice(0, rows)
    m_old = st.a_m[lanes]
    m_new = np.maximum(m_old, np.where(kept, raw, -np.inf).max(axis=1))
    if not (m_new < np.inf).all():  # a NaN or +inf logit (from its bias or scale): every later value is lost
        r = int(np.argmin(m_new < np.inf))
        raise NumericFault(f"row {r}'s largest kept logit is {float(m_new[r])!r}; logits must be finite", pc, ins)
    live = np.isfinite(m_new)  # rows that have seen at least one kept key
    m_safe = np.where(live, m_new, 0.0)
    rescale = np.where(live, np.exp(np.where(np.isfinite(m_old), m_old, -np.inf) - m_safe), 1.0)
    # kept logits are <= the running max; clamping the others keeps exp off overflow and off -inf
    p = np.where(kept, np.exp(np.minimum(raw - m_safe[:, None], 0.0)), 0.0)
    st.a_l[lanes] = st.a_l[lanes] * rescale + p.sum(axis=1)
    st.a_acc[lanes, :d] = st.a_acc[lanes, :d] * rescale[:, None] + p @ v16.astype(np.float64)
    st.a_m[lanes] = m_new
    return w


@executes("A.NORM")
def a_norm(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, d = a["rows"], st.head_dim
    if not st.a_valid[:rows].all():
        raise IllegalInstruction("A.NORM on rows whose state was never reset by A.INIT", pc, ins)
    _, sv = _head_params(run, w, a["head"], pc)
    w.norms = rows * d
    w.wrote("out", rows * d * 4)
    if not run.functional:
        st.buf["out"].reserve(a["out"], rows * d * 4, pc)
        return w
    l = st.a_l[:rows, None]
    out = np.where(l > 0, st.a_acc[:rows, :d] * sv / np.where(l > 0, l, 1.0), 0.0)
    ok = np.abs(out) <= FLOAT32_MAX  # False for NaN, infinities and what FP32 cannot hold
    if not ok.all():
        r, c = np.unravel_index(int(np.argmin(ok)), ok.shape)
        raise NumericFault(f"output row {r}, element {c} would be {float(out[r, c])!r} (sv = {sv!r}); "
                           f"outputs must be finite FP32", pc, ins)
    st.buf["out"].write(a["out"], out.astype(np.float32), pc)
    return w


# -- STORE ------------------------------------------------------------------------------------------

@executes("ST.OUT")
def st_out(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    nbytes = a["rows"] * st.head_dim * 4
    data = st.buf["out"].read(a["buf"], nbytes, pc)
    w.read("out", nbytes)
    st.dram_map.check(a["dram"], nbytes, "float32", pc, "output rows")
    w.dram(a["dram"], nbytes, is_write=True)
    if run.functional:
        st.dram.write(a["dram"], data, pc)
    return w
