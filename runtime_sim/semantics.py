"""What each unit instruction does: its functional effect on the machine state and the work it costs.

One handler per instruction of :data:`energon_tvm.isa.instructions.OPS` that runs on a unit,
registered under the same mnemonic, so the ISA declaration is the single source of dispatch. Handlers
are vectorised over the whole tile (numpy over rows x keys x D); none loops over elements, keys,
queries or cycles. In a timing-only run (``run.functional`` false) they skip the arithmetic and take
the candidate/kept bits from the sparsity profile instead, which leaves every cost unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..isa.instructions import BiasMode, Reg
from ..isa.numerics import ALPHA_ONE, MASK_THRESHOLD, from_bitplanes
from .traps import BufferOverflow, IllegalInstruction, UninitializedRead
from .work import Work

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
BIG = np.iinfo(np.int64).max

HANDLERS: dict[str, Callable] = {}


def executes(mnemonic: str):
    def register(fn):
        HANDLERS[mnemonic] = fn
        return fn
    return register


# -- shared pieces ----------------------------------------------------------------------------------

def _dma_in(run, w: Work, buf: str, addr: int, dram: int, nbytes: int, pc) -> None:
    st = run.state
    w.dram(dram, nbytes)
    w.wrote(buf, nbytes)
    if run.functional:
        st.buf[buf].write(addr, st.dram.read(dram, nbytes, pc), pc)
    else:
        st.dram.check(dram, nbytes, pc)
        st.buf[buf].reserve(addr, nbytes, pc)


def _read_bits(run, w: Work, idx: int, rows: int, keys: int, pc) -> np.ndarray:
    """Kept/candidate bits [rows, keys] of a tile x chunk from the index buffer."""
    nb = (keys + 7) // 8
    raw = run.state.buf["index"].read_rows(idx, rows, nb, run.state.index_row_bytes, pc)
    w.read("index", rows * nb)
    return np.unpackbits(raw, axis=1, count=keys).astype(bool)


def _write_bits(run, w: Work, idx: int, bits: np.ndarray, pc) -> None:
    packed = np.packbits(bits, axis=1)
    run.state.buf["index"].write_rows(idx, packed, run.state.index_row_bytes, pc)
    w.wrote("index", packed.size)


def _q_tile(run, w: Work, addr: int, rows: int, pc) -> np.ndarray:
    d = run.state.head_dim
    raw = run.state.buf["q"].read(addr, rows * d * 2, pc)
    w.read("q", rows * d * 2)
    return raw.view(np.int16).reshape(rows, d) if run.functional else None


def _bias_tile(run, w: Work, a: dict, rows: int, keys: int, pc) -> np.ndarray | None:
    """The bias operand as [rows, keys] (a shared row is broadcast), or None without bias."""
    mode = a["biasmode"]
    if mode == BiasMode.NONE:
        return None
    stored = rows if mode == BiasMode.TILE else 1
    raw = run.state.buf["bias"].read(a["bias"], stored * keys * 4, pc)
    w.read("bias", stored * keys * 4)
    return np.broadcast_to(raw.view(np.float32).reshape(stored, keys), (rows, keys))


def _head_params(run, w: Work, head: int, pc) -> tuple[float, float]:
    raw = run.state.buf["param"].read(head * 16, 16, pc)
    w.read("param", 16)
    qk_scale, sv = raw.view(np.float64)
    return float(qk_scale), float(sv)


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a @ b^T for integer operands via float64 (every partial sum < 2**53)."""
    return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)


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
    _dma_in(run, w, "param", a["buf"], a["dram"], a["heads"] * 16, pc)
    return w


@executes("LD.Q")
def ld_q(run, a, pc, ins) -> Work:
    w = Work()
    _dma_in(run, w, "q", a["buf"], a["dram"], a["rows"] * run.state.head_dim * 2, pc)
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
        _dma_in(run, w, "kplane", a["buf"] + p * plane_bytes, a["dram"] + p * dram_stride, plane_bytes, pc)
    return w


@executes("LD.BIAS")
def ld_bias(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, width = a["rows"], a["keys"] * 4
    stride = st.regs[Reg.SEQ_K] * 4
    st.dram.check(a["dram"], (rows - 1) * stride + width, pc)
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


def _runs(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of consecutive indices in sorted ``sel``."""
    if sel.size == 0:
        return sel, sel
    breaks = np.flatnonzero(np.diff(sel) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [sel.size]])
    return sel[starts], ends - starts


@executes("LD.KV")
def ld_kv(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    keys, row_bytes = a["keys"], st.head_dim * 2
    kv = st.buf["kv"]
    _kv_tile_fits(kv, a["buf"], keys, row_bytes, pc)
    sel = np.flatnonzero(_read_bits(run, w, a["idx"], a["rows"], keys, pc).any(axis=0))
    starts, lengths = _runs(sel)
    v_off = st.regs[Reg.V_OFFSET]
    for base in (a["dram"], a["dram"] + v_off):
        w.dram(base + starts * row_bytes, lengths * row_bytes)
    w.wrote("kv", 2 * sel.size * row_bytes)
    if sel.size:
        tile = keys * row_bytes
        for src, dst in ((a["dram"], a["buf"]), (a["dram"] + v_off, a["buf"] + tile)):
            st.dram.check(src + int(sel[-1]) * row_bytes, row_bytes, pc)
            if run.functional:  # whole rows at a time: [keys, row_bytes] views of both sides
                kv.data[dst:dst + tile].reshape(keys, row_bytes)[sel] = \
                    st.dram.data[src:src + tile].reshape(keys, row_bytes)[sel]
            kv.written[dst:dst + tile].reshape(keys, row_bytes)[sel] = True
    return w


def _kv_tile_fits(kv, addr: int, keys: int, row_bytes: int, pc) -> None:
    """K and V tiles of ``keys`` slots each must fit from ``addr`` on."""
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


def _k_view(run, addr: int, kb: int, keys: int, d: int, planes: np.ndarray) -> np.ndarray:
    """K's kb-bit view [keys, D] decoded from the planes at ``addr``, memoised until the plane buffer is
    written again (a head's resident planes serve every query tile and both passes of a round)."""
    key = (addr, kb, keys, d, run.state.buf["kplane"].version)
    view = run.k_views.get(key)
    if view is None:
        if len(run.k_views) > 64:
            run.k_views.clear()
        view = run.k_views[key] = from_bitplanes(planes.reshape(kb, keys, d // 8), kb).astype(np.float64)
    return view


def _filter_scores(run, w: Work, a: dict, pc) -> np.ndarray | None:
    """(candidate bits, integer scores) [rows, keys] of a round for a tile x chunk (scores None in
    timing-only runs), counting the low-bit MACs of the candidate pairs and the operand reads."""
    st = run.state
    rows, keys, qb, kb = a["rows"], a["keys"], a["qb"], a["kb"]
    d = st.head_dim
    cand = _read_bits(run, w, a["idx"], rows, keys, pc)
    q16 = _q_tile(run, w, a["q"], rows, pc)
    plane_bytes = keys * d // 8
    planes = st.buf["kplane"].read(a["kp"], kb * plane_bytes, pc)
    w.read("kplane", kb * plane_bytes)
    bias = _bias_tile(run, w, a, rows, keys, pc)
    qk_scale, _ = _head_params(run, w, a["head"], pc)
    w.fu_macs = int(cand.sum()) * d
    w.fu_passes = st.cfg.fu_passes(qb, kb)
    w.fu_precision = f"int{qb}xint{kb}"
    if not run.functional:
        return cand, None
    k_view = _k_view(run, a["kp"], kb, keys, d, planes)
    scores = _int_matmul(q16.astype(np.int64) >> (16 - qb), k_view)
    if bias is not None:
        round_scale = qk_scale * float(2 ** (16 - qb)) * float(2 ** (16 - kb))
        b64 = np.where(bias > MASK_THRESHOLD, bias.astype(np.float64), 0.0)
        scores += np.clip(np.rint(b64 / round_scale), INT32_MIN, INT32_MAX).astype(np.int64)
    return cand, np.clip(scores, INT32_MIN, INT32_MAX)


def _select(run, w: Work, a: dict, cand: np.ndarray, scores: np.ndarray | None, pc, ins) -> None:
    """Threshold a round's scores against the latched per-row statistics; write the kept bits."""
    st, rows, keys = run.state, a["rows"], a["keys"]
    w.compares += rows * keys
    if not st.f_valid[:rows].all():
        raise IllegalInstruction("selection without statistics: no F.SCORE with first=1 for these rows", pc, ins)
    if run.profile is not None:
        kept = run.profile.bits(a["round"], a["head"], a["q0"], rows, a["k0"], keys)
        if np.any(kept & ~cand):
            raise IllegalInstruction("sparsity profile keeps a key that is not a candidate here: the profile "
                                     "does not belong to this program", pc, ins)
    else:
        alpha = a["alpha"]
        n, total = st.f_n[:rows, None], st.f_sum[:rows, None]
        spread = n * st.f_max[:rows, None] - total if alpha >= 0 else total - n * st.f_min[:rows, None]
        kept = cand & (ALPHA_ONE * n * scores >= ALPHA_ONE * total + alpha * spread)
    _write_bits(run, w, a["idx"], kept, pc)
    run.record_bits(a["round"], a["head"], a["q0"], a["k0"], kept)


@executes("F.SCORE")
def f_score(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    rows, keys = a["rows"], a["keys"]
    cand, scores = _filter_scores(run, w, a, pc)
    lanes = slice(0, rows)
    if a["first"]:
        st.f_n[lanes], st.f_sum[lanes] = 0, 0
        st.f_max[lanes], st.f_min[lanes] = -BIG, BIG
        st.f_valid[lanes] = True
    elif not st.f_valid[lanes].all():
        raise IllegalInstruction("F.SCORE continues a round whose first chunk (first=1) never ran", pc, ins)
    if a["store"]:
        w.wrote("score", rows * keys * 4)
        if scores is None:
            st.buf["score"].reserve(a["sc"], rows * keys * 4, pc)
        else:
            st.buf["score"].write(a["sc"], scores.astype(np.int32), pc)
    if scores is not None:
        st.f_n[lanes] += cand.sum(axis=1)
        st.f_sum[lanes] += np.where(cand, scores, 0).sum(axis=1)
        st.f_max[lanes] = np.maximum(st.f_max[lanes], np.where(cand, scores, -BIG).max(axis=1))
        st.f_min[lanes] = np.minimum(st.f_min[lanes], np.where(cand, scores, BIG).min(axis=1))
    return w


@executes("F.SELECT")
def f_select(run, a, pc, ins) -> Work:
    w = Work()
    rows, keys = a["rows"], a["keys"]
    cand = _read_bits(run, w, a["idx"], rows, keys, pc)
    raw = run.state.buf["score"].read(a["sc"], rows * keys * 4, pc)
    w.read("score", rows * keys * 4)
    scores = raw.view(np.int32).reshape(rows, keys).astype(np.int64) if run.functional else None
    _select(run, w, a, cand, scores, pc, ins)
    return w


@executes("F.RESELECT")
def f_reselect(run, a, pc, ins) -> Work:
    w = Work()
    cand, scores = _filter_scores(run, w, a, pc)
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
    kept = _read_bits(run, w, a["idx"], rows, keys, pc)
    q16 = _q_tile(run, w, a["q"], rows, pc)
    bias = _bias_tile(run, w, a, rows, keys, pc)
    qk_scale, _ = _head_params(run, w, a["head"], pc)
    kv, row_bytes = st.buf["kv"], d * 2
    _kv_tile_fits(kv, a["kv"], keys, row_bytes, pc)
    sel = np.flatnonzero(kept.any(axis=0))
    tile = keys * row_bytes
    for base in (a["kv"], a["kv"] + tile):
        if not kv.written[base:base + tile].reshape(keys, row_bytes)[sel].all():
            raise UninitializedRead("a kept key's K or V row was never gathered into the kv buffer", pc, ins)
    pairs = int(kept.sum())
    w.read("kv", 2 * sel.size * row_bytes)
    w.au_macs = 2 * pairs * d
    w.exps = pairs + rows
    if not run.functional:
        return w
    k16 = kv.data[a["kv"]:a["kv"] + keys * row_bytes].view(np.int16).reshape(keys, d)
    v16 = kv.data[a["kv"] + keys * row_bytes:a["kv"] + 2 * keys * row_bytes].view(np.int16).reshape(keys, d)
    logits = _int_matmul(q16, k16) * qk_scale
    if bias is not None:
        logits += bias.astype(np.float64)
    logits = np.where(kept, logits, -np.inf)
    lanes = slice(0, rows)
    m_old = st.a_m[lanes]
    m_new = np.maximum(m_old, logits.max(axis=1))
    live = np.isfinite(m_new)  # rows that have seen at least one kept key
    m_safe = np.where(live, m_new, 0.0)
    rescale = np.where(live, np.exp(np.where(np.isfinite(m_old), m_old, -np.inf) - m_safe), 1.0)
    p = np.where(kept, np.exp(logits - m_safe[:, None]), 0.0)
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
    st.buf["out"].write(a["out"], out.astype(np.float32), pc)
    return w


# -- STORE ------------------------------------------------------------------------------------------

@executes("ST.OUT")
def st_out(run, a, pc, ins) -> Work:
    st, w = run.state, Work()
    nbytes = a["rows"] * st.head_dim * 4
    data = st.buf["out"].read(a["buf"], nbytes, pc)
    w.read("out", nbytes)
    w.dram(a["dram"], nbytes, is_write=True)
    if run.functional:
        st.dram.write(a["dram"], data, pc)
    else:
        st.dram.check(a["dram"], nbytes, pc)
    return w
