"""Structure-aware fuzzing of program binaries through the loader and the simulator.

    python bench/fuzz_programs.py [--mutations 100000] [--seed 0] [--show 5]

Draws mutants of real emitted programs with the mutator of the test suite (tests/sim/mutants.py: one
instruction field, instruction order, a foreign instruction, the workload changed consistently, a
metadata or memory-map value, code bytes; the checksum always recomputed), loads each
(``Program.from_bytes``, then ``check_program``) and runs the accepted ones on the simulator with
finite inputs, NumPy floating-point warnings raised as errors. Prints what happened: refused at load
and by which check, trapped in simulation and by which trap, finite outputs, and the two outcomes that
are bugs: escapes (any exception that is not an ``EnergonError``) and non-finite outputs (goal: 0 each),
with the first few of each shown.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests" / "sim"))
from common import table  # noqa: E402
from mutants import Inputs, Mutator, corpus, run_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="escapes / non-finite outputs shown in full")
    args = ap.parse_args()

    start = time.perf_counter()
    mutate, inputs = Mutator(corpus(), args.seed), Inputs(args.seed)
    outcomes: collections.Counter = collections.Counter()
    by_mutation: collections.Counter = collections.Counter()
    bugs: list[tuple[str, str, str, str]] = []
    for _ in tqdm(range(args.mutations), desc="mutants", unit="case", mininterval=2.0, file=sys.stderr):
        op, blob = mutate()
        outcome, kind, message = run_case(blob, inputs)
        outcomes[outcome, kind] += 1
        by_mutation[op, outcome] += 1
        if outcome in ("escape", "nonfinite") and len(bugs) < 1000:
            bugs.append((op, kind, message, blob.hex()))
    wall = time.perf_counter() - start

    def total(outcome: str) -> int:
        return sum(n for (o, _), n in outcomes.items() if o == outcome)

    def kinds(outcome: str) -> list[list]:
        return [[f"- {kind}", f"{n:,}"] for (o, kind), n in sorted(outcomes.items()) if o == outcome]

    n = args.mutations
    escaped_at_load = sum(c for (o, kind), c in outcomes.items() if o == "escape" and kind.endswith(" in load"))
    accepted = n - total("refused") - escaped_at_load
    rows = [["mutations", f"{n:,}"], ["refused at load", f"{total('refused'):,}"], *kinds("refused"),
            ["accepted (loaded and checked)", f"{accepted:,}"],
            ["trapped in simulation", f"{total('trapped'):,}"], *kinds("trapped"),
            ["finite outputs", f"{total('finite'):,}"],
            ["escapes (not an EnergonError; goal 0)", f"{total('escape'):,}"], *kinds("escape"),
            ["non-finite outputs (goal 0)", f"{total('nonfinite'):,}"],
            ["wall time", f"{wall:.0f} s ({wall / n * 1e3:.1f} ms per mutant)"]]
    print(table(["outcome", "count"], rows, f"Fuzzing program binaries through the loader and the simulator, "
                                             f"seed {args.seed}"))
    ops = sorted({op for op, _ in by_mutation})
    names = ["refused", "trapped", "finite", "escape", "nonfinite"]
    print(table(["mutation", *names], [[op, *(f"{by_mutation[op, o]:,}" for o in names)] for op in ops],
                "By mutation"))
    for op, kind, message, hexblob in bugs[:args.show]:
        print(f"\n{op} mutant, {kind}: {message}\n  binary: {hexblob}")


if __name__ == "__main__":
    main()
