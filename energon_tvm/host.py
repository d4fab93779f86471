"""The host half of a build: everything Energon does not run, compiled for the CPU by TVM.

**The CPU a build is for.** A host library is built for one ``mcpu``: ``x86-64`` (:data:`PORTABLE_MCPU`)
runs on any x86-64 CPU with SSE2 only; the x86-64 psABI levels ``x86-64-v2``/``-v3``/``-v4``
(:data:`LEVELS`) add SSE4.2, then AVX2 and FMA, then AVX-512, and run only where the CPU has them
(the FFN matmuls of all-MiniLM-L6-v2 take 2-3x less time at ``-v3`` than generic). :func:`default_mcpu`
picks the highest level the compiling CPU has (from its flags, :func:`cpu_flags`) and LLVM knows;
:class:`HostCPU` is what a package records of that choice, and :meth:`HostCPU.check` refuses, before the
library is loaded, a CPU that lacks a feature it needs.

**Default schedules.** TVM's CPU pipeline legalises Relax ops to TIR but leaves every loop nest as
written: one thread, one element at a time. :func:`pipeline` inserts default schedules between
legalisation and lowering, as TVM's GPU pipelines do with dlight, so that a model builds in seconds and
runs without tuning:

* :class:`Matmul` -- a fused ``matmul`` (+ element-wise epilogue), batched or not: a register tile of
  :class:`MicroKernel` (six rows by two of the CPU's vectors) accumulates over the whole reduction;
  column panels are the outer parallel loop, so a panel of the weights stays in cache while every row
  block streams past it; the epilogue is parallel and vectorised;
* :func:`patch_embedding_as_matmul` -- a convolution whose kernel is its stride (ViT's patch
  embedding) becomes the matmul of the image's patches with the flattened kernel, before legalisation,
  so :class:`Matmul` schedules it;
* :class:`RowReduction` -- softmax and layer norm: blocks of rows in parallel, the rows' sums
  interleaved (TVM's ``dl.cpu.Reduction`` takes the other reductions);
* :class:`Injective` -- element-wise and layout ops: parallel outer loops, vectorised inner loop.

The schedules reorder loops only and keep every sum in its order (the patch matmul sums a patch in
the convolution's order, channel, row, column): for the generic target the outputs equal TVM's
unscheduled build bit for bit (tested); for a given ``mcpu`` LLVM may fuse multiply-adds, which moves
the last bits. Kernels MetaSchedule tuned (:mod:`energon_tvm.host_tuning`) are taken from its database
first (:func:`pipeline`'s ``database``); the default schedules take the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .isa.errors import EnergonError

# -- the CPU a build is for -----------------------------------------------------------------------------
#: the x86-64 build every x86-64 CPU runs (SSE2; ``--target-llvm-mcpu x86-64``)
PORTABLE_MCPU = "x86-64"
#: the x86-64 psABI micro-architecture levels, lowest first, each with the CPU features (LLVM's names)
#: it adds to the one before; a level's build needs its features and all below it
LEVELS = (
    ("x86-64-v2", ("crc32", "cx16", "popcnt", "sahf", "sse3", "sse4.1", "sse4.2", "ssse3")),
    ("x86-64-v3", ("avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")),
    ("x86-64-v4", ("avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl")),
)
#: each CPU feature (LLVM's name) a build may need, and the flag Linux lists for it in /proc/cpuinfo:
#: the levels' features, then what named CPUs (``--target-llvm-mcpu skylake-avx512``, ``znver4``) add
#: that compiled code can use
CPUINFO_FLAGS = {
    "crc32": "sse4_2", "cx16": "cx16", "popcnt": "popcnt", "sahf": "lahf_lm", "sse3": "pni", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "ssse3": "ssse3",
    "avx": "avx", "avx2": "avx2", "bmi": "bmi1", "bmi2": "bmi2", "f16c": "f16c", "fma": "fma", "lzcnt": "abm",
    "movbe": "movbe", "xsave": "xsave",
    "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512f": "avx512f",
    "avx512vl": "avx512vl",
    "adx": "adx", "aes": "aes", "avx512bf16": "avx512_bf16", "avx512bitalg": "avx512_bitalg",
    "avx512fp16": "avx512_fp16", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avxvnni": "avx_vnni", "fma4": "fma4", "gfni": "gfni", "pclmul": "pclmulqdq", "sha": "sha_ni",
    "sse4a": "sse4a", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "xop": "xop",
}
CPUINFO = Path("/proc/cpuinfo")


class HostCPUError(EnergonError):
    """A package's host library needs CPU features this CPU lacks."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's flags as Linux lists them: the first ``flags`` line of ``cpuinfo`` (default: this
    machine's /proc/cpuinfo). None when there is none to read (not Linux, or not an x86 CPU)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def cpu_features(flags: frozenset[str]) -> frozenset[str]:
    """The features of :data:`CPUINFO_FLAGS` (LLVM's names) a CPU with these Linux ``flags`` has."""
    return frozenset(feature for feature, flag in CPUINFO_FLAGS.items() if flag in flags)


def level_features(level: str) -> tuple[str, ...]:
    """Every feature a psABI level's build needs (its own and the levels' below), sorted."""
    names = [name for name, _ in LEVELS]
    if level not in names:
        raise ValueError(f"{level!r} is not an x86-64 level; the levels are {', '.join(names)}")
    return tuple(sorted(f for _, adds in LEVELS[:names.index(level) + 1] for f in adds))


def cpu_level(flags: frozenset[str]) -> str:
    """The highest psABI level whose features a CPU with these Linux ``flags`` has; :data:`PORTABLE_MCPU`
    when it has not even x86-64-v2's."""
    have = cpu_features(flags)
    best = PORTABLE_MCPU
    for name, _ in LEVELS:
        if not set(level_features(name)) <= have:
            break
        best = name
    return best


def default_mcpu(flags: frozenset[str] | None = None) -> str | None:
    """The ``mcpu`` a build takes when none is given: the highest psABI level of the compiling CPU
    (``flags``, default this machine's) that this LLVM accepts. None -- LLVM's generic CPU for the
    host triple -- when the CPU's flags cannot be read (not Linux, not x86)."""
    if flags is None:
        flags = cpu_flags()
        if flags is None:
            return None
    names = [name for name, _ in LEVELS]
    level = cpu_level(flags)
    candidates = names[:names.index(level) + 1] if level in names else []
    return next((name for name in reversed(candidates) if valid_mcpu(name)), PORTABLE_MCPU)


def required_features(mcpu: str | None) -> tuple[str, ...]:
    """The CPU features (of :data:`CPUINFO_FLAGS`) code built for ``mcpu`` may use, as LLVM defines the
    CPU; () for the generic build (None) and for x86-64."""
    if mcpu is None:
        return ()
    from tvm.target import codegen

    have = {str(f) for f in codegen.llvm_get_cpu_features(host_target(mcpu))}
    return tuple(sorted(have & set(CPUINFO_FLAGS)))


@dataclass(frozen=True)
class HostCPU:
    """What a host library needs of the CPU that runs it (the manifest's ``host``): the ``mcpu`` it was
    built for (None: LLVM's generic CPU), the CPU ``features`` that implies (LLVM's names), whether
    the level was ``detected`` on the compiling CPU rather than given with ``--target-llvm-mcpu``, and
    whether its exp, erf, tanh, GELU and softmax are TVM's fast approximations (``fast_math``,
    ``--target-llvm-fast-math on``)."""

    mcpu: str | None
    features: tuple[str, ...] = ()
    detected: bool = False
    fast_math: bool = False  # the library's exp, erf, tanh, GELU and softmax are TVM's fast approximations

    @classmethod
    def for_build(cls, mcpu: str | None, detected: bool = False, fast_math: bool = False) -> HostCPU:
        return cls(mcpu, required_features(mcpu), detected, fast_math)

    def to_dict(self) -> dict:
        return {"mcpu": self.mcpu, "features": list(self.features), "detected": self.detected,
                "fast_math": self.fast_math}

    @classmethod
    def from_dict(cls, record: dict) -> HostCPU:
        return cls(record.get("mcpu"), tuple(record.get("features") or ()), bool(record.get("detected")),
                   bool(record.get("fast_math")))

    def missing(self, flags: frozenset[str]) -> tuple[str, ...]:
        """The features this library needs that a CPU with these Linux ``flags`` lacks."""
        return tuple(f for f in self.features if CPUINFO_FLAGS.get(f, f) not in flags)

    def check(self, flags: frozenset[str] | None = None) -> None:
        """Refuse (:class:`HostCPUError`) a CPU with these Linux ``flags`` (default: this machine's) that
        lacks a feature this library needs. A CPU whose flags cannot be read is not refused: loading
        the library then fails or not on its own."""
        if not self.features:
            return
        if flags is None:
            flags = cpu_flags()
            if flags is None:
                return
        lacks = self.missing(flags)
        if lacks:
            raise HostCPUError(f"package built for {self.mcpu} (needs {', '.join(self.features)}); this CPU lacks "
                               f"{', '.join(lacks)}: recompile with --target-llvm-mcpu {PORTABLE_MCPU}")


# -- targets and the build ------------------------------------------------------------------------------
def host_target(mcpu: str | None = None):
    """The llvm host target (a ``tvm.target.Target``): LLVM's generic CPU unless ``mcpu`` is given."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu} if mcpu else "llvm")


def valid_mcpu(mcpu: str) -> bool:
    from tvm.target import codegen

    return bool(codegen.llvm_is_valid_cpu(mcpu, codegen.llvm_get_system_triple()))


def build(mod, mcpu: str | None = None, database=None, on_kernels=None, fast_math: bool = False):
    """``tvm.compile`` of ``mod`` for the host, with the default schedules of this module; with a
    MetaSchedule ``database`` its kernels' tuned schedules come first (:func:`pipeline`); ``fast_math``:
    exp, erf, tanh, GELU and softmax as TVM's fast approximations (:func:`legalize_passes`)."""
    import tvm

    target = host_target(mcpu)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline(target, database, on_kernels, fast_math))


def legalize_passes(target, fast_math: bool = False) -> list:
    """Everything before scheduling: with ``fast_math`` GELU as its formula (:func:`gelu_as_formula`) and
    TVM's FastMathTransform (exp, erf, tanh and softmax become ``topi.fast_exp`` / ``fast_erf`` /
    ``fast_tanh`` / ``fast_softmax``: polynomial approximations, vectorisable, where the exact build
    calls libm once per element), then TVM's CPU library dispatch, :func:`patch_embedding_as_matmul`,
    and TVM's legalisation and fusion. MetaSchedule tunes the kernels this gives (so its database's
    workloads are the kernels a build schedules)."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    approximate = [gelu_as_formula(), relax.transform.FastMathTransform()] if fast_math else []
    return (approximate + cpu.library_dispatch_passes(target) + [patch_embedding_as_matmul()]
            + cpu.legalize_passes(target))


def kernels(mod, target, fast_math: bool = False):
    """``mod`` after :func:`legalize_passes`: its PrimFuncs are the kernels a build schedules."""
    import tvm

    with target:
        return tvm.transform.Sequential(legalize_passes(target, fast_math))(mod)


def pipeline(target, database=None, on_kernels=None, fast_math: bool = False):
    """TVM's CPU pipeline with :func:`schedules` applied after legalisation (:func:`legalize_passes`,
    which ``fast_math`` is passed to); with a MetaSchedule
    ``database`` (``tvm.s_tir.meta_schedule.Database``) the kernels it holds records for get their tuned
    schedule (MetaSchedule's ApplyDatabase) and the default schedules take the rest. ``on_kernels`` is
    called with the module of unscheduled kernels (:func:`kernels`), e.g. to count what the database
    holds."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="EnergonHostPipeline")
    def _pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(legalize_passes(target, fast_math))(mod)
            if on_kernels is not None:
                on_kernels(mod)
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            passes = [schedules()] + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def default_rules() -> tuple:
    """The default schedule rules, in the order they are tried: :class:`Matmul`, :class:`RowReduction`,
    TVM's ``dl.cpu.Reduction`` (the reductions that are not per row), :class:`Injective`."""
    from tvm.s_tir import dlight as dl

    return Matmul(), RowReduction(), dl.cpu.Reduction(), Injective()


def schedules():
    """The default schedules as a pass (it reads the target from the ``with target`` scope)."""
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(*default_rules())


def default_schedule(func, target):
    """The schedule the first default rule that takes ``func`` gives it (None: none takes it), as the
    build applies it."""
    with target:
        for rule in default_rules():
            sch = rule.apply(func, target, False)
            if sch is not None:
                return sch[0] if isinstance(sch, list) else sch
    return None


# -- a patch embedding is a matmul ----------------------------------------------------------------------
def _ints(values) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        return None


def _patch_matmul(call, _matches):
    """``conv2d(x, w)`` with the kernel as its stride, no padding, dilation or groups, NCHW / OIHW and
    static shapes -> ``reshape(permute(matmul(patches(x), flat(w)^T)))``; any other convolution as it is.
    A patch's elements are flattened (channel, row, column), the convolution's order of summation."""
    from tvm import relax

    attrs = call.attrs
    x, w = call.args
    xs, ws = _ints(getattr(x.ty, "shape", None) or ()), _ints(getattr(w.ty, "shape", None) or ())
    if (xs is None or ws is None or len(xs) != 4 or len(ws) != 4 or attrs.data_layout != "NCHW"
            or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW" or int(attrs.groups) != 1):
        return call
    n, c, h, wd = xs
    o, ci, p, q = ws
    out_dtype = str(x.ty.dtype) if attrs.out_dtype is None or str(attrs.out_dtype) in ("", "void") else str(
        attrs.out_dtype)
    if (ci != c or _ints(attrs.strides) != (p, q) or any(_ints(attrs.padding) or (1,)) or _ints(attrs.dilation)
            != (1, 1) or h % p or wd % q or out_dtype != str(x.ty.dtype) or str(w.ty.dtype) != out_dtype):
        return call
    op = relax.op
    gh, gw = h // p, wd // q
    patches = op.reshape(op.permute_dims(op.reshape(x, [n, c, gh, p, gw, q]), [0, 2, 4, 1, 3, 5]),
                         [n, gh * gw, c * p * q])
    flat = op.permute_dims(op.reshape(w, [o, c * p * q]), [1, 0])
    return op.reshape(op.permute_dims(op.matmul(patches, flat), [0, 2, 1]), [n, o, gh, gw])


def patch_embedding_as_matmul():
    """A Relax pass: every patch-embedding convolution (:func:`_patch_matmul`) as a matmul of patches."""
    from tvm.relax.dpl import is_op, wildcard

    return _rewrite_pass("EnergonPatchEmbeddingAsMatmul", is_op("relax.nn.conv2d")(wildcard(), wildcard()),
                         _patch_matmul)


def _rewrite_pass(name: str, pattern, rewriter):
    """A module pass that rewrites every call matching ``pattern`` in the module's Relax functions with
    ``rewriter(call, matches)`` (``relax.dpl.rewrite_call``)."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = rewrite_call(pattern, rewriter, func)
        return mod

    return _pass


# -- GELU as its formula, for fast math -----------------------------------------------------------------
def _gelu_formula(call, _matches):
    """``nn.gelu(x)`` -> ``x * (0.5 + erf(x * 0.5**0.5) * 0.5)`` and ``nn.gelu_tanh(x)`` -> ``0.5 * x *
    (1 + tanh(sqrt(2 / pi) * x * (1 + 0.044715 * x * x)))``: TVM's own legalisations of the two ops, written
    as Relax ops so that FastMathTransform finds their ``erf`` / ``tanh``. Float32 only (the float16
    legalisation computes erf in float32); anything else stays as it is."""
    import math

    from tvm import relax

    (x,) = call.args
    if str(getattr(x.ty, "dtype", "")) != "float32":
        return call
    op = relax.op

    def c(value: float):
        return relax.const(value, "float32")

    if call.op.name == "relax.nn.gelu":
        return op.multiply(x, op.add(c(0.5), op.multiply(op.erf(op.multiply(x, c(0.5 ** 0.5))), c(0.5))))
    inner = op.multiply(op.multiply(c(math.sqrt(2.0 / math.pi)), x),
                        op.add(c(1.0), op.multiply(op.multiply(c(0.044715), x), x)))
    return op.multiply(op.multiply(c(0.5), x), op.add(c(1.0), op.tanh(inner)))


def gelu_as_formula():
    """A Relax pass: every float32 GELU as the element-wise ops of its formula (:func:`_gelu_formula`).
    FastMathTransform replaces ``erf``, ``exp`` and ``tanh`` ops but not the ``erf`` inside
    ``nn.gelu``'s legalisation, which left a fast-math build's costliest kernel (the FFN's matmul with
    GELU) calling libm's erf one element at a time."""
    from tvm.relax.dpl import is_op, wildcard

    return _rewrite_pass("EnergonGeluAsFormula",
                         is_op("relax.nn.gelu")(wildcard()) | is_op("relax.nn.gelu_tanh")(wildcard()), _gelu_formula)


# -- schedules ------------------------------------------------------------------------------------------
def _extent(sch, loop) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _factor(extent: int | None, choices=(16, 8, 4)) -> int | None:
    """The largest of ``choices`` dividing ``extent`` (a split without a tail), or None."""
    return next((f for f in choices if extent and extent % f == 0), None)


def _kinds(sch, block) -> str:
    from tvm import tirx

    spatial, reduce = tirx.IterVar.DataPar, tirx.IterVar.CommReduce
    return "".join("S" if iv.iter_type == spatial else "R" if iv.iter_type == reduce else "O"
                   for iv in sch.get(block).iter_vars)


def _parallel_vectorised(sch, block) -> None:
    """Outer loops fused and parallel, the innermost vectorised when it splits evenly."""
    loops = sch.get_loops(block)
    if not loops:
        return
    width = _factor(_extent(sch, loops[-1]))
    if width is not None:
        sch.vectorize(sch.split(loops[-1], [None, width])[1])
        outer = sch.get_loops(block)[:-1]
    else:
        outer = loops[:-1] or loops
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def target_features(target) -> frozenset[str]:
    """The CPU features (LLVM's names) code for ``target`` may use."""
    from tvm.target import codegen

    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target))


@dataclass(frozen=True)
class MicroKernel:
    """A matmul's register tile on one CPU: ``rows`` rows by ``vectors`` vectors of ``lanes`` float32
    accumulate while the reduction runs. ``lanes`` is what LLVM gives TVM's explicit vectors: 16 with
    AVX-512 (zmm), 8 with AVX (ymm), 4 otherwise (SSE's xmm, NEON). Six rows by two vectors keep 12
    accumulators in the 16 vector registers every x86-64 level has, the rest for a row of the weights
    and the broadcast input (measured on all-MiniLM-L6-v2's and ViT-S/16's matmuls at x86-64, -v3 and
    -v4: 6 x 2 vectors is the best tile or within the noise of it; 12 x 2 spills)."""

    lanes: int
    rows: int = 6
    vectors: int = 2

    @property
    def width(self) -> int:
        return self.lanes * self.vectors

    @classmethod
    def for_target(cls, target) -> MicroKernel:
        features = target_features(target)
        return cls(16 if "avx512f" in features else 8 if "avx" in features else 4)

    def column_block(self, extent: int) -> tuple[int, int]:
        """(width, padded extent) of the column blocks of a matmul with ``extent`` columns: the tile's
        width, or the largest power-of-two fraction of it (down to 4) that divides ``extent``; if none
        does, the widest whose padding adds at most an eighth to ``extent`` (else 4), with the columns
        padded to a multiple of it (zero columns of the right operand, cropped from the result)."""
        widths = []
        width = self.width
        while width >= 4:
            widths.append(width)
            width //= 2
        even = next((w for w in widths if extent % w == 0), None)
        if even is not None:
            return even, extent
        width = next((w for w in widths if 8 * (-extent % w) <= extent), widths[-1])
        return width, extent + -extent % width


class _HostRule:
    """A dlight schedule rule (``apply(func, target, tunable)``, all dlight asks of one) for llvm targets;
    ``schedule(func, target)`` returns a schedule or None when the kernel is not its kind. A kernel of a
    shape the rule did not foresee keeps TVM's plain loops: if a primitive refuses, the rule steps back
    rather than failing the build."""

    def apply(self, func, target, tunable):
        from tvm import tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return self.schedule(func, target)
        except RuntimeError:  # ScheduleError and TVM's internal errors
            return None

    def schedule(self, func, target):
        raise NotImplementedError


class Matmul(_HostRule):
    """A PrimFunc whose one reduction is a ``matmul`` block ([..., M, N] over K) followed by
    element-wise blocks (bias, scale, activation, residual)."""

    def schedule(self, func, target):
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        reductions = [b for b in blocks if "R" in _kinds(sch, b)]
        if len(reductions) != 1 or sch.get(reductions[0]).name_hint != "matmul":
            return None
        block = reductions[0]
        if not _kinds(sch, block).endswith("SSR") or _kinds(sch, block).count("R") != 1:
            return None
        epilogue = [b for b in blocks if not sch.get(b).same_as(sch.get(block))]
        if not sch.get(blocks[0]).same_as(sch.get(block)):
            return None  # a prologue before the matmul: leave it to another rule
        *batch, i, j, _k = sch.get_loops(block)
        m, n = _extent(sch, i), _extent(sch, j)
        if m is None or n is None:
            return None
        tile = MicroKernel.for_target(target)
        width, padded = tile.column_block(n)
        if padded != n:  # e.g. ViT's 197 x 197 scores: zero columns make every block a whole vector
            sch.pad_einsum(block, [1] * (len(batch) + 1) + [width, 1])
            block = sch.get_sblock(sch.get(block).name_hint)
            blocks = _blocks(sch)
            at = next(x for x, b in enumerate(blocks) if sch.get(b).same_as(sch.get(block)))
            for pad in blocks[:at]:
                _parallel_vectorised(sch, pad)
            epilogue = blocks[at + 1:]
        for b in epilogue[:-1]:
            sch.compute_inline(b)
        *batch, i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, [None, min(tile.rows, m)])
        jo, ji = sch.split(j, [None, width])
        # column panels outermost: a K x width panel of the right operand stays in cache while every
        # row block streams past it (the left operand is the smaller one in a transformer's layers)
        sch.reorder(*batch, jo, io, k, ii, ji)
        sch.parallel(sch.fuse(*batch, jo, io))
        sch.vectorize(ji)  # before decompose_reduction, while the update block is still a reduction
        sch.unroll(ii)
        init = sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(init)[-1])
        if epilogue:
            _parallel_vectorised(sch, epilogue[-1])
        return sch


class RowReduction(_HostRule):
    """A PrimFunc of per-row reductions and element-wise work on rows: softmax, layer norm (the last
    block spatial over [rows..., N], every reduction block over the same rows and the last axis).

    Blocks of :data:`ROWS` rows are the parallel loop, every block computed inside it; a reduction runs
    its axis outermost and the block's rows innermost, unrolled: the rows' sums are independent chains
    the CPU overlaps, where one row at a time waits on each add. Each row still sums in its own order,
    so the outputs equal the plain loops'; the element-wise blocks are vectorised along the row. (TVM's
    ``dl.cpu.Reduction``, which takes them otherwise, sums one row at a time: 6x slower on
    all-MiniLM-L6-v2's layer norm, 1.3x on its softmax.)"""

    ROWS = 8

    def schedule(self, func, target):
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        if len(blocks) < 2 or set(_kinds(sch, blocks[-1])) != {"S"}:
            return None
        axes = len(_kinds(sch, blocks[-1])) - 1
        reductions = [b for b in blocks if "R" in _kinds(sch, b)]
        if not axes or not reductions or any(_kinds(sch, b) != "S" * axes + "R" for b in reductions):
            return None
        loops = sch.get_loops(blocks[-1])
        if len(loops) != axes + 1 or any(_extent(sch, loop) is None for loop in loops):
            return None
        # the row block splits the last row axis only: a block of rows that crossed into the next head
        # (197 rows a head in ViT) would make every block's region the whole of both heads
        *lead, last, _ = loops
        block_rows, _ = sch.split(last, [None, min(self.ROWS, _extent(sch, last))])
        outer = sch.fuse(*lead, block_rows) if lead else block_rows
        sch.parallel(outer)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, outer)
        for block in blocks:
            inner = sch.get_loops(block)[1:]  # the loops inside the row block: its rows, then its axis
            if len(inner) < 2:
                continue
            if "R" in _kinds(sch, block):
                sch.reorder(inner[-1], *inner[:-1])
                sch.unroll(sch.get_loops(block)[-1])
            else:
                width = _factor(_extent(sch, inner[-1]))
                if width is not None:
                    sch.vectorize(sch.split(inner[-1], [None, width])[1])
        return sch


class Injective(_HostRule):
    """A PrimFunc of spatial blocks only (element-wise, transpose, reshape, gather)."""

    def schedule(self, func, target):
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        if any(set(_kinds(sch, b)) - {"S"} for b in _blocks(sch)):
            return None
        for b in _blocks(sch)[:-1]:
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass  # e.g. a block whose result is read twice: it keeps its own loop nest
        for b in _blocks(sch):
            _parallel_vectorised(sch, b)
        return sch
