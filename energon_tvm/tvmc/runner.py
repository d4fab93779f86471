"""``tvmc run``: load a package, run the model on the host with its attention on the simulated
Energon machine, and gather outputs, per-call statistics, traces and timings.

A :class:`PackageSession` holds the loaded library, its VM and the
:class:`~energon_tvm.executor.Runner` that VM's offloaded calls go to; every program carries its own
hardware config, so nothing about the machine is looked up anywhere else.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TVMCError, open_user_file
from .package import Package, read_package

FILL_MODES = ("zeros", "ones", "random")


@dataclass
class RunResult:
    package: Package
    outputs: dict[str, np.ndarray]
    calls: list = field(default_factory=list)      # bridge CallRecords of the first run
    wall_seconds: list[float] = field(default_factory=list)  # per measurement: the mean of its `number` runs
    number: int = 1  # runs per measurement

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


def bound_per_inference(runs, cfg) -> tuple[float, str, float]:
    """The mean over inferences (``runs``: one list of CallRecords each, run on ``cfg``) of their calls'
    lower bound (:mod:`energon_tvm.schedules.bounds`, the count form: what a run's statistics hold), the
    unit that binds the most bound cycles of all their calls (:func:`total_bound`'s rule), and the mean
    energy bound (pJ)."""
    from ..schedules.bounds import call_bound_from_stats, total_bound

    total = total_bound([call_bound_from_stats(c.workload, cfg, c.stats) for calls in runs for c in calls])
    return total.cycles / len(runs), total.binds, total.energy_pj / len(runs)


#: Limits for an inputs .npz, checked before zipfile reads its directory: real ones hold a few arrays.
NPZ_MAX_MEMBERS = 1024
NPZ_MAX_DIRECTORY_BYTES = 1 << 20
_EOCD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
_CHUNK = 1 << 20


def _check_zip_directory(f, path) -> None:
    """Refuse a zip whose central directory is large before :mod:`zipfile` reads it all into memory
    (a few hundred bytes of Python objects per entry)."""
    size = f.seek(0, 2)
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return  # not a zip: zipfile says so
    _sig, _disk, _cd_disk, _here, entries, cd_bytes, cd_offset, _comment = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or cd_bytes == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise TVMCError(f"{path}: a zip64 .npz (over 65535 members or 4 GiB) is not read as inputs; the limits "
                        f"are {NPZ_MAX_MEMBERS} members and a {NPZ_MAX_DIRECTORY_BYTES}-byte directory")
    if entries > NPZ_MAX_MEMBERS or cd_bytes > NPZ_MAX_DIRECTORY_BYTES:
        raise TVMCError(f"{path}: the .npz declares {entries} members in a {cd_bytes}-byte directory; the limits "
                        f"are {NPZ_MAX_MEMBERS} members and {NPZ_MAX_DIRECTORY_BYTES} bytes")


def _npy_header(stream, member: str, path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from a .npy stream's header, leaving the stream at the data."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise TVMCError(f"{path}: member {member!r} is .npy format version {version[0]}.{version[1]}; inputs are "
                    f"read in versions 1.0 and 2.0")


def _check_values(name: str, arr: np.ndarray, target: np.dtype) -> None:
    """The rules an input's values follow: finite floats, and a dtype that converts to the package's
    without loss (numpy's "safe" casting, or integers whose values fit)."""
    src = arr.dtype
    if src.kind == "f" and arr.size:
        bad = ~np.isfinite(arr)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TVMCError(f"input {name!r} holds {int(bad.sum())} NaN or infinite value(s), the first {arr[where]} "
                            f"at {list(where)}; inputs must be finite")
    if np.can_cast(src, target, "safe"):
        return
    if src.kind in "biu" and target.kind in "biuf":
        if target.kind == "f":
            bits = np.finfo(target).nmant + 1
            lo, hi, rule = -(2 ** bits), 2 ** bits, f"integers in [-2**{bits}, 2**{bits}] are exact in {target}"
        else:
            info = np.iinfo(target) if target.kind != "b" else None
            lo, hi = (0, 1) if info is None else (info.min, info.max)
            rule = f"{target} holds [{lo}, {hi}]"
        if not arr.size:
            return
        for value in (arr.min(), arr.max()):
            if not lo <= int(value) <= hi:
                where = tuple(int(i) for i in np.argwhere(arr == value)[0])
                raise TVMCError(f"input {name!r} holds {int(value)} at {list(where)}, which the package's dtype "
                                f"{target} cannot hold ({rule})")
        return
    raise TVMCError(f"input {name!r} is {src}; the package takes {target}, and {src} -> {target} can lose values "
                    f"(numpy 'safe' casting); convert the array to {target} first")


def _read_npz(path, specs: list[dict], *, samples: bool = False,
              max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays for ``specs`` from an .npz, never unpickled and bounded by what the specs need: only
    their members are read, each member's .npy header is checked (shape, dtype, data size) before its
    data is decompressed, and members the model does not take are never decompressed.

    With ``samples`` an array may also carry one more leading axis (a data set's sample axis, at most
    :data:`MAX_SAMPLES` long), and all the data together must fit in ``max_bytes``."""
    import zipfile

    f = open_user_file(path, "inputs file")
    wanted = {s["name"] for s in specs}
    with f, contextlib.ExitStack() as streams:
        try:
            _check_zip_directory(f, path)
            archive = streams.enter_context(zipfile.ZipFile(f))
            members: dict[str, zipfile.ZipInfo] = {}
            for info in archive.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename  # as np.load names them
                if key in wanted:
                    if key in members:
                        raise TVMCError(f"{path}: input {key!r} appears twice ({members[key].filename!r} and "
                                        f"{info.filename!r})")
                    members[key] = info
            headers = {}
            for s in specs:  # every present member's header first, then what is missing
                info = members.get(s["name"])
                if info is None:
                    continue
                stream = streams.enter_context(archive.open(info))
                shape, fortran, dtype = _npy_header(stream, info.filename, path)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise TVMCError(f"{path} is not a readable .npz of plain arrays: input {s['name']!r} has dtype "
                                    f"{dtype}; inputs are bool, integer or float arrays (no object, string, complex "
                                    f"or structured ones)")
                want = list(s["shape"])
                if list(shape) != want and not (samples and len(shape) == len(want) + 1 and list(shape[1:]) == want):
                    also = f" (one sample) or [N, {', '.join(map(str, want))}] (N samples)" if samples else ""
                    raise TVMCError(f"input {s['name']!r} has shape {list(shape)}; the package was compiled for "
                                    f"{want}{also}")
                if samples and len(shape) > len(want) and not 1 <= shape[0] <= MAX_SAMPLES:
                    raise TVMCError(f"input {s['name']!r} holds {shape[0]} samples; a data set holds 1 to "
                                    f"{MAX_SAMPLES}")
                need = math.prod(shape) * dtype.itemsize
                declared = info.file_size - stream.tell()
                if declared != need:
                    raise TVMCError(f"{path}: input {s['name']!r} ({info.filename}) declares {declared} bytes of "
                                    f"data; its header's shape {list(shape)} of {dtype} needs {need}")
                headers[s["name"]] = (stream, shape, fortran, dtype, need)
            missing = [s["name"] for s in specs if s["name"] not in headers]
            if missing:
                raise TVMCError(f"{path} lacks input(s) {', '.join(missing)}; the model takes "
                                f"{', '.join(s['name'] for s in specs)}")
            total = sum(h[-1] for h in headers.values())
            if max_bytes is not None and total > max_bytes:
                raise TVMCError(f"{path}: the inputs hold {total / 2**20:,.1f} MiB of data; the memory budget is "
                                f"{max_bytes / 2**20:,.1f} MiB (--memory-budget)")
            out = {}
            for name, (stream, shape, fortran, dtype, need) in headers.items():
                flat = np.empty(math.prod(shape), dtype)
                raw, got = flat.view(np.uint8), 0
                while got < need:
                    chunk = stream.read(min(_CHUNK, need - got))
                    if not chunk:
                        raise TVMCError(f"{path}: input {name!r} is truncated: {got} of {need} bytes")
                    raw[got:got + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    got += len(chunk)
                out[name] = flat.reshape(shape, order="F" if fortran else "C")
            return out
        except TVMCError:
            raise
        except Exception as err:  # BadZipFile, zlib.error, a bad .npy header (ValueError), OSError, EOFError...
            raise TVMCError(f"{path} is not a readable .npz of plain arrays: {type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0]}") from None


def make_inputs(manifest: dict, inputs_path=None, fill_mode: str = "random", seed: int = 0) -> dict[str, np.ndarray]:
    """The model's inputs, from an .npz (see :func:`_read_npz`; never unpickled) or filled; checked
    against the manifest: shape, a dtype that converts without loss, finite values."""
    specs = manifest["inputs"]
    if inputs_path is not None:
        given = _read_npz(inputs_path, specs)
        out = {}
        for s in specs:
            arr, target = given[s["name"]], np.dtype(s["dtype"])
            _check_values(s["name"], arr, target)
            out[s["name"]] = arr.astype(target, copy=False)
        return out
    if fill_mode not in FILL_MODES:
        raise TVMCError(f"unknown --fill-mode {fill_mode!r}; known: {', '.join(FILL_MODES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TVMCError(f"--seed {seed!r}: must be a non-negative integer")
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


DEFAULT_MEMORY_BUDGET = 8 << 30


def parse_bytes(text: str, option: str = "--memory-budget") -> int:
    """``"8GiB"``, ``"512MiB"``, ``"64KiB"`` or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*", str(text))
    if m is None:
        raise TVMCError(f"{option} {text!r}: give a size such as 8GiB, 512MiB or a number of bytes")
    scale = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m.group(2)]
    value = int(float(m.group(1)) * scale)
    if value < 1:
        raise TVMCError(f"{option} {text!r}: must be at least one byte")
    return value


def _tensor_bytes(specs) -> int:
    return sum(int(np.prod(s["shape"], dtype=object)) * np.dtype(s["dtype"]).itemsize for s in specs)


def check_memory(package: Package, programs, budget: int) -> None:
    """Refuse, before anything is allocated, a package whose run needs more than ``budget`` bytes: at
    least its inputs and outputs plus the simulated DRAM image of its largest call (what the decoded
    ``programs``' memory maps declare; the host's intermediates come on top)."""
    io_bytes = _tensor_bytes(package.manifest["inputs"]) + _tensor_bytes(package.manifest["outputs"])
    image = max((prog.memory_map.extent for prog in programs), default=0)
    need = io_bytes + image
    if need > budget:
        raise TVMCError(f"the package needs at least {need / 2**20:,.1f} MiB to run ({io_bytes / 2**20:,.1f} MiB of "
                        f"inputs and outputs, {image / 2**20:,.1f} MiB of simulated DRAM for its largest call); "
                        f"the memory budget is {budget / 2**20:,.1f} MiB (--memory-budget)")


class PackageSession:
    """A loaded package, ready to run many inputs (the library is loaded once, its VM bound to this
    session's runner). ``on_call``: the runner's (:class:`~energon_tvm.executor.Runner`), called with
    every offloaded call's record and operands. A package whose host library needs CPU features this
    CPU lacks (its manifest's ``host``; ``cpu_flags``: the CPU's Linux flags, default this machine's) is
    refused before the library is loaded."""

    def __init__(self, path, *, key: bytes | None = None, memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
                 on_call=None, cpu_flags: frozenset[str] | None = None):
        from ..executor import Runner
        from ..host import HostCPU, HostCPUError

        self._tmp = tempfile.TemporaryDirectory(prefix="energon-pkg-")
        try:  # the package is read and checked before TVM is imported: a bad one is answered at once
            self.package = read_package(path, library_dir=Path(self._tmp.name), key=key)
            # the library runs only the programs the package lists (the ones tvmc inspect shows); they are
            # decoded once by read_package (for its meaning checks) and checked here, into the runner's cache
            self.runner = Runner(allowed_programs=self.package.program_digests(), on_call=on_call)
            programs = [self.runner.program(blob, self.package.decoded.get(name))[0]
                        for name, blob in self.package.programs.items()]
            if memory_budget is not None:
                check_memory(self.package, programs, memory_budget)
            if self.package.manifest.get("host") is not None:
                try:
                    HostCPU.from_dict(self.package.manifest["host"]).check(cpu_flags)
                except HostCPUError as err:
                    raise HostCPUError(f"{path}: {err}") from None
        except BaseException:
            self._tmp.cleanup()
            raise
        import tvm

        from ..relax import bridge

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


#: the most runs one ``tvmc run`` makes (number x repeat): every run simulates every offloaded call
MAX_RUNS = 10_000


def check_repetitions(number: int, repeat: int) -> None:
    """``number`` runs per measurement and ``repeat`` measurements, each at least 1, at most
    :data:`MAX_RUNS` runs in all."""
    for option, value in (("--number", number), ("--repeat", repeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TVMCError(f"{option} {value!r}: must be at least 1")
    if number * repeat > MAX_RUNS:
        raise TVMCError(f"--number {number} x --repeat {repeat} is {number * repeat} runs; the limit is {MAX_RUNS}")


def run_package(path, *, inputs=None, fill_mode: str = "random", repeat: int = 1, number: int = 1,
                trace: bool = False, capture: bool = False, seed: int = 0, key: bytes | None = None,
                memory_budget: int | None = DEFAULT_MEMORY_BUDGET, backend: str = "simulator") -> RunResult:
    """Run a compiled package ``number`` x ``repeat`` times, as classic tvmc measures: ``repeat``
    measurements, each the mean host wall time of ``number`` runs (``RunResult.wall_seconds``).
    Outputs, statistics and the trace come from the first run. With ``key``
    (:func:`~energon_tvm.tvmc.package.package_key`) the package must be signed with it. ``backend`` is
    the executor's (:class:`~energon_tvm.executor.RunOptions`)."""
    check_repetitions(number, repeat)
    check_backend(backend)
    with PackageSession(path, key=key, memory_budget=memory_budget) as session:
        feeds = make_inputs(session.manifest, inputs, fill_mode, seed)
        result = RunResult(session.package, {}, number=number)
        first = True
        for _ in range(repeat):
            elapsed = 0.0
            for _ in range(number):
                t0 = time.perf_counter()
                outputs, calls = session.run(feeds, collect=first, trace=trace and first, capture=capture,
                                               backend=backend)
                elapsed += time.perf_counter() - t0
                if first:
                    result.outputs, result.calls, first = outputs, calls, False
            result.wall_seconds.append(elapsed / number)
    return result


def check_backend(backend: str) -> None:
    from ..executor import BACKENDS

    if backend not in BACKENDS:
        raise TVMCError(f"--backend {backend!r}: unknown; known: {', '.join(BACKENDS)}")


def time_summary(wall_seconds: list[float]) -> dict[str, float]:
    """mean, median, max, min and std (population, as numpy's default) of the measurements, in ms: the
    columns of classic tvmc's ``--print-time`` table."""
    ms = np.asarray(wall_seconds, dtype=np.float64) * 1e3
    if not ms.size:
        raise TVMCError("no measurement to summarise")
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "max": float(ms.max()),
            "min": float(ms.min()), "std": float(ms.std())}


# -- calibration --------------------------------------------------------------------------------------
def attention_samples(path, inputs, *, progress: bool = False, key: bytes | None = None,
                      memory_budget: int | None = DEFAULT_MEMORY_BUDGET) -> dict:
    """Run the package at ``path`` on the reference backend over every input of the data set ``inputs``
    (:func:`read_samples`; an .npz of one set of inputs is one sample) and return, per offloaded site,
    what its attention saw on each input: site -> list of
    :class:`~energon_tvm.calibration.AttentionSample` (q, k, v, the call's workload mask, the scale).
    ``progress`` shows a bar over the inputs on stderr."""
    import sys

    from tqdm import tqdm

    from ..calibration import AttentionSample
    from ..mpmrf import workload_mask

    samples: dict[str, list] = {}

    def on_call(record) -> None:
        x, w = record.inputs, record.workload
        samples.setdefault(record.site, []).append(
            AttentionSample(x["q"], x["k"], x["v"], workload_mask(w, x["bias"]), w.effective_scale))

    with PackageSession(path, key=key, memory_budget=memory_budget, on_call=on_call) as session:
        data = read_samples(session.manifest, inputs, memory_budget)
        feeds = (lambda i: make_inputs(session.manifest, inputs)) if data is None else data.feeds
        n = 1 if data is None else data.count
        with tqdm(total=n, unit="input", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            for i in range(n):
                session.run(feeds(i), collect=False, backend="reference")
                bar.update(1)
    return samples


# -- data sets ----------------------------------------------------------------------------------------
#: the most samples one data set holds (rows of an .npz, or .npz files in a folder)
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class Samples:
    """The inputs of a data set: ``count`` samples, read one at a time with :meth:`feeds`. Either the
    arrays of one .npz with a leading sample axis (``arrays``), or a folder's .npz files, sorted by
    name (``files``), each read when its sample runs."""

    count: int
    arrays: dict | None = None
    files: tuple[Path, ...] = ()
    manifest: dict | None = None

    def feeds(self, i: int) -> dict[str, np.ndarray]:
        if self.arrays is not None:
            return {name: arr[i] for name, arr in self.arrays.items()}
        return make_inputs(self.manifest, self.files[i])

    def input_bytes(self) -> int:
        """What the samples hold in memory at once: all of an .npz's arrays, or one file's."""
        if self.arrays is not None:
            return sum(a.nbytes for a in self.arrays.values())
        return _tensor_bytes(self.manifest["inputs"])


def read_samples(manifest: dict, path, max_bytes: int | None = None) -> Samples | None:
    """The data set at ``path``: a folder of .npz files (one set of inputs each, sorted by name), or an
    .npz whose every array has one more leading axis than the package's input, all the same length N.
    An .npz of one set of inputs (the package's shapes) gives None. Checked as single inputs are
    (:func:`make_inputs`): shapes, dtypes that convert without loss, finite values."""
    path = Path(path)
    specs = manifest["inputs"]
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file()))
        if not files:
            raise TVMCError(f"inputs folder {path} holds no .npz file")
        if len(files) > MAX_SAMPLES:
            raise TVMCError(f"inputs folder {path} holds {len(files)} .npz files; a data set holds at most "
                            f"{MAX_SAMPLES}")
        return Samples(len(files), files=files, manifest=manifest)
    given = _read_npz(path, specs, samples=True, max_bytes=max_bytes)
    rank = {s["name"]: len(s["shape"]) for s in specs}
    counts = {name: (arr.shape[0] if arr.ndim > rank[name] else None) for name, arr in given.items()}
    if all(n is None for n in counts.values()):
        return None
    single = [name for name, n in counts.items() if n is None]
    if single:
        batched = next(name for name, n in counts.items() if n is not None)
        raise TVMCError(f"{path}: input {batched!r} holds {counts[batched]} samples (shape "
                        f"{list(given[batched].shape)}) but input {single[0]!r} has one sample's shape "
                        f"{list(given[single[0]].shape)}; give every input the leading sample axis")
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{name!r} {n}" for name, n in counts.items())
        raise TVMCError(f"{path}: the inputs hold different numbers of samples ({described}); every input "
                        f"needs the same N")
    out = {}
    for s in specs:
        arr, target = given[s["name"]], np.dtype(s["dtype"])
        _check_values(s["name"], arr, target)
        out[s["name"]] = arr.astype(target, copy=False)
    return Samples(next(iter(counts.values())), arrays=out, manifest=manifest)


@dataclass(frozen=True, eq=False)
class DatasetResult:
    """A data set's run: per output, the outputs of every sample stacked on a leading axis; per sample,
    the simulated cycles, energy (pJ) and DRAM bytes of one inference (zeros on the reference backend),
    and the final kept ratio of each offloaded call ([samples, calls], calls in execution order, their
    sites in ``sites``). On the timing backend ``timing_simulated`` calls ran on the machine and
    ``timing_cached`` took the figures of an earlier call with the same program and kept sets
    (:class:`~energon_tvm.executor.TimingCache`)."""

    backend: str
    outputs: dict
    sites: tuple[str, ...]
    cycles: np.ndarray
    energy_pj: np.ndarray
    dram_bytes: np.ndarray
    kept_ratio: np.ndarray
    wall_seconds: float
    timing_simulated: int = 0
    timing_cached: int = 0

    @property
    def count(self) -> int:
        return int(self.cycles.shape[0])

    def aggregates(self) -> dict:
        """Mean, p50 and p95 (numpy's linear percentiles) of cycles, energy and DRAM bytes per inference,
        and the mean final kept ratio of each call over the samples."""
        out = {}
        for key in ("cycles", "energy_pj", "dram_bytes"):
            x = getattr(self, key).astype(np.float64)
            out[key] = {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
                        "p95": float(np.percentile(x, 95))}
        out["kept_ratio_mean"] = [float(r) for r in self.kept_ratio.mean(axis=0)]
        return out


class _Collector:
    """Per-sample results into arrays allocated once, at the first sample that arrives (any index)."""

    def __init__(self, n: int):
        self.n = n
        self.outputs: dict[str, np.ndarray] | None = None
        self.sites: tuple[str, ...] = ()
        self.cycles, self.dram = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.energy = np.zeros(n, np.float64)
        self.kept: np.ndarray | None = None
        self.timing_simulated = self.timing_cached = 0

    def put(self, i: int, sample: tuple) -> None:
        got, sites, cycles, energy, dram, kept = sample
        if self.outputs is None:
            self.outputs = {name: np.empty((self.n,) + a.shape, a.dtype) for name, a in got.items()}
            self.sites, self.kept = sites, np.zeros((self.n, len(sites)), np.float64)
        want = {k: (v.shape[1:], v.dtype) for k, v in self.outputs.items()}
        seen = {k: (a.shape, a.dtype) for k, a in got.items()}
        if seen != want:
            raise TVMCError(f"sample {i} gave outputs {seen}; the data set's other samples gave {want}")
        if sites != self.sites:
            raise TVMCError(f"sample {i} made {len(sites)} offloaded call(s) at {list(sites)}; the other samples "
                            f"made {len(self.sites)} at {list(self.sites)}")
        for name, a in got.items():
            self.outputs[name][i] = a
        self.cycles[i], self.energy[i], self.dram[i] = cycles, energy, dram
        self.kept[i] = kept


def _run_sample(session: PackageSession, feeds: dict, backend: str) -> tuple:
    """One sample: (outputs, call sites, cycles, energy pJ, DRAM bytes, final kept ratio per call)."""
    got, calls = session.run(feeds, backend=backend)
    t = summarize(calls)
    return (got, tuple(c.site for c in calls), int(t["cycles"]), float(t["energy_pj"]), int(t["dram_bytes"]),
            [c.stats.final_kept_ratio for c in calls])


def _run_chunk(package: bytes, feeds: list[dict], backend: str, key: bytes | None,
               memory_budget: int | None) -> tuple[list[tuple], int, int]:
    """A Dask task: the package's bytes (so workers need no shared files) and a chunk of samples' inputs
    -> (each sample's results, the timing cache's misses and hits)."""
    with tempfile.TemporaryDirectory(prefix="energon-ds-") as tmp:
        path = Path(tmp) / "package.tar"
        path.write_bytes(package)
        with PackageSession(path, key=key, memory_budget=memory_budget) as session:
            results = [_run_sample(session, f, backend) for f in feeds]
            cache = session.runner.timing_cache
            return results, cache.misses, cache.hits


def _connect(address: str, timeout: float = 10.0):
    from distributed import Client  # lazy: dask takes about a second to import

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except ValueError as err:  # distributed's own check of the address's form
        raise TVMCError(f"--dask-scheduler {address!r} is not a valid address: {err}") from None
    except (OSError, TimeoutError) as err:
        raise TVMCError(f"--dask-scheduler: cannot reach the Dask scheduler at {address} within {timeout:g} s "
                        f"({err})") from None


def _run_on_dask(address: str, timeout: float, package_path, samples: Samples, backend: str, key, memory_budget,
                 collector: _Collector, bar) -> None:
    """Spread the samples over the cluster in contiguous chunks (about four per worker) and put each
    chunk's results at its samples' indices, so the result keeps the input order."""
    from distributed import as_completed

    with open_user_file(package_path, "package") as f:
        package = f.read()
    client = _connect(address, timeout)
    try:
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        n = samples.count
        size = max(1, math.ceil(n / (4 * workers)))
        remote = client.scatter(package, broadcast=True, hash=False)
        futures = {}
        for start in range(0, n, size):
            idx = range(start, min(n, start + size))
            future = client.submit(_run_chunk, remote, [samples.feeds(i) for i in idx], backend, key, memory_budget,
                                   pure=False)
            futures[future] = idx
        for future in as_completed(futures, loop=client.loop):
            try:
                results, misses, hits = future.result()
            except TVMCError:
                raise
            except Exception as err:
                raise TVMCError(f"a Dask worker failed on samples {futures[future].start}.."
                                f"{futures[future].stop - 1}: {type(err).__name__}: {err}") from None
            for i, sample in zip(futures[future], results):
                collector.put(i, sample)
            collector.timing_simulated += misses
            collector.timing_cached += hits
            bar.update(len(results))
    finally:
        client.close()


def run_dataset(path, inputs, *, backend: str = "simulator", key: bytes | None = None,
                memory_budget: int | None = DEFAULT_MEMORY_BUDGET, progress: bool = False,
                dask_scheduler: str | None = None, dask_timeout: float = 10.0) -> DatasetResult:
    """Run a compiled package on every sample of the data set ``inputs`` (:func:`read_samples`) with
    the executor ``backend``; ``progress`` shows a progress bar with inputs/s on stderr. The outputs
    are stacked in arrays allocated once; with the data set's inputs they must fit in the memory
    budget. With ``dask_scheduler`` (``tcp://HOST:PORT``) the samples run on that Dask cluster's
    workers (which need energon-tvm installed; they get the package's bytes and their samples' inputs),
    and the result is the same, in input order; the scheduler must answer within ``dask_timeout``
    seconds."""
    import sys

    from tqdm import tqdm

    check_backend(backend)
    with PackageSession(path, key=key, memory_budget=memory_budget) as session:
        manifest = session.manifest
        samples = read_samples(manifest, inputs, memory_budget)
        if samples is None:
            raise TVMCError(f"{inputs} holds one set of inputs (the shapes the package was compiled for); a data "
                            f"set's arrays carry a leading sample axis, or give a folder of .npz files")
        n = samples.count
        need = n * _tensor_bytes(manifest["outputs"]) + samples.input_bytes()
        if memory_budget is not None and need > memory_budget:
            raise TVMCError(f"the data set needs {need / 2**20:,.1f} MiB for its {n} samples' inputs and outputs; the "
                            f"memory budget is {memory_budget / 2**20:,.1f} MiB (--memory-budget)")
        collector = _Collector(n)
        t0 = time.perf_counter()
        with tqdm(total=n, unit="input", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            if dask_scheduler is not None:
                _run_on_dask(dask_scheduler, dask_timeout, path, samples, backend, key, memory_budget,
                             collector, bar)
            else:
                cache = session.runner.timing_cache
                misses, hits = cache.misses, cache.hits
                for i in range(n):
                    collector.put(i, _run_sample(session, samples.feeds(i), backend))
                    bar.update(1)
                collector.timing_simulated += cache.misses - misses
                collector.timing_cached += cache.hits - hits
        wall = time.perf_counter() - t0
    return DatasetResult(backend, collector.outputs, collector.sites, collector.cycles, collector.energy,
                         collector.dram, collector.kept, wall, collector.timing_simulated, collector.timing_cached)
