"""The search space: valid by construction, in grid order, and sized without emitting programs."""

import itertools

import numpy as np
import pytest
from energon_tvm.isa.errors import ScheduleError
from energon_tvm.isa.numerics import FilterRound, MPMRFParams
from energon_tvm.schedules.emit import emit_program
from energon_tvm.schedules.schedule import Schedule, check_fits
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.tuner import (
    FEATURE_NAMES,
    KNOBS,
    SearchSpace,
    TuningError,
    default_knobs,
    program_size,
    schedule_features,
)


def test_default_knobs_follow_the_issue(workload):
    knobs = default_knobs(AttentionWorkload(1, 1, 100, 60, 32))
    assert knobs["q_tile"] == (1, 2, 4, 8, 16, 32, 64, 100)  # powers of two below Sq, and Sq
    assert knobs["k_chunk"] == tuple(range(8, 65, 8))        # multiples of 8 up to Sk (rounded up)
    assert knobs["tile_slots"] == (1, 2, 3, 4) and knobs["kv_slots"] == (1, 2) and knobs["out_slots"] == (1, 2)
    assert set(knobs["plane_mode"]) == {"head", "chunk"} and set(knobs["kv_mode"]) == {"chunk", "head"}
    assert set(knobs) == set(KNOBS)


def test_every_point_fits_and_the_rest_do_not(cfg):
    w = AttentionWorkload(1, 12, 512, 512, 64)
    space = SearchSpace.build(w, cfg, knobs={"k_chunk": [64, 256, 512], "tile_slots": [1, 3]})
    for s in space:
        check_fits(w, s, cfg)  # raises if not
    grid = 1
    for values in space.knobs.values():
        grid *= len(values)
    assert space.unfit > 0 and len(space) + space.unfit + space.over_budget == grid


def test_points_are_in_grid_order_and_indexable(cfg, workload, small_knobs):
    space = SearchSpace.build(workload, cfg, knobs=small_knobs)
    expected = [Schedule(**dict(zip(KNOBS, c))) for c in itertools.product(*(space.knobs[k] for k in KNOBS))]
    assert list(space) == expected  # nothing of this small grid overflows the edge buffers
    assert all(space.index(s) == i for i, s in enumerate(space))
    assert space.index(Schedule(8, 8)) is None


@pytest.mark.parametrize("w", [
    AttentionWorkload(1, 2, 40, 72, 32, bias_shape=(1, 1, 1, 72)),
    AttentionWorkload(1, 2, 17, 40, 32, causal=True, bias_shape=(1, 2, 17, 40)),
    AttentionWorkload(1, 2, 24, 24, 32, params=MPMRFParams(())),
    AttentionWorkload(1, 1, 30, 50, 64, causal=True,
                      params=MPMRFParams((FilterRound(2, 1, -0.2), FilterRound(4, 2, 0.1), FilterRound(8, 4, 0.3)))),
], ids=["padding", "causal+bias", "dense", "three-rounds"])
def test_program_size_counts_exactly_what_emit_produces(cfg, w):
    space = SearchSpace.build(w, cfg)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(space), size=12, replace=False):
        s = space[int(i)]
        assert program_size(w, s, cfg) == len(emit_program(w, s, cfg).code) == space.sizes[int(i)], s


def test_the_budget_leaves_out_only_huge_programs(cfg):
    w = AttentionWorkload(1, 12, 128, 128, 32, bias_shape=(1, 1, 1, 128))
    space = SearchSpace.build(w, cfg, knobs={"k_chunk": [8, 128]}, max_instructions=20_000)
    assert space.over_budget > 0 and max(space.sizes) <= 20_000
    assert min(s.q_tile for s in space) > 1


def test_bad_space_requests_are_typed_errors(cfg, workload):
    with pytest.raises(TuningError, match="unknown schedule knob 'order'"):
        SearchSpace.build(workload, cfg, knobs={"order": [1]})
    with pytest.raises(TuningError, match="max_instructions = 0"):
        SearchSpace.build(workload, cfg, max_instructions=0)
    with pytest.raises(TuningError, match="no schedule .* within 10 instructions"):
        SearchSpace.build(workload, cfg, max_instructions=10)
    with pytest.raises(ScheduleError, match="head dim 256 is wider than the edge datapath"):
        SearchSpace.build(AttentionWorkload(1, 1, 16, 16, 256), cfg)


def test_features_are_finite_and_distinguish_points(cfg, workload, small_knobs):
    space = SearchSpace.build(workload, cfg, knobs=small_knobs)
    x = schedule_features(space)
    assert x.shape == (len(space), len(FEATURE_NAMES))
    assert np.isfinite(x).all()
    assert len({row.tobytes() for row in x}) == len(space)
    np.testing.assert_array_equal(x, schedule_features(space))


def test_space_sizes_are_the_emitted_sizes_for_every_slot_count_and_mode(cfg):
    # the space counts one program per tile class and shares the counts between schedules that differ in
    # slots only: every point of this grid, slots and modes all varied, must still count exactly
    w = AttentionWorkload(1, 2, 40, 72, 32, causal=True, bias_shape=(1, 1, 1, 72))
    space = SearchSpace.build(w, cfg, knobs={"q_tile": [8, 40], "k_chunk": [16, 72]})
    assert len(space) == 2 * 2 * 4 * 2 * 2 * 2 * 2 * 2  # kv_mode last
    for s, size in zip(space, space.sizes):
        assert size == program_size(w, s, cfg) == len(emit_program(w, s, cfg).code), s
