"""Reading one attention subgraph: which tensors are Q, K, V and the mask, in which layout, with which
scale, mask and guards, and whether Energon can take it.

The same reading serves three callers, each giving a different view of the graph (a :class:`Scope`):
the pattern check (the bindings FuseOpsByPattern matched, inside the model's function), the lowering
(the bindings of a fused composite function) and nothing else: the pattern decides the extent, this
module decides the meaning. It produces an :class:`AttentionPlan` -- everything the lowering needs to
emit the call and everything the workload needs -- or raises :class:`NotOffloadable` with the reason
the site stays on the host.

Frames: an attention call on Energon works on Q [B,H,Sq,D], K/V [B,H,Sk,D] and a bias broadcastable
to [B,H,Sq,Sk] (the *canonical frame*). The model's own frame is read off the softmax input: 4-d
scores give (B, H); 3-d scores (heads flattened into the batch) give B = 1, H = B*H (quantisation is
per (b, h) slice, so the split does not change the result); 2-d scores give B = H = 1. Every operand
is brought to the canonical frame by broadcast/reshape/permute ops emitted around the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ..isa.numerics import MASK_THRESHOLD, MPMRFParams
from ..schedules.workload import DTYPES, AttentionWorkload
from .consteval import evaluate, is_constant, rows_shared, static_shape

ATTENTION_OPS = ("relax.nn.attention", "relax.nn.attention_bias")


class NotOffloadable(Exception):
    """Internal: the subgraph cannot go to Energon; ``str(err)`` is the reason for the report."""


class Scope:
    """A view of the graph: ``bindings`` are the variables whose definitions belong to the attention
    block being read (the block ends where they end); ``resolve`` reads any variable's definition,
    inside the block or not, to evaluate constants."""

    def __init__(self, bindings: Mapping, resolve: Callable):
        self.bindings = bindings
        self.resolve = resolve

    def producer(self, expr) -> relax.Call | None:
        """The op call defining ``expr`` if that definition is inside the block."""
        if isinstance(expr, relax.Call):
            return expr
        if isinstance(expr, relax.Var) and expr in self.bindings:
            value = self.bindings[expr]
            return value if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None
        return None

    def const(self, expr, overrides=None) -> np.ndarray | None:
        return evaluate(expr, self.resolve, overrides)


def op_name(call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else str(call.op)


def _shape(expr, what: str) -> tuple[int, ...]:
    shape = static_shape(expr)
    if shape is None:
        ty = getattr(expr, "ty", None)
        raise NotOffloadable(f"dynamic shape: {what} has shape {getattr(ty, 'shape', '?')}; Energon programs "
                             f"are compiled for static shapes")
    return shape


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", "?"))


def _var_name(expr) -> str:
    return expr.name if isinstance(expr, relax.Var) else op_name(expr) if isinstance(expr, relax.Call) \
        else type(expr).__name__


@dataclass(frozen=True)
class OperandChain:
    """One attention operand as the model computes it: ``base`` (an input of the block) followed by
    layout ``steps`` (bottom-up; ("permute_dims", axes), ("reshape", shape), ("broadcast_to", shape)),
    with the constant scale factors found on the way removed and multiplied into ``factor``."""

    base: object
    steps: tuple = ()
    factor: float = 1.0
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class BiasTerm:
    """One additive contribution to the logits that is only known at run time.

    ``kind`` "add": ``tensor`` is added; "where": the scores are replaced by ``fill`` where ``cond`` is
    False (``keep_when`` True) or True (``keep_when`` False), i.e. the additive term
    ``where(cond, 0, fill)`` (resp. ``where(cond, fill, 0)``). ``multiplier`` is the product of the scale
    factors applied after the term; ``shape`` its own shape; ``stage`` the scores' shape where it
    applies; ``frame`` how it reaches the canonical frame (see :func:`frame_rule`). With
    ``rows_shared`` every query row of the term is the same (:func:`~.consteval.rows_shared`): the
    lowering passes its first row only, and ``shape``, ``stage`` and ``canonical_shape`` say so (query
    axis 1), which makes the call's bias a padding-style row shared by the tile."""

    kind: str
    shape: tuple[int, ...]
    stage: tuple[int, ...]
    frame: str
    canonical_shape: tuple[int, ...]
    multiplier: float = 1.0
    tensor: object = None
    cond: object = None
    fill: object = None
    keep_when: bool = True
    rows_shared: bool = False


@dataclass
class AttentionPlan:
    """Everything one offloadable attention site needs: the frame, the operands, the mask."""

    kind: str  # "decomposed" (matmul-softmax-matmul) or "attention_op" (R.nn.attention*)
    form: str
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    dtype: str
    scale: float
    q: OperandChain
    k: OperandChain  # decomposed: K^T as the score matmul takes it ([..., D, Sk]); op: K in BSNH
    v: OperandChain
    score_batch: tuple[int, ...] = ()  # batch dims of the score matmul's output
    out_batch: tuple[int, ...] = ()  # batch dims of the output matmul's output
    out_shape: tuple[int, ...] = ()
    runtime_terms: list[BiasTerm] = field(default_factory=list)
    const_bias: np.ndarray | None = None  # canonical frame, right-aligned
    causal: bool = False

    @property
    def canonical(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.seq_q, self.seq_k)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        shapes = [t.canonical_shape for t in self.runtime_terms]
        if self.const_bias is not None:
            shapes.append(self.const_bias.shape)
        return tuple(np.broadcast_shapes(*shapes)) if shapes else None

    def workload(self, params: MPMRFParams) -> AttentionWorkload:
        """The workload of this call (raises ScheduleError if the workload is impossible)."""
        return AttentionWorkload(
            batch=self.batch, heads=self.heads, seq_q=self.seq_q, seq_k=self.seq_k,
            head_dim=self.head_dim, causal=self.causal, bias_shape=self.bias_shape,
            scale=float(self.scale), dtype=self.dtype, params=params)


def frame_rule(term_shape, stage, canonical) -> tuple[str, tuple[int, ...]]:
    """How a bias term of ``term_shape``, added to scores of shape ``stage``, reaches the canonical
    frame [B,H,Sq,Sk]; returns (rule, shape in the canonical frame):

    * "direct": the stage is the canonical frame (up to leading 1s): use the term as it is;
    * "tail": the term is constant over the stage's batch dims: keep only its last two dims;
    * "full": broadcast it to the stage's shape and reshape that to [B,H,Sq,Sk].
    """
    stage = tuple(stage)
    padded_stage = (1,) * (4 - len(stage)) + stage if len(stage) <= 4 else stage
    if padded_stage == tuple(canonical) and len(term_shape) <= 4:
        return "direct", tuple(term_shape)
    padded = (1,) * (len(stage) - len(term_shape)) + tuple(term_shape)
    if all(d == 1 for d in padded[:-2]):
        return "tail", padded[-2:]
    return "full", tuple(canonical)


def _scalar_factor(scope: Scope, expr, what: str) -> float:
    value = scope.const(expr)
    if value is None:
        raise NotOffloadable(f"the scale of {what} is {_var_name(expr)}, which is not a constant")
    if value.size != 1:
        raise NotOffloadable(f"the scale of {what} is a constant of shape {list(value.shape)}, "
                             f"not a scalar")
    factor = float(value.reshape(()))
    if factor == 0.0:
        raise NotOffloadable(f"the scale of {what} is zero")
    return factor


def _data_and_other(scope: Scope, call, what: str):
    """(data arg, other arg) of a binary op whose data input is the block-internal one."""
    a, b = call.args[0], call.args[1]
    a_in, b_in = scope.producer(a) is not None, scope.producer(b) is not None
    if a_in and not b_in:
        return a, b
    if b_in and not a_in:
        return b, a
    raise NotOffloadable(f"cannot tell the {what} apart in {op_name(call)}")


def walk_operand(scope: Scope, expr, what: str) -> OperandChain:
    """Follow an operand of a matmul down through layout ops and constant scale factors."""
    shape = _shape(expr, what)
    steps, factor, x = [], 1.0, expr
    while (call := scope.producer(x)) is not None:
        name = op_name(call)
        if name == "relax.permute_dims":
            axes = call.attrs.axes
            steps.append(("permute_dims", None if axes is None else tuple(int(a) for a in axes)))
        elif name in ("relax.reshape", "relax.broadcast_to"):
            steps.append((name.split(".")[-1], _shape(call, what)))
        elif name in ("relax.multiply", "relax.divide"):
            data = call.args[0]
            if name == "relax.multiply" and scope.producer(data) is None and is_constant(data):
                data, other = call.args[1], call.args[0]
            else:
                other = call.args[1]
            f = _scalar_factor(scope, other, what)
            factor *= f if name == "relax.multiply" else 1.0 / f
            x = data
            continue
        else:
            break
        x = call.args[0]
    return OperandChain(base=x, steps=tuple(reversed(steps)), factor=factor, shape=shape)


def _probe_all_masked_guard(scope: Scope, cond, scores) -> None:
    """A ``where(cond, 0, p)`` after the softmax must zero exactly the rows whose every key is masked
    (what MP-MRF outputs for such a row). Probe it with synthetic scores: rows q = 0 mod 3 fully
    masked, q = 1 mod 3 partly masked, q = 2 mod 3 not masked."""
    shape = _shape(scores, "the softmax input")
    sq, sk = shape[-2], shape[-1]
    rows = np.arange(sq) % 3
    synth = np.zeros((sq, sk), dtype=_dtype(scores) if _dtype(scores) in DTYPES else "float32")
    synth[rows == 0, :] = -np.inf
    synth[rows == 1, 1:] = -np.inf
    synth = np.broadcast_to(synth, shape)
    got = scope.const(cond, overrides={scores: synth})
    if got is None:
        raise NotOffloadable(f"the where() after the softmax depends on {_var_name(cond)}, which is not "
                             f"a row-masked test of the scores")
    try:
        ok = np.array_equal(np.broadcast_to(got.astype(bool), shape),
                            np.broadcast_to((rows == 0)[:, None], shape))
    except ValueError:
        ok = False
    if not ok:
        raise NotOffloadable("the where() after the softmax zeroes other rows than the fully masked ones")


def _is_zero(scope: Scope, expr) -> bool:
    call = scope.producer(expr)
    if call is not None and op_name(call) == "relax.zeros_like":
        return True
    if call is not None and op_name(call) == "relax.full_like":
        value = scope.const(call.args[1])
    else:
        value = scope.const(expr)
    return value is not None and value.size == 1 and not np.any(value)


def _walk_probs(scope: Scope, expr):
    """From the output matmul's left operand down to the softmax: layout ops and the guards
    exporters add after it. Returns (softmax call, guard names, pending all-masked conditions)."""
    guards, masked_conds, x = [], [], expr
    while True:
        call = scope.producer(x)
        if call is None:
            raise NotOffloadable(f"no softmax feeds the output matmul (found {_var_name(x)})")
        name = op_name(call)
        if name == "relax.nn.softmax":
            return call, guards, masked_conds
        if name in ("relax.reshape", "relax.broadcast_to", "relax.astype"):
            x = call.args[0]
        elif name == "relax.where":
            cond, fill, data = call.args
            if not _is_zero(scope, fill):
                raise NotOffloadable("a where() after the softmax fills with a non-zero value")
            test = scope.producer(cond)
            if test is not None and op_name(test) == "relax.isnan" and test.args[0].same_as(data):
                guards.append("isnan")
            else:
                guards.append("all-masked")
                masked_conds.append(cond)
            x = data
        else:
            raise NotOffloadable(f"{name} between the softmax and the output matmul")


def _walk_scores(scope: Scope, expr):
    """From the softmax input down to the score matmul. Returns (matmul call, scale factor, raw terms,
    form notes); a raw term is (kind, call, scores input, mask operand(s), multiplier)."""
    running, raw, notes, x = 1.0, [], [], expr
    while True:
        call = scope.producer(x)
        if call is None:
            raise NotOffloadable(f"the softmax input does not come from a score matmul ({_var_name(x)})")
        name = op_name(call)
        if name == "relax.matmul":
            return call, running, raw, notes
        if name in ("relax.multiply", "relax.divide"):
            data, other = (_data_and_other(scope, call, "scores and the scale") if name == "relax.multiply"
                           else (call.args[0], call.args[1]))
            if scope.producer(data) is None:
                raise NotOffloadable("the scores are divided into a constant, not by one")
            f = _scalar_factor(scope, other, "the scores")
            running *= f if name == "relax.multiply" else 1.0 / f
            notes.append(f"scale on scores ({name.split('.')[-1]})")
            x = data
        elif name == "relax.add":
            data, other = _data_and_other(scope, call, "scores and the mask")
            raw.append(("add", call, data, other, running))
            x = data
        elif name == "relax.where":
            cond, a, b = call.args
            keep_when = scope.producer(a) is not None
            if keep_when == (scope.producer(b) is not None):
                raise NotOffloadable("cannot tell the scores apart in a where() before the softmax")
            raw.append(("where", call, a if keep_when else b, (cond, b if keep_when else a, keep_when),
                        running))
            x = a if keep_when else b
        elif name == "relax.reshape":
            before, after = _shape(call.args[0], "the scores"), _shape(call, "the scores")
            if before[-2:] != after[-2:]:
                raise NotOffloadable(f"the scores are reshaped from {list(before)} to {list(after)}, "
                                     f"which changes the query/key axes")
            notes.append("batched-matmul reshape")
            x = call.args[0]
        elif name == "relax.astype":
            x = call.args[0]
        else:
            raise NotOffloadable(f"{name} between the score matmul and the softmax")


def _frame(shape, what: str) -> tuple[int, int]:
    batch = shape[:-2]
    if len(batch) > 2:
        raise NotOffloadable(f"{what} has {len(shape)} dims {list(shape)}; Energon takes at most "
                             f"[B, H, Sq, Sk]")
    return (1,) * (2 - len(batch)) + tuple(batch)


def _broadcast(a, b, what: str) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise NotOffloadable(f"{what}: batch dims {list(a)} and {list(b)} do not broadcast") from None


def _check_dtypes(*exprs) -> str:
    dtypes = {_dtype(e) for e in exprs}
    if len(dtypes) != 1:
        raise NotOffloadable(f"Q, K and V have different dtypes {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in DTYPES:
        raise NotOffloadable(f"dtype {dtype} is not supported; Energon takes {', '.join(DTYPES)}")
    return dtype


def _definition(scope: Scope, expr, depth: int = 16):
    """The op call ``expr`` is bound to, through variable bindings inside the block or not (or None)."""
    while isinstance(expr, relax.Var) and depth:
        expr, depth = scope.resolve(expr), depth - 1
    return expr if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def _is_mask_value(scope: Scope, expr) -> bool:
    value = scope.const(expr)
    return value is not None and value.size == 1 and float(value.reshape(())) <= MASK_THRESHOLD


def _mask_pieces(scope: Scope, kind: str, data) -> list[tuple[str, object]]:
    """A mask term as additive pieces: ``where(A & B, 0, fill)`` (or ``where(A | B, fill, 0)``) with A
    constant and B not masks what ``where(A, 0, fill) + where(B, 0, fill)`` masks -- an entry either
    piece masks stays at or below the mask threshold -- so the constant piece can be recognised (a causal
    pattern) and the run-time piece stays what it is (often a padding row). A GPT-2 export builds its
    mask so. Anything else is one piece, as it came."""
    if kind == "add":
        where = _definition(scope, data)
        if where is None or op_name(where) != "relax.where":
            return [(kind, data)]
        cond, a, b = where.args
        if _is_zero(scope, a) and _is_mask_value(scope, b):
            fill, keep_when = b, True
        elif _is_zero(scope, b) and _is_mask_value(scope, a):
            fill, keep_when = a, False
        else:
            return [(kind, data)]
    else:
        cond, fill, keep_when = data
    combined = _definition(scope, cond)
    if combined is None or op_name(combined) != ("relax.logical_and" if keep_when else "relax.logical_or"):
        return [(kind, data)]
    parts = list(combined.args)
    if sum(scope.const(p) is not None for p in parts) != 1:
        return [(kind, data)]
    return [("where", (part, fill, keep_when)) for part in parts]


def _mask_terms(scope: Scope, raw, canonical) -> tuple[list[BiasTerm], np.ndarray | None, list[str]]:
    """Split the mask terms into run-time ones and one constant (canonical frame, right-aligned)."""
    runtime, const_total, notes = [], None, []
    pieces = [(kind, call, scores, piece, multiplier, origin) for origin, call, scores, data, multiplier in raw
              for kind, piece in _mask_pieces(scope, origin, data)]
    for kind, call, scores, data, multiplier, origin in pieces:
        stage_in = _shape(scores, "the scores")
        stage = _shape(call, "the scores")
        notes.append("mask add" if origin == "add" else "where mask")
        if kind == "add":
            shape = _shape(data, "the mask")
            value = scope.const(data)
            term = dict(kind="add", tensor=data)
        else:
            cond, fill, keep_when = data
            fill_value = scope.const(fill)
            if fill_value is None or fill_value.size != 1:
                raise NotOffloadable(f"a where() before the softmax fills with {_var_name(fill)}, not a "
                                     f"constant mask value")
            if float(fill_value.reshape(())) > MASK_THRESHOLD:
                raise NotOffloadable(f"a where() before the softmax replaces scores with "
                                     f"{float(fill_value.reshape(())):g}, which is not a mask value "
                                     f"(<= {MASK_THRESHOLD:g})")
            shape = _broadcast(_shape(cond, "the mask condition"), _shape(fill, "the mask"), "where()")
            cond_value = scope.const(cond)
            value = None
            if cond_value is not None:
                zero = np.zeros((), np.float32)
                fv = fill_value.astype(np.float32)
                value = np.where(cond_value.astype(bool), zero, fv) if keep_when \
                    else np.where(cond_value.astype(bool), fv, zero)
            term = dict(kind="where", cond=cond, fill=fill, keep_when=keep_when)
        if stage != tuple(stage_in):
            raise NotOffloadable(f"the mask {list(shape)} broadcasts the scores from {list(stage_in)} to "
                                 f"{list(stage)}")
        if value is not None:
            rule, _ = frame_rule(shape, stage, canonical)
            with np.errstate(over="ignore"):  # -FLT_MAX masks may overflow to -inf: still masked
                value = value.astype(np.float32) * np.float32(multiplier)
            value = _to_frame(value, rule, stage, canonical)
            const_total = value if const_total is None else const_total + value
        else:
            inputs = [term["tensor"]] if kind == "add" else [term["cond"], term["fill"]]
            runtime.append(_runtime_term(scope, inputs, shape, stage, canonical, multiplier=multiplier, **term))
    return runtime, const_total, notes


def _runtime_term(scope: Scope, inputs, shape, stage, canonical, **term) -> BiasTerm:
    """A run-time bias term, reduced to one query row when its ``inputs`` provably share their rows."""
    shape, stage = tuple(shape), tuple(stage)
    shared = len(shape) >= 2 and shape[-2] > 1 and all(rows_shared(x, scope.resolve) for x in inputs)
    if shared:
        shape, stage = _one_row(shape), _one_row(stage)
        canonical = _one_row(tuple(canonical))
    rule, canon_shape = frame_rule(shape, stage, canonical)
    return BiasTerm(shape=shape, stage=stage, frame=rule, canonical_shape=canon_shape, rows_shared=shared,
                    **term)


def _one_row(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-2] + (1, shape[-1]) if len(shape) >= 2 else shape


def _share_const_rows(const_bias: np.ndarray | None) -> np.ndarray | None:
    """A constant bias whose query rows are all equal, reduced to its first row."""
    if const_bias is None or const_bias.ndim < 2 or const_bias.shape[-2] == 1:
        return const_bias
    first = const_bias[..., :1, :]
    return np.ascontiguousarray(first) if np.array_equal(const_bias, np.broadcast_to(first, const_bias.shape)) \
        else const_bias


def _to_frame(value: np.ndarray, rule: str, stage, canonical) -> np.ndarray:
    if rule == "direct":
        return value
    if rule == "tail":
        padded = value.reshape((1,) * (len(stage) - value.ndim) + value.shape)
        return padded.reshape(padded.shape[-2:])
    return np.broadcast_to(value, stage).reshape(canonical)


def split_causal(const_bias: np.ndarray | None, seq_q: int, seq_k: int):
    """(causal, remaining constant): a constant that is exactly the bottom-right causal mask (masked
    where key > query + Sk - Sq, zero elsewhere) becomes ``causal``; an all-zero one disappears."""
    if const_bias is None or not np.any(const_bias):
        return False, None
    full = const_bias.reshape((1,) * (4 - const_bias.ndim) + const_bias.shape)
    try:
        full = np.broadcast_to(full, full.shape[:2] + (seq_q, seq_k))
    except ValueError:
        return False, const_bias
    masked = full <= MASK_THRESHOLD
    expected = np.arange(seq_k)[None, :] > np.arange(seq_q)[:, None] + (seq_k - seq_q)
    if np.array_equal(masked, np.broadcast_to(expected, masked.shape)) and not np.any(full[~masked]):
        return True, None
    return False, const_bias


def _prod(dims) -> int:
    return int(math.prod(dims))


def analyze_decomposed(scope: Scope, root) -> AttentionPlan:
    """matmul(P, V) where P = guards(softmax(mask(scale(matmul(Q, K^T)))))."""
    p_expr, v_expr = root.args
    softmax, guards, masked_conds = _walk_probs(scope, p_expr)
    scores = softmax.args[0]
    s_shape = _shape(scores, "the softmax input")
    axis = int(softmax.attrs.axis)
    if axis not in (-1, len(s_shape) - 1):
        raise NotOffloadable(f"softmax over axis {axis}; attention normalises over the key axis "
                             f"(-1 of {len(s_shape)} dims)")
    for cond in masked_conds:
        _probe_all_masked_guard(scope, cond, scores)
    mm, scale, raw, notes = _walk_scores(scope, scores)
    q = walk_operand(scope, mm.args[0], "Q")
    k = walk_operand(scope, mm.args[1], "K^T")
    v = walk_operand(scope, v_expr, "V")
    dtype = _check_dtypes(mm.args[0], mm.args[1], v_expr)
    if len(q.shape) < 2 or len(k.shape) < 2 or len(v.shape) < 2:
        raise NotOffloadable("the score matmul is not a matrix product")
    sq, d = q.shape[-2:]
    dk, sk = k.shape[-2:]
    sk_v, dv = v.shape[-2:]
    if s_shape[-2:] != (sq, sk) or dk != d or sk_v != sk:
        raise NotOffloadable(f"inconsistent shapes: Q {list(q.shape)}, K^T {list(k.shape)}, V "
                             f"{list(v.shape)}, scores {list(s_shape)}")
    if dv != d:
        raise NotOffloadable(f"value head dim {dv} differs from the query/key head dim {d}")
    batch, heads = _frame(s_shape, "the score tensor")
    score_batch = _broadcast(q.shape[:-2], k.shape[:-2], "the score matmul")
    p_shape = _shape(p_expr, "the probabilities")
    out_shape = _shape(root, "the attention output")
    out_batch = _broadcast(p_shape[:-2], v.shape[:-2], "the output matmul")
    n = batch * heads
    if _prod(score_batch) != n or _prod(p_shape[:-2]) != n or _prod(out_batch) != n:
        raise NotOffloadable(f"the batch dims change across the block: scores {list(score_batch)}, "
                             f"softmax {list(s_shape[:-2])}, output {list(out_batch)}")
    if q.factor != 1.0 or k.factor != 1.0:
        notes.append("scale on Q and K")
    canonical = (batch, heads, sq, sk)
    runtime, const_total, mask_notes = _mask_terms(scope, raw, canonical)
    causal, const_bias = split_causal(const_total, sq, sk)
    const_bias = _share_const_rows(const_bias)
    scale = q.factor * k.factor * scale
    if not (math.isfinite(scale) and scale > 0):
        raise NotOffloadable(f"the attention scale is {scale:g}; Energon takes a positive scale")
    notes += mask_notes + (["causal"] if causal else []) + [f"{g} guard" for g in guards]
    layout = "flattened (B*H, S, D)" if len(s_shape) == 3 else "BNSH" if len(s_shape) == 4 else "2-d"
    form = "matmul-softmax-matmul, " + ", ".join([layout] + sorted(set(notes), key=notes.index))
    return AttentionPlan(
        kind="decomposed", form=form, batch=batch, heads=heads, seq_q=sq, seq_k=sk, head_dim=d,
        dtype=dtype, scale=scale, q=q, k=k, v=v, score_batch=score_batch, out_batch=out_batch,
        out_shape=out_shape, runtime_terms=runtime, const_bias=const_bias, causal=causal)


def analyze_attention_op(scope: Scope, root) -> AttentionPlan:
    """R.nn.attention / attention_bias: BSNH Q [B,Sq,N,D], K/V [B,Sk,N,D], optional bias."""
    name = op_name(root)
    q_expr, k_expr, v_expr = root.args[:3]
    shapes = [_shape(e, what) for e, what in ((q_expr, "Q"), (k_expr, "K"), (v_expr, "V"))]
    dtype = _check_dtypes(q_expr, k_expr, v_expr)
    (b, sq, n, d), (bk, sk, nk, dk), (bv, skv, nv, dv) = shapes
    if (bk, nk, dk) != (b, n, d) or (bv, skv, nv) != (b, sk, n):
        raise NotOffloadable(f"inconsistent shapes: Q {shapes[0]}, K {shapes[1]}, V {shapes[2]}")
    if dv != d:
        raise NotOffloadable(f"value head dim {dv} differs from the query/key head dim {d}")
    attrs = root.attrs
    if getattr(attrs, "window_size", None) is not None:
        raise NotOffloadable(f"sliding-window attention (window {attrs.window_size}) is not supported")
    scale = 1.0 / math.sqrt(d) if attrs.scale is None else float(attrs.scale.value)
    canonical = (b, n, sq, sk)
    notes = ["R.nn.attention, BSNH"]
    raw = []
    if name == "relax.nn.attention_bias":
        bias = root.args[3]
        raw.append(("add", bias))
    const_total, runtime = None, []
    for _, bias in raw:
        shape = _shape(bias, "the bias")
        if len(shape) > 4:
            raise NotOffloadable(f"the bias has {len(shape)} dims {list(shape)}")
        try:
            np.broadcast_shapes(shape, canonical)
        except ValueError:
            raise NotOffloadable(f"bias shape {list(shape)} does not broadcast to [B, H, Sq, Sk] = "
                                 f"{list(canonical)}") from None
        value = scope.const(bias)
        notes.append("bias")
        if value is not None:
            const_total = value.astype(np.float32)
        else:
            runtime.append(_runtime_term(scope, [bias], shape, canonical, canonical, kind="add", tensor=bias))
    causal = False
    mode = getattr(attrs, "causal_mask", None)
    if mode is not None:
        mode = str(mode)
        if mode == "BottomRight" and sq > sk:
            raise NotOffloadable(f"bottom-right causal mask with more queries ({sq}) than keys ({sk})")
        if mode == "BottomRight" or sq == sk:
            causal = True
        else:
            top_left = np.where(np.arange(sk)[None, :] > np.arange(sq)[:, None], -np.inf, 0.0)
            const_total = top_left.astype(np.float32) if const_total is None else const_total + top_left
        notes.append(f"causal {mode}")
    extracted, const_bias = split_causal(const_total, sq, sk)
    const_bias = _share_const_rows(const_bias)
    return AttentionPlan(
        kind="attention_op", form=", ".join(notes), batch=b, heads=n, seq_q=sq, seq_k=sk, head_dim=d,
        dtype=dtype, scale=scale, q=OperandChain(q_expr, shape=shapes[0]),
        k=OperandChain(k_expr, shape=shapes[1]), v=OperandChain(v_expr, shape=shapes[2]),
        out_shape=_shape(root, "the attention output"), runtime_terms=runtime, const_bias=const_bias,
        causal=causal or extracted)


def analyze(scope: Scope, root) -> AttentionPlan:
    """Read the attention block whose output is the call ``root``."""
    if op_name(root) in ATTENTION_OPS:
        return analyze_attention_op(scope, root)
    if op_name(root) == "relax.matmul":
        return analyze_decomposed(scope, root)
    raise NotOffloadable(f"{op_name(root)} is not an attention output")
