"""Finding every attention-shaped site of a module, offloadable or not, so the report can say why a
site stayed on the host even when no pattern matched it (a sigmoid instead of a softmax, ...).

A site is an ``R.nn.attention*`` call, or an *output matmul* ``matmul(P, V)`` whose left operand is
computed (through at most :data:`MAX_DEPTH` ops and no other matmul) from a *score matmul*
``matmul(A, B)``, where A, B, P and V are all activations (not computed from weights alone) of rank >= 3.
That keeps the projections and feed-forward layers out: one operand of theirs is a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from .analysis import ATTENTION_OPS, op_name
from .consteval import is_constant

MAX_DEPTH = 12
#: Ops that are part of every attention block (or of the mask) and say nothing about why a site failed.
_ORDINARY = {"relax.matmul", "relax.multiply", "relax.divide", "relax.add", "relax.reshape",
             "relax.permute_dims", "relax.broadcast_to", "relax.astype", "relax.where", "relax.isnan"}


@dataclass(frozen=True)
class Candidate:
    """An attention-shaped site: the output variable's name, its function, and the ops seen between
    the score matmul and the output matmul."""

    site: str
    function: str
    ops: tuple[str, ...]
    kind: str  # "decomposed" / "attention_op"

    def unmatched_reason(self) -> str:
        """Why no pattern can have matched this site, as precisely as the ops on its path say."""
        if self.kind == "attention_op":
            return f"{self.ops[0]} is not supported by the energon patterns"
        if "relax.nn.softmax" not in self.ops:
            found = [op for op in self.ops if op not in _ORDINARY] or list(self.ops)
            return (f"no softmax between the score and output matmuls (the scores are normalised by "
                    f"{', '.join(found) or 'nothing'}); Energon computes softmax attention")
        odd = [op for op in self.ops if op not in _ORDINARY | {"relax.nn.softmax"}]
        extra = f" ({', '.join(odd)} on the path)" if odd else ""
        return f"no energon pattern matches the ops between the score and output matmuls{extra}"


def _rank(expr) -> int:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    return len(shape.values) if shape is not None and hasattr(shape, "values") else -1


class _Weights:
    """Tells weights from activations: constants, the parameters after ``num_input`` (weights kept as
    inputs by ``from_onnx(keep_params_in_input=True)``) and anything computed from those alone."""

    def __init__(self, func, bindings: dict):
        num_input = func.attrs["num_input"] if func.attrs is not None and "num_input" in func.attrs else None
        params = list(func.params)
        self.weights = set(params[int(num_input):]) if num_input is not None else set()
        self.bindings = bindings
        self.memo: dict = {}

    def __call__(self, expr, depth: int = 0) -> bool:
        if is_constant(expr) or isinstance(expr, relax.ShapeExpr):
            return True
        if not isinstance(expr, relax.Var) or depth > 32:
            return False
        if expr in self.weights:
            return True
        if expr not in self.memo:
            value = self.bindings.get(expr)
            self.memo[expr] = isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and all(
                self(a, depth + 1) for a in value.args)
        return self.memo[expr]


def _find_score_matmul(bindings: dict, start, is_activation):
    """Breadth-first from ``start`` through non-constant inputs, not crossing a matmul."""
    frontier, seen, ops = [start], set(), []
    for _ in range(MAX_DEPTH):
        nxt = []
        for expr in frontier:
            value = bindings.get(expr) if isinstance(expr, relax.Var) else None
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or expr in seen:
                continue
            seen.add(expr)
            name = op_name(value)
            if name == "relax.matmul":
                if all(is_activation(a) for a in value.args):
                    return value, tuple(dict.fromkeys(ops))
                continue
            ops.append(name)
            nxt.extend(a for a in value.args if isinstance(a, relax.Var))
        frontier = nxt
    return None, ()


def _bindings(func) -> list:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for block in body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]


def discover(mod: tvm.IRModule) -> list[Candidate]:
    """Every attention-shaped site of every (non-composite) Relax function, in program order."""
    found = []
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function) or (func.attrs is not None and (
                "Composite" in func.attrs or "Codegen" in func.attrs)):
            continue
        bindings = _bindings(func)
        values = {b.var: b.value for b in bindings}
        weights = _Weights(func, values)

        def is_activation(expr, weights=weights):
            return _rank(expr) >= 3 and not weights(expr)

        for binding in bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            name = op_name(value)
            if name in ATTENTION_OPS or name == "relax.nn.attention_var_len":
                found.append(Candidate(binding.var.name, gvar.name_hint, (name,), "attention_op"))
            elif name == "relax.matmul" and all(is_activation(a) for a in value.args):
                score, ops = _find_score_matmul(values, value.args[0], is_activation)
                if score is not None:
                    found.append(Candidate(binding.var.name, gvar.name_hint, ops, "decomposed"))
    return found
