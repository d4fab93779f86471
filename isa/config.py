"""Hardware configuration of the Energon co-processor: one immutable object, every derived size here.

A configuration is built from a named data file (``edge``, ``server`` in ``configs/``), from a user's
TOML file with the same sections, or from the dict :meth:`HardwareConfig.to_dict` writes (a program
binary carries its config so). The assembler, scheduler and simulator all take it explicitly; no part
of energon-tvm reads hardware numbers from anywhere else. Every way of building one runs the same
validation (``__post_init__``), so a config from a file, a dict or ``replace`` obeys the same rules.

Beyond its type and sign, every rate, count and energy lies in a physically meaningful range, so that a
well-typed but absurd value (a 1e-300 GHz clock, a 2^30-byte burst) is refused by name, with the value
seen and the range, instead of turning into a 305-digit cycle count. The ranges are generous by orders
of magnitude around any machine one could build; :data:`PHYSICAL_RANGES` and
:data:`ENERGY_RANGES` hold them, each with its reason, and the list below is made from them.

A config file is read with ``tomllib`` (never executed), at most :data:`MAX_TOML_BYTES` of it; arrays
or tables nested past the parser's recursion limit are a ConfigError, not a RecursionError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import reprlib
import sys
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: On-chip buffers, in the order the ISA numbers them.
BUFFERS = ("q", "kplane", "score", "index", "kv", "out", "bias", "param")

#: Bytes per element as each buffer stores it (index holds bits: 1/8).
PARAM_BYTES_PER_HEAD = 16  # float64 qk_scale, float64 v_scale

#: Largest value of any count, size or rate parameter. No machine comes near it; the bound keeps every
#: derived size a machine word and every derived rate a finite float, whatever a file or binary says.
PARAM_MAX = (1 << 32) - 1

#: Physically meaningful range of each rate and count: field -> (lowest, highest, unit, why). Checked
#: after the field's type and sign, in ``HardwareConfig.__post_init__``.
PHYSICAL_RANGES: dict[str, tuple[float, float, str, str]] = {
    "clock_ghz": (0.01, 100, "GHz", "10 MHz is slower than a microcontroller, 100 GHz faster than any CMOS clock"),
    "fu_macs_per_cycle": (1, 1 << 20, "MACs", "a million multipliers is 16x a TPU v1's 65,536"),
    "fu_select_per_cycle": (1, 1 << 20, "compares", "no more comparators than the largest multiplier array"),
    "au_macs_per_cycle": (1, 1 << 20, "MACs", "a million multipliers is 16x a TPU v1's 65,536"),
    "au_exp_per_cycle": (1, 1 << 20, "exponentials", "no more exponential units than the largest multiplier array"),
    "au_pipeline_cycles": (0, 10_000, "cycles", "a pipeline 10,000 stages deep would be nothing but registers"),
    "max_head_dim": (8, 4096, "elements", "16x the widest attention head of published models, 256"),
    "dram_bandwidth_gbps": (0.01, 100_000, "GB/s", "10 MB/s is a serial flash, 100 TB/s beyond any HBM stack"),
    "dram_latency_ns": (0.1, 1e6, "ns", "0.1 ns is a few gate delays, 1 ms is a disk, not a memory"),
    "dram_burst_bytes": (8, 4096, "bytes", "a DRAM burst is one bus word at least and a page at most"),
    "dram_request_cycles": (0, 10_000, "cycles", "10,000 cycles per request is a network round trip, not DRAM"),
    "dram_outstanding_requests": (1, 256, "requests", "each transfer in flight holds a tracking entry; 256 is "
                                  "beyond any DMA engine's request queue"),
}

#: The same for every entry of an :class:`EnergyTable` (picojoules per action; ``leakage_mw`` milliwatts).
ENERGY_RANGES: dict[str, tuple[float, float, str, str]] = {
    "per action": (0, 1e6, "pJ", "a microjoule per action is 400x a whole 64-bit DRAM access"),
    "leakage_mw": (0, 1e6, "mW", "a kilowatt of leakage is not one chip"),
}

MAX_TOML_BYTES = 1 << 20  # a config file is a few KiB; a larger one is not a config


def _show(value: Any) -> str:
    """``repr(value)`` cut to a line: error messages quote values from hostile files and binaries."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlong = 40
    try:
        return short.repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's int -> str digit limit
        return f"<{type(value).__name__} too large to show>"


def _is_number(value: Any) -> bool:
    """An int or a float (not a bool) that converts to a finite float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) and 1 <= x < 1e7 else f"{x:g}"


def _outside(value: float, limits: tuple[float, float, str, str]) -> str | None:
    """Why ``value`` is outside ``limits`` (a range of :data:`PHYSICAL_RANGES`), or None."""
    lo, hi, unit, why = limits
    if lo <= value <= hi:
        return None
    return f"is outside the physically meaningful range {_num(lo)} .. {_num(hi)} {unit} ({why})"


def _ranges_doc() -> str:
    lines = [f"* ``{name}``: {_num(lo)} .. {_num(hi)} {unit} ({why})"
             for name, (lo, hi, unit, why) in {**PHYSICAL_RANGES, **{f"energy {k}": v for k, v in
                                                                    ENERGY_RANGES.items()}}.items()]
    return "\nThe physically meaningful ranges:\n\n" + "\n".join(lines) + "\n"


__doc__ += _ranges_doc()


def _check_fields(d: Any, names: tuple[str, ...], what: str) -> dict:
    """``d`` as a dict with exactly the keys ``names``, else a ConfigError naming what differs."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} = {_show(d)} must be a dict with the fields {', '.join(names)}")
    missing = [n for n in names if n not in d]
    if missing:
        raise ConfigError(f"{what}: missing field(s) {', '.join(missing)}; every field of "
                          f"{', '.join(names)} must be present")
    extra = sorted(_show(k) for k in d if k not in names)
    if extra:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(extra)}; the fields are {', '.join(names)}")
    return d


@dataclass(frozen=True)
class EnergyTable:
    """Energy per action in picojoules (sources: ``configs/energy_45nm.toml``; ``dram_per_byte`` from the
    machine's ``[dram] energy_pj_per_bit``, in ``configs/edge.toml`` and ``configs/server.toml``)."""

    name: str
    fu_mac_4b: float
    au_mac_16b: float
    au_exp: float
    fu_compare: float
    au_div: float
    sram_small_8k: float
    sram_medium_32k: float
    sram_large_256k: float
    dram_per_byte: float
    leakage_mw: float

    def __post_init__(self) -> None:
        # the one check of energy values: load_energy_table and from_dict both construct through here
        if not isinstance(self.name, str):
            raise ConfigError(f"energy table name = {_show(self.name)} must be a string")
        for f in dataclasses.fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if not (_is_number(value) and value >= 0):
                raise ConfigError(f"energy table {_show(self.name)}: {f.name} = {_show(value)} must be a finite "
                                  f"number >= 0")
            why = _outside(value, ENERGY_RANGES.get(f.name, ENERGY_RANGES["per action"]))
            if why:
                raise ConfigError(f"energy table {_show(self.name)}: {f.name} = {_show(value)} {why}")

    @classmethod
    def from_dict(cls, d: Any) -> EnergyTable:
        """The table ``dataclasses.asdict`` describes (as ``HardwareConfig.to_dict`` writes it),
        validated; a ConfigError names the field, the value and the rule."""
        d = _check_fields(d, tuple(f.name for f in dataclasses.fields(cls)), "energy table")
        return cls(**d)

    def sram_per_byte(self, capacity: int) -> float:
        """Energy per byte accessed in an SRAM of ``capacity`` bytes."""
        if capacity <= 8 * 1024:
            return self.sram_small_8k
        if capacity <= 32 * 1024:
            return self.sram_medium_32k
        return self.sram_large_256k


@dataclass(frozen=True)
class HardwareConfig:
    """Primary parameters of one Energon machine. Derived sizes are properties below."""

    name: str
    clock_ghz: float
    # Filtering Unit
    fu_macs_per_cycle: int
    fu_mac_bits: int
    fu_select_per_cycle: int
    max_query_tile: int
    # Attention Unit
    au_macs_per_cycle: int
    au_exp_per_cycle: int
    au_pipeline_cycles: int
    max_head_dim: int
    # on-chip buffers, bytes, in BUFFERS order
    buffer_bytes: tuple[int, ...]
    # DRAM
    dram_bandwidth_gbps: float
    dram_latency_ns: float
    dram_burst_bytes: int
    dram_request_cycles: int
    dram_outstanding_requests: int
    dram_size_mib: int
    energy: EnergyTable = field(compare=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"config name = {_show(self.name)} must be a string")

        def rule(ok: bool, name: str, value: Any, what: str) -> None:
            if not ok:
                raise ConfigError(f"config {_show(self.name)}: {name} = {_show(value)} {what}")

        for name in ("fu_macs_per_cycle", "fu_mac_bits", "fu_select_per_cycle", "max_query_tile",
                     "au_macs_per_cycle", "au_exp_per_cycle", "max_head_dim", "dram_burst_bytes",
                     "dram_outstanding_requests", "dram_size_mib"):
            value = getattr(self, name)
            rule(_is_count(value) and 0 < value <= PARAM_MAX, name, value,
                 f"must be a positive integer (at most {PARAM_MAX})")
        for name in ("au_pipeline_cycles", "dram_request_cycles"):
            value = getattr(self, name)
            rule(_is_count(value) and 0 <= value <= PARAM_MAX, name, value,
                 f"must be a non-negative integer (at most {PARAM_MAX})")
        for name in ("clock_ghz", "dram_bandwidth_gbps", "dram_latency_ns"):
            value = getattr(self, name)
            rule(_is_number(value) and 0 < value <= PARAM_MAX, name, value,
                 f"must be a positive number (at most {PARAM_MAX})")
        rule(self.fu_mac_bits in (1, 2, 4, 8, 16), "fu_mac_bits", self.fu_mac_bits,
             "must be one of 1, 2, 4, 8, 16")
        rule(self.dram_burst_bytes & (self.dram_burst_bytes - 1) == 0, "dram_burst_bytes",
             self.dram_burst_bytes, "must be a power of two")
        rule(self.max_head_dim % 8 == 0, "max_head_dim", self.max_head_dim,
             "must be a multiple of 8 (K bit-planes are stored a byte per 8 dims)")
        rule(self.max_query_tile <= 4096, "max_query_tile", self.max_query_tile, "must be at most 4096")
        rule(self.dram_size_mib <= 4095, "dram_size_mib", self.dram_size_mib,
             "must be at most 4095 (instructions carry 32-bit DRAM addresses)")
        rule(isinstance(self.buffer_bytes, tuple) and len(self.buffer_bytes) == len(BUFFERS), "buffers",
             self.buffer_bytes, f"must give all of {', '.join(BUFFERS)}")
        for name, size in zip(BUFFERS, self.buffer_bytes):
            rule(_is_count(size) and 64 <= size <= (1 << 24), f"buffers.{name}", size,
                 "must be an integer between 64 bytes and 16 MiB")
        rule(self.buffer("param") >= PARAM_BYTES_PER_HEAD, "buffers.param", self.buffer("param"),
             f"must hold at least one head ({PARAM_BYTES_PER_HEAD} bytes)")
        for name, limits in PHYSICAL_RANGES.items():  # the types are checked above: these compare
            value = getattr(self, name)
            why = _outside(value, limits)
            rule(why is None, name, value, why)
        rule(isinstance(self.energy, EnergyTable), "energy", self.energy, "must be an EnergyTable")

    # -- derived sizes: the only place they are computed ---------------------------------------
    def buffer(self, name: str) -> int:
        """Capacity in bytes of the on-chip buffer ``name``."""
        try:
            return self.buffer_bytes[BUFFERS.index(name)]
        except ValueError:
            raise ConfigError(f"unknown buffer {name!r}; buffers are {', '.join(BUFFERS)}") from None

    def addr_bits(self, name: str) -> int:
        """Width of an instruction field holding a byte address in buffer ``name``."""
        return max(1, (self.buffer(name) - 1).bit_length())

    @property
    def row_bits(self) -> int:
        """Width of a query-row count field (1 .. max_query_tile)."""
        return self.max_query_tile.bit_length()

    @property
    def head_slot_bits(self) -> int:
        """Width of a field naming a head's slot in the param buffer."""
        return max(1, (self.max_heads - 1).bit_length())

    @property
    def max_heads(self) -> int:
        """Heads one program can cover: one param-buffer slot each."""
        return self.buffer("param") // PARAM_BYTES_PER_HEAD

    @property
    def dram_bytes(self) -> int:
        return self.dram_size_mib << 20

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_bandwidth_gbps / self.clock_ghz

    @property
    def dram_latency_cycles(self) -> int:
        return math.ceil(self.dram_latency_ns * self.clock_ghz)

    @property
    def dram_burst_cycles(self) -> float:
        """Cycles one burst occupies the DRAM channel."""
        return self.dram_burst_bytes / self.dram_bytes_per_cycle

    def fu_passes(self, q_bits: int, k_bits: int) -> int:
        """Passes of the native low-bit multiplier array a (q_bits x k_bits) product needs."""
        return math.ceil(q_bits / self.fu_mac_bits) * math.ceil(k_bits / self.fu_mac_bits)

    @property
    def peak_tops(self) -> float:
        """Peak low-bit plus INT16 operations per second, in TOPS (2 ops per MAC)."""
        return 2 * (self.fu_macs_per_cycle + self.au_macs_per_cycle) * self.clock_ghz / 1e3

    # -- identity ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every primary parameter, name and energy table included, as plain JSON values (buffers by
        name). :meth:`from_dict` is its inverse."""
        d = dataclasses.asdict(self)
        d["buffer_bytes"] = dict(zip(BUFFERS, self.buffer_bytes))
        return d

    @classmethod
    def from_dict(cls, d: Any) -> HardwareConfig:
        """The config :meth:`to_dict` describes, validated: every field present, no other, each of its
        type and within the rules of ``__post_init__``. Anything else (a binary's config section is
        untrusted input) is a ConfigError naming the field, the value seen and the rule."""
        names = tuple(f.name for f in dataclasses.fields(cls))
        d = _check_fields(d, names, "hardware config")
        where = f"config {_show(d['name'])}" if isinstance(d["name"], str) else "hardware config"
        values = dict(d)
        values["buffer_bytes"] = tuple(_check_fields(d["buffer_bytes"], BUFFERS, f"{where}: buffer_bytes")[b]
                                       for b in BUFFERS)
        try:
            values["energy"] = EnergyTable.from_dict(d["energy"])
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        return cls(**values)

    @cached_property
    def fingerprint(self) -> bytes:
        """16-byte digest of every primary parameter (name excluded): binaries record it."""
        d = self.to_dict()
        d.pop("name")
        d["energy"].pop("name")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).digest()[:16]

    def replace(self, **changes: Any) -> HardwareConfig:
        """A copy with some primary parameters changed (validated again), for design-space sweeps.

        Buffers can be given by name: ``cfg.replace(buffer_kv=131072)``.
        """
        buffers = dict(zip(BUFFERS, self.buffer_bytes))
        for key in [k for k in changes if k.startswith("buffer_") and k != "buffer_bytes"]:
            name = key[len("buffer_"):]
            if name not in buffers:
                raise ConfigError(f"unknown buffer {name!r}; buffers are {', '.join(BUFFERS)}")
            buffers[name] = changes.pop(key)
        changes.setdefault("buffer_bytes", tuple(buffers[b] for b in BUFFERS))
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as err:
            raise ConfigError(f"config {self.name!r}: {err}") from None


def price_actions(cfg: HardwareConfig, *, fu_mac_passes: float, compares: float, au_macs: float, exps: float,
                  norms: float, sram_bytes: dict[str, float], dram_bytes: float, cycles: float) -> dict[str, float]:
    """Energy in picojoules by component of the given action counts at ``cfg``'s energy table: the one
    pricing a simulated run (``runtime_sim.energy``), the scheduler's estimate and the energy lower bound
    share. ``sram_bytes``: bytes written plus read, per buffer; leakage over ``cycles``."""
    e = cfg.energy
    out = {
        "filter_unit": fu_mac_passes * e.fu_mac_4b + compares * e.fu_compare,
        "attention_unit": au_macs * e.au_mac_16b + exps * e.au_exp + norms * e.au_div,
    }
    for buf, n in sram_bytes.items():
        out[f"sram_{buf}"] = n * e.sram_per_byte(cfg.buffer(buf))
    out["dram"] = dram_bytes * e.dram_per_byte
    out["leakage"] = e.leakage_mw * cycles / cfg.clock_ghz  # mW x ns = pJ
    out["total"] = sum(out.values())
    return out


def _section(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: missing section [{key}]")
    return value


def _take(section: dict, key: str, where: str) -> Any:
    if key not in section:
        raise ConfigError(f"{where}: missing field {key!r}")
    return section.pop(key)


def _no_extra(section: dict, where: str) -> None:
    if section:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(section))}")


def load_energy_table(name_or_path: str | Path, dram_pj_per_bit: float) -> EnergyTable:
    """The energy table ``name_or_path`` (compute, SRAM and leakage of the core's process) completed with the
    DRAM energy per bit of the machine it serves. That one is the machine's: its DRAM is another part, which
    its config describes in ``[dram]`` (``energy_pj_per_bit`` beside the bandwidth), so one table serves
    machines with different DRAMs."""
    path = _resolve(name_or_path)
    doc = _read_toml(path)
    where = str(path)
    if "dram" in doc:
        raise ConfigError(f"{where}: an energy table has no [dram] section; a machine's DRAM energy is "
                          f"energy_pj_per_bit in its config's [dram] section")
    try:
        compute = dict(_section(doc, "compute", where))
        sram = dict(_section(doc, "sram", where))
        static = dict(_section(doc, "static", where))
        table = EnergyTable(
            name=str(doc.get("name", path.stem)),
            fu_mac_4b=float(_take(compute, "fu_mac_4b", where)),
            au_mac_16b=float(_take(compute, "au_mac_16b", where)),
            au_exp=float(_take(compute, "au_exp", where)),
            fu_compare=float(_take(compute, "fu_compare", where)),
            au_div=float(_take(compute, "au_div", where)),
            sram_small_8k=float(_take(sram, "small_8k", where)),
            sram_medium_32k=float(_take(sram, "medium_32k", where)),
            sram_large_256k=float(_take(sram, "large_256k", where)),
            dram_per_byte=8 * float(dram_pj_per_bit),
            leakage_mw=float(_take(static, "leakage_mw", where)),
        )
    except (TypeError, ValueError) as err:  # ConfigError too: EnergyTable checks its values
        raise ConfigError(f"{where}: {err}") from None
    return table


def _builtin_names() -> tuple[str, ...]:
    """Names of the built-in hardware configs (the energy tables beside them are not configs)."""
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if not p.stem.startswith("energy")))


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        builtin = CONFIG_DIR / f"{name_or_path}.toml"
        if builtin.exists():
            return builtin
        raise ConfigError(f"no hardware config named {str(name_or_path)!r}; built-in configs are "
                          f"{', '.join(_builtin_names())}, or give the path of a .toml file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    return path


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOML_BYTES + 1)
        if len(raw) > MAX_TOML_BYTES:
            raise ConfigError(f"{path}: more than {MAX_TOML_BYTES} bytes; a config file is a few KiB")
        return tomllib.loads(raw.decode("utf-8"))  # TOML is UTF-8 whatever the locale
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a readable TOML file: {err}") from None
    except RecursionError:  # tomllib is pure Python: [[[...]]] recurses once per level
        raise ConfigError(f"{path}: not a readable TOML file: arrays or tables nested deeper than the parser's "
                          f"limit (about {sys.getrecursionlimit()} levels); a config nests 2 deep") from None


def load_config(name_or_path: str | Path = "edge") -> HardwareConfig:
    """Load a built-in configuration by name (``edge``, ``server``) or a user's TOML file."""
    if isinstance(name_or_path, HardwareConfig):
        return name_or_path
    path = _resolve(name_or_path)
    doc = _read_toml(path)
    where = str(path)
    fu = dict(_section(doc, "filter_unit", where))
    au = dict(_section(doc, "attention_unit", where))
    buffers = dict(_section(doc, "buffers", where))
    dram = dict(_section(doc, "dram", where))
    energy = dict(_section(doc, "energy", where))
    table_ref = _take(energy, "table", where)
    dram_pj_per_bit = _take(dram, "energy_pj_per_bit", where + " [dram]")
    if not (_is_number(dram_pj_per_bit) and dram_pj_per_bit >= 0):
        raise ConfigError(f"{where} [dram]: energy_pj_per_bit = {_show(dram_pj_per_bit)} must be a finite "
                          f"number >= 0")
    table_path = path.parent / f"{table_ref}.toml"
    kwargs = dict(
        name=str(doc.get("name", path.stem)),
        clock_ghz=_take(doc, "clock_ghz", where),
        fu_macs_per_cycle=_take(fu, "macs_per_cycle", where + " [filter_unit]"),
        fu_mac_bits=_take(fu, "mac_bits", where + " [filter_unit]"),
        fu_select_per_cycle=_take(fu, "select_per_cycle", where + " [filter_unit]"),
        max_query_tile=_take(fu, "max_query_tile", where + " [filter_unit]"),
        au_macs_per_cycle=_take(au, "macs_per_cycle", where + " [attention_unit]"),
        au_exp_per_cycle=_take(au, "exp_per_cycle", where + " [attention_unit]"),
        au_pipeline_cycles=_take(au, "pipeline_cycles", where + " [attention_unit]"),
        max_head_dim=_take(au, "max_head_dim", where + " [attention_unit]"),
        buffer_bytes=tuple(_take(buffers, b, where + " [buffers]") for b in BUFFERS),
        dram_bandwidth_gbps=_take(dram, "bandwidth_gbps", where + " [dram]"),
        dram_latency_ns=_take(dram, "latency_ns", where + " [dram]"),
        dram_burst_bytes=_take(dram, "burst_bytes", where + " [dram]"),
        dram_request_cycles=_take(dram, "request_cycles", where + " [dram]"),
        dram_outstanding_requests=_take(dram, "outstanding_requests", where + " [dram]"),
        dram_size_mib=_take(dram, "size_mib", where + " [dram]"),
        energy=load_energy_table(table_path if table_path.exists() else table_ref, dram_pj_per_bit),
    )
    doc.pop("name", None)
    for section, name in ((fu, "filter_unit"), (au, "attention_unit"), (buffers, "buffers"),
                          (dram, "dram"), (energy, "energy")):
        _no_extra(section, f"{where} [{name}]")
        doc.pop(name)
    _no_extra(doc, where)
    return HardwareConfig(**kwargs)


@cache
def _load_builtin(name: str) -> HardwareConfig:
    # a memo of immutable package data, not context: assembling many texts must not re-read TOML files
    return load_config(CONFIG_DIR / f"{name}.toml")


def builtin_config(name: str, fingerprint: bytes | None = None) -> HardwareConfig:
    """The built-in config a name and fingerprint denote, as the assembler's ``.config NAME
    [FINGERPRINT]`` directive gives them. The fingerprint identifies the machine and the name is a
    label: with a fingerprint, the built-in config that has it (whatever it is called); without one,
    the built-in config called ``name``. (A program binary needs no look-up: it carries its config.)"""
    names = _builtin_names()
    if fingerprint is None:
        if name not in names:
            raise ConfigError(f"no built-in config named {name!r}; built-in configs are {', '.join(names)}, "
                              f"or pass the config")
        return _load_builtin(name)
    for builtin in names:
        if _load_builtin(builtin).fingerprint == fingerprint:
            return _load_builtin(builtin)
    hint = f" (built-in {name!r} has fingerprint {_load_builtin(name).fingerprint.hex()})" if name in names else ""
    raise ConfigError(f"config {name!r} with fingerprint {fingerprint.hex()} is not a built-in config{hint}; "
                      f"pass that config")
