"""Assembly text of Energon programs: :func:`disassemble` and :func:`assemble`.

Both are derived from the declarations in :mod:`.instructions` (no per-instruction code here), and
``assemble(disassemble(b))`` gives back ``b`` byte for byte for every valid binary. One statement a
line::

    ; Energon ISA v3 program for config edge: 3 instructions, 1 region
    .config edge 4d4d6af1c117c83af3007f5151780bf6
    .region q offset=0x00000000 dtype=int16 shape=1,2,4,64 layout=BHSD
    .meta {}

        setr      reg=HEAD_DIM value=64 @setup                       ;    0 ctrl
        ld.q      dram=0x00000000 rows=64 buf=0x0000 @"b0 h0 q0:64"  ;    1 load
        halt @end                                                    ;    2 ctrl

* ``;`` or ``#`` starts a comment; blank lines are ignored.
* ``.config NAME [FINGERPRINT]`` comes before any region or instruction. The fingerprint (32 hex
  digits) identifies the machine, the name is a label: without a ``cfg`` argument the built-in config
  with that fingerprint is used (or, without a fingerprint, the built-in config of that name); with
  ``cfg`` the fingerprint must be ``cfg``'s. The program's config is that machine under the name
  written. Without ``.config`` the ``cfg`` argument is required. (Unlike a binary, the text names its
  machine rather than carrying it: a program for a config that is not built in reassembles with
  ``cfg``.)
* ``.region NAME offset=.. dtype=.. shape=D0,D1,.. layout=..``: one DRAM region of the memory map,
  in order (``shape=()`` for a scalar).
* ``.meta {...}``: the metadata, one JSON object on one line (at most once). A ``"config"`` entry, as
  texts written for container format version 1 have, must agree with ``.config`` and is dropped.
* An instruction is a mnemonic (any case) and ``name=value`` operands in any order; a field with a
  declared default may be left out. ``@label`` after the operands names the tile the instruction works
  on: the metadata's per-instruction ``labels`` (an instruction without one gets ``""``; labels are
  given either so or in ``.meta``, not both). Values are decimal or ``0x`` hex (with a sign for signed fields),
  or for enumerated fields (``unit``, ``reg``, ...) the member's name in any case. Names, dtypes and
  layouts that are not plain words are written as JSON strings (``"my region"``).
* The disassembler prints every field: addresses in hex, counts in decimal, enums by name; each
  instruction's label (when the metadata's ``labels`` are all strings; other labels stay in ``.meta``);
  and a comment with its pc and its executing unit (``ctrl`` for SETR and HALT).

Every rejection is an :class:`AssemblerError` naming the 1-based line and the offending text.
"""

from __future__ import annotations

import json
import re

from .config import HardwareConfig, builtin_config
from .encoding import check_fields
from .errors import AssemblerError, ConfigError, EncodingError
from .instructions import BY_MNEMONIC, ISA_VERSION, Field, Instruction
from .program import DTYPE_BYTES, MemoryMap, Program, Region, canonical_json

__all__ = ["assemble", "assemble_bytes", "disassemble", "format_instruction", "format_value"]

OPERAND_COLUMN = 64  # where the annotation comment starts, when the instruction is shorter
_PLAIN = re.compile(r"[\w.+/:()\[\]-]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|[0-9]+)")
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{32}")
_LEX = re.compile(r"""\s*(?:
      (?P<comment>[;\#].*)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<eq>=)
    | (?P<word>[^\s=;\#"]+)
    | (?P<bad>\S)
    )""", re.VERBOSE)
_META = re.compile(r"\s*\.meta(?![^\s{;#])", re.IGNORECASE)


# -- configs ---------------------------------------------------------------------------------------

def _check_given(name: str, fingerprint: bytes | None, cfg: HardwareConfig) -> None:
    """``cfg`` must be the machine a text or program names: its fingerprint, or without one its name."""
    if fingerprint is not None and fingerprint != cfg.fingerprint:
        raise ConfigError(f"program is for config {name!r} (fingerprint {fingerprint.hex()}); the given "
                          f"config {cfg.name!r} has fingerprint {cfg.fingerprint.hex()}")
    if fingerprint is None and name != cfg.name:
        raise ConfigError(f"program is for config {name!r}; the given config is {cfg.name!r}")


# -- disassembler ----------------------------------------------------------------------------------

def _is_address(f: Field) -> bool:
    # buffer addresses name their buffer; the DRAM address field is only recognisable by its name
    return f.buffer is not None or f.name == "dram"


def format_value(f: Field, value: int, cfg: HardwareConfig) -> str:
    """A field value as the disassembler writes it: enum name, hex address or decimal."""
    if f.enum is not None and any(value == m for m in f.enum):
        return f.enum(value).name
    if _is_address(f):
        return f"{value:#0{2 + (f.bits(cfg) + 3) // 4}x}"
    return str(value)


def format_instruction(ins: Instruction, cfg: HardwareConfig) -> str:
    """One instruction as assembly text, e.g. ``ld.q      dram=0x00000000 rows=64 buf=0x0000``."""
    operands = " ".join(f"{f.name}={format_value(f, v, cfg)}" for f, v in zip(ins.op.fields, ins.args))
    return f"{ins.op.mnemonic.lower():<9} {operands}".rstrip()


def _word(text: str) -> str:
    """``text`` as one token: bare when it is a plain word, else a JSON string (ASCII, one line)."""
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def _unit_label(ins: Instruction) -> str:
    try:
        unit = ins.unit
    except ValueError:  # a hand-built Program with an undefined unit number
        return "?"
    return "ctrl" if unit is None else unit.label


def disassemble(program_or_bytes: Program | bytes, cfg: HardwareConfig | None = None) -> str:
    """Assembly text of a program or of a binary (validated first), for the config it carries; ``cfg``,
    when given, must be that machine."""
    if isinstance(program_or_bytes, Program):
        program = program_or_bytes
    else:
        program = Program.from_bytes(program_or_bytes, cfg)
    if cfg is not None:  # only a check: the program carries its config
        _check_given(program.config_name, program.config_fingerprint, cfg)
    cfg = program.config
    regions = program.memory_map.regions
    lines = [f"; Energon ISA v{ISA_VERSION} program for config {_word(program.config_name)}: "
             f"{len(program.code)} instruction{'s' * (len(program.code) != 1)}, "
             f"{len(regions)} region{'s' * (len(regions) != 1)}",
             f".config {_word(program.config_name)} {program.config_fingerprint.hex()}"]
    for r in regions:
        shape = ",".join(map(str, r.shape)) or "()"
        lines.append(f".region {_word(r.name)} offset={r.offset:#010x} dtype={_word(r.dtype)} shape={shape} "
                     f"layout={_word(r.layout)}")
    labels = program.labels
    meta = program.meta
    if labels and all(isinstance(label, str) for label in labels):  # on their instructions, not in .meta
        meta = {k: v for k, v in meta.items() if k != "labels"}
    else:
        labels = []
    lines += [f".meta {canonical_json(meta).decode()}", ""]
    for pc, ins in enumerate(program.code):
        text = f"    {format_instruction(ins, cfg)}" + (f" @{_word(labels[pc])}" if labels else "")
        lines.append(f"{text:<{OPERAND_COLUMN}} ; {pc:>4} {_unit_label(ins)}".rstrip())
    return "\n".join(lines) + "\n"


# -- assembler -------------------------------------------------------------------------------------

def assemble(text: str, cfg: HardwareConfig | None = None) -> Program:
    """Parse assembly text into a :class:`Program`."""
    return _Assembler(cfg).run(text)


def assemble_bytes(text: str, cfg: HardwareConfig | None = None) -> bytes:
    """Parse assembly text into a binary."""
    return _Assembler(cfg).run(text).to_bytes()


def _lex(line: str, n: int) -> list[tuple[str, str]]:
    """(kind, text) tokens of a line up to its comment; kind is 'word', 'string' or 'eq'."""
    tokens, pos = [], 0
    while pos < len(line):
        m = _LEX.match(line, pos)
        if m is None:  # only trailing whitespace is left
            break
        kind = m.lastgroup
        if kind == "comment":
            break
        if kind == "bad":
            raise AssemblerError(f"unterminated string {line[m.start(kind):].strip()!r}", n)
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _text(token: tuple[str, str], n: int) -> str:
    kind, raw = token
    if kind != "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError as err:
        raise AssemblerError(f"bad string {raw!r}: {err}", n) from None


def _number(raw: str, what: str, n: int) -> int:
    if not _NUMBER.fullmatch(raw):
        raise AssemblerError(f"bad number {raw!r} for {what}: expected decimal or 0x hex", n)
    try:
        return int(raw, 16 if raw.lstrip("+-")[:2].lower() == "0x" else 10)
    except ValueError:  # more decimal digits than Python converts
        raise AssemblerError(f"bad number {raw[:20]!r}... for {what}: too long", n) from None


def _operands(tokens: list[tuple[str, str]], what: str, n: int) -> dict[str, tuple[str, str]]:
    """``name=value`` pairs, in any order, each name once."""
    out: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(tokens):
        group = tokens[i:i + 3]
        if len(group) < 3 or group[0][0] != "word" or group[1][0] != "eq" or group[2][0] == "eq":
            got = " ".join(t for _, t in group)
            raise AssemblerError(f"{what}: expected name=value, got {got!r}", n)
        name = group[0][1].lower()
        if name in out:
            raise AssemblerError(f"{what}: field {name!r} given twice", n)
        out[name] = group[2]
        i += 3
    return out


def _split_label(tokens: list[tuple[str, str]], what: str, n: int) -> tuple[list[tuple[str, str]], str | None]:
    """(operand tokens, label): a trailing ``@word`` or ``@"string"`` is the instruction's label."""
    if tokens and tokens[-1][0] == "word" and tokens[-1][1].startswith("@") and len(tokens[-1][1]) > 1:
        return tokens[:-1], tokens[-1][1][1:]
    if len(tokens) >= 2 and tokens[-2] == ("word", "@") and tokens[-1][0] == "string":
        return tokens[:-2], _text(tokens[-1], n)
    if any(kind == "word" and raw.startswith("@") for kind, raw in tokens):
        raise AssemblerError(f"{what}: a label (@name or @\"text\") comes last, after the operands", n)
    return tokens, None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Assembler:
    """Parser state of one text: the config, memory map, metadata and code seen so far."""

    def __init__(self, cfg: HardwareConfig | None):
        self.cfg_arg = cfg
        self.cfg: HardwareConfig | None = None  # the program's config, named as .config names it
        self.regions: list[Region] = []
        self.meta: dict | None = None
        self.meta_line = 0
        self.code: list[Instruction] = []
        self.labels: list[str | None] = []  # per instruction, from ``@label``

    def run(self, text: str) -> Program:
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            meta = _META.match(line)
            if meta:
                self.directive_meta(line, meta.end(), n)
                continue
            tokens = _lex(line, n)
            if not tokens:
                continue
            kind, head = tokens[0]
            if kind == "word" and head.startswith("."):
                self.directive(head.lower(), tokens[1:], n)
            elif kind == "word":
                self.instruction(head, tokens[1:], n)
            else:
                raise AssemblerError(f"expected a mnemonic or a directive, got {head!r}", n)
        cfg = self.need_config(max(len(lines), 1))
        meta = dict(self.meta or {})
        if any(label is not None for label in self.labels):
            if "labels" in meta:
                raise AssemblerError("labels given both in .meta and as @label on instructions; give one",
                                     self.meta_line)
            meta["labels"] = [label or "" for label in self.labels]
        if meta.pop("config", cfg.name) != cfg.name:
            raise AssemblerError(f".meta says config {self.meta['config']!r} but .config says "
                                 f"{cfg.name!r}", self.meta_line)
        try:
            program = Program(cfg, tuple(self.code), MemoryMap(tuple(self.regions)), meta)
        except (TypeError, ValueError, RecursionError) as err:  # metadata JSON cannot take
            raise AssemblerError(f".meta cannot be stored as JSON: {err}", self.meta_line) from None
        return program

    def need_config(self, n: int) -> HardwareConfig:
        if self.cfg is None:
            if self.cfg_arg is None:
                raise AssemblerError("no .config directive before the first region or instruction and no "
                                     "config given; start with e.g. `.config edge`", n)
            self.cfg = self.cfg_arg
        return self.cfg

    # -- directives ----------------------------------------------------------------------------
    def directive(self, name: str, tokens: list[tuple[str, str]], n: int) -> None:
        if name == ".config":
            self.directive_config(tokens, n)
        elif name == ".region":
            self.directive_region(tokens, n)
        else:
            raise AssemblerError(f"unknown directive {name!r}; directives are .config, .region, .meta", n)

    def directive_config(self, tokens: list[tuple[str, str]], n: int) -> None:
        if self.cfg is not None:
            raise AssemblerError(".config given twice, or after the first region or instruction", n)
        if not 1 <= len(tokens) <= 2 or any(kind == "eq" for kind, _ in tokens):
            raise AssemblerError(f"malformed directive '.config {' '.join(t for _, t in tokens)}': expected "
                                 f".config NAME [FINGERPRINT]", n)
        name = _text(tokens[0], n)
        fingerprint = None
        if len(tokens) == 2:
            raw = tokens[1][1]
            if tokens[1][0] != "word" or not _FINGERPRINT.fullmatch(raw):
                raise AssemblerError(f"bad config fingerprint {raw!r}: expected 32 hex digits", n)
            fingerprint = bytes.fromhex(raw)
        try:
            if self.cfg_arg is None:
                cfg = builtin_config(name, fingerprint)
            else:
                _check_given(name, fingerprint, self.cfg_arg)
                cfg = self.cfg_arg
            # the fingerprint picks the machine; the program keeps the name as written
            self.cfg = cfg if cfg.name == name else cfg.replace(name=name)
        except ConfigError as err:
            raise AssemblerError(str(err), n) from None

    def directive_region(self, tokens: list[tuple[str, str]], n: int) -> None:
        cfg = self.need_config(n)
        if not tokens or tokens[0][0] == "eq":
            raise AssemblerError("malformed directive: expected .region NAME offset=.. dtype=.. shape=.. "
                                 "layout=..", n)
        name = _text(tokens[0], n)
        what = f".region {name!r}"
        ops = _operands(tokens[1:], what, n)
        keys = ("offset", "dtype", "shape", "layout")
        unknown = sorted(set(ops) - set(keys))
        missing = [k for k in keys if k not in ops]
        if unknown or missing:
            raise AssemblerError(f"{what}: {'unknown key(s) ' + ', '.join(unknown) if unknown else ''}"
                                 f"{'; ' if unknown and missing else ''}"
                                 f"{'missing ' + ', '.join(missing) if missing else ''}; "
                                 f"a region has {', '.join(keys)}", n)
        offset = _number(ops["offset"][1], f"{what} offset", n)
        shape_text = ops["shape"][1].strip("()")
        shape = tuple(_number(s, f"{what} shape", n) for s in shape_text.split(",")) if shape_text else ()
        dtype = _text(ops["dtype"], n)
        if dtype not in DTYPE_BYTES:
            raise AssemblerError(f"{what}: unknown dtype {dtype!r}; dtypes are {', '.join(DTYPE_BYTES)}", n)
        try:
            region = Region(name, offset, dtype, shape, _text(ops["layout"], n))
            MemoryMap((*self.regions, region))
        except ValueError as err:
            raise AssemblerError(str(err), n) from None
        if region.end > cfg.dram_bytes:
            raise AssemblerError(f"{what} ends at byte {region.end}; config {cfg.name!r} has "
                                 f"{cfg.dram_bytes} bytes of DRAM", n)
        self.regions.append(region)

    def directive_meta(self, line: str, pos: int, n: int) -> None:
        if self.meta is not None:
            raise AssemblerError(".meta given twice", n)
        decoder = json.JSONDecoder(parse_constant=_reject_constant)
        start = len(line) - len(line[pos:].lstrip())
        try:
            meta, end = decoder.raw_decode(line, start)
        except (ValueError, RecursionError) as err:
            raise AssemblerError(f".meta is not valid JSON ({err}): {line[start:start + 60]!r}", n) from None
        if not isinstance(meta, dict):
            raise AssemblerError(f".meta must be a JSON object, got {line[start:end][:60]!r}", n)
        if _lex(line[end:], n):
            raise AssemblerError(f"unexpected text after .meta JSON: {line[end:].strip()[:60]!r}", n)
        self.meta, self.meta_line = meta, n

    # -- instructions --------------------------------------------------------------------------
    def instruction(self, mnemonic: str, tokens: list[tuple[str, str]], n: int) -> None:
        op = BY_MNEMONIC.get(mnemonic.upper())
        if op is None:
            raise AssemblerError(f"unknown mnemonic {mnemonic!r}; mnemonics are "
                                 f"{', '.join(m.lower() for m in BY_MNEMONIC)}", n)
        cfg = self.need_config(n)
        tokens, label = _split_label(tokens, op.mnemonic, n)
        ops = _operands(tokens, op.mnemonic, n)
        unknown = sorted(set(ops) - set(op.field_names))
        if unknown:
            raise AssemblerError(f"{op.mnemonic} has no field {unknown[0]!r}; fields are "
                                 f"{', '.join(op.field_names) or 'none'}", n)
        args = []
        for f in op.fields:
            if f.name in ops:
                args.append(self.value(f, ops[f.name], op.mnemonic, n))
            elif f.default is not None:
                args.append(f.default)
            else:
                raise AssemblerError(f"{op.mnemonic}: missing field {f.name!r}", n)
        ins = Instruction(op, tuple(args))
        try:
            check_fields(ins, cfg)
        except EncodingError as err:
            raise AssemblerError(str(err), n) from None
        self.code.append(ins)
        self.labels.append(label)

    @staticmethod
    def value(f: Field, token: tuple[str, str], mnemonic: str, n: int) -> int:
        kind, raw = token
        if f.enum is not None and raw.upper() in f.enum.__members__:
            return int(f.enum[raw.upper()])
        if kind != "word" or not _NUMBER.fullmatch(raw):
            names = f" or one of {', '.join(f.enum.__members__)}" if f.enum is not None else ""
            raise AssemblerError(f"{mnemonic}: bad value {raw!r} for field {f.name}: expected decimal or 0x "
                                 f"hex{names}", n)
        return _number(raw, f"field {f.name}", n)
