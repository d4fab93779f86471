"""What must not be offloaded stays on the host, with the reason recorded, and the model still runs and
matches its llvm build."""

from __future__ import annotations

import numpy as np
import pytest
from energon_tvm.isa.errors import ConfigError, EnergonError
from harness import build, from_onnx, run, run_collected
from onnx_graphs import NEGATIVE_FORMS, attention_model
from relax_graphs import plain_module, two_site_module

from energon_tvm.relax import PartitionError, partition_for_energon

REASONS = {
    "softmax_axis": "softmax over axis 2; attention normalises over the key axis",
    "sigmoid": "no softmax between the score and output matmuls (the scores are normalised by relax.sigmoid)",
    "dynamic": "dynamic shape",
    "wide_head": "head dim 136 exceeds max_head_dim 128 of config 'edge'",
}


@pytest.mark.parametrize("form", NEGATIVE_FORMS)
def test_not_offloaded_and_still_runs(form, host_build):
    model, inputs = attention_model(form)
    mod = from_onnx(model)
    pmod, report = partition_for_energon(mod)
    (record,) = report.records
    assert not record.offloaded
    assert REASONS[form] in record.reason
    assert "energon.run_attention" not in pmod.script()
    out, calls = run_collected(build(pmod), inputs)
    assert calls.calls == []
    np.testing.assert_allclose(out, run(host_build(form, mod), inputs), rtol=1e-6, atol=1e-6)


def test_wide_head_record_still_has_its_workload():
    model, _ = attention_model("wide_head")
    (record,) = partition_for_energon(from_onnx(model))[1].records
    assert record.workload is not None and record.workload.head_dim == 136


def test_wide_head_fits_the_server_config():
    model, _ = attention_model("wide_head")
    _, report = partition_for_energon(from_onnx(model), config="server")
    assert report[0].offloaded and report.config == "server"


def test_intermediate_used_outside_stays_on_host():
    mod, inputs = plain_module(expose_probs=True)
    pmod, report = partition_for_energon(mod)
    (record,) = report.records
    assert not record.offloaded and "used outside the attention block" in record.reason
    out = run(build(pmod), inputs)
    np.testing.assert_allclose(out, run(build(mod), inputs), rtol=1e-6, atol=1e-6)


def test_mixed_sites_one_offloaded_one_not(dense_params):
    mod, inputs = two_site_module()
    pmod, report = partition_for_energon(mod, params=dense_params)
    assert [r.offloaded for r in report] == [True, False]
    assert "softmax over axis 2" in report[1].reason
    out, calls = run_collected(build(pmod), inputs)
    assert len(calls.calls) == 1
    ref = run(build(mod), inputs)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_user_mistakes_are_typed_errors():
    mod, _ = plain_module()
    with pytest.raises(PartitionError, match="takes a tvm.IRModule; got str"):
        partition_for_energon("model.onnx")
    with pytest.raises(PartitionError, match="params must be MPMRFParams; got dict"):
        partition_for_energon(mod, params={"rounds": []})
    with pytest.raises(PartitionError, match="config must be"):
        partition_for_energon(mod, config=3)
    with pytest.raises(ConfigError, match="no hardware config named 'tiny'"):
        partition_for_energon(mod, config="tiny")
    assert issubclass(PartitionError, EnergonError)


def test_partitioning_twice_finds_nothing_more():
    mod, _ = plain_module()
    pmod, report = partition_for_energon(mod)
    assert len(report.offloaded) == 1
    again, report = partition_for_energon(pmod)
    assert len(report) == 0 and again.script().count("energon.run_attention") == 1


def test_program_compiler_rejection_keeps_the_site_on_host(monkeypatch):
    """When ``executor.compile_call`` raises (the real scheduler: a tile that does not fit), the site
    stays on the host with the scheduler's message as the reason."""
    from energon_tvm.isa.errors import ScheduleError

    from energon_tvm import executor

    def refuse(workload, target):
        raise ScheduleError(f"tile of {workload.seq_q} queries needs 48 KiB of score buffer; "
                            f"{target.config.name} has 32 KiB")

    monkeypatch.setattr(executor, "compile_call", refuse)
    mod, inputs = plain_module()
    pmod, report = partition_for_energon(mod)
    assert not report[0].offloaded and report[0].workload is not None
    assert report[0].reason == ("the program compiler rejected the call: tile of 8 queries needs 48 KiB "
                                "of score buffer; edge has 32 KiB")
    np.testing.assert_allclose(run(build(pmod), inputs), run(build(mod), inputs), rtol=1e-6, atol=1e-6)


def test_a_block_the_lowering_cannot_read_goes_back_to_the_host(monkeypatch):
    from energon_tvm.relax import lowering
    from energon_tvm.relax.analysis import NotOffloadable

    def unreadable(scope, root):
        raise NotOffloadable("unreadable composite")

    monkeypatch.setattr(lowering, "analyze", unreadable)
    mod, inputs = plain_module()
    pmod, report = partition_for_energon(mod)
    assert not report[0].offloaded
    assert report[0].reason == "could not be lowered: unreadable composite"
    assert "energon.run_attention" not in pmod.script()
    np.testing.assert_allclose(run(build(pmod), inputs), run(build(mod), inputs), rtol=1e-6, atol=1e-6)
