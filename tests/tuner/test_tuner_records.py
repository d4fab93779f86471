"""Tuning records: JSON lines that round-trip, and the best-record lookup the compiler applies; records
files are untrusted: each hostile case is a file made here."""

import hashlib
import json
import re
import warnings

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
    # cycles above cycles_floor (1,073 on edge, 198 on server): lower claims are refused
    recs = [
        record(workload, cfg, Schedule(16, 32), 9000, tuner="xgb", seed=0, trial=0),
        record(workload, cfg, Schedule(32, 64), 7000, tuner="xgb", seed=0, trial=1),
        record(workload, cfg, Schedule(64, 64), None, error="ScheduleError: nope", trial=2),
        record(workload, cfg, Schedule(64, 32), 7000, trial=3),           # ties keep the first
        record(other_w, cfg, Schedule(8, 8), 1100),                       # another workload
        record(workload, server, Schedule(8, 16), 500),                   # another machine
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
    too_big = record(w, cfg, Schedule(512, 512, 3, 2, 2), 150_000)  # e.g. written for a machine since shrunk
    fine = record(w, cfg, Schedule(16, 128), 500_000)
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
    append_records(path, [record(workload, cfg, Schedule(16, 16), 5000)])
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
    path.write_text("\n" + record(workload, cfg, Schedule(16, 16), 5000).to_json() + "\n\n")
    assert best_schedule(path, workload, cfg) == Schedule(16, 16)


# -- untrusted files: floors, digests, torn lines, size and depth ---------------------------------------
def hostile_line(d: dict) -> str:
    """A record line as a careful forger writes it: a correct digest for whatever it claims."""
    from energon_tvm.tuner.records import record_digest

    return json.dumps({**d, "digest": record_digest(d)}, sort_keys=True, separators=(",", ":"))


def test_cycles_below_the_floor_are_refused_with_file_and_line(tmp_path, cfg, workload, profile):
    from energon_tvm.executor import ScheduleSource
    from energon_tvm.tuner import InlineRunner, MeasureTask
    from energon_tvm.tuner.records import cycles_floor

    floor = cycles_floor(workload, cfg).cycles
    (measured,) = InlineRunner().run(MeasureTask.create(workload, cfg, profile), [Schedule(16, 16)])
    assert 0 < floor <= measured.cycles  # the floor holds for what the simulator measures
    path = tmp_path / "records.jsonl"
    append_records(path, [record(workload, cfg, Schedule(32, 32), 5000)])
    with open(path, "a") as f:  # the report's case: cycles 0 for a tiny schedule
        f.write(hostile_line(record(workload, cfg, Schedule(8, 8), 0).to_dict()) + "\n")
    assert [r.origin for r in read_records(path)] == [f"{path}:1", f"{path}:2"]  # read: no config to check yet
    match = rf"records.jsonl:2: claims 0 cycles for {re.escape(workload.key())} on config 'edge', but no " \
            rf"schedule of it can take fewer than {floor:,} \(dram bound"
    with pytest.raises(RecordsError, match=match):
        best_schedule(path, workload, cfg)
    with pytest.raises(RecordsError, match=match):  # where the compiler meets records and a config
        ScheduleSource.from_records(str(path)).choose(workload, cfg)
    # exactly the floor is possible in principle, one below is not; records given in memory name their index
    assert best_record([record(workload, cfg, Schedule(8, 8), floor)], workload, cfg).cycles == floor
    with pytest.raises(RecordsError, match=rf"^tuning record 1: claims {floor - 1:,} cycles"):
        best_record([record(workload, cfg, Schedule(8, 8), 5000).to_dict(),
                     record(workload, cfg, Schedule(8, 8), floor - 1).to_dict()], workload, cfg)
    # a record for another machine or workload is not this config's to judge
    assert best_schedule([record(workload, load_config("server"), Schedule(8, 8), 0)], workload, cfg) is None


def test_digest_is_written_and_checked(tmp_path, cfg, workload):
    from energon_tvm.executor import record_id

    path = tmp_path / "records.jsonl"
    rec = record(workload, cfg, Schedule(16, 16), 5000)
    append_records(path, [rec])
    (line,) = path.read_text().splitlines()
    d = json.loads(line)
    assert d["digest"] == hashlib.sha256(rec.to_json().encode()).hexdigest()
    assert d["digest"].startswith(record_id(rec))  # the id the compiler reports is the digest's head
    # an edit that keeps the old digest: cycles 5000 -> 50000 on line 2
    edited = line.replace('"cycles":5000', '"cycles":50000')
    path.write_text(line + "\n" + edited + "\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:2: tuning record refused: digest [0-9a-f]{16}\.\.\. "
                                           r"does not match the record's content"):
        read_records(path)
    path.write_text(line.replace(d["digest"], "not-hex") + "\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:1: .*digest = 'not-hex' must be 64 lowercase hex"):
        read_records(path)
    path.write_text(rec.to_json() + "\n")  # older files: no digest, still read
    assert read_records(path) == [rec]


def test_a_torn_final_line_is_skipped_and_removed_by_the_next_append(tmp_path, cfg, workload):
    path = tmp_path / "records.jsonl"
    recs = [record(workload, cfg, Schedule(16, 16), 5000), record(workload, cfg, Schedule(32, 32), 6000)]
    append_records(path, recs)
    torn = record(workload, cfg, Schedule(64, 64), 7000).to_line()[:100]
    with open(path, "a") as f:
        f.write(torn)  # what a writer killed mid-line leaves: no newline, not JSON
    with pytest.warns(UserWarning, match=r"records.jsonl:3: skipped a torn final line \(100 bytes, no newline, "
                                         r"not JSON\); the 2 record\(s\) before it are used"):
        assert read_records(path) == recs
    with pytest.warns(UserWarning, match=r"records.jsonl: removed a torn final line \(100 bytes"):
        append_records(path, recs[:1])
    assert len(path.read_text().splitlines()) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_records(path) == recs + recs[:1]
    # a complete final line without its newline is a record, and the next append ends it first
    path.write_text(recs[0].to_line())
    assert read_records(path) == recs[:1]
    append_records(path, recs[1:])
    assert read_records(path) == recs
    # torn in the middle of a UTF-8 sequence, too
    path.write_bytes(recs[0].to_line().encode() + b'\n{"config":"\xc3')
    with pytest.warns(UserWarning, match="records.jsonl:2: skipped a torn final line"):
        assert read_records(path) == recs[:1]


def test_a_malformed_line_in_the_middle_stays_an_error(tmp_path, cfg, workload):
    path = tmp_path / "records.jsonl"
    good = record(workload, cfg, Schedule(16, 16), 5000).to_line()
    path.write_text(good + "\n" + good[:100] + "\n" + good + "\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:2: not a JSON record"):
        read_records(path)
    path.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(RecordsError, match=r"records.jsonl:2: not a JSON record \(not UTF-8 at byte 0\)"):
        read_records(path)


def test_oversized_and_deeply_nested_records_are_refused(tmp_path, cfg, workload):
    from energon_tvm.tuner.records import MAX_RECORD_BYTES, MAX_RECORD_DEPTH, as_records

    path = tmp_path / "records.jsonl"
    good = record(workload, cfg, Schedule(16, 16), 5000).to_line()
    path.write_text(good + "\n" + " " * (MAX_RECORD_BYTES + 1) + "\n")
    with pytest.raises(RecordsError, match=rf"records.jsonl:2: line longer than {MAX_RECORD_BYTES} bytes"):
        read_records(path)
    path.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")  # past the JSON parser's recursion limit
    with pytest.raises(RecordsError, match=r"records.jsonl:2: tuning record nested too deeply to parse"):
        read_records(path)
    d = json.loads(good)
    d["workload"] = json.loads("[" * 40 + "]" * 40)  # parses, but no record nests so
    path.write_text(hostile_line(d) + "\n")
    with pytest.raises(RecordsError, match=rf"records.jsonl:1: tuning record nested 41 levels deep; a record nests "
                                           rf"at most {MAX_RECORD_DEPTH}"):
        read_records(path)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecordsError, match=r"^tuning record 0 nested 100002 levels deep"):
        as_records([{**json.loads(good), "workload": deep}])
    with pytest.raises(RecordsError, match=r"cycles = 1(0){17}\.\.\.(0){19} must be a non-negative integer \(at most"):
        as_records([{**record(workload, cfg, Schedule(16, 16), 5000).to_dict(), "cycles": 10 ** 400}])
