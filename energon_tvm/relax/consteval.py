"""What the backend knows about a Relax expression at compile time: its value when it is computed from
constants, its static shape, and whether its query rows are provably shared.

Exporters build causal masks and scale factors out of constants (``where(tril(ones), 0, -inf)``,
``sqrt(64)``, ...) that TVM leaves as ops, not folded constants. Recognising them (a causal mask needs no
bias tensor; a scale must be one number) needs their values at compile time. This module owns that: a
tiny interpreter over the Relax ops masks are made of, reading through variable bindings with a caller
supplied ``resolve``. It never builds or runs TVM code, and it gives up (returns None) on anything it
does not know, on non-constant leaves and on tensors too large to be worth evaluating.

It also holds what the readers built on it (:mod:`.masks`, :mod:`.analysis`) share: :class:`NotOffloadable`,
the reason a site stays on the host, and the helpers that raise it (:func:`shape_of`, :func:`broadcast_shapes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.tirx import FloatImm, IntImm

#: Largest tensor (elements) evaluated; a mask bigger than this stays a runtime tensor.
MAX_ELEMENTS = 1 << 22

Resolver = Callable[[relax.Expr], "relax.Expr | None"]


def is_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def constant_array(expr) -> np.ndarray:
    return expr.value.numpy()


def static_shape(expr) -> tuple[int, ...] | None:
    """The shape of a tensor-typed expression as ints, or None if any dim is symbolic/unknown."""
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    dims = []
    for dim in shape.values:
        if not isinstance(dim, IntImm):
            return None
        dims.append(int(dim.value))
    return tuple(dims)


class NotOffloadable(Exception):
    """Internal: the subgraph cannot go to Energon; ``str(err)`` is the reason for the report. Raised by
    the readers built on this module (:mod:`.masks`, :mod:`.analysis`, which re-exports it) when a fact
    Energon needs is not there: a static shape, a constant scale, a mask value."""


def op_name(call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else str(call.op)


def describe(expr) -> str:
    """``expr`` as a reason names it: its variable name, its op, or its kind."""
    return expr.name if isinstance(expr, relax.Var) else op_name(expr) if isinstance(expr, relax.Call) \
        else type(expr).__name__


def shape_of(expr, what: str) -> tuple[int, ...]:
    """The static shape of ``expr`` (``what``, for the reason), or NotOffloadable."""
    shape = static_shape(expr)
    if shape is None:
        ty = getattr(expr, "ty", None)
        raise NotOffloadable(f"dynamic shape: {what} has shape {getattr(ty, 'shape', '?')}; Energon programs "
                             f"are compiled for static shapes")
    return shape


def broadcast_shapes(a, b, what: str) -> tuple[int, ...]:
    """``a`` and ``b`` broadcast together, or NotOffloadable naming ``what``."""
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise NotOffloadable(f"{what}: batch dims {list(a)} and {list(b)} do not broadcast") from None


def _int_list(values) -> list[int]:
    return [int(v.value) if hasattr(v, "value") else int(v) for v in values]


def _axis(attrs) -> tuple[int, ...] | None:
    axis = getattr(attrs, "axis", None)
    if axis is None:
        return None
    return tuple(_int_list(axis)) if hasattr(axis, "__len__") else (int(axis),)


def _shape_arg(expr) -> tuple[int, ...] | None:
    if isinstance(expr, relax.ShapeExpr):
        try:
            return tuple(_int_list(expr.values))
        except (TypeError, ValueError, AttributeError):
            return None
    return None


def _scalar_arg(expr, evaluate) -> float | None:
    if isinstance(expr, IntImm | FloatImm):
        return expr.value
    value = evaluate(expr)
    return None if value is None or value.size != 1 else value.reshape(()).item()


_BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.power": np.power, "relax.maximum": np.maximum,
    "relax.minimum": np.minimum, "relax.less": np.less, "relax.greater": np.greater,
    "relax.less_equal": np.less_equal, "relax.greater_equal": np.greater_equal,
    "relax.equal": np.equal, "relax.not_equal": np.not_equal, "relax.logical_and": np.logical_and,
    "relax.logical_or": np.logical_or, "relax.bitwise_and": np.bitwise_and,
    "relax.bitwise_or": np.bitwise_or,
}
_UNARY = {
    "relax.logical_not": np.logical_not, "relax.negative": np.negative, "relax.sqrt": np.sqrt,
    "relax.rsqrt": lambda x: 1.0 / np.sqrt(x), "relax.exp": np.exp, "relax.isinf": np.isinf,
    "relax.isnan": np.isnan, "relax.abs": np.abs, "relax.bitwise_not": np.invert,
}
_REDUCE = {"relax.max": np.max, "relax.min": np.min, "relax.sum": np.sum}


class ConstEvaluator:
    """Evaluates Relax expressions built only from constants; ``overrides`` pins chosen expressions
    to given arrays (used to probe what a mask-guard computes for synthetic scores)."""

    def __init__(self, resolve: Resolver, overrides: Mapping | None = None):
        self.resolve = resolve
        self.overrides = dict(overrides or {})
        self.memo: dict = {}

    def __call__(self, expr) -> np.ndarray | None:
        for key, value in self.overrides.items():
            if key.same_as(expr):
                return value
        if expr in self.memo:
            return self.memo[expr]
        self.memo[expr] = None  # cycle guard (bindings cannot be cyclic, but be safe)
        value = self._eval(expr)
        if value is not None and value.size > MAX_ELEMENTS:
            value = None
        self.memo[expr] = value
        return value

    def _eval(self, expr) -> np.ndarray | None:
        if is_constant(expr):
            return constant_array(expr)
        if isinstance(expr, relax.Var):
            bound = self.resolve(expr)
            return None if bound is None else self(bound)
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return None
        try:
            return self._eval_call(expr.op.name, expr)
        except (ValueError, TypeError, IndexError, AttributeError, OverflowError):
            return None

    def _eval_call(self, name, call) -> np.ndarray | None:
        args, attrs = call.args, call.attrs
        if name in _BINARY:
            a, b = self(args[0]), self(args[1])
            if a is None or b is None:
                return None
            with np.errstate(all="ignore"):
                return np.asarray(_BINARY[name](a, b))
        if name in _UNARY:
            a = self(args[0])
            if a is None:
                return None
            with np.errstate(all="ignore"):
                return np.asarray(_UNARY[name](a))
        if name in _REDUCE:
            a = self(args[0])
            if a is None:
                return None
            axis = _axis(attrs)
            return np.asarray(_REDUCE[name](a, axis=axis, keepdims=bool(attrs.keepdims)))
        if name == "relax.where":
            c, x, y = (self(a) for a in args)
            return None if c is None or x is None or y is None else np.where(c.astype(bool), x, y)
        if name == "relax.astype":
            a = self(args[0])
            return None if a is None else a.astype(str(attrs.dtype))
        if name in ("relax.triu", "relax.tril"):
            a = self(args[0])
            k = int(_scalar_arg(args[1], self)) if len(args) > 1 else 0
            if a is None:
                return None
            return np.triu(a, k) if name == "relax.triu" else np.tril(a, k)
        if name in ("relax.broadcast_to", "relax.reshape"):
            a, shape = self(args[0]), _shape_arg(args[1])
            if a is None or shape is None:
                return None
            return np.broadcast_to(a, shape).copy() if name == "relax.broadcast_to" else a.reshape(shape)
        if name == "relax.permute_dims":
            a = self(args[0])
            axes = None if attrs.axes is None else _int_list(attrs.axes)
            return None if a is None else np.transpose(a, axes)
        if name == "relax.expand_dims":
            a = self(args[0])
            if a is None:
                return None
            for ax in sorted(_axis(attrs)):
                a = np.expand_dims(a, ax)
            return a
        if name == "relax.squeeze":
            a = self(args[0])
            return None if a is None else np.squeeze(a, _axis(attrs))
        if name in ("relax.full", "relax.full_like", "relax.zeros_like", "relax.ones_like",
                    "relax.zeros", "relax.ones"):
            return self._eval_fill(name, call)
        return self._eval_indexing(name, call)

    def _eval_indexing(self, name, call) -> np.ndarray | None:
        """The index arithmetic torch.export builds its masks with (arange, slices, cumsum, gathers)."""
        args, attrs = call.args, call.attrs
        if name == "relax.arange":
            start, end, step = (_scalar_arg(a, self) for a in args)
            if None in (start, end, step) or abs((end - start) / step) > MAX_ELEMENTS:
                return None
            return np.arange(start, end, step, dtype=str(attrs.dtype))
        if name == "relax.strided_slice":
            a = self(args[0])
            if a is None or not all(isinstance(t, relax.Tuple) for t in args[1:]):
                return None
            axes, begin, end = (_int_list(t.fields) for t in args[1:4])
            strides = _int_list(args[4].fields) if len(args) > 4 else [1] * len(axes)
            index = [slice(None)] * a.ndim
            for ax, b, e, st in zip(axes, begin, end, strides):
                index[ax] = slice(b, e, st)
            return a[tuple(index)]
        if name == "relax.concat":
            if not isinstance(args[0], relax.Tuple):
                return None
            parts = [self(f) for f in args[0].fields]
            return None if any(p is None for p in parts) else np.concatenate(parts, axis=int(attrs.axis))
        if name == "relax.cumsum":
            a = self(args[0])
            if a is None:
                return None
            out = np.cumsum(a, axis=None if attrs.axis is None else int(attrs.axis))
            if bool(attrs.exclusive):
                out = out - a
            return out.astype(str(attrs.dtype) if attrs.dtype is not None else a.dtype)
        if name == "relax.index_tensor":
            a = self(args[0])
            if a is None or not isinstance(args[1], relax.Tuple):
                return None
            indices = [self(f) for f in args[1].fields]
            return None if any(i is None for i in indices) else a[tuple(indices)]
        return None

    def _eval_fill(self, name, call) -> np.ndarray | None:
        args, attrs = call.args, call.attrs
        dtype = getattr(attrs, "dtype", None)
        if name in ("relax.full_like", "relax.zeros_like", "relax.ones_like"):
            shape = static_shape(args[0])
            like = getattr(args[0].ty, "dtype", None)
        else:
            shape = _shape_arg(args[0])
            like = None
        if shape is None or int(np.prod(shape)) > MAX_ELEMENTS:
            return None
        if name in ("relax.full", "relax.full_like"):
            fill = self(args[1])
            if fill is None:
                return None
            dtype = dtype or like or fill.dtype
            return np.full(shape, fill.reshape(()), dtype=str(dtype))
        value = 0 if "zeros" in name else 1
        return np.full(shape, value, dtype=str(dtype or like or "float32"))


def evaluate(expr, resolve: Resolver, overrides: Mapping | None = None) -> np.ndarray | None:
    """The value of ``expr`` if it is computed from constants only, else None."""
    return ConstEvaluator(resolve, overrides)(expr)


_ELEMENTWISE = set(_BINARY) | set(_UNARY) | {"relax.where", "relax.astype"}


def rows_shared(expr, resolve: Resolver, max_depth: int = 64) -> bool:
    """Whether ``expr``, broadcast against scores [..., Sq, Sk], has the same value in every query row
    (axis -2), so that one row can stand for all of them (a padding mask expanded to [B, 1, Sq, Sk] by
    the exporter). Proven, never guessed: from a shape whose axis -2 is 1 (or absent), from a constant's
    values, or through elementwise ops whose operands all qualify; anything else is not shared."""
    evaluator = ConstEvaluator(resolve)

    def shared(e, depth: int) -> bool:
        shape = static_shape(e)
        if shape is not None and (len(shape) < 2 or shape[-2] == 1):
            return True
        if depth > max_depth:
            return False
        value = evaluator(e)
        if value is not None:
            return value.ndim < 2 or bool(np.all(value == value[..., :1, :]))
        if isinstance(e, relax.Var):
            bound = resolve(e)
            return bound is not None and shared(bound, depth + 1)
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in _ELEMENTWISE:
            return all(shared(a, depth + 1) for a in e.args)
        return False

    return shared(expr, 0)
