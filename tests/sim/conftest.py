"""Fixtures of the simulator tests."""

import pytest
from energon_tvm.isa.config import load_config


@pytest.fixture
def cfg():
    return load_config("edge")
