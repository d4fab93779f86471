"""Meaning checks of a loaded program: what it claims to be built for is what it is.

:meth:`Program.from_bytes` checks a binary's form (checksum, canonical sections, instruction fields in
range). :func:`check_program` checks what an attention program claims, before anything is allocated
or run from its metadata: the workload record parses, its schedule parses and fits the program's
machine, and the metadata, the memory map and the register header are exactly what the emitter writes
for that workload and schedule. Programs are emitted deterministically, so anything else is not one
of ours. The code past the header is not compared with a fresh emission (the simulator's traps guard
each instruction's addresses and values at run time).

Every rejection is a :class:`BinaryFormatError` of one line naming the field, the value seen and what it
must be.
"""

from __future__ import annotations

from ..isa.errors import BinaryFormatError, ScheduleError
from ..isa.program import Program, canonical_json
from .emit import plan_memory, program_header, program_meta
from .schedule import Schedule, check_plan, plan_tiling
from .workload import AttentionWorkload

SHOWN = 60  # characters of a value a message quotes


def _show(value) -> str:
    text = canonical_json(value).decode()
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _parse(meta: dict, key: str, parse):
    if key not in meta:
        raise BinaryFormatError(f"metadata has no {key!r} record; an attention program carries the {key} it was "
                                f"built for")
    record = meta[key]
    if not isinstance(record, dict):
        raise BinaryFormatError(f"metadata {key} = {_show(record)} must be an object (the {key} record)")
    try:
        return parse(record)
    except (ScheduleError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise BinaryFormatError(f"metadata {key} record is invalid: {str(err)[:200]}") from None


_ABSENT = object()


def _first_difference(seen, expected, path: str) -> tuple[str, object, object] | None:
    """(path, seen, expected) of the first place two JSON values differ (in type too: 1 is not true);
    a key one side lacks is :data:`_ABSENT` there."""
    if isinstance(seen, dict) and isinstance(expected, dict):
        for key in sorted(set(seen) | set(expected)):
            diff = _first_difference(seen.get(key, _ABSENT), expected.get(key, _ABSENT), f"{path}.{key}")
            if diff is not None:
                return diff
        return None
    if seen is _ABSENT or expected is _ABSENT:
        return path, seen, expected
    return None if canonical_json(seen) == canonical_json(expected) else (path, seen, expected)


def check_program(program: Program) -> AttentionWorkload:
    """The workload an attention program was built for, once its metadata, memory map and register
    header are shown to be the emitter's for that workload and schedule on the program's machine."""
    cfg, meta = program.config, program.meta
    workload = _parse(meta, "workload", AttentionWorkload.from_dict)
    schedule = _parse(meta, "schedule", Schedule.from_dict)
    try:
        check_plan(plan_tiling(workload, schedule, cfg), cfg)
    except ScheduleError as err:
        raise BinaryFormatError(f"metadata schedule {schedule.to_json()} cannot run workload {workload.key()} on "
                                f"{cfg.name}: {err}") from None
    seen = {k: v for k, v in meta.items() if k != "labels"}
    diff = _first_difference(seen, program_meta(workload, schedule), "metadata")
    if diff is not None:  # a record that parses but is not what the emitter writes (1.5 read as 1, ...)
        path, got, want = diff
        if want is _ABSENT:
            raise BinaryFormatError(f"{path} = {_show(got)} is not part of an attention program's metadata")
        seen_text = "is missing" if got is _ABSENT else f"= {_show(got)}"
        raise BinaryFormatError(f"{path} {seen_text}; a program for workload {workload.key()} has {_show(want)}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) != len(program.code):
        what = f"a list of {len(labels)}" if isinstance(labels, list) else _show(labels)
        raise BinaryFormatError(f"metadata labels = {what}; must be a list of {len(program.code)} strings, one "
                                f"per instruction")
    bad = next((i for i, label in enumerate(labels) if not isinstance(label, str)), None)
    if bad is not None:
        raise BinaryFormatError(f"metadata labels[{bad}] = {_show(labels[bad])}; labels must be strings")
    _check_memory_map(program, workload)
    header = program_header(workload, program.memory_map)
    for pc, (got, want) in enumerate(zip(program.code, header)):
        if got != want:
            raise BinaryFormatError(f"instruction {pc} is {got.op.mnemonic} {got.as_dict()}; a program for "
                                    f"workload {workload.key()} starts with SETR {want.as_dict()} there")
    if len(program.code) <= len(header):
        raise BinaryFormatError(f"program has {len(program.code)} instructions: not even its {len(header)}-"
                                f"instruction register header and HALT")
    return workload


def _check_memory_map(program: Program, workload: AttentionWorkload) -> None:
    got, want = program.memory_map.regions, plan_memory(workload).regions
    if [r.name for r in got] != [r.name for r in want]:
        raise BinaryFormatError(f"memory map regions are {_show([r.name for r in got])}; a program for workload "
                                f"{workload.key()} has {_show([r.name for r in want])}")
    for g, r in zip(got, want):
        if g != r:
            field, seen, expected = next((k, v, r.to_dict()[k]) for k, v in g.to_dict().items()
                                         if v != r.to_dict()[k])
            raise BinaryFormatError(f"memory map region {g.name!r} has {field} = {_show(seen)}; a program for "
                                    f"workload {workload.key()} has {_show(expected)}")


__all__ = ["check_program"]
