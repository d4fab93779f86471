"""Relax modules built directly with ``relax.BlockBuilder``: the attention forms that do not come from
an ONNX file (TVM's own ``R.nn.attention`` ops, torch.export's batched-matmul decomposition) and small
graphs for the corner cases. Each builder returns ``(module, inputs)`` with numpy inputs in parameter
order.
"""

from __future__ import annotations

import numpy as np


def _var(name, shape, dtype="float32"):
    from tvm import relax

    return relax.Var(name, relax.TensorType(tuple(shape), dtype))


def _module(params, body):
    """A module whose ``main`` takes ``params`` and whose dataflow block ``body(bb, *params)`` emits;
    ``body`` returns the output expression (or a tuple of them)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = body(bb, *params)
            if isinstance(out, tuple):
                out = relax.Tuple(list(out))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def _inputs(params, seed=0, dtype=None):
    rng = np.random.default_rng(seed)
    out = []
    for p in params:
        shape = [int(d) for d in p.ty.shape.values]
        out.append(rng.standard_normal(shape).astype(dtype or str(p.ty.dtype)))
    return out


def attention_op_module(bias: bool = False, causal: str | None = None, seq_q: int = 6, seq_k: int = 8,
                        batch: int = 2, heads: int = 2, head_dim: int = 16, scale: float | None = None):
    """``R.nn.attention`` / ``attention_bias`` on BSNH inputs (a padding-style bias [B,1,1,Sk])."""
    from tvm import relax

    params = [_var("q", (batch, seq_q, heads, head_dim)), _var("k", (batch, seq_k, heads, head_dim)),
              _var("v", (batch, seq_k, heads, head_dim))]
    if bias:
        params.append(_var("bias", (batch, 1, 1, seq_k)))

    def body(bb, q, k, v, *rest):
        return bb.emit(relax.op.nn.attention(q, k, v, rest[0] if rest else None, scale=scale,
                                             causal_mask=causal))

    mod = _module(params, body)
    inputs = _inputs(params)
    if bias:
        inputs[3] = np.zeros_like(inputs[3])
        inputs[3][-1, ..., -2:] = -1e9
    return mod, inputs


def bmm_module(batch: int = 2, heads: int = 2, seq: int = 8, head_dim: int = 16):
    """torch.export's decomposition of SDPA with a float mask: Q and K^T scaled by D**-0.25, each
    ``reshape(broadcast_to(.))`` to [B*H, ., .], batched matmul, reshape back to 4-d, mask add, softmax,
    the all-masked-rows guard ``where(not(any(scores != -inf)), 0, p)``, batched matmul with V."""
    from tvm import relax

    b, h, s, d = batch, heads, seq, head_dim
    params = [_var("q", (b, h, s, d)), _var("k", (b, h, s, d)), _var("v", (b, h, s, d)),
              _var("mask", (b, 1, s, s))]
    root = relax.const(d ** -0.25, "float32")

    def bmm(bb, x, y, xs, ys, out4):
        x3 = bb.emit(relax.op.reshape(bb.emit(relax.op.broadcast_to(x, xs)), (b * h,) + xs[2:]))
        y3 = bb.emit(relax.op.reshape(bb.emit(relax.op.broadcast_to(y, ys)), (b * h,) + ys[2:]))
        return bb.emit(relax.op.reshape(bb.emit(relax.op.matmul(x3, y3)), out4))

    def body(bb, q, k, v, mask):
        qs = bb.emit(relax.op.multiply(q, root))
        kt = bb.emit(relax.op.multiply(bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2])), root))
        scores = bb.emit(relax.op.add(bmm(bb, qs, kt, (b, h, s, d), (b, h, d, s), (b, h, s, s)), mask))
        probs = bb.emit(relax.op.nn.softmax(scores, axis=-1))
        unmasked = bb.emit(relax.op.logical_not(bb.emit(relax.op.equal(scores, relax.const(-np.inf)))))
        any_unmasked = bb.emit(relax.op.astype(bb.emit(relax.op.max(
            bb.emit(relax.op.astype(unmasked, "int8")), axis=[-1], keepdims=True)), "bool"))
        all_masked = bb.emit(relax.op.logical_not(any_unmasked))
        zeros = bb.emit(relax.op.full_like(probs, relax.const(0.0, "float32")))
        probs = bb.emit(relax.op.where(all_masked, zeros, probs))
        return bmm(bb, probs, v, (b, h, s, s), (b, h, s, d), (b, h, s, d))

    mod = _module(params, body)
    inputs = _inputs(params)
    inputs[3] = np.zeros_like(inputs[3])
    inputs[3][-1, ..., -3:] = -np.inf
    return mod, inputs


def plain_module(dtype: str = "float32", batch: int = 1, heads: int = 2, seq: int = 8, head_dim: int = 16,
                 softmax_axis: int = -1, expose_probs: bool = False):
    """softmax(q k^T * scale) v on BNSH inputs of ``dtype``; ``expose_probs`` also returns the softmax
    (an intermediate used outside the attention block)."""
    from tvm import relax

    shape = (batch, heads, seq, head_dim)
    params = [_var(n, shape, dtype) for n in ("q", "k", "v")]

    def body(bb, q, k, v):
        kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
        scores = bb.emit(relax.op.multiply(bb.emit(relax.op.matmul(q, kt)),
                                           relax.const(head_dim ** -0.5, dtype)))
        probs = bb.emit(relax.op.nn.softmax(scores, axis=softmax_axis))
        out = bb.emit(relax.op.matmul(probs, v))
        return (out, probs) if expose_probs else out

    return _module(params, body), _inputs(params)


def two_site_module(seq: int = 8, head_dim: int = 16):
    """Two attention blocks on the same inputs: one ordinary, one normalising over the query axis."""
    from tvm import relax

    shape = (1, 2, seq, head_dim)
    params = [_var(n, shape) for n in ("q", "k", "v")]

    def attention(bb, q, k, v, axis):
        kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
        scores = bb.emit(relax.op.multiply(bb.emit(relax.op.matmul(q, kt)), relax.const(0.25)))
        return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(scores, axis=axis)), v))

    def body(bb, q, k, v):
        first = attention(bb, q, k, v, -1)
        second = attention(bb, q, k, v, 2)
        return bb.emit(relax.op.add(first, second))

    return _module(params, body), _inputs(params)


def staged_mask_module(mask_shape, batch: int = 2, heads: int = 2, seq: int = 8, head_dim: int = 16):
    """Batched matmuls on [B*H, S, D] with the mask added *before* the scores are reshaped to
    [B, H, S, S] for the softmax: the mask lives in the flattened frame and must be carried to
    [B, H, Sq, Sk] (``mask_shape`` [B*H, 1, S] needs the full broadcast + reshape, [1, 1, S] only
    its last two dims)."""
    from tvm import relax

    b, h, s, d = batch, heads, seq, head_dim
    params = [_var("q", (b, h, s, d)), _var("k", (b, h, s, d)), _var("v", (b, h, s, d)),
              _var("mask", mask_shape)]

    def body(bb, q, k, v, mask):
        q3 = bb.emit(relax.op.reshape(q, (b * h, s, d)))
        kt3 = bb.emit(relax.op.reshape(bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2])), (b * h, d, s)))
        scores = bb.emit(relax.op.multiply(bb.emit(relax.op.matmul(q3, kt3)), relax.const(d ** -0.5)))
        scores = bb.emit(relax.op.reshape(bb.emit(relax.op.add(scores, mask)), (b, h, s, s)))
        probs = bb.emit(relax.op.reshape(bb.emit(relax.op.nn.softmax(scores)), (b * h, s, s)))
        out = bb.emit(relax.op.matmul(probs, bb.emit(relax.op.reshape(v, (b * h, s, d)))))
        return bb.emit(relax.op.reshape(out, (b, h, s, d)))

    mod = _module(params, body)
    inputs = _inputs(params)
    inputs[3] = np.where(np.random.default_rng(1).random(mask_shape) < 0.25, -1e9, 0.0).astype(np.float32)
    return mod, inputs


def expanded_padding_module(allowed: np.ndarray, batch: int = 2, heads: int = 2, seq: int = 8,
                            head_dim: int = 16):
    """A padding mask as dynamo-exported BERTs build it: the run-time key mask [B, 1, 1, S] and-ed with
    a constant [1, 1, S, S] pattern (``allowed``), then ``where(m, 0, -FLT_MAX)`` -- a full
    [B, 1, S, S] tensor at run time, whose rows are all equal exactly when those of ``allowed`` are."""
    from tvm import relax

    b, h, s, d = batch, heads, seq, head_dim
    params = [_var("q", (b, h, s, d)), _var("k", (b, h, s, d)), _var("v", (b, h, s, d)),
              _var("keys", (b, 1, 1, s), "bool")]

    def body(bb, q, k, v, keys):
        full = bb.emit(relax.op.logical_and(relax.const(allowed.reshape(1, 1, s, s)), keys))
        mask = bb.emit(relax.op.where(full, relax.const(0.0, "float32"),
                                      relax.const(float(np.finfo(np.float32).min), "float32")))
        scores = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
        scores = bb.emit(relax.op.add(bb.emit(relax.op.multiply(scores, relax.const(d ** -0.5))), mask))
        return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(scores)), v))

    mod = _module(params, body)
    inputs = _inputs(params[:3])
    keys = np.random.default_rng(2).random((b, 1, 1, s)) < 0.7
    keys[..., 0] = True  # every sequence keeps at least one key
    return mod, inputs + [keys]
