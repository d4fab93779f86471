"""Context travels as arguments: two packages for two machines run interleaved in one process, each on
its own machine and into its own runner, equal to its own separate run; a program needs nothing but its
bytes; a compile's report carries the programs and schedules the package is written from."""

import re

import numpy as np
import pytest
from energon_tvm.isa.program import Program

from energon_tvm.executor import HEURISTIC, TUNED, EnergonTarget
from energon_tvm.tvmc import compile_model, write
from energon_tvm.tvmc.runner import PackageSession, make_inputs


def _packages(model_files):
    paths = {}
    for name in ("edge", "server"):
        result = compile_model(model_files / "model.onnx", config=name)
        paths[name] = model_files / f"context-{name}.tar"
        write(result, paths[name])
    return paths


def _separate_run(path, feeds):
    with PackageSession(path) as session:
        return session.run(feeds)


def test_two_machines_interleaved_in_one_process(model_files):
    paths = _packages(model_files)
    with PackageSession(paths["edge"]) as edge:
        feeds = make_inputs(edge.manifest, model_files / "inputs.npz")
    alone = {name: _separate_run(path, feeds) for name, path in paths.items()}

    with PackageSession(paths["edge"]) as edge, PackageSession(paths["server"]) as server:
        sessions = {"edge": edge, "server": server}
        # edge, server, edge, server: each session's calls go to its own runner and machine
        runs = [(name, *sessions[name].run(feeds, trace=name == "server")) for name in ("edge", "server") * 2]

    for name, outputs, calls in runs:
        ref_outputs, ref_calls = alone[name]
        assert outputs.keys() == ref_outputs.keys()
        for key in outputs:
            np.testing.assert_array_equal(outputs[key], ref_outputs[key])
        assert len(calls) == len(ref_calls) == 2
        for call, ref in zip(calls, ref_calls):
            assert call.site == ref.site and call.workload == ref.workload
            assert call.stats["config"] == name
            assert call.stats.kept_per_round == ref.stats.kept_per_round
            assert call.stats["cycles"] == ref.stats["cycles"]
            assert (call.stats.trace is not None) == (name == "server")
    edge_cycles = runs[0][2][0].stats["cycles"]
    server_cycles = runs[1][2][0].stats["cycles"]
    assert server_cycles < edge_cycles  # the server machine really ran the server package's calls


def test_report_carries_what_the_package_is_written_from(model_files):
    result = compile_model(model_files / "model.onnx")
    assert [c.site for c in result.calls] == [r.site for r in result.offloads.offloaded]
    for call, record in zip(result.calls, result.offloads.offloaded):
        assert call.program == record.program
        prog = Program.from_bytes(record.program)  # self-sufficient: no config passed, none looked up
        assert prog.config == result.target.config
        assert prog.meta["schedule"] == call.schedule == record.schedule.schedule.to_dict()
        assert call.schedule_source == record.schedule.source == HEURISTIC and call.schedule_record is None


def test_tuned_choice_names_its_record():
    from energon_tvm.schedules import AttentionWorkload, Schedule

    from energon_tvm.executor import ScheduleSource, compile_call, record_id
    from energon_tvm.tuner.records import TuningRecord

    w = AttentionWorkload(1, 2, 16, 16, 32)
    cfg = EnergonTarget.create("edge").config
    record = TuningRecord(w.key(), cfg.fingerprint.hex(), Schedule(8, 16), cycles=10**6, config=cfg.name)
    target = EnergonTarget(cfg, schedules=ScheduleSource.from_records([record]))
    compiled = compile_call(w, target)
    assert compiled.choice.source == TUNED and compiled.choice.record == record_id(record)
    assert compiled.choice.schedule == Schedule(8, 16)
    assert Program.from_bytes(compiled.blob).meta["schedule"] == Schedule(8, 16).to_dict()
    other = compile_call(AttentionWorkload(1, 2, 16, 24, 32), target)
    assert other.choice.source == HEURISTIC and other.choice.record is None


def test_site_params_override_the_target_params():
    from energon_tvm.isa.numerics import MPMRFParams

    dense = MPMRFParams.dense(2)
    target = EnergonTarget.create("edge", site_params={"lv3": dense})
    assert target.params_for("lv3") == dense and target.params_for("lv4") == MPMRFParams()


def test_an_offloaded_calls_error_comes_out_as_itself(package, model_files, capsys):
    from energon_tvm.runtime_sim.driver import DriverError

    from energon_tvm.tvmc.main import main

    with PackageSession(package) as session:
        good = make_inputs(session.manifest, model_files / "inputs.npz")
        bad = dict(good, x=good["x"].copy())
        bad["x"][0, 0, 0] = np.nan
        with pytest.raises(DriverError, match="contains NaN or infinite values"):
            session.run(bad)
        outputs, calls = session.run(good)  # the session is still usable, and its runner was not left dirty
        assert len(calls) == 2 and session.runner.fault is None
    np.savez(model_files / "nan.npz", **bad)  # on the command line the input is refused before it runs
    assert main(["run", str(package), "--inputs", str(model_files / "nan.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error: input 'x' holds 1 NaN or infinite value(s)")


def test_host_only_compile_still_counts_the_sites_and_inspect_reads_dumped_asm(model_files, tmp_path, capsys):
    from energon_tvm.tvmc.main import main

    host = compile_model(model_files / "model.onnx", target="llvm")
    assert host.calls == [] and host.attention_sites == 2  # found, kept on the host

    out = tmp_path / "m.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "--dump-code", "isa"]) == 0
    capsys.readouterr()
    asm = tmp_path / "m.tar.isa" / "call_000.asm"
    assert main(["inspect", str(asm), "--no-code"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("program: ") and "lower bound for that work" in shown
    assert float(re.search(r"; energy (\d+\.\d+)x its bound", shown).group(1)) >= 1.0
    asm.write_text(asm.read_text().replace("ld.q ", "ld.qq ", 1))
    assert main(["inspect", str(asm)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error:") and "line" in err[0]
