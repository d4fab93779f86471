"""Reading one attention subgraph: which tensors are Q, K, V and the mask, in which layout, with which
scale, mask and guards, and whether Energon can take it.

The same reading serves three callers, each giving a different view of the graph (a :class:`Scope`):
the pattern check (the bindings FuseOpsByPattern matched, inside the model's function), the lowering
(the bindings of a fused composite function) and nothing else: the pattern decides the extent, this
module decides the meaning. It produces an :class:`AttentionPlan` -- everything the lowering needs to
emit the call and everything the workload needs -- or raises :class:`NotOffloadable` with the reason
the site stays on the host. What the masks mean (terms, constants, causal patterns, shared rows) is
:mod:`.masks`' part: this module finds the mask ops on the way from the softmax to the score matmul and
hands them over.

Frames: an attention call on Energon works on Q [B,H,Sq,D], K/V [B,H,Sk,D] and a bias broadcastable
to [B,H,Sq,Sk] (the *canonical frame*, an :class:`AttentionShape`). The model's own frame is read off
the softmax input: 4-d scores give (B, H); 3-d scores (heads flattened into the batch) give B = 1,
H = B*H (quantisation is per (b, h) slice, so the split does not change the result); 2-d scores give
B = H = 1. Every operand is brought to the canonical frame by broadcast/reshape/permute ops emitted
around the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..isa.numerics import MPMRFParams
from ..schedules.workload import DTYPES, AttentionWorkload
from .consteval import NotOffloadable, broadcast_shapes, describe, evaluate, is_constant, op_name, shape_of
from .masks import AddMask, MaskOp, MaskPlan, WhereMask, is_zero, read_attention_op_masks, read_masks

__all__ = ["ATTENTION_OPS", "AttentionPlan", "AttentionShape", "NotOffloadable", "OperandChain", "Scope",
           "analyze", "op_name", "walk_operand"]

ATTENTION_OPS = ("relax.nn.attention", "relax.nn.attention_bias")


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


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", "?"))


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
class AttentionShape:
    """The canonical frame of one Energon call: Q [B, H, Sq, D], K/V [B, H, Sk, D]."""

    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int

    @property
    def canonical(self) -> tuple[int, int, int, int]:
        """The scores' shape [B, H, Sq, Sk], the frame every mask term is brought to."""
        return (self.batch, self.heads, self.seq_q, self.seq_k)


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """Everything one offloadable attention site needs: the operands as the model computes them, and
    the call's workload, held once: ``shape``, ``dtype``, ``scale`` and ``masks`` (the causal flag and
    the bias the call gets); :meth:`workload` adds the MP-MRF parameters."""

    kind: str  # "decomposed" (matmul-softmax-matmul) or "attention_op" (R.nn.attention*)
    form: str
    shape: AttentionShape
    dtype: str
    scale: float
    masks: MaskPlan
    q: OperandChain
    k: OperandChain  # decomposed: K^T as the score matmul takes it ([..., D, Sk]); op: K in BSNH
    v: OperandChain
    score_batch: tuple[int, ...] = ()  # batch dims of the score matmul's output
    out_batch: tuple[int, ...] = ()  # batch dims of the output matmul's output
    out_shape: tuple[int, ...] = ()

    # the workload's parts by name, as the lowering reads them
    batch = property(lambda self: self.shape.batch)
    heads = property(lambda self: self.shape.heads)
    seq_q = property(lambda self: self.shape.seq_q)
    seq_k = property(lambda self: self.shape.seq_k)
    head_dim = property(lambda self: self.shape.head_dim)
    canonical = property(lambda self: self.shape.canonical)
    runtime_terms = property(lambda self: self.masks.runtime, doc="The run-time terms of the call's bias.")
    const_bias = property(lambda self: self.masks.const_bias, doc="The constant part (canonical frame).")
    causal = property(lambda self: self.masks.causal)
    bias_shape = property(lambda self: self.masks.bias_shape)

    def workload(self, params: MPMRFParams) -> AttentionWorkload:
        """The workload of this call (raises ScheduleError if the workload is impossible)."""
        s = self.shape
        return AttentionWorkload(
            batch=s.batch, heads=s.heads, seq_q=s.seq_q, seq_k=s.seq_k, head_dim=s.head_dim,
            causal=self.masks.causal, bias_shape=self.masks.bias_shape, scale=float(self.scale),
            dtype=self.dtype, params=params)


def _scalar_factor(scope: Scope, expr, what: str) -> float:
    value = scope.const(expr)
    if value is None:
        raise NotOffloadable(f"the scale of {what} is {describe(expr)}, which is not a constant")
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
    shape = shape_of(expr, what)
    steps, factor, x = [], 1.0, expr
    while (call := scope.producer(x)) is not None:
        name = op_name(call)
        if name == "relax.permute_dims":
            axes = call.attrs.axes
            steps.append(("permute_dims", None if axes is None else tuple(int(a) for a in axes)))
        elif name in ("relax.reshape", "relax.broadcast_to"):
            steps.append((name.split(".")[-1], shape_of(call, what)))
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
    shape = shape_of(scores, "the softmax input")
    sq, sk = shape[-2], shape[-1]
    rows = np.arange(sq) % 3
    synth = np.zeros((sq, sk), dtype=_dtype(scores) if _dtype(scores) in DTYPES else "float32")
    synth[rows == 0, :] = -np.inf
    synth[rows == 1, 1:] = -np.inf
    synth = np.broadcast_to(synth, shape)
    got = scope.const(cond, overrides={scores: synth})
    if got is None:
        raise NotOffloadable(f"the where() after the softmax depends on {describe(cond)}, which is not "
                             f"a row-masked test of the scores")
    try:
        ok = np.array_equal(np.broadcast_to(got.astype(bool), shape),
                            np.broadcast_to((rows == 0)[:, None], shape))
    except ValueError:
        ok = False
    if not ok:
        raise NotOffloadable("the where() after the softmax zeroes other rows than the fully masked ones")


def _walk_probs(scope: Scope, expr):
    """From the output matmul's left operand down to the softmax: layout ops and the guards
    exporters add after it. Returns (softmax call, guard names, pending all-masked conditions)."""
    guards, masked_conds, x = [], [], expr
    while True:
        call = scope.producer(x)
        if call is None:
            raise NotOffloadable(f"no softmax feeds the output matmul (found {describe(x)})")
        name = op_name(call)
        if name == "relax.nn.softmax":
            return call, guards, masked_conds
        if name in ("relax.reshape", "relax.broadcast_to", "relax.astype"):
            x = call.args[0]
        elif name == "relax.where":
            cond, fill, data = call.args
            if not is_zero(scope, fill):
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
    """From the softmax input down to the score matmul. Returns (matmul call, scale factor, the mask ops
    in the order found, form notes)."""
    running, mask_ops, notes, x = 1.0, [], [], expr
    while True:
        call = scope.producer(x)
        if call is None:
            raise NotOffloadable(f"the softmax input does not come from a score matmul ({describe(x)})")
        name = op_name(call)
        if name == "relax.matmul":
            return call, running, mask_ops, notes
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
            mask_ops.append(MaskOp(AddMask(other), call, data, running))
            x = data
        elif name == "relax.where":
            cond, a, b = call.args
            keep_when = scope.producer(a) is not None
            if keep_when == (scope.producer(b) is not None):
                raise NotOffloadable("cannot tell the scores apart in a where() before the softmax")
            mask_ops.append(MaskOp(WhereMask(cond, b if keep_when else a, keep_when), call,
                                   a if keep_when else b, running))
            x = a if keep_when else b
        elif name == "relax.reshape":
            before, after = shape_of(call.args[0], "the scores"), shape_of(call, "the scores")
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


def _check_dtypes(*exprs) -> str:
    dtypes = {_dtype(e) for e in exprs}
    if len(dtypes) != 1:
        raise NotOffloadable(f"Q, K and V have different dtypes {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in DTYPES:
        raise NotOffloadable(f"dtype {dtype} is not supported; Energon takes {', '.join(DTYPES)}")
    return dtype


def _prod(dims) -> int:
    return int(math.prod(dims))


def analyze_decomposed(scope: Scope, root) -> AttentionPlan:
    """matmul(P, V) where P = guards(softmax(mask(scale(matmul(Q, K^T)))))."""
    p_expr, v_expr = root.args
    softmax, guards, masked_conds = _walk_probs(scope, p_expr)
    scores = softmax.args[0]
    s_shape = shape_of(scores, "the softmax input")
    axis = int(softmax.attrs.axis)
    if axis not in (-1, len(s_shape) - 1):
        raise NotOffloadable(f"softmax over axis {axis}; attention normalises over the key axis "
                             f"(-1 of {len(s_shape)} dims)")
    for cond in masked_conds:
        _probe_all_masked_guard(scope, cond, scores)
    mm, scale, mask_ops, notes = _walk_scores(scope, scores)
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
    score_batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], "the score matmul")
    p_shape = shape_of(p_expr, "the probabilities")
    out_shape = shape_of(root, "the attention output")
    out_batch = broadcast_shapes(p_shape[:-2], v.shape[:-2], "the output matmul")
    n = batch * heads
    if _prod(score_batch) != n or _prod(p_shape[:-2]) != n or _prod(out_batch) != n:
        raise NotOffloadable(f"the batch dims change across the block: scores {list(score_batch)}, "
                             f"softmax {list(s_shape[:-2])}, output {list(out_batch)}")
    if q.factor != 1.0 or k.factor != 1.0:
        notes.append("scale on Q and K")
    shape = AttentionShape(batch, heads, sq, sk, d)
    masks = read_masks(scope, mask_ops, shape.canonical)
    scale = q.factor * k.factor * scale
    if not (math.isfinite(scale) and scale > 0):
        raise NotOffloadable(f"the attention scale is {scale:g}; Energon takes a positive scale")
    notes += list(masks.notes) + [f"{g} guard" for g in guards]
    layout = "flattened (B*H, S, D)" if len(s_shape) == 3 else "BNSH" if len(s_shape) == 4 else "2-d"
    form = "matmul-softmax-matmul, " + ", ".join([layout] + sorted(set(notes), key=notes.index))
    return AttentionPlan(
        kind="decomposed", form=form, shape=shape, dtype=dtype, scale=scale, masks=masks, q=q, k=k, v=v,
        score_batch=score_batch, out_batch=out_batch, out_shape=out_shape)


def analyze_attention_op(scope: Scope, root) -> AttentionPlan:
    """R.nn.attention / attention_bias: BSNH Q [B,Sq,N,D], K/V [B,Sk,N,D], optional bias."""
    name = op_name(root)
    q_expr, k_expr, v_expr = root.args[:3]
    shapes = [shape_of(e, what) for e, what in ((q_expr, "Q"), (k_expr, "K"), (v_expr, "V"))]
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
    shape = AttentionShape(b, n, sq, sk, d)
    bias = root.args[3] if name == "relax.nn.attention_bias" else None
    mode = getattr(attrs, "causal_mask", None)
    masks = read_attention_op_masks(scope, bias, None if mode is None else str(mode), shape.canonical)
    return AttentionPlan(
        kind="attention_op", form=", ".join(["R.nn.attention, BSNH", *masks.notes]), shape=shape, dtype=dtype,
        scale=scale, masks=masks, q=OperandChain(q_expr, shape=shapes[0]), k=OperandChain(k_expr, shape=shapes[1]),
        v=OperandChain(v_expr, shape=shapes[2]), out_shape=shape_of(root, "the attention output"))


def analyze(scope: Scope, root) -> AttentionPlan:
    """Read the attention block whose output is the call ``root``."""
    if op_name(root) in ATTENTION_OPS:
        return analyze_attention_op(scope, root)
    if op_name(root) == "relax.matmul":
        return analyze_decomposed(scope, root)
    raise NotOffloadable(f"{op_name(root)} is not an attention output")
