"""The algebra of attention masks: what a site adds to its scores before the softmax, and what an
Energon call receives for it (a causal flag and one bias tensor).

Between the score matmul and the softmax a model masks its scores in two ways, each a :class:`MaskOp`:
``scores + tensor`` (an :class:`AddMask`) and ``where(cond, scores, fill)`` (a :class:`WhereMask`: the
scores replaced by a constant mask value). Either is an additive term of the logits. This module turns
them into a :class:`MaskPlan`:

* pieces: ``where(A & B, 0, fill)`` with A constant and B not is read as ``where(A) + where(B)``
  (:func:`mask_pieces`), so a causal pattern inside a run-time mask is still found;
* constants: the pieces known at compile time are folded into one bias in the canonical frame; an exact
  bottom-right causal pattern in it becomes the ``causal`` flag (:func:`split_causal`) and equal query
  rows become one row (:func:`share_const_rows`);
* run-time terms (:class:`RuntimeTerm`): the rest, each with the :class:`Frame` that carries it from the
  scores' shape where it applies to the canonical frame [B, H, Sq, Sk], and reduced to one query row
  when its rows are provably equal (:func:`~.consteval.rows_shared`).

:mod:`.analysis` finds the mask ops and the canonical frame (:func:`read_masks`; an ``R.nn.attention``
site gives its bias operand and ``causal_mask`` attribute instead, :func:`read_attention_op_masks`). The
lowering emits the run-time terms from these same records (:meth:`WhereMask.additive` and
:meth:`Frame.bring` take numpy's ops or the emitter's), so what a term means is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import tvm
from tvm import relax

from ..isa.numerics import MASK_THRESHOLD
from .consteval import NotOffloadable, broadcast_shapes, describe, op_name, rows_shared, shape_of

if TYPE_CHECKING:
    from .analysis import Scope


@dataclass(frozen=True)
class AddMask:
    """``scores + tensor``: the term is ``tensor`` itself."""

    tensor: object

    @property
    def operands(self) -> tuple:
        return (self.tensor,)

    def additive(self, tensor, where=None, zero_of=None):
        """The term, from a value of ``tensor`` (numpy or Relax)."""
        return tensor


@dataclass(frozen=True)
class WhereMask:
    """The scores replaced by the constant mask value ``fill`` where ``cond`` is False (``keep_when``:
    ``where(cond, scores, fill)``) or where it is True (not ``keep_when``: ``where(cond, fill, scores)``),
    i.e. the additive term ``where(cond, 0, fill)`` (resp. ``where(cond, fill, 0)``)."""

    cond: object
    fill: object
    keep_when: bool = True

    @property
    def operands(self) -> tuple:
        return (self.cond, self.fill)

    def additive(self, cond, fill, where, zero_of):
        """The term, from values of ``cond`` and ``fill``; ``where(c, a, b)`` is numpy's or an emitter's
        and ``zero_of(fill)`` a zero of the fill's dtype."""
        zero = zero_of(fill)
        return where(cond, zero, fill) if self.keep_when else where(cond, fill, zero)


Mask = AddMask | WhereMask


@dataclass(frozen=True)
class MaskOp:
    """One op between the score matmul and the softmax that applies ``mask``: ``call`` is the op (its
    shape is the scores' after it), ``scores`` the scores going in, ``multiplier`` the product of the
    scale factors applied after it on the way to the softmax."""

    mask: Mask
    call: object
    scores: object
    multiplier: float = 1.0

    @property
    def note(self) -> str:
        """How the site's form names it."""
        return "mask add" if isinstance(self.mask, AddMask) else "where mask"


@dataclass(frozen=True)
class Frame:
    """How a term added to scores of shape ``stage`` reaches the canonical frame [B, H, Sq, Sk], where
    its shape is ``shape`` (right-aligned):

    * "direct": the stage is the canonical frame (up to leading 1s): the term as it is;
    * "tail": the term is constant over the stage's batch dims: its last two dims only;
    * "full": broadcast to the stage, reshaped to [B, H, Sq, Sk].
    """

    rule: Literal["direct", "tail", "full"]
    stage: tuple[int, ...]
    shape: tuple[int, ...]

    @classmethod
    def of(cls, term_shape, stage, canonical) -> Frame:
        """The frame of a term of ``term_shape`` added to scores of shape ``stage``."""
        term_shape, stage, canonical = tuple(term_shape), tuple(stage), tuple(canonical)
        padded_stage = (1,) * (4 - len(stage)) + stage if len(stage) <= 4 else stage
        if padded_stage == canonical and len(term_shape) <= 4:
            return cls("direct", stage, term_shape)
        padded = (1,) * (len(stage) - len(term_shape)) + term_shape
        if all(d == 1 for d in padded[:-2]):
            return cls("tail", stage, padded[-2:])
        return cls("full", stage, canonical)

    def bring(self, x, reshape, broadcast_to):
        """``x`` (the term, numpy or Relax) in the canonical frame; ``reshape(x, shape)`` and
        ``broadcast_to(x, shape)`` are numpy's or an emitter's."""
        if self.rule == "tail":
            return reshape(x, self.shape)
        if self.rule == "full":
            return reshape(broadcast_to(x, self.stage), self.shape)
        return x


@dataclass(frozen=True)
class RuntimeTerm:
    """A term of the logits only known at run time: ``mask`` computes it, times ``multiplier``, and
    ``frame`` brings it to the canonical frame; ``shape`` is its own shape. With ``rows_shared`` every
    query row of the term is provably the same: the lowering passes its first row only, and ``shape`` and
    ``frame`` say so (query axis 1), which makes the call's bias a padding-style row shared by the tile."""

    mask: Mask
    shape: tuple[int, ...]
    frame: Frame
    multiplier: float = 1.0
    rows_shared: bool = False


@dataclass(frozen=True, eq=False)
class MaskPlan:
    """What a site's masks come to on Energon: the ``runtime`` terms, one constant bias (canonical frame,
    right-aligned; None when no constant is left), the ``causal`` flag, and the ``notes`` of the form."""

    runtime: tuple[RuntimeTerm, ...] = ()
    const_bias: np.ndarray | None = None
    causal: bool = False
    notes: tuple[str, ...] = ()

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        """The shape of the call's bias tensor (every term and the constant, broadcast), or None."""
        shapes = [t.frame.shape for t in self.runtime]
        if self.const_bias is not None:
            shapes.append(self.const_bias.shape)
        return tuple(np.broadcast_shapes(*shapes)) if shapes else None


def _definition(scope: Scope, expr, depth: int = 16):
    """The op call ``expr`` is bound to, through variable bindings inside the block or not (or None)."""
    while isinstance(expr, relax.Var) and depth:
        expr, depth = scope.resolve(expr), depth - 1
    return expr if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def is_zero(scope: Scope, expr) -> bool:
    """Whether ``expr`` is a zero fill: ``zeros_like``, ``full_like(x, 0)`` or a constant scalar 0."""
    call = scope.producer(expr)
    if call is not None and op_name(call) == "relax.zeros_like":
        return True
    if call is not None and op_name(call) == "relax.full_like":
        value = scope.const(call.args[1])
    else:
        value = scope.const(expr)
    return value is not None and value.size == 1 and not np.any(value)


def _is_mask_value(scope: Scope, expr) -> bool:
    """Whether ``expr`` is a constant scalar at or below the mask threshold."""
    value = scope.const(expr)
    return value is not None and value.size == 1 and float(value.reshape(())) <= MASK_THRESHOLD


def mask_pieces(scope: Scope, mask: Mask) -> list[Mask]:
    """A mask as additive pieces: ``where(A & B, 0, fill)`` (or ``where(A | B, fill, 0)``) with A
    constant and B not masks what ``where(A, 0, fill) + where(B, 0, fill)`` masks -- an entry either
    piece masks stays at or below the mask threshold -- so the constant piece can be recognised (a causal
    pattern) and the run-time piece stays what it is (often a padding row). A GPT-2 export builds its
    mask so. Anything else is one piece, as it came."""
    if isinstance(mask, AddMask):
        where = _definition(scope, mask.tensor)
        if where is None or op_name(where) != "relax.where":
            return [mask]
        cond, a, b = where.args
        if is_zero(scope, a) and _is_mask_value(scope, b):
            fill, keep_when = b, True
        elif is_zero(scope, b) and _is_mask_value(scope, a):
            fill, keep_when = a, False
        else:
            return [mask]
    else:
        cond, fill, keep_when = mask.cond, mask.fill, mask.keep_when
    combined = _definition(scope, cond)
    if combined is None or op_name(combined) != ("relax.logical_and" if keep_when else "relax.logical_or"):
        return [mask]
    parts = list(combined.args)
    if sum(scope.const(p) is not None for p in parts) != 1:
        return [mask]
    return [WhereMask(part, fill, keep_when) for part in parts]


def _numpy_zero(_fill) -> np.ndarray:
    return np.zeros((), np.float32)


def _term_value(scope: Scope, mask: Mask) -> tuple[tuple[int, ...], np.ndarray | None]:
    """(shape, value if it is known at compile time) of a mask piece's term; a where() must fill with a
    constant mask value."""
    if isinstance(mask, AddMask):
        return shape_of(mask.tensor, "the mask"), scope.const(mask.tensor)
    fill_value = scope.const(mask.fill)
    if fill_value is None or fill_value.size != 1:
        raise NotOffloadable(f"a where() before the softmax fills with {describe(mask.fill)}, not a "
                             f"constant mask value")
    fill = float(fill_value.reshape(()))
    if fill > MASK_THRESHOLD:
        raise NotOffloadable(f"a where() before the softmax replaces scores with {fill:g}, which is not a "
                             f"mask value (<= {MASK_THRESHOLD:g})")
    shape = broadcast_shapes(shape_of(mask.cond, "the mask condition"), shape_of(mask.fill, "the mask"),
                             "where()")
    cond_value = scope.const(mask.cond)
    if cond_value is None:
        return shape, None
    return shape, mask.additive(cond_value.astype(bool), fill_value.astype(np.float32), where=np.where,
                                zero_of=_numpy_zero)


def _one_row(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with its query axis (-2) reduced to 1."""
    return shape[:-2] + (1, shape[-1]) if len(shape) >= 2 else shape


def runtime_term(scope: Scope, mask: Mask, shape, stage, canonical, multiplier: float = 1.0) -> RuntimeTerm:
    """The run-time term of ``mask`` (of ``shape``, added to scores of shape ``stage``), reduced to one
    query row when its operands provably share their rows."""
    shape, stage, canonical = tuple(shape), tuple(stage), tuple(canonical)
    shared = len(shape) >= 2 and shape[-2] > 1 and all(rows_shared(x, scope.resolve) for x in mask.operands)
    if shared:
        shape, stage, canonical = _one_row(shape), _one_row(stage), _one_row(canonical)
    return RuntimeTerm(mask, shape, Frame.of(shape, stage, canonical), multiplier, shared)


def share_const_rows(const_bias: np.ndarray | None) -> np.ndarray | None:
    """A constant bias whose query rows are all equal, reduced to its first row."""
    if const_bias is None or const_bias.ndim < 2 or const_bias.shape[-2] == 1:
        return const_bias
    first = const_bias[..., :1, :]
    return np.ascontiguousarray(first) if np.array_equal(const_bias, np.broadcast_to(first, const_bias.shape)) \
        else const_bias


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


def read_masks(scope: Scope, ops, canonical) -> MaskPlan:
    """The masks of a matmul-softmax-matmul site: ``ops`` as found from the softmax down to the score
    matmul, ``canonical`` the call's [B, H, Sq, Sk]."""
    runtime, const_total, notes = [], None, []
    pieces = [(op, piece) for op in ops for piece in mask_pieces(scope, op.mask)]
    for op, mask in pieces:
        stage_in = shape_of(op.scores, "the scores")
        stage = shape_of(op.call, "the scores")
        notes.append(op.note)
        shape, value = _term_value(scope, mask)
        if stage != tuple(stage_in):
            raise NotOffloadable(f"the mask {list(shape)} broadcasts the scores from {list(stage_in)} to "
                                 f"{list(stage)}")
        if value is None:
            runtime.append(runtime_term(scope, mask, shape, stage, canonical, op.multiplier))
            continue
        with np.errstate(over="ignore"):  # -FLT_MAX masks may overflow to -inf: still masked
            value = value.astype(np.float32) * np.float32(op.multiplier)
        value = Frame.of(shape, stage, canonical).bring(value, np.reshape, np.broadcast_to)
        const_total = value if const_total is None else const_total + value
    causal, const_bias = split_causal(const_total, canonical[2], canonical[3])
    return MaskPlan(tuple(runtime), share_const_rows(const_bias), causal,
                    tuple(notes) + (("causal",) if causal else ()))


def read_attention_op_masks(scope: Scope, bias, causal_mode: str | None, canonical) -> MaskPlan:
    """The masks of ``R.nn.attention`` / ``attention_bias``: the ``bias`` operand (or None) and the
    ``causal_mask`` attribute (None, "TopLeft" or "BottomRight"), ``canonical`` the call's [B, H, Sq, Sk]."""
    sq, sk = canonical[2], canonical[3]
    runtime, const_total, notes = [], None, []
    if bias is not None:
        shape = shape_of(bias, "the bias")
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
            runtime.append(runtime_term(scope, AddMask(bias), shape, canonical, canonical))
    causal = False
    if causal_mode is not None:
        if causal_mode == "BottomRight" and sq > sk:
            raise NotOffloadable(f"bottom-right causal mask with more queries ({sq}) than keys ({sk})")
        if causal_mode == "BottomRight" or sq == sk:
            causal = True
        else:  # top-left with Sq != Sk is not Energon's causal: a constant bias
            top_left = np.where(np.arange(sk)[None, :] > np.arange(sq)[:, None], -np.inf, 0.0)
            const_total = top_left.astype(np.float32) if const_total is None else const_total + top_left
        notes.append(f"causal {causal_mode}")
    found, const_bias = split_causal(const_total, sq, sk)
    return MaskPlan(tuple(runtime), share_const_rows(const_bias), causal or found, tuple(notes))
