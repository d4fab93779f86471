"""The pattern table and the offload report: every attention site is listed, with its reason."""

from __future__ import annotations

import pytest
from harness import from_onnx
from onnx_graphs import attention_model, multi_site_model
from relax_graphs import two_site_module

from energon_tvm.relax import PATTERN_NAMES, PartitionError, bridge_calls, energon_patterns, partition_for_energon
from energon_tvm.relax.report import OFFLOADED


def test_pattern_table_is_registered():
    names = {p.name for p in energon_patterns()}
    assert names == set(PATTERN_NAMES)
    assert all(name.startswith("energon.") for name in names)


def test_report_lists_every_site_in_program_order():
    _, report = partition_for_energon(from_onnx(multi_site_model()[0]))
    assert len(report) == 2 and len(report.offloaded) == 2 and report.rejected == ()
    first, second = report
    assert first.function == second.function == "main"
    assert first.reason == second.reason == OFFLOADED
    assert report.site(second.site) is second
    with pytest.raises(KeyError, match="no attention site 'nope'"):
        report.site("nope")
    dicts = report.to_dicts()
    assert dicts[0]["offloaded"] and dicts[0]["workload"]["seq_q"] == 6
    assert dicts[0]["pattern"] == "energon.attention_decomposed"


def test_report_table_shows_host_sites_with_their_reason():
    _, report = partition_for_energon(two_site_module()[0])
    text = report.format()
    assert text.splitlines()[0] == "Energon offload report (config edge): 1 of 2 attention site(s) offloaded"
    host_line = next(line for line in text.splitlines() if " host " in line)
    assert "softmax over axis 2" in host_line
    assert str(report) == text


def test_unmatched_site_reason_and_no_workload():
    _, report = partition_for_energon(from_onnx(attention_model("sigmoid")[0]))
    (record,) = report
    assert record.pattern is None and record.workload is None
    assert "relax.sigmoid" in record.reason


def test_bridge_calls_read_back_from_the_module(default_params):
    from energon_tvm.isa.config import load_config

    from energon_tvm.executor import EnergonTarget, compile_call

    mod, report = partition_for_energon(from_onnx(multi_site_model()[0]), params=default_params)
    calls = bridge_calls(mod)
    assert [c.site for c in calls] == [r.site for r in report]
    assert [c.workload for c in calls] == [r.workload for r in report]
    assert calls[0].blob == compile_call(report[0].workload, EnergonTarget(load_config("edge"))).blob
    assert [c.blob for c in calls] == [r.program for r in report]  # the report carries what the module does


def test_site_params_reach_their_site_only(default_params, dense_params):
    from energon_tvm.executor import EnergonTarget

    first = partition_for_energon(from_onnx(multi_site_model()[0]), params=default_params)[1][0].site
    target = EnergonTarget.create("edge", default_params, site_params={first: dense_params})
    mod, report = partition_for_energon(from_onnx(multi_site_model()[0]), target)
    assert report[0].site == first
    assert report[0].workload.params == dense_params and report[1].workload.params == default_params
    assert [c.workload.params for c in bridge_calls(mod)] == [dense_params, default_params]
    with pytest.raises(PartitionError, match="not also as params="):
        partition_for_energon(from_onnx(multi_site_model()[0]), target, params=default_params)
