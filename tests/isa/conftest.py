"""Fixtures of the ISA tests: the built-in configs and golden-file comparison."""

from pathlib import Path

import pytest
from strategies import CONFIGS

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture(params=sorted(CONFIGS))
def cfg(request):
    """Each built-in hardware config in turn."""
    return CONFIGS[request.param]


@pytest.fixture
def edge():
    return CONFIGS["edge"]


@pytest.fixture
def server():
    return CONFIGS["server"]


@pytest.fixture
def golden(request):
    """``golden(name, text)``: compare ``text`` with ``golden/<name>``, or rewrite the file under
    ``--update-golden``."""

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if request.config.getoption("--update-golden"):
            path.write_text(text)
            return
        assert path.is_file(), f"{path} is missing; create it with pytest --update-golden"
        assert text == path.read_text(), (f"output differs from {path}; if the change is intended, rerun "
                                          f"with --update-golden and review the diff")

    return check
