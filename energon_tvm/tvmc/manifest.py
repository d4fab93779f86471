"""What a package's manifest must say, declared once: its schema, and what its fields must mean.

:data:`SCHEMA` is the manifest's shape (each key's type; nested records, lists and maps);
:func:`check_schema` holds a parsed manifest to it, naming the first field that is missing or of the
wrong type. :func:`check_meaning` then holds the fields to what they describe: the hardware config
record is a valid config whose fingerprint is the one stated, each call's program carries that same
config and the workload and schedule the call states, and the parameters parse. A checksum proves a
member's bytes; these checks prove the manifest describes them. Both raise
:class:`~energon_tvm.tvmc.errors.PackageError`; neither imports TVM.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..schedules.cost import OBJECTIVES
from .errors import PackageError


@dataclass(frozen=True)
class Opt:
    """A key that may be absent or null."""

    spec: object


@dataclass(frozen=True)
class MapOf:
    """An object whose keys are any strings and whose values all match ``spec``."""

    spec: object


@dataclass(frozen=True)
class Text:
    """A string matching ``pattern`` (what it is, for the error)."""

    pattern: str
    what: str


NUMBER = (int, float)
HEX_DIGEST = Text(r"[0-9a-f]{64}", "a SHA-256 in hex")
#: a config's name is a label (the machine it was built for), never a path
CONFIG_NAME = Text(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", "a config name (letters, digits, _ . + -)")
TENSOR = {"name": str, "shape": [int], "dtype": str}
#: an LLVM CPU name (x86-64-v3, skylake-avx512) and an LLVM CPU feature name (avx2, sse4.2, avx512f)
CPU_NAME = Text(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "an LLVM CPU name (letters, digits, _ . -)")
CPU_FEATURE = Text(r"[a-z0-9][a-z0-9_.-]{0,63}", "an LLVM CPU feature name (lower-case letters, digits, _ . -)")
CALL = {"site": str, "workload": dict, "schedule": dict, "schedule_source": Text(r"heuristic|tuning records",
        "'heuristic' or 'tuning records'"), "schedule_record": Opt(Text(r"[0-9a-f]{12}", "12 hex digits")),
        # what the heuristic ranked by or the record was tuned for (absent in packages older than the choice)
        "schedule_objective": Opt(Text("|".join(OBJECTIVES), "one of " + ", ".join(OBJECTIVES))),
        "program": Text(r"programs/call_\d{3,6}\.bin", "a programs/call_NNN.bin member")}
SCHEMA = {
    "format": str,
    "format_version": int,
    "files": MapOf(HEX_DIGEST),
    "versions": {"energon_tvm": str, "tvm": str, "python": Opt(str)},
    "model": {"path": str, "format": str, "sha256": Opt(HEX_DIGEST)},
    "target": str,
    "offload": bool,
    "attention_sites": Opt(int),
    "config": {"name": CONFIG_NAME, "fingerprint": Text(r"[0-9a-f]{32}", "32 hex digits"), "values": dict},
    "params": dict,
    "inputs": [TENSOR],
    "outputs": [TENSOR],
    "calls": [CALL],
    "offloads": [dict],
    "compile_seconds": Opt(MapOf(NUMBER)),
    "build": Opt(dict),
    # the thresholds file the sites' parameters came from (tvmc compile --target-energon-thresholds)
    "thresholds": Opt({"file": str, "sha256": HEX_DIGEST, "rule": str, "budget": NUMBER, "bits": [[int]],
                       "sites": [{"name": str, "heads": int, "values": [[NUMBER]], "mass_mean": [NUMBER],
                                  "kept_ratio": [[NUMBER]], "flagged": [int]}]}),
    # the CPU the host library was built for and the features it needs (energon_tvm.host.HostCPU); absent
    # in packages written before it was recorded, which were all built for generic x86-64
    "host": Opt({"mcpu": Opt(CPU_NAME), "features": [CPU_FEATURE], "detected": Opt(bool), "fast_math": Opt(bool)}),
}


def _kind(spec) -> str:
    if isinstance(spec, Opt):
        return _kind(spec.spec)
    if isinstance(spec, Text):
        return spec.what
    if isinstance(spec, MapOf) or isinstance(spec, dict) or spec is dict:
        return "an object"
    if isinstance(spec, list) or spec is list:
        return "a list"
    if spec is NUMBER:
        return "a number"
    return {str: "a string", int: "an integer", bool: "true or false"}.get(spec, str(spec))


def _matches(value, spec) -> bool:
    if spec is NUMBER:
        return isinstance(value, NUMBER) and not isinstance(value, bool) and math.isfinite(value)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Text):
        return isinstance(value, str) and re.fullmatch(spec.pattern, value) is not None
    if isinstance(spec, (dict, MapOf)) or spec is dict:
        return isinstance(value, dict)
    if isinstance(spec, list) or spec is list:
        return isinstance(value, list)
    return isinstance(value, spec)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_schema(path: Path, doc, spec=None, where: str = "manifest") -> None:
    """Hold ``doc`` to ``spec`` (default :data:`SCHEMA`); the first mismatch is one PackageError
    naming the field, what it is and what it must be. Keys the schema does not name are allowed (a
    newer writer's additions); the manifest's depth is bounded before this runs."""
    spec = SCHEMA if spec is None else spec
    stack = [(doc, spec, where)]
    while stack:
        value, s, at = stack.pop()
        if isinstance(s, Opt):
            if value is None:
                continue
            s = s.spec
        if not _matches(value, s):
            raise PackageError(f"{path}: {at} is {_shown(value)}; it must be {_kind(s)}")
        if isinstance(s, dict):
            for key, sub in s.items():
                if key not in value:
                    if isinstance(sub, Opt):
                        continue
                    raise PackageError(f"{path}: {at} has no {key!r} (it must be {_kind(sub)})")
                stack.append((value[key], sub, f"{at}.{key}"))
        elif isinstance(s, MapOf):
            stack.extend((v, s.spec, f"{at}[{k!r}]") for k, v in value.items())
        elif isinstance(s, list) and s:
            stack.extend((v, s[0], f"{at}[{i}]") for i, v in enumerate(value))


def check_meaning(path: Path, manifest: dict, programs: dict) -> None:
    """Hold the manifest to what it describes: ``programs`` maps each call's member name to its decoded
    :class:`~energon_tvm.isa.program.Program`. The config record must be a valid config with the stated
    fingerprint; every program must carry that config and the workload and schedule its call states;
    the parameters and each call's workload and schedule must parse; a host-only package has no calls."""
    from ..isa.config import HardwareConfig
    from ..isa.errors import EnergonError
    from ..isa.numerics import MPMRFParams
    from ..schedules import AttentionWorkload, Schedule

    config = manifest["config"]
    try:
        cfg = HardwareConfig.from_dict(config["values"])
    except EnergonError as err:
        raise PackageError(f"{path}: manifest config.values is not a hardware config: {err}") from None
    if cfg.fingerprint.hex() != config["fingerprint"]:
        raise PackageError(f"{path}: manifest config.fingerprint {config['fingerprint']} is not the fingerprint of "
                           f"its config.values ({cfg.fingerprint.hex()}): the manifest was edited")
    try:
        MPMRFParams.from_dict(manifest["params"])
    except ValueError as err:
        raise PackageError(f"{path}: manifest params: {err}") from None
    sites_found = manifest.get("attention_sites")
    if sites_found is not None and not len(manifest["calls"]) <= sites_found <= 1 << 20:
        raise PackageError(f"{path}: manifest attention_sites is {sites_found}, but the package has "
                           f"{len(manifest['calls'])} offloaded call(s)")
    if not manifest["offload"] and manifest["calls"]:
        raise PackageError(f"{path}: a host-only package (offload false) lists {len(manifest['calls'])} "
                           f"accelerator call(s)")
    sites = set()
    for i, call in enumerate(manifest["calls"]):
        where = f"manifest calls[{i}] (site {call['site']!r})"
        if call["site"] in sites:
            raise PackageError(f"{path}: {where} repeats a site")
        sites.add(call["site"])
        try:
            AttentionWorkload.from_dict(call["workload"])
            Schedule.from_dict(call["schedule"])
        except EnergonError as err:
            raise PackageError(f"{path}: {where}: {err}") from None
        prog = programs[call["program"]]
        if prog.config.fingerprint != cfg.fingerprint:
            raise PackageError(f"{path}: {where}: its program is for config {prog.config.name} "
                               f"({prog.config.fingerprint.hex()}); the manifest says {config['name']} "
                               f"({config['fingerprint']})")
        for key in ("workload", "schedule"):
            built = prog.meta.get(key)
            if built != call[key]:
                fields = sorted(set(built or {}) | set(call[key]), key=str)
                diff = next((f for f in fields if (built or {}).get(f, _ABSENT) != call[key].get(f, _ABSENT)), None)
                raise PackageError(f"{path}: {where} states a {key} its program was not built for: {key}.{diff} is "
                                   f"{_shown(call[key].get(diff, _ABSENT))} in the manifest, "
                                   f"{_shown((built or {}).get(diff, _ABSENT))} in the program")


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()
