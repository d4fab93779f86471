"""Tuning records: the tuner's log and the compiler's input, one JSON object per line.

Each record is one measurement, replayable on its own (Allo's rule: the record is the artefact)::

    {"version": 1, "workload_key": "attn_b1_h12_...", "workload": {...AttentionWorkload.to_dict()},
     "config": "edge", "config_fingerprint": "<32 hex digits>", "profile": "<16 hex digits>",
     "schedule": {...Schedule.to_dict()}, "cycles": 43997, "instructions": 809, "error": null,
     "tuner": "xgb", "seed": 0, "trial": 17, "energy_pj": 2.1e7, "objective": "cycles",
     "digest": "<64 hex digits>"}

``cycles`` is null (and ``error`` says why) for a schedule that could not be measured; ``objective``
is what the session minimised (``cycles``, ``energy`` or ``edp``; ``cycles`` for records that do not
say) and ``energy_pj`` the run's energy (absent from older records). Records hold nothing that depends
on where or when they were measured, so the same session gives the same lines on any runner.
:func:`best_schedule` is what ``tvmc compile --tuning-records`` applies: the best record, in the
objective the records state, whose workload key and config fingerprint match, else None (and the
compiler falls back to the heuristic).

A records file is untrusted input, so what is read is checked:

* ``digest`` is the SHA-256 of the record's canonical JSON without the digest (:func:`record_digest`;
  its first 12 hex digits are the record id the compiler reports). A line whose digest does not match
  was edited or corrupted and is refused; a line without one (files written before digests) is read.
  The digest catches accidents, not forgery: anyone who can edit the file can recompute it.
* A record claiming fewer cycles than any schedule of its workload can take on its config
  (:func:`cycles_floor`) is refused where records meet a config, in :func:`best_record`.
* A torn final line (no newline and not JSON: what a writer killed mid-line leaves) is skipped with a
  warning, and the next :func:`append_records` removes it; any other malformed line is an error.
* A line longer than :data:`MAX_RECORD_BYTES` is refused unparsed (a file cannot take the reader's
  memory), a record nested deeper than :data:`MAX_RECORD_DEPTH` once parsed (the C parser guards its
  own recursion).

Every refusal is a :class:`RecordsError` naming the record's origin (``file:line`` when read from a
file; the line number travels on the record, :attr:`TuningRecord.origin`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..isa.config import HardwareConfig, _show  # _show: the one way of quoting hostile values
from ..isa.errors import ScheduleError
from ..schedules.bounds import CallBound, call_bound_from_counts
from ..schedules.schedule import Schedule, fits
from ..schedules.workload import AttentionWorkload
from .errors import RecordsError
from .objectives import OBJECTIVES, objective_value

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: appenders are not serialised
    fcntl = None

RECORD_VERSION = 1
_REQUIRED = ("workload_key", "config_fingerprint", "schedule", "cycles")

#: Longest line read as a record. A record is well under 2 KiB; a longer line is not one, and parsing it
#: whole would let a file take the reader's memory.
MAX_RECORD_BYTES = 1 << 20
#: Deepest nesting of JSON objects and arrays in a record (a record nests 5 deep: record, workload,
#: params, rounds, round). Deeper values could reach the recursion limit of whatever walks them later.
MAX_RECORD_DEPTH = 32
#: Most cycles a record may claim: the simulator's counters are 64-bit.
MAX_RECORD_CYCLES = (1 << 63) - 1


@dataclass(frozen=True)
class TuningRecord:
    workload_key: str
    config_fingerprint: str          # hex of HardwareConfig.fingerprint
    schedule: Schedule
    cycles: int | None               # None: not measurable (see error)
    error: str | None = None
    instructions: int = 0
    config: str = ""                 # config name, for people; matching uses the fingerprint
    workload: dict | None = field(default=None, compare=False)
    profile: str = ""                # digest of the sparsity profile the cycles were timed on
    tuner: str = ""
    seed: int | None = None
    trial: int | None = None
    energy_pj: float | None = None   # the run's energy (records older than it have none)
    objective: str = "cycles"        # what the session minimised (records older than it: cycles)
    # where the record was read ("records.jsonl:17"), for refusals; not part of the record itself
    origin: str = field(default="", compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.cycles is not None

    def to_dict(self) -> dict:
        return {"version": RECORD_VERSION, "workload_key": self.workload_key, "workload": self.workload,
                "config": self.config, "config_fingerprint": self.config_fingerprint, "profile": self.profile,
                "schedule": self.schedule.to_dict(), "cycles": self.cycles, "instructions": self.instructions,
                "error": self.error, "tuner": self.tuner, "seed": self.seed, "trial": self.trial,
                "energy_pj": self.energy_pj, "objective": self.objective}

    @property
    def score(self) -> float | None:
        """The value of the record's objective (lower is better), None when it was not measured."""
        return objective_value(self.objective, self.cycles, self.energy_pj)

    def to_json(self) -> str:
        """The record's canonical JSON (keys sorted, no spaces), without its digest."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_line(self) -> str:
        """The line :func:`append_records` writes: the canonical JSON with its ``digest`` (no newline)."""
        d = self.to_dict()
        d["digest"] = hashlib.sha256(self.to_json().encode()).hexdigest()
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> TuningRecord:
        """Raises ``ValueError``/``KeyError``/``TypeError``/``ScheduleError`` for a malformed record, a
        digest that does not match (:func:`read_records` turns them into a :class:`RecordsError` naming
        the line)."""
        if not isinstance(d, dict):
            raise TypeError(f"a record is a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise KeyError(f"missing field(s) {', '.join(missing)}")
        version = d.get("version", RECORD_VERSION)
        if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
            raise ValueError(f"record version {_show(version)} is not one this energon-tvm reads "
                             f"(1..{RECORD_VERSION})")
        if "digest" in d:
            _check_digest(d)
        cycles = d["cycles"]
        if cycles is not None and (not isinstance(cycles, int) or isinstance(cycles, bool)
                                   or not 0 <= cycles <= MAX_RECORD_CYCLES):
            raise ValueError(f"cycles = {_show(cycles)} must be a non-negative integer (at most "
                             f"{MAX_RECORD_CYCLES}) or null")
        if not isinstance(d["workload_key"], str) or not isinstance(d["config_fingerprint"], str):
            raise TypeError("workload_key and config_fingerprint must be strings")
        if not isinstance(d["schedule"], dict):
            raise TypeError(f"schedule must be an object, got {type(d['schedule']).__name__}")
        objective = d.get("objective", "cycles")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective = {_show(objective)} must be one of {', '.join(OBJECTIVES)}")
        energy = d.get("energy_pj")
        if energy is not None and (not isinstance(energy, (int, float)) or isinstance(energy, bool)
                                   or not 0 <= energy < math.inf):
            raise ValueError(f"energy_pj = {_show(energy)} must be a non-negative finite number or null")
        return cls(workload_key=d["workload_key"], config_fingerprint=d["config_fingerprint"],
                   schedule=Schedule.from_dict(d["schedule"]), cycles=cycles, error=d.get("error"),
                   instructions=int(d.get("instructions") or 0), config=str(d.get("config", "")),
                   workload=d.get("workload"), profile=str(d.get("profile", "")), tuner=str(d.get("tuner", "")),
                   seed=d.get("seed"), trial=d.get("trial"),
                   energy_pj=None if energy is None else float(energy), objective=objective)


def record_digest(d: dict) -> str:
    """SHA-256 (hex) of a record dict's canonical JSON, its own ``digest`` left out."""
    body = {k: v for k, v in d.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_digest(d: dict) -> None:
    got = d["digest"]
    if not isinstance(got, str) or not re.fullmatch(r"[0-9a-f]{64}", got):
        raise ValueError(f"digest = {_show(got)} must be 64 lowercase hex digits")
    want = record_digest(d)
    if got != want:
        raise _DigestMismatch(f"digest {got[:16]}... does not match the record's content (SHA-256 {want[:16]}...): "
                         f"the line was edited or corrupted")


def _depth(value) -> int:
    """Deepest nesting of objects/arrays in a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


class _DigestMismatch(ValueError):
    """A record whose digest is not that of its content."""


_MALFORMED = (KeyError, TypeError, ValueError, OverflowError, ScheduleError)


def _parse_line(raw: bytes, where: str) -> TuningRecord:
    """One record from one line's bytes; ``json.JSONDecodeError``/``UnicodeDecodeError`` propagate (the
    caller tells a torn final line from a malformed one), everything else is a :class:`RecordsError`."""
    text = raw.decode("utf-8")
    try:
        d = json.loads(text)  # the C parser: recursion-guarded, a RecursionError past ~1000 levels
    except RecursionError:
        raise RecordsError(f"{where}: tuning record nested too deeply to parse; a record nests at most "
                           f"{MAX_RECORD_DEPTH} levels") from None
    # a real record has a dozen brackets: only a line with more is walked
    if text.count("[") + text.count("{") > MAX_RECORD_DEPTH and (depth := _depth(d)) > MAX_RECORD_DEPTH:
        raise RecordsError(f"{where}: tuning record nested {depth} levels deep; a record nests at most "
                           f"{MAX_RECORD_DEPTH}")
    try:
        return dataclasses.replace(TuningRecord.from_dict(d), origin=where)
    except _MALFORMED as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        what = "tuning record refused" if isinstance(err, _DigestMismatch) else "malformed tuning record"
        raise RecordsError(f"{where}: {what}: {msg}") from None


def read_records(path: str | Path) -> list[TuningRecord]:
    """Every record of a JSON-lines file (blank lines skipped); parsed with ``json``, never unpickled.

    Each record's :attr:`~TuningRecord.origin` is ``path:line``. A torn final line is skipped with a
    warning; any other bad line is a :class:`RecordsError` naming the file and the 1-based line.
    """
    path = Path(path)
    out = []
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(iter(lambda: f.readline(MAX_RECORD_BYTES + 1), b""), 1):
                terminated = raw.endswith(b"\n")
                body = raw[:-1] if terminated else raw
                if len(body) > MAX_RECORD_BYTES:
                    raise RecordsError(f"{path}:{n}: line longer than {MAX_RECORD_BYTES} bytes; a tuning record "
                                       f"is one short JSON line")
                if not body.strip():
                    continue
                try:
                    out.append(_parse_line(body, f"{path}:{n}"))
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    if not terminated:  # the last line, cut short: what a killed writer leaves
                        warnings.warn(f"{path}:{n}: skipped a torn final line ({len(body)} bytes, no newline, "
                                      f"not JSON); the {len(out)} record(s) before it are used", stacklevel=2)
                        break
                    if isinstance(err, UnicodeDecodeError):
                        raise RecordsError(f"{path}:{n}: not a JSON record (not UTF-8 at byte {err.start})") \
                            from None
                    raise RecordsError(f"{path}:{n}: not a JSON record ({err.msg} at column {err.colno})") from None
    except FileNotFoundError:
        raise RecordsError(f"tuning records file {str(path)!r} does not exist") from None
    except OSError as err:
        raise RecordsError(f"{path}: cannot read tuning records: {err.strerror or err}") from None
    return out


def _end_at_a_line(f, path) -> None:
    """Make the file ``f`` (opened ``a+b``) end with a newline before an append: a torn final line (no
    newline, not JSON) left by a killed writer is cut off, so it cannot run into the new records and
    turn into a malformed line mid-file; a complete final line without a newline gets one."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = max(0, size - MAX_RECORD_BYTES - 1)
    f.seek(start)
    tail = f.read(size - start)
    cut = tail.rfind(b"\n")
    if cut < 0 and start > 0:
        raise RecordsError(f"{path}: final line is longer than {MAX_RECORD_BYTES} bytes and has no newline; "
                           f"not a tuning records file")
    start += cut + 1
    tail = tail[cut + 1:]
    try:
        json.loads(tail)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        f.truncate(start)
        warnings.warn(f"{path}: removed a torn final line ({len(tail)} bytes, no newline, not JSON) before "
                      f"appending", stacklevel=3)
        return
    f.write(b"\n")


def append_records(path: str | Path, records: Iterable[TuningRecord]) -> None:
    """Append records as JSON lines, each with its digest. A session appends after every batch, so a killed
    session keeps what it measured; the batch is one ``write`` of complete lines, flushed, so a writer
    killed mid-batch leaves at most a torn final line, which :func:`read_records` skips and the next
    append removes. Appenders on one machine are serialised by a lock on the file."""
    data = "".join(r.to_line() + "\n" for r in records).encode()
    try:
        with open(path, "a+b", buffering=0) as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            _end_at_a_line(f, path)
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
    except OSError as err:
        raise RecordsError(f"cannot write tuning records to {str(path)!r}: {err.strerror or err}") from None


def as_records(records) -> list[TuningRecord]:
    """Records from a JSON-lines path, or from TuningRecords / record dicts (validated)."""
    if isinstance(records, (str, Path)):
        return read_records(records)
    out = []
    for n, r in enumerate(records):
        if isinstance(r, TuningRecord):
            out.append(r)
        else:
            if (depth := _depth(r)) > MAX_RECORD_DEPTH:
                raise RecordsError(f"tuning record {n} nested {depth} levels deep; a record nests at most "
                                   f"{MAX_RECORD_DEPTH}")
            try:
                out.append(dataclasses.replace(TuningRecord.from_dict(r), origin=f"tuning record {n}"))
            except (*_MALFORMED, RecursionError) as err:
                msg = err.args[0] if isinstance(err, KeyError) and err.args else err
                raise RecordsError(f"malformed tuning record {n} {_show(r)}: {msg}") from None
    return out


def cycles_floor(workload: AttentionWorkload, cfg: HardwareConfig) -> CallBound | None:
    """The fewest cycles any schedule of ``workload`` can take on ``cfg``, whatever its data: the count
    form of :mod:`~energon_tvm.schedules.bounds` with no pair a candidate or kept (its weakest form: the
    bound only grows with the counts). None when no schedule fits (records for it are skipped anyway)."""
    try:
        return call_bound_from_counts(workload, cfg, 0, [0] * len(workload.params.rounds))
    except ScheduleError:
        return None


def check_cycles(record: TuningRecord, floor: CallBound | None, cfg: HardwareConfig, where: str = "") -> None:
    """Refuse a record claiming fewer cycles than ``floor`` (:func:`cycles_floor` of its workload on
    ``cfg``) with a :class:`RecordsError` naming its origin."""
    if floor is not None and record.ok and record.cycles < floor.cycles:
        raise RecordsError(f"{record.origin or where or 'tuning record'}: claims {record.cycles:,} cycles for "
                           f"{record.workload_key} on config {cfg.name!r}, but no schedule of it can take fewer "
                           f"than {floor.cycles:,} ({floor.binds} bound with no pair kept); refused")


def round_rules(params) -> tuple[str, ...]:
    """The threshold rule of each filter round of an :class:`~energon_tvm.isa.numerics.MPMRFParams`: what
    names its selection policy (``params.policy``) round by round."""
    return tuple(r.rule for r in params.rounds)


def same_selection(record: TuningRecord, workload: AttentionWorkload) -> bool:
    """Whether ``record`` was measured on a workload selecting keys as ``workload`` does: the same rule in
    every round, so the same policy. The workload key names a round's rule only as MP-MRF's or not, so
    a top-k or Sanger round can share its key with a gap round (or with each other); the record's own
    workload tells them apart. A record without its workload (written before records carried it, and
    before the ranking rules existed) is for MP-MRF's rounds, and only used for them."""
    if record.workload is None:
        return workload.params.policy in ("mpmrf", "dense")
    try:
        return round_rules(AttentionWorkload.from_dict(record.workload).params) == round_rules(workload.params)
    except (*_MALFORMED, AttributeError):
        return False


def best_record(records, workload: AttentionWorkload, cfg: HardwareConfig) -> TuningRecord | None:
    """The best measured record for ``workload`` on ``cfg`` in the objective the records state (first of
    equals), or None.

    ``records``: a records file path, or a list of :class:`TuningRecord` or record dicts. A record
    matches on the workload key and the config fingerprint; one whose schedule no longer fits (records
    from an older scheduler) is skipped. Each record states the objective its session minimised
    (``cycles`` when it does not say): the last matching record's objective decides, and the record
    with the lowest value of it among those of that objective wins. A matching record that claims fewer
    cycles than :func:`cycles_floor` is a :class:`RecordsError` naming its origin. A record of a workload
    that selects by another policy (another rule in some round) never matches (:func:`same_selection`).
    """
    key, fp = workload.key(), cfg.fingerprint.hex()
    matching = []
    floor: CallBound | None = None
    checked = False
    for n, r in enumerate(as_records(records)):
        if not (r.ok and r.workload_key == key and r.config_fingerprint == fp and same_selection(r, workload)):
            continue
        if not checked:  # once per call: the bound takes a millisecond
            floor, checked = cycles_floor(workload, cfg), True
        check_cycles(r, floor, cfg, f"tuning record {n}")
        matching.append(r)
    if not matching:
        return None
    objective = matching[-1].objective
    best = None
    for r in matching:
        score = r.score if r.objective == objective else None
        if score is not None and (best is None or score < best.score) and fits(workload, r.schedule, cfg):
            best = r
    return best


def best_schedule(records, workload: AttentionWorkload, cfg: HardwareConfig) -> Schedule | None:
    """The schedule of :func:`best_record`, or None when no record matches (use the heuristic then)."""
    r = best_record(records, workload, cfg)
    return None if r is None else r.schedule
