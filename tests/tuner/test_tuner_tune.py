"""Measurement, the three tuners and the tuning session (local runners; Dask has its own module)."""

import numpy as np
import pytest
from energon_tvm.runtime_sim import Simulator, SparsityProfile
from energon_tvm.schedules.emit import emit_program
from energon_tvm.schedules.schedule import Schedule, default_schedule
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.tuner import (
    InlineRunner,
    LocalRunner,
    MeasureTask,
    SearchSpace,
    TuningError,
    best_schedule,
    make_tuner,
    measure,
    profile_from_arrays,
    read_records,
    tune,
)


def session(workload, cfg, profile, knobs, **kw):
    kw.setdefault("runner", InlineRunner())
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 4)
    kw.setdefault("tuner_options", {"min_train": 4} if kw.get("tuner", "xgb") == "xgb" else None)
    return tune(workload, cfg, profile, knobs=knobs, **kw)


def test_measure_is_the_timing_only_simulation(cfg, workload, profile):
    task = MeasureTask.create(workload, cfg, profile)
    s = Schedule(16, 32, 2, 1, 2, "chunk", "recompute")
    expected = Simulator(cfg).run(emit_program(workload, s, cfg), profile=profile).stats["cycles"]
    result = measure(task, s.to_dict())
    assert result.ok and result.cycles == expected and result.error is None


def test_unmeasurable_schedule_is_a_result_not_a_crash(cfg, workload, profile):
    task = MeasureTask.create(workload, cfg, profile, max_instructions=50)
    result = measure(task, Schedule(16, 16).to_dict())
    assert result.cycles is None and "InstructionBudgetExceeded" in result.error


def test_profile_from_a_file_is_the_same_task(tmp_path, cfg, workload, profile):
    profile.save(tmp_path / "profile.npz")
    a = MeasureTask.create(workload, cfg, profile)
    b = MeasureTask.create(workload, "edge", tmp_path / "profile.npz")
    assert a.digest == b.digest


def test_profile_from_arrays_checks_shapes_and_adds_causal_masking(calibration):
    q, k, v, _ = calibration
    with pytest.raises(TuningError, match=r"calibration q has shape \[1, 2, 64, 32\]; .* needs \[1, 2, 32, 32\]"):
        profile_from_arrays(AttentionWorkload(1, 2, 32, 32, 32), q, k, v)
    causal = profile_from_arrays(AttentionWorkload(1, 2, 64, 64, 32, causal=True), q, k, v)
    lower = np.tril(np.ones((64, 64), bool))
    np.testing.assert_array_equal(causal.masks[0], np.broadcast_to(lower, (2, 64, 64)))


def test_mismatched_profile_is_rejected(cfg, profile):
    with pytest.raises(TuningError, match=r"covers \[heads, Sq, Sk\] = \[2, 64, 64\]; .* needs \[2, 64, 128\]"):
        MeasureTask.create(AttentionWorkload(1, 2, 64, 128, 32), cfg, profile)
    one_round = SparsityProfile(profile.masks[:2])
    with pytest.raises(TuningError, match="has 1 filter round"):
        MeasureTask.create(AttentionWorkload(1, 2, 64, 64, 32), cfg, one_round)


@pytest.mark.parametrize("kw, match", [
    ({"trials": 0}, "trials = 0 must be an integer >= 1"),
    ({"tuner": "annealing"}, "unknown tuner 'annealing'; tuners are xgb, random, grid"),
    ({"early_stopping": 0}, "early_stopping = 0"),
    ({"batch_size": -2}, "batch_size = -2"),
])
def test_bad_options_are_typed_errors(cfg, workload, profile, small_knobs, kw, match):
    with pytest.raises(TuningError, match=match):
        session(workload, cfg, profile, small_knobs, **kw)
    with pytest.raises(TuningError, match="n_parallel = 0"):
        LocalRunner(0)


def test_grid_and_random_tuners_never_repeat(cfg, workload, small_knobs):
    space = SearchSpace.build(workload, cfg, knobs=small_knobs)
    grid = make_tuner("grid", space)
    assert grid.next_batch(5) == [0, 1, 2, 3, 4]
    rand = make_tuner("random", space, seed=3)
    rand.update([7], [None])  # measured elsewhere (e.g. the heuristic): never proposed
    seen = [i for _ in range(len(space) // 50 + 1) for i in rand.next_batch(50)]
    assert sorted(seen) == sorted(set(range(len(space))) - {7}) and not rand.has_next()
    assert make_tuner("random", space, seed=3).next_batch(8) != make_tuner("random", space, seed=4).next_batch(8)


def test_xgb_batches_cover_knob_values_not_near_copies(cfg, workload, small_knobs):
    space = SearchSpace.build(workload, cfg, knobs=small_knobs)
    a, b, c = (space.index(s) for s in (Schedule(16, 16, 2, 2, 1), Schedule(16, 16, 2, 2, 2),
                                         Schedule(32, 32, 2, 2, 1, "chunk")))
    xgb = make_tuner("xgb", space)
    assert xgb._diverse([a, b, c], 2) == [a, c]  # b only changes out_slots; c brings three new values
    assert xgb._diverse([a, b, c], 3) == [a, c, b]


def test_xgb_session_is_reproducible_and_beats_the_heuristic(tmp_path, cfg, workload, profile, small_knobs):
    path = tmp_path / "records.jsonl"
    a = session(workload, cfg, profile, small_knobs, trials=20, seed=1, records=path)
    b = session(workload, cfg, profile, small_knobs, trials=20, seed=1)
    assert a.records == b.records and len(a.records) == 20
    assert a.records[0].tuner == "heuristic" and a.records[0].schedule == default_schedule(workload, cfg)
    assert len({r.schedule for r in a.records}) == 20
    assert a.best_cycles == min(r.cycles for r in a.records) <= a.heuristic.cycles
    assert read_records(path) == list(a.records)
    assert best_schedule(path, workload, cfg) == a.best_schedule
    # the cost model steers: after the first (random) batches, xgb's picks beat random's on average over
    # four seeds (one seed's eleven picks are too few to tell: seed 1 alone goes either way)
    xgb, rnd = [], []
    for seed in (1, 2, 3, 4):
        xgb += [x.cycles for x in (a if seed == 1 else session(workload, cfg, profile, small_knobs, trials=20,
                                                                seed=seed)).records[9:]]
        rnd += [x.cycles for x in session(workload, cfg, profile, small_knobs, trials=20, seed=seed,
                                          tuner="random").records[9:]]
    assert np.mean(xgb) < np.mean(rnd)


def test_early_stopping_ends_a_session_without_progress(cfg, workload, profile, small_knobs):
    result = session(workload, cfg, profile, small_knobs, trials=400, tuner="grid", early_stopping=6)
    last_best = max(r.trial for r in result.records if r.cycles == result.best_cycles)
    assert result.stopped_early and len(result.records) - 1 - last_best >= 6
    assert len(result.records) < 400


def test_trials_beyond_the_space_stop_when_it_is_exhausted(cfg, workload, profile):
    knobs = {"q_tile": [32, 64], "k_chunk": [64], "tile_slots": [2], "kv_slots": [2], "out_slots": [1, 2]}
    result = session(workload, cfg, profile, knobs, trials=50, tuner="grid", include_heuristic=False)
    assert len(result.records) == 2 * 1 * 2 * 2 * 2 * 2 and not result.stopped_early  # ... x kv_mode


def test_local_process_pool_gives_the_inline_records(cfg, workload, profile, small_knobs, capsys):
    inline = session(workload, cfg, profile, small_knobs, trials=12, seed=5)
    pooled = session(workload, cfg, profile, small_knobs, trials=12, seed=5, runner=None, n_parallel=2,
                     progress=True)
    assert pooled.records == inline.records
    assert "best=" in capsys.readouterr().err  # the progress bar shows best-so-far


def test_measure_reports_the_runs_energy(cfg, workload, profile):
    task = MeasureTask.create(workload, cfg, profile)
    s = Schedule(16, 32, 2, 1, 2, "chunk", "recompute")
    stats = Simulator(cfg).run(emit_program(workload, s, cfg), profile=profile).stats
    result = measure(task, s.to_dict())
    assert result.energy_pj == stats["energy_pj"]["total"] > 0
    assert result.score == result.cycles  # read in cycles unless told otherwise


@pytest.mark.parametrize("objective", ["energy", "edp"])
def test_session_minimises_the_objective_and_records_say_it(tmp_path, cfg, workload, profile, small_knobs,
                                                            objective):
    records = tmp_path / "r.jsonl"
    result = session(workload, cfg, profile, small_knobs, trials=12, tuner="random", records=records,
                     objective=objective)
    read = read_records(records)
    assert all(r.objective == objective and r.energy_pj is not None for r in read)
    value = {"energy": lambda r: r.energy_pj, "edp": lambda r: r.cycles * r.energy_pj}[objective]
    measured = [r for r in read if r.ok]
    assert result.best.score == min(value(r) for r in measured) == value(result.best)
    assert result.speedup == value(result.heuristic) / value(result.best)
    # compile takes the record best in the objective its records state, not the fastest one
    assert best_schedule(records, workload, cfg) == result.best.schedule
    with pytest.raises(TuningError, match="unknown objective 'power'"):
        session(workload, cfg, profile, small_knobs, trials=2, objective="power")


def test_records_without_an_objective_are_read_as_cycles(tmp_path, cfg, workload, profile, small_knobs):
    import json

    records = tmp_path / "r.jsonl"
    session(workload, cfg, profile, small_knobs, trials=8, tuner="random", records=records, objective="energy")
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    old = tmp_path / "old.jsonl"  # as records were written before the objective and energy existed
    old.write_text("".join(json.dumps({k: v for k, v in d.items() if k not in ("objective", "energy_pj",
                                                                                 "digest")}) + "\n"
                           for d in lines))
    read = read_records(old)
    assert all(r.objective == "cycles" and r.energy_pj is None for r in read)
    fastest = min((r for r in read if r.ok), key=lambda r: r.cycles)
    assert best_schedule(old, workload, cfg) == fastest.schedule
