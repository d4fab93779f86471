"""Fixtures of the TVM backend tests: MP-MRF parameter sets and a per-session cache of host builds
(building a module for llvm is the slow step, and several tests compare against the same one)."""

from __future__ import annotations

import pytest
from energon_tvm.isa.numerics import MPMRFParams


@pytest.fixture(scope="session")
def dense_params() -> MPMRFParams:
    """alpha = -1 in both rounds: every unmasked key is kept (the dense INT16 baseline)."""
    return MPMRFParams.dense(2)


@pytest.fixture(scope="session")
def default_params() -> MPMRFParams:
    return MPMRFParams()


@pytest.fixture(scope="session")
def host_build():
    """``host_build(key, mod)``: the llvm VM of ``mod``, built once per ``key`` per session."""
    from harness import build

    cache = {}

    def get(key, mod):
        if key not in cache:
            cache[key] = build(mod)
        return cache[key]

    return get
