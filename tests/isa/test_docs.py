"""docs/isa.md: generated from the declarations, one section per instruction, and current (the same
check CI runs with ``python -m energon_tvm.isa.docs --check``)."""

import re
import subprocess
import sys
from pathlib import Path

from energon_tvm.isa.docs import main, render_isa_markdown
from energon_tvm.isa.instructions import OPS
from strategies import CONFIGS

ISA_MD = Path(__file__).resolve().parents[2] / "docs" / "isa.md"


def test_docs_isa_md_is_current():
    assert ISA_MD.is_file(), "docs/isa.md is missing; run python -m energon_tvm.isa.docs -o docs/isa.md"
    assert ISA_MD.read_text() == render_isa_markdown(), (
        "docs/isa.md is stale; regenerate it with python -m energon_tvm.isa.docs -o docs/isa.md")


def test_one_section_per_instruction_with_every_field():
    text = render_isa_markdown()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    for op in OPS:
        assert headings.count(op.mnemonic) == 1
        section = text.split(f"\n## {op.mnemonic}\n", 1)[1].split("\n## ", 1)[0]
        assert op.doc in section and f"Opcode {op.opcode} " in section
        for f in op.fields:
            row = next(line for line in section.splitlines() if line.startswith(f"| `{f.name}` |"))
            for cfg in CONFIGS.values():  # bit position and width on each config
                (_f, pos, n), = [x for x in op.layout(cfg) if x[0] is f]
                assert f"[{pos}, {pos + n}) : {n}" in row


def test_reference_sections():
    text = render_isa_markdown()
    for heading in ("Word format", "Units", "Registers", "Instructions", "Assembly text", "Binary container"):
        assert f"\n## {heading}\n" in text
    assert "| `HEAD_DIM` | 0 | D, elements per Q/K/V row |" in text
    assert "```text\noffset  size  field\n0       4     magic" in text  # the container table, fenced
    assert ":class:" not in text and "``" not in text.replace("```", "")  # reST turned into Markdown


def test_check_flags_a_stale_file(tmp_path, capsys):
    out = tmp_path / "isa.md"
    assert main(["--check", "-o", str(out)]) == 1
    assert "does not exist; regenerate it with: python -m energon_tvm.isa.docs" in capsys.readouterr().err
    assert main(["-o", str(out)]) == 0
    assert main(["--check", "-o", str(out)]) == 0
    out.write_text(out.read_text().replace("## HALT", "## STOP"))
    assert main(["--check", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not current with isa/instructions.py" in err and "-## STOP" in err and "+## HALT" in err


def test_command_line(tmp_path):
    out = tmp_path / "isa.md"
    run = subprocess.run([sys.executable, "-m", "energon_tvm.isa.docs", "--check", "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "regenerate it with" in run.stderr
