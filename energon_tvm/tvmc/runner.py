"""``tvmc run``: load a package, run the model on the host with its attention on the simulated
Energon machine, and gather outputs, per-call statistics, traces and timings.

A :class:`PackageSession` holds the loaded library, its VM and the
:class:`~energon_tvm.executor.Runner` that VM's offloaded calls go to; every program carries its own
hardware config, so nothing about the machine is looked up anywhere else.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TVMCError
from .package import Package, read_package

FILL_MODES = ("zeros", "ones", "random")


@dataclass
class RunResult:
    package: Package
    outputs: dict[str, np.ndarray]
    calls: list = field(default_factory=list)      # bridge CallRecords of the first run
    wall_seconds: list[float] = field(default_factory=list)

    @property
    def manifest(self) -> dict:
        return self.package.manifest

    def totals(self) -> dict:
        """Simulated totals over every offloaded call of one inference."""
        return summarize(self.calls)


def summarize(calls) -> dict:
    """Simulated totals over CallRecords: calls, cycles, energy (pJ), DRAM bytes, candidates and the
    kept ratio after each round (pooled over the calls)."""
    stats = [c.stats for c in calls]
    cand = sum(s.candidates for s in stats)
    rounds = max((s.rounds for s in stats), default=0)
    kept = [sum(s.kept_per_round[r] for s in stats if s.rounds > r) for r in range(rounds)]
    machine = [s.machine for s in stats]
    return {
        "calls": len(stats),
        "cycles": sum(m.get("cycles", 0) for m in machine),
        "energy_pj": sum(m.get("energy_pj", {}).get("total", 0.0) for m in machine),
        "dram_bytes": sum(m.get("dram_bytes", {}).get("read_total", 0) + m.get("dram_bytes", {}).get(
            "write_total", 0) for m in machine),
        "candidates": cand,
        "kept_ratio": [k / cand if cand else 0.0 for k in kept],
    }


def per_inference(runs) -> dict:
    """Mean cycles, energy and DRAM bytes per inference over ``runs`` (one list of CallRecords per
    inference), and the kept ratio per round pooled over all of them."""
    per_run = [summarize(calls) for calls in runs]
    pooled = summarize([c for calls in runs for c in calls])
    return {key: float(np.mean([t[key] for t in per_run])) for key in ("cycles", "energy_pj", "dram_bytes")} | {
        "calls": per_run[0]["calls"] if per_run else 0, "kept_ratio": pooled["kept_ratio"]}


def make_inputs(manifest: dict, inputs_path=None, fill_mode: str = "random", seed: int = 0) -> dict[str, np.ndarray]:
    """The model's inputs, from an .npz (never unpickled) or filled; checked against the manifest."""
    specs = manifest["inputs"]
    if inputs_path is not None:
        try:
            with np.load(inputs_path, allow_pickle=False) as z:
                given = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise TVMCError(f"inputs file {str(inputs_path)!r} does not exist") from None
        except (OSError, ValueError) as err:
            raise TVMCError(f"{inputs_path} is not a readable .npz of plain arrays: {err}") from None
        missing = [s["name"] for s in specs if s["name"] not in given]
        if missing:
            raise TVMCError(f"{inputs_path} lacks input(s) {', '.join(missing)}; the model takes "
                            f"{', '.join(s['name'] for s in specs)}")
        out = {}
        for s in specs:
            arr = given[s["name"]]
            if list(arr.shape) != list(s["shape"]):
                raise TVMCError(f"input {s['name']!r} has shape {list(arr.shape)}; the package was compiled for "
                                f"{s['shape']}")
            out[s["name"]] = arr.astype(s["dtype"], copy=False)
        return out
    if fill_mode not in FILL_MODES:
        raise TVMCError(f"unknown --fill-mode {fill_mode!r}; known: {', '.join(FILL_MODES)}")
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape, dtype = tuple(s["shape"]), np.dtype(s["dtype"])
        if fill_mode == "zeros":
            out[s["name"]] = np.zeros(shape, dtype)
        elif fill_mode == "ones":
            out[s["name"]] = np.ones(shape, dtype)
        elif np.issubdtype(dtype, np.integer):
            # integer inputs are token ids or masks: small non-negative values are valid for both
            out[s["name"]] = rng.integers(0, 2 if "mask" in s["name"] else 100, shape).astype(dtype)
        else:
            out[s["name"]] = rng.standard_normal(shape).astype(dtype)
    return out


def _to_numpy(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [x for item in value for x in _to_numpy(item)]


class PackageSession:
    """A loaded package, ready to run many inputs (the library is loaded once, its VM bound to this
    session's runner)."""

    def __init__(self, path):
        import tvm

        from ..executor import Runner
        from ..relax import bridge

        self._tmp = tempfile.TemporaryDirectory(prefix="energon-pkg-")
        self.package = read_package(path, library_dir=Path(self._tmp.name))
        self.runner = Runner()
        try:
            lib = tvm.runtime.load_module(str(self.package.library_path))
            self._vm = bridge.virtual_machine(lib, self.runner)
        except Exception as err:
            self.close()
            raise TVMCError(f"cannot load the package's library: {type(err).__name__}: {err}") from None

    @property
    def manifest(self) -> dict:
        return self.package.manifest

    def run(self, feeds: dict[str, np.ndarray], *, collect: bool = True, trace: bool = False, capture: bool = False,
            backend: str = "simulator"):
        """(outputs by name, the run's CallRecords; empty when not ``collect``) for one set of inputs."""
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s["name"]], dtype=s["dtype"]))
                for s in self.manifest["inputs"]]
        self.runner.configure(trace=trace, backend=backend, capture=capture)
        self.runner.take()
        try:
            value = self._vm["main"](*args)
        except Exception as err:
            self.runner.raise_fault()  # an offloaded call's own error, as itself
            raise TVMCError(f"the model failed while running: {type(err).__name__}: "
                            f"{(str(err).strip().splitlines() or [''])[-1]}") from None
        calls = self.runner.take()
        arrays = _to_numpy(value)
        names = [o["name"] for o in self.manifest["outputs"]]
        return {names[i] if i < len(names) else f"output_{i}": a for i, a in enumerate(arrays)}, (
            calls if collect else [])

    def close(self) -> None:
        self._vm = None
        self._tmp.cleanup()

    def __enter__(self) -> PackageSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_package(path, *, inputs=None, fill_mode: str = "random", repeat: int = 1, trace: bool = False,
                capture: bool = False, seed: int = 0) -> RunResult:
    """Run a compiled package once per ``repeat``; statistics come from the first run."""
    if repeat < 1:
        raise TVMCError(f"--repeat {repeat}: must be at least 1")
    with PackageSession(path) as session:
        feeds = make_inputs(session.manifest, inputs, fill_mode, seed)
        result = RunResult(session.package, {})
        for i in range(repeat):
            t0 = time.perf_counter()
            outputs, calls = session.run(feeds, collect=i == 0, trace=trace and i == 0, capture=capture)
            result.wall_seconds.append(time.perf_counter() - t0)
            if i == 0:
                result.outputs, result.calls = outputs, calls
    return result
