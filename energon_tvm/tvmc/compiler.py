"""``tvmc compile``: model -> Relax -> Energon partition -> host build -> package.

The Python API mirrors the command line: :func:`compile_model` takes the same options and returns a
:class:`CompileResult`; :func:`write` turns it into the package (:mod:`.package`). The command line's
options become one :class:`~energon_tvm.executor.EnergonTarget` (config, the selection policy's
parameters, schedule source) handed to ``partition_for_energon``; its offload report says, per site,
which program and schedule the call got, and the package is written from that report. ``-O`` and
``--pass-config`` become one :class:`BuildOptions`, the ``PassContext`` the host build runs in
(recorded in the manifest's ``build``); both are checked against TVM's registered options before any
model is read.

The host code is built for ``--target-llvm-mcpu`` or, when it is not given, for the highest x86-64
level the compiling CPU has (:func:`energon_tvm.host.default_mcpu`); the manifest's ``host`` says which
and the CPU features that needs (:class:`energon_tvm.host.HostCPU`), and ``tvmc run`` refuses a CPU
that lacks one. ``--target-llvm-mcpu x86-64`` builds the portable package. ``--tuning-records`` names
Energon tuning records (a file) or a MetaSchedule database of the host kernels (a folder, written by
``tvmc tune --host``); both may be given.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .errors import TVMCError
from .frontends import LoadedModel, TensorSpec, load_model
from .noise import quiet
from .package import atomic_write, sha256, write_package
from .shapes import format_input_shapes, parse_input_shapes
from .target import Target, parse_target

#: TVM's default PassContext opt_level (what an unqualified build uses)
DEFAULT_OPT_LEVEL = 2
OPT_LEVELS = (0, 1, 2, 3)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class BuildOptions:
    """The ``tvm.transform.PassContext`` of the host build: ``opt_level`` (``-O``) and ``config``
    (``--pass-config``), as (key, value) pairs already checked against TVM's registered options."""

    opt_level: int = DEFAULT_OPT_LEVEL
    config: tuple[tuple[str, object], ...] = ()

    def pass_context(self):
        import tvm

        return tvm.transform.PassContext(opt_level=self.opt_level, config=dict(self.config))

    def to_dict(self) -> dict:
        return {"opt_level": self.opt_level, "pass_config": dict(self.config)}


@dataclass
class CompiledCall:
    """One offloaded attention call site: its workload, schedule and program."""

    index: int
    site: str
    workload: dict
    program: bytes
    schedule: dict
    schedule_source: str  # executor.HEURISTIC or executor.TUNED
    schedule_record: str | None = None  # the tuning record's id (executor.record_id)
    schedule_objective: str | None = None  # what the heuristic ranked by, or the record was tuned for

    @property
    def member(self) -> str:
        return f"programs/call_{self.index:03d}.bin"


@dataclass
class CompileResult:
    model: LoadedModel
    target: Target
    library: bytes
    calls: list[CompiledCall]
    offloads: object  # OffloadReport (None when energon is not in the target)
    relax_text: str
    outputs: list[TensorSpec]
    timings: dict = field(default_factory=dict)
    model_path: str = ""
    model_sha256: str = ""
    attention_sites: int = 0  # attention-shaped sites found, offloaded or not (also with --target llvm)
    build: BuildOptions = field(default_factory=BuildOptions)
    thresholds: object = None  # ThresholdsFile the per-site parameters came from (None: the target's params)
    host: object = None  # energon_tvm.host.HostCPU: the mcpu of the host code and the CPU features it needs
    host_tuning: object = None  # energon_tvm.host_tuning.AppliedDatabase (None: no host database given)

    def manifest(self) -> dict:
        import tvm

        cfg = self.target.config
        return {
            "versions": {"energon_tvm": __version__, "tvm": tvm.__version__, "python": platform.python_version()},
            "model": {"path": Path(self.model_path).name, "sha256": self.model_sha256, "format": self.model.format},
            "target": self.target.describe(),
            "offload": self.target.offload,
            "attention_sites": self.attention_sites,
            "config": {"name": cfg.name, "fingerprint": cfg.fingerprint.hex(), "values": cfg.to_dict()},
            "params": self.target.params.to_dict(),
            "inputs": [i.to_dict() for i in self.model.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "calls": [{"site": c.site, "workload": c.workload, "schedule": c.schedule,
                       "schedule_source": c.schedule_source, "schedule_record": c.schedule_record,
                       "schedule_objective": c.schedule_objective,
                       "program": c.member} for c in self.calls],
            "offloads": [] if self.offloads is None else [r.to_dict() for r in self.offloads],
            "compile_seconds": self.timings,
            "build": self.build.to_dict(),
            "thresholds": None if self.thresholds is None else self.thresholds.manifest_record(),
            "host": None if self.host is None else self.host.to_dict(),
        }


def _output_specs(mod, names) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty
    types = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, ty in enumerate(types):
        shape = tuple(int(s) for s in ty.shape) if getattr(ty, "shape", None) is not None else ()
        name = names[i] if i < len(names) else f"output_{i}"
        specs.append(TensorSpec(name, shape, str(ty.dtype)))
    return specs


@dataclass
class Partitioned:
    """The front half of a compile: the model imported, its attention offloaded (with energon in the
    target), and the host CPU its host code is for. :func:`compile_model` builds it; ``tvmc tune
    --host`` tunes its host kernels (``mod``)."""

    model: LoadedModel
    target: Target  # its mcpu resolved: the given one, or the compiling CPU's level
    mod: object  # the Relax module the host build compiles
    report: object  # OffloadReport (None when energon is not in the target)
    calls: list[CompiledCall]
    attention_sites: int
    thresholds: object
    model_sha256: str
    host: object  # energon_tvm.host.HostCPU
    timings: dict = field(default_factory=dict)


def partition_model(model_path, *, model_format: str | None = None, target: str = "energon, llvm",
                    config: str | None = None, alpha: str | None = None, rounds: str | None = None,
                    rule: str | None = None, gap: str | None = None, policy: str | None = None,
                    topk: str | None = None, sanger: str | None = None,
                    mcpu: str | None = None, input_shapes: str | None = None, tuning_records: str | None = None,
                    verbose: int = 0, log=None, thresholds=None, cpu_flags=None, fast_math=None,
                    objective: str | None = None) -> Partitioned:
    """Import the model and offload its attention, as :func:`compile_model` does before the host
    build (its options are the same). The host code is for ``mcpu`` or, when None, for the highest
    x86-64 level of the compiling CPU (``cpu_flags``: that CPU's Linux flags, default this machine's;
    :func:`energon_tvm.host.default_mcpu`). ``objective``: how the heuristic ranks the schedules of the
    calls no tuning record covers, ``cycles``, ``energy`` or ``edp`` (None: its default,
    ``energon_tvm.schedules.cost.DEFAULT_OBJECTIVE``)."""
    from dataclasses import replace

    from .. import host
    from ..executor import HEURISTIC, EnergonTarget, ScheduleSource

    if not Path(model_path).is_file():  # answered before TVM is imported
        raise TVMCError(f"model file {str(model_path)!r} does not exist")
    say = log or (lambda _msg: None)
    tgt = parse_target(target, config, alpha, rounds=rounds, mcpu=mcpu, rule=rule, gap=gap,
                       thresholds=None if thresholds is None else str(thresholds), policy=policy, topk=topk,
                       sanger=sanger, fast_math=fast_math)
    model_sha256 = sha256(Path(model_path).read_bytes())
    thr, site_params = None, {}
    if thresholds is not None:  # the file, its model and its rounds are checked before the import
        from .target import parse_params
        from .thresholds import read_thresholds

        thr = read_thresholds(thresholds)
        thr.check_model(model_path, model_sha256)
        cal = thr.calibration
        thr.check_rounds(None if rounds is None else tuple((r.q_bits, r.k_bits) for r in parse_params(rounds).rounds))
        site_params = thr.site_params()
        # the sites' own parameters apply; the target's are the file's rounds under its rule's defaults
        tgt = replace(tgt, params=parse_params(",".join(f"{q}x{k}" for q, k in cal.bits), cal.rule).with_view(cal.view))
    # both --input-shapes forms (commas, classic spaces) reach the frontend as the comma form
    shapes = format_input_shapes(parse_input_shapes(input_shapes)) if input_shapes else None
    # a bad records file or objective fails before the import
    schedules = ScheduleSource.from_records(tuning_records, objective)
    timings = {}
    t0 = time.perf_counter()
    model = load_model(model_path, model_format, shapes, verbose=verbose)  # quiet unless -v (noise.HARMLESS)
    timings["import"] = time.perf_counter() - t0
    say(f"imported {Path(model_path).name} ({model.format}): inputs "
        + ", ".join(f"{i.name}{list(i.shape)}" for i in model.inputs))
    mod, report, calls = model.mod, None, []
    if tgt.offload:
        from ..relax import partition_for_energon

        t0 = time.perf_counter()
        energon = EnergonTarget(tgt.config, tgt.params, tuple(sorted(site_params.items())), schedules)
        mod, report = partition_for_energon(mod, energon)
        timings["partition"] = time.perf_counter() - t0
        if thr is not None:
            thr.check_sites(report)
        for i, record in enumerate(report.offloaded):
            choice = record.schedule
            calls.append(CompiledCall(i, record.site, record.workload.to_dict(), record.program,
                                      choice.schedule.to_dict(), choice.source, choice.record, choice.objective))
            if schedules.records and choice.source == HEURISTIC:
                say(f"no tuning record for {record.workload.key()} on {tgt.config.name}; using the heuristic "
                    f"schedule")
        say(f"offloaded {len(report.offloaded)} of {len(report)} attention site(s) to Energon "
            f"({tgt.config.name})")
        sites = len(report)
    else:
        from tvm import relax

        from ..relax.discovery import discover

        sites = len(discover(relax.transform.ConvertToDataflow()(mod)))
    detected = tgt.mcpu is None
    if detected:
        tgt = replace(tgt, mcpu=host.default_mcpu(cpu_flags))
        say(f"host code for {tgt.mcpu or 'the generic CPU'} (this CPU's level; --target-llvm-mcpu "
            f"{host.PORTABLE_MCPU} builds a package any x86-64 CPU runs)")
    return Partitioned(model, tgt, mod, report, calls, sites, thr, model_sha256,
                       host.HostCPU.for_build(tgt.mcpu, detected, tgt.fast_math), timings)


def compile_model(model_path, *, model_format: str | None = None, target: str = "energon, llvm",
                  config: str | None = None, alpha: str | None = None, rounds: str | None = None,
                  rule: str | None = None, gap: str | None = None, policy: str | None = None,
                  topk: str | None = None, sanger: str | None = None,
                  mcpu: str | None = None, input_shapes: str | None = None, tuning_records: str | None = None,
                  host_database=None, build: BuildOptions | None = None, verbose: int = 0, log=None,
                  thresholds=None, cpu_flags=None, fast_math=None, objective: str | None = None) -> CompileResult:
    """Compile the model at ``model_path``; ``log`` (a callable) receives progress lines. ``policy`` is the
    selection policy (``--target-energon-policy``, default mpmrf) and ``topk`` / ``sanger`` the value of
    the one-round policy of that name (:func:`~energon_tvm.tvmc.target.parse_params`). ``build``: the
    PassContext of the host build (:func:`build_options`); ``verbose`` 0 hides the third-party output
    known to be harmless (:mod:`.noise`) during the import and the build. ``thresholds``: a thresholds
    file of ``tvmc calibrate`` (:mod:`.thresholds`), which gives every site its parameters per head; it
    must be for this model file, its rounds and every offloaded site. ``tuning_records``: Energon tuning
    records (a file); ``host_database``: a folder ``tvmc tune --host`` wrote, whose tuned host kernels
    replace the default schedules of the same kernels. ``mcpu`` None: the compiling CPU's level
    (:func:`partition_model`). ``fast_math`` (``--target-llvm-fast-math``: on / off, or a bool): the host
    code's exp, erf, tanh, GELU and softmax as TVM's fast approximations (:func:`energon_tvm.host.legalize_passes`).
    ``objective``: the heuristic's ranking (:func:`partition_model`)."""
    database = None
    if host_database is not None:  # a bad folder fails before the import
        from .. import host_tuning

        database = host_tuning.open_database(host_database)
    build = build or BuildOptions()
    part = partition_model(model_path, model_format=model_format, target=target, config=config, alpha=alpha,
                           rounds=rounds, rule=rule, gap=gap, policy=policy, topk=topk, sanger=sanger, mcpu=mcpu,
                           input_shapes=input_shapes, tuning_records=tuning_records, verbose=verbose, log=log,
                           thresholds=thresholds, cpu_flags=cpu_flags, fast_math=fast_math, objective=objective)
    from .. import host

    tgt, timings, applied = part.target, dict(part.timings), None
    t0 = time.perf_counter()
    try:
        with quiet(verbose), build.pass_context():
            if database is None:
                ex = host.build(part.mod, tgt.mcpu, fast_math=tgt.fast_math)
            else:
                from .. import host_tuning

                ex, applied = host_tuning.build(part.mod, tgt.mcpu, database, str(host_database),
                                                fast_math=tgt.fast_math)
    except Exception as err:
        raise TVMCError(f"host build failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "model.so"
        ex.export_library(str(lib))
        library = lib.read_bytes()
    timings["build"] = time.perf_counter() - t0
    return CompileResult(part.model, tgt, library, part.calls, part.report, part.mod.script(),
                         _output_specs(part.mod, part.model.outputs), timings, str(model_path), part.model_sha256,
                         part.attention_sites, build, part.thresholds, part.host, applied)


def split_tuning_records(values) -> tuple[str | None, str | None]:
    """``--tuning-records`` values (repeatable) -> (the Energon records file, the host database folder):
    a folder is a host database (``tvmc tune --host``), anything else a records file (``tvmc tune``); at
    most one of each."""
    files, folders = [], []
    for value in values or ():
        (folders if Path(value).is_dir() else files).append(str(value))
    for kind, given in (("records file", files), ("host database folder", folders)):
        if len(given) > 1:
            raise TVMCError(f"--tuning-records names {len(given)} {kind}s ({', '.join(map(repr, given))}); give at "
                            f"most one (and at most one of the other kind)")
    return (files[0] if files else None), (folders[0] if folders else None)


def tune_host_model(model_path, output, *, trials: int, model_format: str | None = None,
                    target: str = "energon, llvm", config: str | None = None, alpha: str | None = None,
                    rounds: str | None = None, rule: str | None = None, gap: str | None = None,
                    policy: str | None = None, topk: str | None = None, sanger: str | None = None,
                    mcpu: str | None = None, input_shapes: str | None = None, thresholds=None,
                    dask_scheduler: str | None = None, seed: int = 0, search: dict | None = None, verbose: int = 0,
                    log=None, cpu_flags=None, fast_math=None):
    """``tvmc tune --host``: tune the model's host kernels (after the Energon partition, for the build's
    mcpu: :func:`partition_model`) with MetaSchedule into the database folder ``output`` until it holds
    ``trials`` trials of them; a second call continues (:func:`energon_tvm.host_tuning.tune`).
    ``dask_scheduler``: time the candidates on that Dask cluster. The options, the folder and the TVM
    installation are checked before the model is imported. Returns the
    :class:`~energon_tvm.host_tuning.TuneReport`."""
    from .. import host_tuning

    host_tuning.check_options(trials, seed)
    host_tuning.check_folder(output, create=True)
    parse_input_shapes(input_shapes)
    host_tuning.check_serialization()
    part = partition_model(model_path, model_format=model_format, target=target, config=config, alpha=alpha,
                           rounds=rounds, rule=rule, gap=gap, policy=policy, topk=topk, sanger=sanger, mcpu=mcpu,
                           input_shapes=input_shapes, verbose=verbose, log=log, thresholds=thresholds,
                           cpu_flags=cpu_flags, fast_math=fast_math)
    client = runner = None
    if dask_scheduler is not None:
        from .runner import _connect

        client = _connect(dask_scheduler)
        runner = host_tuning.dask_runner(client)
    try:
        return host_tuning.tune(part.mod, part.target.mcpu, output, trials=trials, runner=runner, seed=seed,
                                search=search, log=log, fast_math=part.target.fast_math)
    finally:
        if client is not None:
            client.close()


def build_options(pass_config: list[str] | None = None, opt_level: int | None = None) -> BuildOptions:
    """``--pass-config key=value`` items and ``-O`` -> :class:`BuildOptions`, every key and value checked
    against the options TVM registers (``PassContext.list_configs``) before any model is read. Values
    are typed as TVM declares the key: bool (true/false/1/0/yes/no/on/off) or int."""
    if opt_level is None:
        opt_level = DEFAULT_OPT_LEVEL
    if isinstance(opt_level, bool) or opt_level not in OPT_LEVELS:
        raise TVMCError(f"-O/--opt-level {opt_level!r}: must be one of {', '.join(map(str, OPT_LEVELS))}")
    if not pass_config:
        return BuildOptions(opt_level)
    import difflib

    import tvm

    known = {k: str(dict(v).get("type", "")) for k, v in tvm.transform.PassContext.list_configs().items()}
    config: dict[str, object] = {}
    for item in pass_config:
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key or not text:
            raise TVMCError(f"--pass-config {item!r}: give key=value, e.g. tirx.disable_vectorize=true")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise TVMCError(f"--pass-config: unknown key {key!r}{hint}; TVM knows: {', '.join(sorted(known))}")
        if key in config:
            raise TVMCError(f"--pass-config: key {key!r} is given twice")
        config[key] = _config_value(key, text, known[key])
    try:  # TVM's own check of the values, still before any work
        tvm.transform.PassContext(opt_level=opt_level, config=config)
    except Exception as err:
        raise TVMCError(f"--pass-config: TVM refuses {config}: {(str(err).splitlines() or [''])[0]}") from None
    return BuildOptions(opt_level, tuple(config.items()))


def _config_value(key: str, text: str, kind: str):
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise TVMCError(f"--pass-config {key}={text}: {key} is a bool; give true or false (or 1/0)")
    if kind in ("int", "ir.IntImm", "IntImm"):
        try:
            return int(text, 0)
        except ValueError:
            raise TVMCError(f"--pass-config {key}={text}: {key} is an integer") from None
    raise TVMCError(f"--pass-config {key}: its value is a {kind or 'structured'} object, which cannot be given "
                    f"on the command line (bool and integer options can)")


DUMP_KINDS = ("isa", "relax")


def dump_kinds(dump_code: str | None) -> set[str]:
    """The kinds a ``--dump-code`` list names (checked: the command line calls this before compiling)."""
    kinds = {k.strip() for k in (dump_code or "").split(",") if k.strip()}
    unknown = kinds - set(DUMP_KINDS)
    if unknown:
        raise TVMCError(f"unknown --dump-code kind(s) {', '.join(sorted(unknown))}; known: {', '.join(DUMP_KINDS)}")
    return kinds


def write(result: CompileResult, output, dump_code: str | None = None, *, key: bytes | None = None) -> list[Path]:
    """Write the package to ``output`` (signed when ``key`` is given, see
    :func:`~energon_tvm.tvmc.package.package_key`) and the requested dumps next to it; returns the files
    written. Everything is rendered and checked first, so a failure leaves any existing output as it
    was; each file is written to a temporary name and renamed."""
    from ..isa.asm import disassemble

    output = Path(output)
    kinds = dump_kinds(dump_code)
    dumps: dict[Path, str] = {}
    if "relax" in kinds:
        dumps[output.with_name(output.name + ".relax.py")] = result.relax_text
    folder = output.with_name(output.name + ".isa")
    if "isa" in kinds:
        if folder.exists() and not folder.is_dir():
            raise TVMCError(f"--dump-code isa writes into {str(folder)!r}, which is a file")
        for call in result.calls:
            dumps[folder / f"call_{call.index:03d}.asm"] = f"; site {call.site}\n" + disassemble(call.program)
    manifest = result.manifest()
    write_package(output, manifest, result.library, {c.member: c.program for c in result.calls}, key=key)
    if "isa" in kinds:
        folder.mkdir(exist_ok=True)
    for path, text in dumps.items():
        atomic_write(path, text.encode())
    return [output, *dumps]
