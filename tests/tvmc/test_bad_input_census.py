"""Every bad input of the census (tests/tvmc/census.py) that needs no model import gets a clean
one-line error, no traceback, no silent acceptance and no output left behind. bench/bad_inputs.py runs
the whole census, the compile and tune cases that import the model included, and prints its table."""

import pytest
from census import CASES, make_fixtures, run_case

FAST = [c for c in CASES if not c.compiles]


@pytest.fixture(scope="module")
def fixtures(package, model_files, tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("census"), compiled=model_files)


def test_the_census_covers_every_surface():
    surfaces = {c.surface for c in FAST}
    assert surfaces == {"compile", "calibrate", "run", "inspect", "tune", "binaries", "packages"}
    assert len(FAST) >= 150 and len({(c.surface, c.name) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", FAST, ids=[f"{c.surface}: {c.name}" for c in FAST])
def test_bad_input_gets_a_clean_error(case, fixtures, tmp_path, monkeypatch):
    monkeypatch.delenv("ENERGON_PACKAGE_KEY", raising=False)
    monkeypatch.delenv("ENERGON_PACKAGE_KEY_FILE", raising=False)
    outcome = run_case(case, fixtures, tmp_path)
    assert outcome.kind == "clean", f"{outcome.kind}: {outcome.last_line}\n{outcome.detail}"
