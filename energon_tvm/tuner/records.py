"""Tuning records: the tuner's log and the compiler's input, one JSON object per line.

Each record is one measurement, replayable on its own (Allo's rule: the record is the artefact)::

    {"version": 1, "workload_key": "attn_b1_h12_...", "workload": {...AttentionWorkload.to_dict()},
     "config": "edge", "config_fingerprint": "<32 hex digits>", "profile": "<16 hex digits>",
     "schedule": {...Schedule.to_dict()}, "cycles": 43997, "instructions": 809, "error": null,
     "tuner": "xgb", "seed": 0, "trial": 17}

``cycles`` is null (and ``error`` says why) for a schedule that could not be measured. Records hold
nothing that depends on where or when they were measured, so the same session gives the same lines
on any runner. :func:`best_schedule` is what ``tvmc compile --tuning-records`` applies: the fastest
record whose workload key and config fingerprint match, else None (and the compiler falls back to
the heuristic).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..isa.config import HardwareConfig
from ..isa.errors import ScheduleError
from ..schedules.schedule import Schedule, fits
from ..schedules.workload import AttentionWorkload
from .errors import RecordsError

RECORD_VERSION = 1
_REQUIRED = ("workload_key", "config_fingerprint", "schedule", "cycles")


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

    @property
    def ok(self) -> bool:
        return self.cycles is not None

    def to_dict(self) -> dict:
        return {"version": RECORD_VERSION, "workload_key": self.workload_key, "workload": self.workload,
                "config": self.config, "config_fingerprint": self.config_fingerprint, "profile": self.profile,
                "schedule": self.schedule.to_dict(), "cycles": self.cycles, "instructions": self.instructions,
                "error": self.error, "tuner": self.tuner, "seed": self.seed, "trial": self.trial}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> TuningRecord:
        """Raises ``ValueError``/``KeyError``/``TypeError``/``ScheduleError`` for a malformed record
        (:func:`read_records` turns them into a :class:`RecordsError` naming the line)."""
        if not isinstance(d, dict):
            raise TypeError(f"a record is a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise KeyError(f"missing field(s) {', '.join(missing)}")
        version = d.get("version", RECORD_VERSION)
        if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
            raise ValueError(f"record version {version!r} is not one this energon-tvm reads "
                             f"(1..{RECORD_VERSION})")
        cycles = d["cycles"]
        if cycles is not None and (not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 0):
            raise ValueError(f"cycles = {cycles!r} must be a non-negative integer or null")
        if not isinstance(d["workload_key"], str) or not isinstance(d["config_fingerprint"], str):
            raise TypeError("workload_key and config_fingerprint must be strings")
        if not isinstance(d["schedule"], dict):
            raise TypeError(f"schedule must be an object, got {type(d['schedule']).__name__}")
        return cls(workload_key=d["workload_key"], config_fingerprint=d["config_fingerprint"],
                   schedule=Schedule.from_dict(d["schedule"]), cycles=cycles, error=d.get("error"),
                   instructions=int(d.get("instructions") or 0), config=str(d.get("config", "")),
                   workload=d.get("workload"), profile=str(d.get("profile", "")), tuner=str(d.get("tuner", "")),
                   seed=d.get("seed"), trial=d.get("trial"))


def read_records(path: str | Path) -> list[TuningRecord]:
    """Every record of a JSON-lines file (blank lines skipped); parsed with ``json``, never unpickled."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordsError(f"tuning records file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecordsError(f"{path}: cannot read tuning records: {err}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(TuningRecord.from_dict(json.loads(line)))
        except json.JSONDecodeError as err:
            raise RecordsError(f"{path}:{n}: not a JSON record ({err.msg} at column {err.colno})") from None
        except (KeyError, TypeError, ValueError, ScheduleError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise RecordsError(f"{path}:{n}: malformed tuning record: {msg}") from None
    return out


def append_records(path: str | Path, records: Iterable[TuningRecord]) -> None:
    """Append records as JSON lines (a session appends after every batch, so a killed session keeps
    what it measured)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(r.to_json() + "\n")
    except OSError as err:
        raise RecordsError(f"cannot write tuning records to {str(path)!r}: {err.strerror or err}") from None


def as_records(records) -> list[TuningRecord]:
    """Records from a JSON-lines path, or from TuningRecords / record dicts (validated)."""
    if isinstance(records, (str, Path)):
        return read_records(records)
    out = []
    for r in records:
        if isinstance(r, TuningRecord):
            out.append(r)
        else:
            try:
                out.append(TuningRecord.from_dict(r))
            except (KeyError, TypeError, ValueError, ScheduleError) as err:
                raise RecordsError(f"malformed tuning record {r!r}: {err}") from None
    return out


def best_record(records, workload: AttentionWorkload, cfg: HardwareConfig) -> TuningRecord | None:
    """The fastest measured record for ``workload`` on ``cfg`` (first of equals), or None.

    ``records``: a records file path, or a list of :class:`TuningRecord` or record dicts. A record
    matches on the workload key and the config fingerprint; one whose schedule no longer fits (records
    from an older scheduler) is skipped.
    """
    key, fp = workload.key(), cfg.fingerprint.hex()
    best = None
    for r in as_records(records):
        if r.ok and r.workload_key == key and r.config_fingerprint == fp and (best is None or r.cycles < best.cycles):
            if fits(workload, r.schedule, cfg):
                best = r
    return best


def best_schedule(records, workload: AttentionWorkload, cfg: HardwareConfig) -> Schedule | None:
    """The schedule of :func:`best_record`, or None when no record matches (use the heuristic then)."""
    r = best_record(records, workload, cfg)
    return None if r is None else r.schedule
