"""Tuning records: JSON lines that round-trip, and the best-record lookup the compiler applies."""

import json

import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.schedules.schedule import Schedule
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.tuner import (
    RecordsError,
    TuningRecord,
    append_records,
    best_record,
    best_schedule,
    read_records,
)


def record(w, cfg, schedule, cycles, **extra):
    return TuningRecord(workload_key=w.key(), config_fingerprint=cfg.fingerprint.hex(), schedule=schedule,
                        cycles=cycles, config=cfg.name, workload=w.to_dict(), **extra)


@pytest.fixture
def log(tmp_path, cfg, workload):
    other_w = AttentionWorkload(1, 2, 64, 64, 32)
    server = load_config("server")
    recs = [
        record(workload, cfg, Schedule(16, 32), 900, tuner="xgb", seed=0, trial=0),
        record(workload, cfg, Schedule(32, 64), 700, tuner="xgb", seed=0, trial=1),
        record(workload, cfg, Schedule(64, 64), None, error="ScheduleError: nope", trial=2),
        record(workload, cfg, Schedule(64, 32), 700, trial=3),            # ties keep the first
        record(other_w, cfg, Schedule(8, 8), 10),                         # another workload
        record(workload, server, Schedule(8, 16), 5),                     # another machine
    ]
    path = tmp_path / "records.jsonl"
    append_records(path, recs[:3])
    append_records(path, recs[3:])
    return path, recs


def test_records_round_trip_through_json_lines(log):
    path, recs = log
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs)
    assert all(json.loads(line)["version"] == 1 for line in lines)
    assert read_records(path) == recs


def test_best_schedule_matches_workload_and_config(log, cfg, workload):
    path, recs = log
    assert best_schedule(path, workload, cfg) == Schedule(32, 64)
    assert best_record(recs, workload, cfg) == recs[1]
    assert best_schedule([r.to_dict() for r in recs], workload, load_config("server")) == Schedule(8, 16)
    assert best_schedule(path, AttentionWorkload(1, 2, 64, 64, 32, causal=True), cfg) is None
    assert best_schedule([], workload, cfg) is None


def test_records_whose_schedule_no_longer_fits_are_skipped(cfg):
    w = AttentionWorkload(1, 12, 512, 512, 64)
    too_big = record(w, cfg, Schedule(512, 512, 3, 2, 2), 1)  # e.g. written for a machine since shrunk
    fine = record(w, cfg, Schedule(16, 128), 50)
    assert best_schedule([too_big, fine], w, cfg) == Schedule(16, 128)


@pytest.mark.parametrize("line, match", [
    ("{not json", r"records.jsonl:2: not a JSON record"),
    ('{"workload_key": "k", "config_fingerprint": "f", "cycles": 3}', r":2: malformed .*missing field\(s\) schedule"),
    ('{"workload_key": "k", "config_fingerprint": "f", "cycles": -3, "schedule": {}}', r"cycles = -3"),
    ('{"workload_key": "k", "config_fingerprint": "f", "cycles": 3, "schedule": {"q_tile": 0, "k_chunk": 8}}',
     r"q_tile = 0 must be a positive integer"),
    ('{"version": 9, "workload_key": "k", "config_fingerprint": "f", "cycles": 3, "schedule": {}}',
     r"record version 9 .*\(1\.\.1\)"),
    ("[1, 2]", r"a record is a JSON object, got list"),
])
def test_malformed_records_name_file_and_line(tmp_path, cfg, workload, line, match):
    path = tmp_path / "records.jsonl"
    append_records(path, [record(workload, cfg, Schedule(16, 16), 5)])
    with open(path, "a") as f:
        f.write(line + "\n")
    with pytest.raises(RecordsError, match=match):
        read_records(path)
    with pytest.raises(RecordsError):
        best_schedule(path, workload, cfg)


def test_missing_records_file_is_a_typed_error(tmp_path, cfg, workload):
    with pytest.raises(RecordsError, match="does not exist"):
        best_schedule(tmp_path / "nope.jsonl", workload, cfg)
    with pytest.raises(RecordsError, match="cannot write tuning records to .*no-such-dir"):
        append_records(tmp_path / "no-such-dir" / "r.jsonl", [record(workload, cfg, Schedule(16, 16), 5)])


def test_blank_lines_are_skipped(tmp_path, cfg, workload):
    path = tmp_path / "records.jsonl"
    path.write_text("\n" + record(workload, cfg, Schedule(16, 16), 5).to_json() + "\n\n")
    assert best_schedule(path, workload, cfg) == Schedule(16, 16)
