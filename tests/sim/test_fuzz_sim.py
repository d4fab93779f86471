"""Robustness through the simulator: structure-aware mutants of real programs (tests/sim/mutants.py)
are loaded, and the accepted ones run on finite inputs. Each must be refused or trap with a project
error, or run to a finite output: never another exception, never a NaN or an infinity. The long run is
``python bench/fuzz_programs.py --mutations 100000``."""

import collections
import time

import pytest
from mutants import Inputs, Mutator, corpus, run_case

QUICK_CASES = 150
CASES = 2_500
SEED = 20240


def fuzz(cases: int, seed: int) -> collections.Counter:
    mutate, inputs = Mutator(corpus(), seed), Inputs(seed)
    outcomes: collections.Counter = collections.Counter()
    for _ in range(cases):
        op, blob = mutate()
        outcome, kind, message = run_case(blob, inputs)
        assert outcome not in ("escape", "nonfinite"), f"{op} mutant: {kind}: {message}\ninput: {blob.hex()}"
        outcomes[outcome, kind] += 1
    return outcomes


def test_the_corpus_loads_and_runs_to_finite_outputs():
    inputs = Inputs()
    assert [run_case(blob, inputs)[0] for blob in corpus()] == ["finite"] * len(corpus())


def test_mutants_run_through_the_simulator_quick():
    outcomes = fuzz(QUICK_CASES, SEED + 1)
    assert {o for o, _ in outcomes} >= {"refused", "trapped", "finite"}


@pytest.mark.slow
def test_mutants_run_through_the_simulator():
    start = time.perf_counter()
    outcomes = fuzz(CASES, SEED)
    elapsed = time.perf_counter() - start
    by_outcome = collections.Counter()
    for (outcome, _kind), n in outcomes.items():
        by_outcome[outcome] += n
    print(f"fuzz through the simulator: {CASES} mutants in {elapsed:.1f} s: {dict(by_outcome)}; "
          f"{dict(outcomes)}")
    accepted = by_outcome["trapped"] + by_outcome["finite"]
    assert accepted > CASES // 3  # most mutants reach the simulator
    traps = {kind for (outcome, kind) in outcomes if outcome == "trapped"}
    assert traps >= {"IllegalInstruction", "MisalignedAccess", "RegionViolation", "UninitializedRead", "Deadlock"}
    assert {kind for (outcome, kind) in outcomes if outcome == "refused"} == {"BinaryFormatError (container)",
                                                                               "BinaryFormatError (meaning)"}
    assert elapsed < 120
