"""Fixtures of the tuner tests: a small padded workload, its calibration profile and a small space."""

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.tuner import profile_from_arrays
from energon_tvm.workloads import structured_qkv

# every point of this grid simulates in ~10 ms, so a session of a few dozen trials takes ~1 s
SMALL_KNOBS = {"q_tile": [16, 32, 64], "k_chunk": [16, 32, 64]}


@pytest.fixture(scope="session")
def cfg():
    return load_config("edge")


@pytest.fixture(scope="session")
def workload():
    return AttentionWorkload(1, 2, 64, 64, 32, bias_shape=(1, 1, 1, 64))


@pytest.fixture(scope="session")
def calibration(workload):
    rng = np.random.default_rng(7)
    q, k, v = structured_qkv(rng, 1, 2, 64, 64, 32)
    mask = np.zeros((1, 1, 1, 64), np.float32)
    mask[..., 50:] = -np.inf  # a 50-token sentence padded to 64
    return q, k, v, mask


@pytest.fixture(scope="session")
def profile(workload, calibration):
    return profile_from_arrays(workload, *calibration)


@pytest.fixture
def small_knobs():
    return dict(SMALL_KNOBS)
