"""The mask algebra (``energon_tvm.relax.masks``) on small hand-built graphs: each kind of term, the
pieces of a combined mask, constants folded and recognised as causal, rows shared by every query, the
frames a term is carried to [B, H, Sq, Sk] by, and the masks that must be refused."""

from __future__ import annotations

import numpy as np
import pytest

B, H, S = 2, 2, 8
CANONICAL = (B, H, S, S)
MIN = float(np.finfo(np.float32).min)


def _var(name, shape, dtype="float32"):
    from tvm import relax

    return relax.Var(name, relax.TensorType(tuple(shape), dtype))


def _graph(params, body):
    """Emit ``body(bb, *params)`` (a dict of named expressions, ``"out"`` among them) in a dataflow
    block; returns the dict and a Scope over the function's bindings."""
    from tvm import relax

    from energon_tvm.relax.analysis import Scope

    bb = relax.BlockBuilder()
    with bb.function("main", list(params)):
        with bb.dataflow():
            named = body(bb, *params)
            out = bb.emit_output(named["out"])
        bb.emit_func_output(out)
    func = bb.get()["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    return named, Scope(bindings, bindings.get)


def _const(value, dtype="float32"):
    from tvm import relax

    return relax.const(np.asarray(value, dtype=dtype))


def _masked(mask_params, apply, stage=CANONICAL):
    """Scores of shape ``stage`` masked by ``apply(bb, scores, *mask_params) -> (mask, the op's output,
    multiplier)``; returns ([the MaskOp], a Scope over the graph)."""
    from energon_tvm.relax.masks import MaskOp

    scores = _var("scores", stage)

    def body(bb, scores, *masks):
        mask, out, multiplier = apply(bb, scores, *masks)
        return {"op": MaskOp(mask, out, scores, multiplier), "out": out}

    named, scope = _graph([scores, *mask_params], body)
    return [named["op"]], scope


def _add(build=None, multiplier=1.0):
    """``scores + mask``: ``build(bb, *mask_params)`` emits the mask, else it is the first parameter."""
    from tvm import relax

    from energon_tvm.relax.masks import AddMask

    def apply(bb, scores, *params):
        mask = build(bb, *params) if build else params[0]
        return AddMask(mask), bb.emit(relax.op.add(scores, mask)), multiplier
    return apply


def _where(cond_of, fill=-np.inf, keep_when=True):
    """``where(cond, scores, fill)`` (``keep_when``) or ``where(cond, fill, scores)``, with
    ``cond_of(bb, *mask_params)`` emitting the condition; ``fill`` a number or an expression."""
    from tvm import relax

    from energon_tvm.relax.masks import WhereMask

    def apply(bb, scores, *params):
        cond = cond_of(bb, *params)
        fill_expr = fill if isinstance(fill, relax.Expr) else _const(fill)
        call = relax.op.where(cond, scores, fill_expr) if keep_when else relax.op.where(cond, fill_expr, scores)
        return WhereMask(cond, fill_expr, keep_when), bb.emit(call), 1.0
    return apply


def _param(bb, p, *_):
    return p


def test_an_added_run_time_tensor_is_one_term():
    from energon_tvm.relax.masks import AddMask, Frame, read_masks

    mask = _var("mask", (B, 1, 1, S))
    ops, scope = _masked([mask], _add())
    plan = read_masks(scope, ops, CANONICAL)
    (term,) = plan.runtime
    assert isinstance(term.mask, AddMask) and term.mask.tensor.same_as(mask)
    assert (term.shape, term.frame, term.multiplier, term.rows_shared) == \
        ((B, 1, 1, S), Frame("direct", CANONICAL, (B, 1, 1, S)), 1.0, False)
    assert (plan.const_bias, plan.causal, plan.notes, plan.bias_shape) == (None, False, ("mask add",), (B, 1, 1, S))


@pytest.mark.parametrize("keep_when", [True, False])
def test_a_run_time_where_is_one_term(keep_when):
    from energon_tvm.relax.masks import WhereMask, read_masks

    keys = _var("keys", (B, 1, 1, S), "bool")
    ops, scope = _masked([keys], _where(_param, fill=-1e9, keep_when=keep_when))
    plan = read_masks(scope, ops, CANONICAL)
    (term,) = plan.runtime
    assert isinstance(term.mask, WhereMask) and term.mask.cond.same_as(keys)
    assert term.mask.keep_when == keep_when
    assert (term.shape, term.frame.rule, plan.notes, plan.bias_shape) == \
        ((B, 1, 1, S), "direct", ("where mask",), (B, 1, 1, S))


def test_additive_form_of_a_where():
    """``where(c, scores, fill)`` adds ``fill`` where c is False; ``where(c, fill, scores)`` where it is True."""
    from energon_tvm.relax.masks import AddMask, WhereMask

    cond = np.array([True, False, True])
    fill = np.float32(-1e9)

    def zero_of(_):
        return np.float32(0)

    kept = WhereMask(None, None, keep_when=True).additive(cond, fill, where=np.where, zero_of=zero_of)
    filled = WhereMask(None, None, keep_when=False).additive(cond, fill, where=np.where, zero_of=zero_of)
    np.testing.assert_array_equal(kept, [0, -1e9, 0])
    np.testing.assert_array_equal(filled, [-1e9, 0, -1e9])
    assert AddMask(None).additive(cond) is cond


def test_constants_are_folded_with_their_multiplier():
    """A constant added before a scale of 0.5 folds into the bias times 0.5; a constant where() folds
    into its additive form."""
    from energon_tvm.relax.masks import read_masks

    rng = np.random.default_rng(0)
    bias = rng.standard_normal((S, S)).astype(np.float32)
    ops, scope = _masked([], _add(lambda bb: _const(bias), multiplier=0.5))
    plan = read_masks(scope, ops, CANONICAL)
    assert plan.runtime == () and plan.notes == ("mask add",)
    np.testing.assert_allclose(plan.const_bias, bias * 0.5)

    allowed = rng.random((1, S)) < 0.5
    allowed[0, 0] = True
    ops, scope = _masked([], _where(lambda bb: _const(allowed, "bool"), fill=-1e9))
    plan = read_masks(scope, ops, CANONICAL)
    np.testing.assert_array_equal(plan.const_bias, np.where(allowed, 0, -1e9).astype(np.float32))
    assert plan.bias_shape == (1, S) and not plan.causal


def test_a_constant_causal_pattern_becomes_the_flag():
    from energon_tvm.relax.masks import read_masks

    lower = np.tril(np.ones((S, S), bool))
    ops, scope = _masked([], _where(lambda bb: _const(lower, "bool")))
    plan = read_masks(scope, ops, CANONICAL)
    assert plan.causal and plan.const_bias is None and plan.runtime == ()
    assert plan.notes == ("where mask", "causal") and plan.bias_shape is None
    # shifted by one key it is not Energon's causal mask: it stays a bias
    ops, scope = _masked([], _where(lambda bb: _const(np.tril(np.ones((S, S), bool), 1), "bool")))
    plan = read_masks(scope, ops, CANONICAL)
    assert not plan.causal and plan.bias_shape == (S, S)


def test_a_combined_mask_is_read_as_its_pieces():
    """GPT-2: ``where(causal & keys, scores, -inf)``: the constant piece is the causal flag, the run-time
    piece a padding row. The same in additive form with ``|``: ``scores + where(upper | pad, -1e9, 0)``."""
    from tvm import relax

    from energon_tvm.relax.masks import WhereMask, mask_pieces, read_masks

    lower = _const(np.tril(np.ones((1, 1, S, S), bool)), "bool")
    keys = _var("keys", (B, 1, 1, S), "bool")
    ops, scope = _masked([keys], _where(lambda bb, k: bb.emit(relax.op.logical_and(lower, k))))
    first, second = mask_pieces(scope, ops[0].mask)
    assert isinstance(first, WhereMask) and first.cond.same_as(lower) and second.cond.same_as(keys)
    plan = read_masks(scope, ops, CANONICAL)
    assert plan.causal and plan.const_bias is None and plan.bias_shape == (B, 1, 1, S)
    assert plan.notes == ("where mask", "where mask", "causal")

    upper = _const(~np.tril(np.ones((1, 1, S, S), bool)), "bool")

    def padded(bb, pad):
        cond = bb.emit(relax.op.logical_or(upper, pad))
        return bb.emit(relax.op.where(cond, _const(-1e9), _const(0.0)))

    ops, scope = _masked([_var("pad", (B, 1, 1, S), "bool")], _add(padded))
    pieces = mask_pieces(scope, ops[0].mask)
    assert [type(p).__name__ for p in pieces] == ["WhereMask", "WhereMask"]
    assert not any(p.keep_when for p in pieces)
    plan = read_masks(scope, ops, CANONICAL)
    assert plan.causal and plan.notes == ("mask add", "mask add", "causal")


def test_a_mask_with_no_constant_part_or_no_run_time_part_is_one_piece():
    from tvm import relax

    from energon_tvm.relax.masks import mask_pieces

    a, b = _var("a", (B, 1, 1, S), "bool"), _var("b", (B, 1, 1, S), "bool")
    ops, scope = _masked([a, b], _where(lambda bb, x, y: bb.emit(relax.op.logical_and(x, y))))
    assert mask_pieces(scope, ops[0].mask) == [ops[0].mask]
    both = _const(np.ones((1, 1, S, S), bool), "bool")
    ops, scope = _masked([], _where(lambda bb: bb.emit(relax.op.logical_and(both, both))))
    assert mask_pieces(scope, ops[0].mask) == [ops[0].mask]
    # and-ed conditions only split a keep-where (an or-ed one masks more than its pieces would)
    ops, scope = _masked([a], _where(lambda bb, x: bb.emit(relax.op.logical_or(both, x))))
    assert mask_pieces(scope, ops[0].mask) == [ops[0].mask]


def test_rows_every_query_shares_become_one_row():
    """A run-time [B, 1, S, S] mask computed elementwise from a row and a constant with equal rows is
    passed as that one row; a run-time tile with nothing to prove its rows equal stays a tile."""
    from tvm import relax

    from energon_tvm.relax.masks import Frame, read_masks

    zeros = _const(np.zeros((1, 1, S, S)))
    ops, scope = _masked([_var("row", (B, 1, 1, S))], _add(lambda bb, row: bb.emit(relax.op.add(row, zeros))))
    (term,) = read_masks(scope, ops, CANONICAL).runtime
    assert term.rows_shared and term.shape == (B, 1, 1, S)
    assert term.frame == Frame("direct", (B, H, 1, S), (B, 1, 1, S))

    def shared_cond(bb, row):
        return bb.emit(relax.op.greater(bb.emit(relax.op.add(row, zeros)), _const(-0.5)))

    ops, scope = _masked([_var("row", (B, 1, 1, S))], _where(shared_cond))
    (term,) = read_masks(scope, ops, CANONICAL).runtime
    assert term.rows_shared and term.frame.shape == (B, 1, 1, S)

    ops, scope = _masked([_var("tile", (B, 1, S, S))], _add())
    plan = read_masks(scope, ops, CANONICAL)
    (term,) = plan.runtime
    assert not term.rows_shared and plan.bias_shape == (B, 1, S, S)


@pytest.mark.parametrize("term, stage, canonical, rule, shape", [
    ((B, 1, 1, S), CANONICAL, CANONICAL, "direct", (B, 1, 1, S)),
    ((B * H, 1, S), (B * H, S, S), (1, B * H, S, S), "direct", (B * H, 1, S)),  # flattened scores
    ((1, 1, S), (B * H, S, S), CANONICAL, "tail", (1, S)),
    ((B * H, 1, S), (B * H, S, S), CANONICAL, "full", CANONICAL),
])
def test_frames(term, stage, canonical, rule, shape):
    from energon_tvm.relax.masks import Frame

    frame = Frame.of(term, stage, canonical)
    assert (frame.rule, frame.stage, frame.shape) == (rule, stage, shape)
    value = np.random.default_rng(1).standard_normal(term)
    brought = frame.bring(value, np.reshape, np.broadcast_to)
    assert brought.shape == shape
    # the term in the canonical frame adds what it added to the scores where it applied
    np.testing.assert_array_equal(np.broadcast_to(brought, canonical).reshape(np.broadcast_shapes(stage, term)),
                                  np.broadcast_to(value, np.broadcast_shapes(stage, term)))


def test_equal_constant_rows_become_one_row():
    from energon_tvm.relax.masks import share_const_rows

    rows = np.broadcast_to(np.arange(S, dtype=np.float32), (H, S, S))
    np.testing.assert_array_equal(share_const_rows(rows), rows[:, :1, :])
    tile = np.triu(np.ones((S, S), np.float32))
    assert share_const_rows(tile) is tile
    assert share_const_rows(None) is None


REFUSED = {
    "fill above the mask threshold":
        "a where() before the softmax replaces scores with -1, which is not a mask value (<= -10000)",
    "fill known at run time only": "a where() before the softmax fills with f, not a constant mask value",
    "mask broadcasting the scores": "the mask [2, 2, 16, 8] broadcasts the scores from [2, 2, 1, 8] to [2, 2, 16, 8]",
}


@pytest.mark.parametrize("case", REFUSED)
def test_masks_that_are_refused(case):
    from energon_tvm.relax.analysis import NotOffloadable
    from energon_tvm.relax.masks import read_masks

    keys = _var("keys", (B, 1, 1, S), "bool")
    if case == "fill above the mask threshold":
        ops, scope = _masked([keys], _where(_param, fill=-1.0))
    elif case == "fill known at run time only":
        fill = _var("f", (1,))
        ops, scope = _masked([keys, fill], _where(_param, fill=fill))
    else:
        ops, scope = _masked([_var("mask", (B, H, 2 * S, S))], _add(), stage=(B, H, 1, S))
    with pytest.raises(NotOffloadable) as err:
        read_masks(scope, ops, CANONICAL)
    assert str(err.value) == REFUSED[case]


def test_attention_op_masks():
    """R.nn.attention: the bias operand and the causal_mask attribute; top-left with Sq != Sk is a
    constant bias, bottom-right is the flag (and impossible with more queries than keys)."""
    from energon_tvm.relax.analysis import NotOffloadable, Scope
    from energon_tvm.relax.masks import read_attention_op_masks

    scope = Scope({}, lambda _: None)
    bias = _var("bias", (B, 1, 1, S))
    plan = read_attention_op_masks(scope, bias, "TopLeft", (B, H, 6, S))
    assert not plan.causal and plan.notes == ("bias", "causal TopLeft") and plan.bias_shape == (B, 1, 6, S)
    np.testing.assert_array_equal(plan.const_bias <= -1e4, np.arange(S)[None, :] > np.arange(6)[:, None])
    plan = read_attention_op_masks(scope, None, "BottomRight", (B, H, 6, S))
    assert plan.causal and plan.bias_shape is None and plan.notes == ("causal BottomRight",)
    assert read_attention_op_masks(scope, None, "TopLeft", CANONICAL).causal
    assert read_attention_op_masks(scope, _const(np.triu(np.full((S, S), MIN), 1)), None, CANONICAL).causal
    with pytest.raises(NotOffloadable, match=r"bottom-right causal mask with more queries \(8\) than keys \(6\)"):
        read_attention_op_masks(scope, None, "BottomRight", (B, H, S, 6))
    with pytest.raises(NotOffloadable, match=r"bias shape \[3, 1, 1, 8\] does not broadcast"):
        read_attention_op_masks(scope, _var("bias", (3, 1, 1, S)), None, CANONICAL)


def test_the_plan_holds_the_workload_once(dense_params):
    """AttentionPlan: the shape, dtype, scale and masks it was read with are the workload's."""
    from relax_graphs import attention_op_module

    from energon_tvm.relax.analysis import AttentionShape, Scope, analyze

    mod, _ = attention_op_module(bias=True, causal="BottomRight", seq_q=6)
    func = mod["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    root = next(v for v in bindings.values() if getattr(v.op, "name", "") == "relax.nn.attention_bias")
    plan = analyze(Scope(bindings, bindings.get), root)
    assert plan.shape == AttentionShape(B, H, 6, S, 16)
    assert (plan.batch, plan.heads, plan.seq_q, plan.seq_k, plan.head_dim) == (B, H, 6, S, 16)
    w = plan.workload(dense_params)
    assert (w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim, w.dtype) == (B, H, 6, S, 16, plan.dtype)
    assert (w.causal, w.bias_shape, w.scale, w.params) == (True, (B, 1, 1, S), plan.scale, dense_params)
    assert w.mask_kind == "causal+padding" and plan.form == "R.nn.attention, BSNH, bias, causal BottomRight"
