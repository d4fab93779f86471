"""The forms that do not come from ONNX: TVM's own ``R.nn.attention`` ops, torch.export's batched
matmuls with the all-masked-rows guard, float16, and a module that already calls an external function."""

from __future__ import annotations

import numpy as np
import pytest
from harness import build, int16_bound, oracle_mask, run, run_collected
from relax_graphs import _module, _var, attention_op_module, bmm_module, plain_module, staged_mask_module

from energon_tvm.mpmrf import mpmrf_attention
from energon_tvm.relax import partition_for_energon


def _dense_vs_llvm(mod, inputs, params, expected_calls=1, extra_atol=0.0):
    pmod, report = partition_for_energon(mod, params=params)
    assert len(report.offloaded) == expected_calls, report.format()
    out, calls = run_collected(build(pmod), inputs)
    ref = run(build(mod), inputs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    bound = max(int16_bound(*(c.inputs[n] for n in "qkv"), c.workload.effective_scale)
                for c in calls.calls) + extra_atol
    err = float(np.max(np.abs(out.astype(np.float64) - ref)))
    assert err <= bound, f"max error {err:.3g} exceeds the bound {bound:.3g}"
    return report, calls


@pytest.mark.parametrize("bias, causal, seq_q", [
    (False, None, 8), (True, None, 8), (False, "BottomRight", 6), (True, "TopLeft", 6),
    (False, "TopLeft", 8)])
def test_attention_op(bias, causal, seq_q, dense_params):
    mod, inputs = attention_op_module(bias=bias, causal=causal, seq_q=seq_q)
    report, calls = _dense_vs_llvm(mod, inputs, dense_params)
    record = report[0]
    assert record.pattern == ("energon.attention_bias" if bias else "energon.attention")
    w = record.workload
    assert (w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim) == (2, 2, seq_q, 8, 16)
    # bottom-right always is Energon's causal; top-left only when Sq == Sk, else it is a constant bias
    assert w.causal == (causal == "BottomRight" or (causal == "TopLeft" and seq_q == 8))
    if causal == "TopLeft" and seq_q != 8:
        assert w.bias_shape == (2, 1, seq_q, 8)


def test_attention_op_scale_attribute(default_params):
    mod, inputs = attention_op_module(scale=0.1)
    pmod, report = partition_for_energon(mod, params=default_params)
    assert report[0].workload.effective_scale == pytest.approx(0.1)
    _, calls = run_collected(build(pmod), inputs)
    (call,) = calls.calls
    q, k, v = (call.inputs[n] for n in "qkv")
    # BSNH in the model, BHSD at the bridge
    np.testing.assert_array_equal(q, inputs[0].transpose(0, 2, 1, 3))
    expected = mpmrf_attention(q, k, v, None, default_params, 0.1)
    np.testing.assert_allclose(call.output, expected.output, rtol=0, atol=1e-6)


def test_torch_export_batched_matmul_form(dense_params, default_params):
    mod, inputs = bmm_module()
    report, _ = _dense_vs_llvm(mod, inputs, dense_params)
    record = report[0]
    assert "all-masked guard" in record.form and "scale on Q and K" in record.form
    assert record.workload.bias_shape == (2, 1, 8, 8)
    pmod, _ = partition_for_energon(mod, params=default_params)
    _, calls = run_collected(build(pmod), inputs)
    (call,) = calls.calls
    expected = mpmrf_attention(call.inputs["q"], call.inputs["k"], call.inputs["v"],
                               oracle_mask(call.workload, call.inputs["bias"]), default_params,
                               call.workload.effective_scale)
    np.testing.assert_allclose(call.output, expected.output, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mask_shape, bias_shape", [((4, 1, 8), (2, 2, 8, 8)), ((1, 1, 8), (1, 8))])
def test_mask_added_in_the_flattened_frame(mask_shape, bias_shape, dense_params):
    mod, inputs = staged_mask_module(mask_shape)
    report, calls = _dense_vs_llvm(mod, inputs, dense_params)
    assert report[0].workload.bias_shape == bias_shape
    assert calls.calls[0].inputs["bias"].shape == bias_shape


def test_float16(dense_params):
    """float16 in, float16 out; the bridge computes in float32, so the output rounding (half an ulp
    of float16 at the output's magnitude) adds to the INT16 bound, and so does the host's float16
    softmax (a few ulps)."""
    mod, inputs = plain_module(dtype="float16")
    inputs = [x.astype(np.float16) for x in inputs]
    report, calls = _dense_vs_llvm(mod, inputs, dense_params, extra_atol=8 * 2.0 ** -11 * 4)
    assert report[0].workload.dtype == "float16"
    assert calls.calls[0].inputs["q"].dtype == np.float32


def test_module_already_calling_an_extern_function(dense_params):
    """MergeCompositeFunctions cannot walk a module with an ExternFunc call (TVM 0.27); the
    partition falls back to one Codegen function per composite."""
    import tvm
    from tvm import relax

    def double(x, out):
        out.copyfrom(x.numpy() * 2)

    tvm.register_global_func("test_energon.double", double, override=True)
    shape = (1, 2, 8, 16)
    params = [_var(n, shape) for n in ("q", "k", "v")]

    def body(bb, q, k, v):
        q2 = bb.emit(relax.call_dps_packed("test_energon.double", relax.Tuple([q]),
                                           relax.TensorType(shape, "float32")))
        kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
        scores = bb.emit(relax.op.multiply(bb.emit(relax.op.matmul(q2, kt)), relax.const(0.25)))
        return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(scores)), v))

    mod = _module(params, body)
    inputs = [np.random.default_rng(1).standard_normal(shape).astype(np.float32) for _ in range(3)]
    _dense_vs_llvm(mod, inputs, dense_params)
