"""tvmc tune writes records that tvmc compile applies; workloads without a record fall back, saying so."""

import json

import pytest

from energon_tvm.tvmc.main import main


def test_tune_then_compile_with_the_records(model_files, capsys):
    records = model_files / "records.jsonl"
    assert main(["tune", str(model_files / "model.onnx"), "-o", str(records), "--trials", "6", "--tuner", "random",
                 "--calibration", str(model_files / "inputs.npz")]) == 0
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(lines) == 6 and all("cycles" in r and "schedule" in r for r in lines)
    out = capsys.readouterr().out
    assert "tuning 1 workload(s) of 2 offloaded call(s)" in out

    from energon_tvm.tvmc import compile_model

    tuned = compile_model(model_files / "model.onnx", tuning_records=str(records))
    best = min((r for r in lines if r.get("error") is None), key=lambda r: r["cycles"])
    assert all(c.schedule_source == "tuning records" for c in tuned.calls)
    assert tuned.calls[0].schedule == best["schedule"]

    said = []
    other = compile_model(model_files / "model.onnx", tuning_records=str(records), config="server", log=said.append)
    assert all(c.schedule_source == "heuristic" for c in other.calls)
    assert any("no tuning record for" in line and "using the heuristic" in line for line in said)


def test_bad_records_file_is_one_line(model_files, capsys):
    bad = model_files / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(model_files / "x.tar"),
                 "--tuning-records", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error:")


def test_tune_for_energy_records_the_objective_and_compile_picks_by_it(model_files, capsys):
    records = model_files / "energy.jsonl"
    assert main(["tune", str(model_files / "model.onnx"), "-o", str(records), "--trials", "5", "--tuner", "random",
                 "--calibration", str(model_files / "inputs.npz"), "--objective", "energy"]) == 0
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(lines) == 5 and all(r["objective"] == "energy" and r["energy_pj"] > 0 for r in lines)
    assert "minimising energy" in capsys.readouterr().out

    from energon_tvm.tvmc import compile_model

    tuned = compile_model(model_files / "model.onnx", tuning_records=str(records))
    best = min((r for r in lines if r.get("error") is None), key=lambda r: r["energy_pj"])
    assert tuned.calls[0].schedule == best["schedule"]
    assert tuned.calls[0].schedule_source == "tuning records" and tuned.calls[0].schedule_objective == "energy"


def test_unknown_objective_is_one_line(model_files, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["tune", str(model_files / "model.onnx"), "-o", str(model_files / "x.jsonl"), "--objective", "power"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "--objective" in err and "Traceback" not in err


def test_compile_says_how_many_records_were_for_another_machine(model_files, capsys):
    records = model_files / "edge-records.jsonl"
    assert main(["tune", str(model_files / "model.onnx"), "-o", str(records), "--trials", "3",
                 "--tuner", "random"]) == 0
    capsys.readouterr()
    out_tar = model_files / "server.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out_tar), "--target-energon-config", "server",
                 "--tuning-records", str(records)]) == 0
    out = capsys.readouterr().out
    assert "0 of 2 offloaded call(s) scheduled from" in out
    assert "3 record(s) of that file were made for another machine (edge) and were not used on server" in out


def test_tune_checks_its_output_and_options_before_compiling(model_files, tmp_path, capsys, monkeypatch):
    import energon_tvm.tvmc.compiler as compiler

    def no_compile(*_args, **_kwargs):
        raise AssertionError("tune compiled before refusing its options")

    monkeypatch.setattr(compiler, "compile_model", no_compile)
    garbage = tmp_path / "r.jsonl"
    garbage.write_bytes(b"\xff\xfe not records\n")
    for extra, needle in [(["-o", str(garbage)], "not a JSON record"), (["-o", str(tmp_path / "x.jsonl"), "--seed",
                                                                            "-1"], "--seed -1"),
                          (["-o", str(tmp_path / "no" / "r.jsonl")], "does not exist"),
                          (["-o", str(tmp_path / "x.jsonl"), "--calibration", str(tmp_path / "c.npz")],
                           "--calibration file")]:
        assert main(["tune", str(model_files / "model.onnx"), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert garbage.read_bytes() == b"\xff\xfe not records\n"


def test_compile_objective_ranks_the_heuristic_schedules_of_calls_without_a_record(model_files, capsys):
    from energon_tvm.isa.config import load_config
    from energon_tvm.schedules import AttentionWorkload, Schedule, default_schedule

    from energon_tvm.tvmc import compile_model

    cfg = load_config("edge")
    picked = {}
    for objective in ("cycles", "energy"):
        result = compile_model(model_files / "model.onnx", objective=objective)
        for call in result.calls:
            w = AttentionWorkload.from_dict(call.workload)
            assert call.schedule_source == "heuristic"
            assert Schedule.from_dict(call.schedule) == default_schedule(w, cfg, objective)
        picked[objective] = Schedule.from_dict(result.calls[0].schedule)
        assert all(call["schedule_objective"] == objective for call in result.manifest()["calls"])
    # on these tiny calls the estimate prices scoring twice below writing and reading stored scores
    assert (picked["cycles"].filter_mode, picked["energy"].filter_mode) == ("store", "recompute")
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(model_files / "energy.tar"),
                 "--objective", "energy"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["compile", str(model_files / "model.onnx"), "-o", str(model_files / "x.tar"), "--objective", "power"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--objective" in err and "Traceback" not in err
