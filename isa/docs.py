"""``docs/isa.md``, the ISA reference, generated from the declarations.

Everything in the document comes from code: the instruction table :data:`.instructions.OPS`, the
module docstrings of :mod:`.instructions`, :mod:`.asm` and :mod:`.program`, and the built-in hardware
configs (field widths and ranges differ between them). CI runs ``--check`` so the committed file
cannot drift::

    python -m energon_tvm.isa.docs -o docs/isa.md     # regenerate
    python -m energon_tvm.isa.docs --check            # exit 1 if docs/isa.md is not current
"""

from __future__ import annotations

import argparse
import difflib
import enum
import inspect
import re
import sys
from pathlib import Path

from . import asm, instructions, program
from .config import HardwareConfig, load_config
from .instructions import ISA_VERSION, OPCODE_BITS, OPS, WORD_BITS, Field, OpSpec, Reg, Unit

DOC_CONFIGS = ("edge", "server")
DEFAULT_OUTPUT = Path("docs/isa.md")
COMMAND = "python -m energon_tvm.isa.docs -o docs/isa.md"


def _markdown(docstring: str) -> str:
    """The reStructuredText of our docstrings as Markdown: roles and ``literals`` become `code`, and a
    paragraph ending in ``::`` introduces a fenced block of its indented lines."""
    text = inspect.cleandoc(docstring)
    text = re.sub(r":\w+:`~?\.?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.endswith("::"):
            out.append(line)
            continue
        out += [line[:-1] if line[:-2].strip() else "", ""]
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
            block.append(lines[i][4:])
            i += 1
        text_block = "\n".join(block).strip("\n")
        out += ["```text", text_block, "```", ""]
    return "\n".join(out).strip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows), ""]


def _enum_comments(cls: type[enum.IntEnum]) -> dict[str, str]:
    """The trailing ``# comment`` of each member in the enum's source: the registers' meaning."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - source not shipped
        return {}
    return dict(re.findall(r"^\s*(\w+)\s*=\s*\d+\s*#\s*(.*?)\s*$", source, re.MULTILINE))


def _first_sentence(text: str) -> str:
    # a sentence ends at a full stop after a word and before a capital: "q16 >> 4) . (K" does not
    return re.split(r"(?<=[\w)`])\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".") + "."


def _enum_sections() -> list[str]:
    """A table per enumeration the fields use (registers, bias modes, ...); units have their own."""
    enums = dict.fromkeys(f.enum for op in OPS for f in op.fields if f.enum not in (None, Unit))
    lines = []
    for cls in enums:
        comments = _enum_comments(cls)
        title = "Registers" if cls is Reg else f"`{cls.__name__}` values"
        lines += [f"## {title}", "", _markdown(cls.__doc__ or ""),
                  *_table(["name", "number", "meaning"],
                          [[f"`{m.name}`", str(int(m)), comments.get(m.name, "")] for m in cls])]
    return lines


def _unit(op: OpSpec) -> str:
    if op.unit is not None:
        return op.unit.label
    return "the `unit` field" if "unit" in op.field_names else "ctrl"


def _range(f: Field, cfg: HardwareConfig) -> str:
    lo, hi = f.bounds(cfg)
    if f.enum is not None:
        return ", ".join(m.name for m in f.enum if lo <= m <= hi)
    return f"{lo} .. {hi}"


def _per_config(values: dict[str, str]) -> str:
    """One value when every config agrees, else ``edge: a; server: b``."""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return "; ".join(f"{name}: {v}" for name, v in values.items())


def _op_section(op: OpSpec, cfgs: dict[str, HardwareConfig]) -> list[str]:
    lines = [f"## {op.mnemonic}", "", op.doc, "",
             f"Opcode {op.opcode} (`{op.opcode:#04x}`); unit: {_unit(op)}; reads: "
             f"{', '.join(op.reads) or '-'}; writes: {', '.join(op.writes) or '-'}.", ""]
    example = instructions.Instruction(op, tuple(f.bounds(cfgs['edge'])[0] if f.default is None else f.default
                                                 for f in op.fields))
    lines += ["Syntax (with each field at its lowest legal value on `edge`):", "", "```text",
              asm.format_instruction(example, cfgs["edge"]), "```", ""]
    if not op.fields:
        return [*lines, "No fields.", ""]
    layouts = {name: {f.name: (pos, n) for f, pos, n in op.layout(cfg)} for name, cfg in cfgs.items()}
    header = ["field", *(f"bits on `{name}`" for name in cfgs), "legal range", "default", "meaning"]
    rows = []
    for f in op.fields:
        bits = [f"[{layouts[name][f.name][0]}, {sum(layouts[name][f.name])}) : {layouts[name][f.name][1]}"
                for name in cfgs]
        legal = _per_config({name: _range(f, cfg) for name, cfg in cfgs.items()})
        meaning = f.doc + (f" (address in the `{f.buffer}` buffer)" if f.buffer and f.buffer not in f.doc else "")
        default = "-" if f.default is None else asm.format_value(f, f.default, cfgs["edge"])
        rows.append([f"`{f.name}`", *bits, legal, default, meaning])
    used = _per_config({name: str(sum(n for _, n in layout.values()) + OPCODE_BITS)
                        for name, layout in layouts.items()})
    return [*lines, *_table(header, rows), f"Bits used: {used} of {WORD_BITS}.", ""]


def render_isa_markdown() -> str:
    """The full text of ``docs/isa.md``."""
    cfgs = {name: load_config(name) for name in DOC_CONFIGS}
    lines = ["# Energon ISA reference", "",
             f"<!-- Generated from isa/instructions.py by `{COMMAND}`; do not edit by hand. -->", "",
             f"ISA version {ISA_VERSION}. Field widths and ranges are given for the built-in configs "
             f"{', '.join(f'`{c}`' for c in cfgs)}.", "",
             _markdown(instructions.__doc__ or ""),
             "## Word format", "",
             f"A word is {WORD_BITS} bits ({WORD_BITS // 8} bytes), little-endian. Bits [0, {OPCODE_BITS}) "
             "hold the opcode; each field follows in declaration order at the position its table gives; "
             "signed fields are two's complement; every bit after the last field is zero. A decoder "
             "rejects an unknown opcode, a field outside its legal range and a non-zero unused bit.", "",
             "## Units", "",
             *_table(["unit", "number", "executes"],
                     [[u.label, str(int(u)), ", ".join(op.mnemonic for op in OPS if op.unit is u)]
                      for u in Unit]),
             "`WAIT` and `SIGNAL` run on the unit their `unit` field names; `SETR` and `HALT` are control.",
             "",
             *_enum_sections(),
             "## Instructions", "",
             *_table(["mnemonic", "opcode", "unit", "reads", "writes", "summary"],
                     [[f"[{op.mnemonic}](#{re.sub(r'[^a-z0-9-]', '', op.mnemonic.lower())})",
                       f"`{op.opcode:#04x}`", _unit(op), ", ".join(op.reads) or "-",
                       ", ".join(op.writes) or "-", _first_sentence(op.doc)]
                      for op in OPS])]
    for op in OPS:
        lines += _op_section(op, cfgs)
    lines += ["## Assembly text", "", _markdown(asm.__doc__ or ""),
              "## Binary container", "", _markdown(program.__doc__ or "")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m energon_tvm.isa.docs", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"the file to write or check (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file is not what the declarations generate")
    args = parser.parse_args(argv)
    text = render_isa_markdown()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else None
        if current == text:
            return 0
        why = "does not exist" if current is None else "is not current with isa/instructions.py"
        diff = list(difflib.unified_diff((current or "").splitlines(), text.splitlines(),
                                         str(args.output), "generated", lineterm="", n=1))
        print(f"{args.output} {why}; regenerate it with: {COMMAND}", file=sys.stderr)
        print("\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else ""), file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
