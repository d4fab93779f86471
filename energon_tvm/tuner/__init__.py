"""The autotuner: searches the scheduler's knobs per workload, timing candidates in the simulator's
timing-only mode on sparsity profiles recorded from calibration data.

Parts, one module each: ``space`` (valid schedules), ``features`` (what the cost model sees),
``measure`` (one timing, picklable), ``runners`` (local process pool, Dask), ``tuners`` (xgb, random,
grid), ``records`` (JSON lines, best per workload), ``session`` (:func:`tune`). XGBoost, Dask and tqdm
are imported only when a session needs them.
"""

from .errors import ClusterError, RecordsError, TuningError
from .features import FEATURE_NAMES, schedule_features
from .measure import MeasureResult, MeasureTask, measure, profile_from_arrays
from .objectives import OBJECTIVES, objective_value
from .records import TuningRecord, append_records, best_record, best_schedule, read_records
from .runners import DaskRunner, InlineRunner, LocalRunner, Runner, make_runner
from .session import TuneResult, tune
from .space import DEFAULT_MAX_INSTRUCTIONS, KNOBS, SearchSpace, default_knobs, program_size
from .tuners import TUNERS, GridTuner, RandomTuner, Tuner, XGBTuner, make_tuner

__all__ = [
    "OBJECTIVES", "objective_value",
    "DEFAULT_MAX_INSTRUCTIONS",
    "FEATURE_NAMES",
    "KNOBS",
    "TUNERS",
    "ClusterError",
    "DaskRunner",
    "GridTuner",
    "InlineRunner",
    "LocalRunner",
    "MeasureResult",
    "MeasureTask",
    "RandomTuner",
    "RecordsError",
    "Runner",
    "SearchSpace",
    "TuneResult",
    "Tuner",
    "TuningError",
    "TuningRecord",
    "XGBTuner",
    "append_records",
    "best_record",
    "best_schedule",
    "default_knobs",
    "make_runner",
    "make_tuner",
    "measure",
    "profile_from_arrays",
    "program_size",
    "read_records",
    "schedule_features",
    "tune",
]
