"""``tvmc inspect``."""

from __future__ import annotations

from pathlib import Path

from ..errors import TVMCError
from ..main import command


def add_arguments(p) -> None:
    p.add_argument("path", help="a package (.tar), one Energon program (.bin), or its assembly text (.asm, as "
                                "tvmc compile --dump-code isa writes it)")
    p.add_argument("--no-code", action="store_true", help="summaries only, no disassembly")


@command("inspect", "show the generated Energon ISA, workloads, schedules, buffer use and cycle estimates")(
    add_arguments)
def run(args) -> int:
    from ...isa.numerics import MPMRFParams
    from ..inspect import describe_program, selection_lines, threshold_table
    from ..package import read_package
    from ..report_html import schedule_origin

    path = Path(args.path)
    if not path.exists():
        raise TVMCError(f"{str(path)!r} does not exist")
    if path.suffix == ".bin":
        print(describe_program(path.read_bytes(), code=not args.no_code))
        return 0
    if path.suffix == ".asm":
        from ...isa.asm import assemble_bytes

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TVMCError(f"{path}: not readable assembly text: {err}") from None
        print(describe_program(assemble_bytes(text), code=not args.no_code))  # assembler errors name the line
        return 0
    pkg = read_package(path)
    m = pkg.manifest
    print(f"package {path.name}: model {m['model']['path']} ({m['model']['format']}), target {m['target']}, "
          f"energon-tvm {m['versions']['energon_tvm']}, TVM {m['versions']['tvm']}")
    print("inputs: " + ", ".join(f"{i['name']}{i['shape']} {i['dtype']}" for i in m["inputs"]))
    print("outputs: " + ", ".join(f"{o['name']}{o['shape']} {o['dtype']}" for o in m["outputs"]))
    sites = m.get("attention_sites")
    sites = len(m["offloads"]) if sites is None else sites  # packages of earlier versions do not say
    print(f"{len(m['calls'])} offloaded call(s) of {sites} attention site(s)"
          + ("" if m["offload"] else " (compiled for the host only)"))
    if m["offload"]:
        print("\n".join(selection_lines(m)))
    if m["calls"]:
        print("\n" + threshold_table(m))
    for i, call in enumerate(m["calls"]):
        policy = MPMRFParams.from_dict(call["workload"]["params"]).policy
        print(f"\n=== call {i}: site {call['site']}, policy {policy} (schedule: {schedule_origin(call)}) ===")
        print(describe_program(pkg.program(call), code=not args.no_code))
    return 0
