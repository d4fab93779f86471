"""Every exporter form of attention is found, offloaded, and computes what it should.

Two oracles: with alpha = -1 in every round (dense INT16) the partitioned model's output matches the
llvm build of the unpartitioned module within the INT16 bound derived in ``harness.int16_bound``
(the graphs output the attention itself, so the bound applies to the whole model); with the default
parameters each offloaded call's captured output equals ``mpmrf_attention`` on its captured inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import build, from_onnx, int16_bound, oracle_mask, run, run_collected
from onnx_graphs import POSITIVE_FORMS, attention_model, multi_site_model

from energon_tvm.mpmrf import mpmrf_attention
from energon_tvm.relax import partition_for_energon

#: what the report's ``form`` says for each exporter form
EXPECTED_FORM = {
    "eager": "scale on scores (multiply)",
    "div_scale": "scale on scores (divide)",
    "qk_scaled": "scale on Q and K",
    "sdpa_isnan": "isnan guard",
    "flat": "flattened (B*H, S, D)",
    "bnsh_inputs": "mask add",
    "bsnh_inputs": "mask add",
    "causal_where": "causal",
    "causal_add": "causal",
    "no_mask": "BNSH",
}
EXPECTED_MASK = {"causal_where": "causal", "causal_add": "causal", "no_mask": "none"}


def _check_dense(mod, inputs, reference_vm, dense_params, expected_calls):
    pmod, report = partition_for_energon(mod, params=dense_params)
    assert len(report.offloaded) == expected_calls, report.format()
    out, run_ = run_collected(build(pmod), inputs)
    assert len(run_.calls) == expected_calls
    ref = run(reference_vm, inputs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    for call in run_.calls:  # every row keeps every unmasked key: kept ratio 1 in both rounds
        assert call.stats["kept_ratio"] == [1.0, 1.0]
    bound = max(int16_bound(*(c.inputs[n] for n in "qkv"), c.workload.effective_scale) for c in run_.calls)
    err = float(np.max(np.abs(out - ref)))
    assert err <= bound, f"max error {err:.3g} exceeds the INT16 bound {bound:.3g}"
    return report


@pytest.mark.parametrize("form", POSITIVE_FORMS)
def test_form_dense_matches_llvm(form, dense_params, host_build):
    model, inputs = attention_model(form)
    mod = from_onnx(model)
    report = _check_dense(mod, inputs, host_build(form, mod), dense_params, expected_calls=1)
    (record,) = report.records
    assert record.offloaded and record.pattern == "energon.attention_decomposed"
    assert EXPECTED_FORM[form] in record.form
    assert record.workload.mask_kind == EXPECTED_MASK.get(form, "padding")
    w = record.workload
    expected_dims = (1, 4) if form == "flat" else (2, 2)
    assert (w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim) == expected_dims + (8, 8, 16)
    assert w.effective_scale == pytest.approx(0.25, rel=1e-6)


# the per-call oracle checks the bridge and the executor, not the pattern: a few forms that differ in
# frame (flattened heads), mask (causal, none) and scale placement are enough
@pytest.mark.parametrize("form", ["eager", "flat", "causal_where", "qk_scaled", "no_mask"])
def test_form_default_params_equal_reference(form, default_params):
    model, inputs = attention_model(form)
    pmod, report = partition_for_energon(from_onnx(model), params=default_params)
    assert report[0].workload.params == default_params
    _, run_ = run_collected(build(pmod), inputs)
    (call,) = run_.calls
    q, k, v, bias = (call.inputs[n] for n in ("q", "k", "v", "bias"))
    assert q.shape == (call.workload.batch, call.workload.heads, 8, 16)
    expected = mpmrf_attention(q, k, v, oracle_mask(call.workload, bias), default_params,
                               call.workload.effective_scale)
    np.testing.assert_allclose(call.output, expected.output, rtol=0, atol=1e-6)
    assert call.stats["kept_ratio"] == pytest.approx(expected.kept_ratios())
    assert call.stats["kept"] < call.stats["candidates"]  # the filter really filtered


def test_two_sites_in_one_model(dense_params, host_build):
    model, inputs = multi_site_model()
    mod = from_onnx(model)
    report = _check_dense(mod, inputs, host_build("multi", mod), dense_params, expected_calls=2)
    assert [r.offloaded for r in report] == [True, True]
    assert len({r.site for r in report}) == 2


def test_causal_mask_is_not_passed_as_a_tensor(dense_params):
    model, inputs = attention_model("causal_where")
    pmod, report = partition_for_energon(from_onnx(model), params=dense_params)
    assert report[0].workload.causal and report[0].workload.bias_shape is None
    _, run_ = run_collected(build(pmod), inputs)
    assert run_.calls[0].inputs["bias"] is None
    # the host no longer computes the mask either
    assert "tril" not in pmod["main"].script()


def test_weights_kept_as_parameters_still_offload(dense_params):
    """from_onnx(keep_params_in_input=True): weights become parameters after ``num_input``."""
    model, _ = attention_model("eager")
    mod = from_onnx(model, keep_params_in_input=True)
    _, report = partition_for_energon(mod, params=dense_params)
    assert len(report) == 1 and report[0].offloaded, report.format()
