"""ONNX graphs of one attention block in the forms real exporters produce, built with ``onnx.helper``.

Each builder returns ``(model, inputs)``: an ``onnx.ModelProto`` and a dict of numpy inputs for it. The
graph's output is the attention output itself (``[B, S, H*D]`` or the layout the form works in), so a
test can bound the error an INT16 attention introduces without a projection amplifying it.

The forms follow what exporters emit (see ``/work/shared/notes/tvm-0.27.md``):

* ``eager``: Q/K/V projections -> Reshape [B,S,H,D] -> Transpose to BNSH (K to [B,H,D,S] with one
  perm [0,2,3,1]) -> MatMul -> Mul(scale) -> Add(mask) -> Softmax(-1) -> MatMul -> Transpose -> Reshape
  (HF BERT, ONNX dynamo and TorchScript exports);
* ``div_scale``: the scores divided by sqrt(D) instead of multiplied (older exports);
* ``qk_scaled``: SDPA: Q and K^T each multiplied by D**-0.25, K^T built as Reshape(Transpose(Reshape));
* ``sdpa_isnan``: SDPA with ``Where(IsNaN(p), 0, p)`` after the softmax;
* ``flat``: the heads flattened into the batch, [B*H, S, D] MatMuls;
* ``bnsh_inputs``: Q, K, V given as BNSH graph inputs, K^T by Transpose(0,1,3,2);
* ``bsnh_inputs``: Q, K, V given as BSNH graph inputs (Transpose(0,2,1,3) / (0,2,3,1) inside);
* ``causal_where``: a GPT-2 style ``Where(Trilu(ones), scores, -inf)`` built from constants;
* ``causal_add``: an additive lower-triangular -inf constant;
* ``no_mask``: no mask at all.

Negative forms (must not be offloaded): ``softmax_axis`` (softmax over the query axis), ``sigmoid``
(a non-softmax normalisation), ``dynamic`` (BNSH inputs with a symbolic sequence length ``S``; the
output stays BNSH), ``wide_head`` (head dim 136 > the edge config's 128).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

POSITIVE_FORMS = ("eager", "div_scale", "qk_scaled", "sdpa_isnan", "flat", "bnsh_inputs", "bsnh_inputs",
                  "causal_where", "causal_add", "no_mask")
NEGATIVE_FORMS = ("softmax_axis", "sigmoid", "dynamic", "wide_head")


class _Graph:
    """A tiny ONNX graph builder: unique names, initializers from numpy."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.counter = 0

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const(self, value, hint="c"):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def model(self, inputs, outputs):
        graph = helper.make_graph(self.nodes, "attention", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def attention_model(form: str, batch: int = 2, heads: int = 2, seq: int = 8, head_dim: int = 16,
                    seed: int = 0):
    """One attention block in ``form``; returns (onnx model, numpy inputs)."""
    if form not in POSITIVE_FORMS + NEGATIVE_FORMS:
        raise ValueError(f"unknown form {form!r}")
    if form == "wide_head":
        head_dim = 136
    rng = np.random.default_rng(seed)
    b, h, s, d = batch, heads, seq, head_dim
    e = h * d
    g = _Graph()
    scale = 1.0 / np.sqrt(d)
    inputs = {}
    graph_inputs = []

    # padding mask: key 6.. of batch 1 masked out, -10000 as older exporters do (the ONNX dynamo
    # export of HF BERT uses -FLT_MAX; both are below the MP-MRF mask threshold)
    mask = np.zeros((b, 1, 1, s), np.float32)
    mask[-1, :, :, s - 2:] = -10000.0
    with_mask = form not in ("no_mask", "causal_where", "causal_add")

    seq_dim = "S" if form == "dynamic" else s
    if form in ("bnsh_inputs", "bsnh_inputs", "dynamic"):
        shape = [b, h, s, d] if form != "bsnh_inputs" else [b, s, h, d]
        for name in ("q", "k", "v"):
            inputs[name] = rng.standard_normal(shape).astype(np.float32)
            graph_inputs.append(_tensor(name, [seq_dim if x == s else x for x in shape]))
        if form != "bsnh_inputs":
            q, v = "q", "v"
            kt = g.op("Transpose", ["k"], perm=[0, 1, 3, 2])
        else:
            q = g.op("Transpose", ["q"], perm=[0, 2, 1, 3])
            v = g.op("Transpose", ["v"], perm=[0, 2, 1, 3])
            kt = g.op("Transpose", ["k"], perm=[0, 2, 3, 1])
    else:
        inputs["x"] = rng.standard_normal((b, s, e)).astype(np.float32)
        graph_inputs.append(_tensor("x", [b, s, e]))
        heads4 = g.const(np.array([b, -1, h, d], np.int64), "heads_shape")

        def project(tag):
            w = g.const((rng.standard_normal((e, e)) / np.sqrt(e)).astype(np.float32), f"w{tag}")
            bias = g.const((0.1 * rng.standard_normal(e)).astype(np.float32), f"b{tag}")
            y = g.op("Add", [g.op("MatMul", ["x", w]), bias])
            return g.op("Reshape", [y, heads4], hint=f"{tag}_bsnh")

        q4, k4, v4 = project("q"), project("k"), project("v")
        q = g.op("Transpose", [q4], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [v4], perm=[0, 2, 1, 3])
        if form == "qk_scaled":
            k_bnsh = g.op("Transpose", [k4], perm=[0, 2, 1, 3])
            flat = g.op("Reshape", [k_bnsh, g.const(np.array([b * h, s, d], np.int64))])
            flat_t = g.op("Transpose", [flat], perm=[0, 2, 1])
            kt = g.op("Reshape", [flat_t, g.const(np.array([b, h, d, s], np.int64))])
        else:
            kt = g.op("Transpose", [k4], perm=[0, 2, 3, 1])
    if with_mask:
        inputs["mask"] = mask
        graph_inputs.append(_tensor("mask", [b, 1, 1, seq_dim]))

    if form == "flat":
        q = g.op("Reshape", [q, g.const(np.array([b * h, s, d], np.int64))])
        kt = g.op("Reshape", [kt, g.const(np.array([b * h, d, s], np.int64))])
        v = g.op("Reshape", [v, g.const(np.array([b * h, s, d], np.int64))])
    if form == "qk_scaled" or form == "sdpa_isnan":
        root = g.const(np.array(np.sqrt(scale), np.float32), "sqrt_scale")
        q = g.op("Mul", [q, root])
        kt = g.op("Mul", [kt, root])
    scores = g.op("MatMul", [q, kt], hint="scores")
    if form == "div_scale":
        scores = g.op("Div", [scores, g.const(np.array(np.sqrt(d), np.float32), "sqrt_d")])
    elif form not in ("qk_scaled", "sdpa_isnan"):
        scores = g.op("Mul", [scores, g.const(np.array(scale, np.float32), "scale")])
    if with_mask:
        m = "mask"
        if form == "flat":  # the mask follows the flattened scores: [B,1,1,S] -> [B*H,1,S]
            m = g.op("Reshape", [g.op("Expand", [m, g.const(np.array([b, h, 1, s], np.int64))]),
                                 g.const(np.array([b * h, 1, s], np.int64))])
        scores = g.op("Add", [scores, m])
    if form == "causal_where":
        ones = g.const(np.ones((s, s), np.float32), "ones")
        lower = g.op("Cast", [g.op("Trilu", [ones], upper=0)], to=TensorProto.BOOL)
        scores = g.op("Where", [lower, scores, g.const(np.array(-np.inf, np.float32), "neg_inf")])
    elif form == "causal_add":
        causal = np.triu(np.full((s, s), -np.inf, np.float32), k=1)
        scores = g.op("Add", [scores, g.const(causal, "causal")])

    if form == "sigmoid":
        probs = g.op("Sigmoid", [scores])
    else:
        probs = g.op("Softmax", [scores], axis=2 if form == "softmax_axis" else -1)
    if form == "sdpa_isnan":
        probs = g.op("Where", [g.op("IsNaN", [probs]), g.const(np.array(0.0, np.float32)), probs])
    out = g.op("MatMul", [probs, v], hint="context")
    if form == "dynamic":  # BNSH out, no reshape: from_onnx cannot infer -1 over a symbolic dim
        return g.model(graph_inputs, [_tensor(out, [b, h, seq_dim, d])]), inputs
    if form == "flat":
        out = g.op("Reshape", [out, g.const(np.array([b, h, s, d], np.int64))])
    out = g.op("Transpose", [out], perm=[0, 2, 1, 3])
    out = g.op("Reshape", [out, g.const(np.array([b, -1, e], np.int64))], hint="y")
    model = g.model(graph_inputs, [_tensor(out, [b, s, e])])
    return model, inputs


def multi_site_model(seed: int = 0):
    """Two attention blocks in a row (the second reads the first's output), with a shared padding
    mask: checks that several call sites in one module are each offloaded and reported."""
    rng = np.random.default_rng(seed)
    b, h, s, d = 1, 2, 6, 8
    e = h * d
    g = _Graph()
    x = "x"
    for layer in range(2):
        heads4 = g.const(np.array([b, s, h, d], np.int64))
        parts = []
        for tag in "qkv":
            w = g.const((rng.standard_normal((e, e)) / np.sqrt(e)).astype(np.float32), f"w{tag}{layer}")
            parts.append(g.op("Reshape", [g.op("MatMul", [x, w]), heads4]))
        q = g.op("Transpose", [parts[0]], perm=[0, 2, 1, 3])
        kt = g.op("Transpose", [parts[1]], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [parts[2]], perm=[0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(np.array(d ** -0.5, np.float32))])
        probs = g.op("Softmax", [g.op("Add", [scores, "mask"])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        x = g.op("Reshape", [ctx, g.const(np.array([b, s, e], np.int64))])
    mask = np.zeros((b, 1, 1, s), np.float32)
    mask[..., -1] = -1e9
    inputs = {"x": rng.standard_normal((b, s, e)).astype(np.float32), "mask": mask}
    model = g.model([_tensor("x", [b, s, e]), _tensor("mask", [b, 1, 1, s])], [_tensor(x, [b, s, e])])
    return model, inputs
