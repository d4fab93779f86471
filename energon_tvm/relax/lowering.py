"""Lowering the fused ``energon`` functions into calls of the runtime bridge.

After FuseOpsByPattern + MergeCompositeFunctions, each offloaded site is a call to a function with
``Codegen="energon"`` whose body calls one or more ``Composite`` functions. This pass inlines those
calls back into the caller and replaces each composite by

    q, k, v, [bias]  <- layout ops that bring the model's tensors to Q/K/V [B,H,S,D], bias -> [B,H,Sq,Sk]
    out              <- R.call_dps_packed("energon.run_attention", (q, k, v, [bias], meta, blob), [B,H,Sq,D])
    result           <- reshape / permute of out back to the model's layout

where ``meta`` is a string (JSON: site name + workload) and ``blob`` the call's program as a uint8
constant, so an exported library carries both. The layout ops are ordinary Relax ops compiled for the
host; adjacent permutes are composed (K^T's transpose usually cancels the exporter's own), so the bridge
always receives BHSD tensors and never needs layout information.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import relax as R

from ..isa.errors import EnergonError
from ..schedules.workload import AttentionWorkload
from .analysis import AttentionPlan, NotOffloadable, Scope, analyze, op_name
from .bridge import BRIDGE_FUNC
from .checks import SITE_ATTR, PartitionSession
from .consteval import static_shape


class _Emitter:
    """Emits layout ops through a block builder, folding no-ops and composing adjacent permutes."""

    def __init__(self, builder, lookup):
        self.bb = builder
        self.lookup = lookup

    def _producer(self, expr, name):
        if isinstance(expr, relax.Var):
            value = self.lookup(expr)
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and op_name(value) == name:
                return value
        return None

    def emit(self, expr):
        return self.bb.emit(expr)

    def permute(self, x, axes):
        axes = list(axes)
        inner = self._producer(x, "relax.permute_dims")
        if inner is not None:
            first = inner.attrs.axes
            first = list(range(len(axes))) if first is None else [int(a) for a in first]
            axes = [first[a] for a in axes]
            x = inner.args[0]
        if axes == list(range(len(axes))):
            return x
        return self.emit(relax.op.permute_dims(x, axes))

    def reshape(self, x, shape):
        shape = tuple(int(s) for s in shape)
        if static_shape(x) == shape:
            return x
        inner = self._producer(x, "relax.reshape")
        if inner is not None:
            x = inner.args[0]
            if static_shape(x) == shape:
                return x
        return self.emit(relax.op.reshape(x, shape))

    def broadcast_to(self, x, shape):
        shape = tuple(int(s) for s in shape)
        if static_shape(x) == shape:
            return x
        return self.emit(relax.op.broadcast_to(x, shape))

    def replay(self, x, steps):
        for op, arg in steps:
            if op == "permute_dims":
                x = self.permute(x, arg if arg is not None else range(len(static_shape(x)))[::-1])
            elif op == "reshape":
                x = self.reshape(x, arg)
            else:
                x = self.broadcast_to(x, arg)
        return x


def _to_canonical(em: _Emitter, x, batch, tail, canonical_batch):
    """[*b, r, c] -> broadcast to [*batch, r, c] -> reshape to [B, H, r, c]."""
    x = em.broadcast_to(x, tuple(batch) + tuple(tail))
    return em.reshape(x, tuple(canonical_batch) + tuple(tail))


def _first_row(em: _Emitter, x):
    """``x[..., 0:1, :]`` of a tensor whose query rows are all equal (a no-op if it has one row)."""
    shape = static_shape(x)
    if shape is None or len(shape) < 2 or shape[-2] == 1:
        return x
    return em.emit(relax.op.strided_slice(x, axes=[len(shape) - 2], begin=[0], end=[1]))


def _emit_bias(em: _Emitter, plan: AttentionPlan, subst):
    """The call's bias: each run-time term as the model computes it (its first row if its rows are
    shared), in float32, scaled and brought to the canonical frame, plus the folded constant."""
    def where(cond, a, b):
        return em.emit(relax.op.where(cond, a, b))

    def zero_of(fill):
        return relax.const(0.0, str(fill.ty.dtype))

    parts = []
    for term in plan.runtime_terms:
        shared = term.rows_shared
        operands = [_first_row(em, subst(x)) if shared else subst(x) for x in term.mask.operands]
        t = term.mask.additive(*operands, where=where, zero_of=zero_of)
        if str(t.ty.dtype) != "float32":
            t = em.emit(relax.op.astype(t, "float32"))
        if term.multiplier != 1.0:
            t = em.emit(relax.op.multiply(t, relax.const(term.multiplier, "float32")))
        parts.append(term.frame.bring(t, em.reshape, em.broadcast_to))
    if plan.const_bias is not None:
        parts.append(relax.const(np.ascontiguousarray(plan.const_bias, dtype=np.float32)))
    if not parts:
        return None
    bias = parts[0]
    for part in parts[1:]:
        bias = em.emit(relax.op.add(bias, part))
    return bias


def emit_bridge_call(em: _Emitter, plan: AttentionPlan, subst, meta: str, blob: bytes):
    """Emit the bridge call for ``plan``; returns the expression replacing the site's output."""
    b, h, sq, sk, d = plan.batch, plan.heads, plan.seq_q, plan.seq_k, plan.head_dim
    if plan.kind == "attention_op":  # BSNH in, BSNH out
        q = em.permute(subst(plan.q.base), (0, 2, 1, 3))
        k = em.permute(subst(plan.k.base), (0, 2, 1, 3))
        v = em.permute(subst(plan.v.base), (0, 2, 1, 3))
    else:
        q = em.replay(subst(plan.q.base), plan.q.steps)
        kt = em.replay(subst(plan.k.base), plan.k.steps)
        v = em.replay(subst(plan.v.base), plan.v.steps)
        q = _to_canonical(em, q, plan.score_batch, (sq, d), (b, h))
        kt = _to_canonical(em, kt, plan.score_batch, (d, sk), (b, h))
        k = em.permute(kt, (0, 1, 3, 2))
        v = _to_canonical(em, v, plan.out_batch, (sk, d), (b, h))
    bias = _emit_bias(em, plan, subst)
    args = [q, k, v] + ([] if bias is None else [bias])
    args += [R.str(meta), relax.const(np.frombuffer(blob, dtype=np.uint8).copy())]
    out = em.emit(relax.call_dps_packed(BRIDGE_FUNC, relax.Tuple(args),
                                        relax.TensorType((b, h, sq, d), plan.dtype)))
    if plan.kind == "attention_op":
        return em.permute(out, (0, 2, 1, 3))
    return em.reshape(out, plan.out_shape)


def _bindings(func) -> list:
    return [b for block in func.body.blocks for b in block.bindings]


@mutator
class EnergonLowering(PyExprMutator):
    """Replaces calls of ``Codegen="energon"`` functions by bridge calls (see the module docstring)."""

    def __init__(self, mod: tvm.IRModule, session: PartitionSession):
        super().__init__(mod)
        self.mod_ = mod
        self.session = session
        self.lowered: list[str] = []

    def transform(self) -> tvm.IRModule:
        for gvar, func in self.mod_.functions.items():
            if not isinstance(func, relax.Function) or is_energon_function(func):
                continue
            self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, relax.GlobalVar):
            func = self.mod_[call.op]
            if isinstance(func, relax.Function) and is_energon_function(func):
                return self._inline(func, call.args)
        return call

    def _inline(self, func, args):
        """Evaluate the energon function's body at the call site: composite calls become bridge
        calls, anything else (tuples of several outputs) is re-emitted."""
        env = {param: arg for param, arg in zip(func.params, args)}
        composites = {}

        def composite_of(op):
            if isinstance(op, relax.Var) and op in composites:
                return composites[op]
            if isinstance(op, relax.Function) and op.attrs is not None and "Composite" in op.attrs:
                return op
            return None

        def ev(expr):
            if isinstance(expr, relax.SeqExpr):
                for binding in (b for block in expr.blocks for b in block.bindings):
                    if isinstance(binding.value, relax.Function):
                        composites[binding.var] = binding.value
                    else:
                        env[binding.var] = ev(binding.value)
                return ev(expr.body)
            if isinstance(expr, relax.Var):
                return env.get(expr, expr)
            if isinstance(expr, relax.Tuple):
                return relax.Tuple([ev(f) for f in expr.fields])
            if isinstance(expr, relax.TupleGetItem):
                return self.builder_.emit(relax.TupleGetItem(ev(expr.tuple_value), expr.index))
            if isinstance(expr, relax.Call):
                composite = composite_of(expr.op)
                if composite is not None:
                    return self._lower_composite(composite, [ev(a) for a in expr.args])
                return self.builder_.emit(relax.Call(expr.op, [ev(a) for a in expr.args], expr.attrs))
            return expr

        return ev(func.body)

    def _lower_composite(self, func, args):
        site = str(func.attrs[SITE_ATTR]) if SITE_ATTR in func.attrs else None
        params = {param: arg for param, arg in zip(func.params, args)}
        inner = {b.var: b.value for b in _bindings(func)}
        root = func.body.body
        while isinstance(root, relax.Var) and root in inner:
            root = inner[root]

        def resolve(var):
            if var in inner:
                return inner[var]
            if var in params:
                return params[var]
            value = self.lookup_binding(var)
            return self.session.weights.get(var) if value is None else value

        emitted = {}

        def subst(expr):
            """A composite-internal expression at the call site (inner ops re-emitted once)."""
            if isinstance(expr, relax.Var) and expr in params:
                return params[expr]
            if isinstance(expr, relax.Var) and expr in inner:
                if expr not in emitted:
                    value = inner[expr]
                    emitted[expr] = subst(value) if isinstance(value, relax.Var) else self.builder_.emit(
                        relax.Call(value.op, [subst(a) for a in value.args], value.attrs))
                return emitted[expr]
            if isinstance(expr, relax.Tuple):
                return relax.Tuple([subst(f) for f in expr.fields])
            return expr

        try:
            plan = analyze(Scope(inner, resolve), root)
            program = self.session.compile(plan.workload(self.session.target.params_for(site)))
        except (NotOffloadable, EnergonError) as err:
            # the check accepted what the composite view rejects: keep the block on the host
            self.session.demote(site, f"could not be lowered: {err}")
            return subst(func.body.body)
        self.session.confirm(site, program)
        meta = json.dumps({"site": site, "workload": program.workload.to_dict()}, sort_keys=True)
        em = _Emitter(self.builder_, self.lookup_binding)
        result = emit_bridge_call(em, plan, subst, meta, program.blob)
        self.lowered.append(site)
        return result


def is_energon_function(func) -> bool:
    attrs = func.attrs
    return attrs is not None and "Codegen" in attrs and str(attrs["Codegen"]) == "energon"


def lower_energon_calls(mod: tvm.IRModule, session: PartitionSession) -> tuple[tvm.IRModule, list[str]]:
    """Lower every energon function call of ``mod``; drop the lowered functions. Returns the module
    and the names of the sites lowered."""
    lowering = EnergonLowering(mod, session)
    mod = lowering.transform()
    keep = {gv: f for gv, f in mod.functions.items()
            if not (isinstance(f, relax.Function) and is_energon_function(f))}
    mod = tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)
    return mod, lowering.lowered


@dataclass(frozen=True)
class BridgeCall:
    """One bridge call of a lowered module: the site, its workload and the program blob it carries."""

    site: str
    workload: AttentionWorkload
    blob: bytes


def bridge_calls(mod: tvm.IRModule) -> list[BridgeCall]:
    """Every ``energon.run_attention`` call of ``mod`` in program order, read back from the IR (what a
    packager stores next to the library, or what ``--dump-code`` prints)."""
    found = []

    @relax.expr_functor.visitor
    class _Finder(relax.PyExprVisitor):
        def visit_call_(self, call):
            func = call.args[0] if len(call.args) >= 2 else None
            if isinstance(func, relax.ExternFunc) and str(func.global_symbol) == BRIDGE_FUNC:
                fields = call.args[1].fields
                meta = json.loads(str(fields[-2].value))
                found.append(BridgeCall(str(meta["site"]), AttentionWorkload.from_dict(meta["workload"]),
                                        fields[-1].value.numpy().tobytes()))
            super().visit_call_(call)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Finder().visit_expr(func)
    return found
