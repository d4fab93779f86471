"""tvmc tune writes records that tvmc compile applies; workloads without a record fall back, saying so."""

import json

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
