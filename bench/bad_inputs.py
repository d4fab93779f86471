"""A census of bad input against every tvmc surface (compile, run, inspect, tune, binaries, packages).

    python bench/bad_inputs.py [--fast] [--show 10]

Builds each case of tests/tvmc/census.py (a bad model, option, inputs file, edited package or program
binary), runs its ``tvmc`` command line in this process and prints, per surface, how many cases were
tried, answered with a clean one-line error, ended in a traceback, were silently accepted, left an
output behind, or hung; then every case that was not clean. ``--fast`` leaves out the cases that get
as far as importing the model.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests" / "tvmc"))
sys.path.insert(0, str(ROOT.parent / "tests" / "relax"))
from census import CASES, OUTCOMES, SURFACES, make_fixtures, run_case  # noqa: E402
from common import table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="leave out the cases that import the model")
    ap.add_argument("--show", type=int, default=50, help="cases that were not clean, shown in full")
    args = ap.parse_args()
    cases = [c for c in CASES if not (args.fast and c.compiles)]
    with tempfile.TemporaryDirectory(prefix="energon-census-") as tmp:
        start = time.perf_counter()
        fx = make_fixtures(Path(tmp) / "fixtures")
        outcomes = []
        for i, case in enumerate(tqdm(cases, desc="bad inputs", unit="case")):
            outcomes.append(run_case(case, fx, Path(tmp) / f"case{i:04d}"))
        elapsed = time.perf_counter() - start
    counts = collections.defaultdict(collections.Counter)
    for o in outcomes:
        counts[o.case.surface][o.kind] += 1
    rows = [[s, sum(counts[s].values()), *(counts[s][k] for k in OUTCOMES)] for s in SURFACES if counts[s]]
    rows.append(["all", len(outcomes), *(sum(counts[s][k] for s in SURFACES) for k in OUTCOMES)])
    print(table(["surface", "cases", "clean error", "traceback", "silently accepted", "output left", "hang"], rows))
    print(f"\n{len(outcomes)} cases in {elapsed:.0f} s (fixtures included)")
    bad = [o for o in outcomes if o.kind != "clean"]
    for o in bad[: args.show]:
        print(f"\n[{o.kind}] {o.case.surface}: {o.case.name} (exit {o.exit_code})\n  {o.last_line}")
        if o.detail:
            print("  " + o.detail.strip().replace("\n", "\n  ")[-1200:])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
