"""The checks behind the ``energon.*`` patterns: what Energon can take, and the record of why not.

A :class:`PartitionSession` is made by each ``partition_for_energon`` call for its target and bound into
that call's patterns (``check=partial(check_site, session=s)``), so the verdicts, site names and
compiled programs of one partition never meet another's. FuseOpsByPattern calls :func:`check_site` for
every match; it reads the match with :mod:`~energon_tvm.relax.analysis`, applies the machine's limits
(dtype, static shapes, head dim, broadcastable mask, a workload the program compiler accepts) and
records the verdict, so that the partition can report every site. The session also keeps each site's
compiled program, so the lowering emits what the check compiled and the report says which schedule it
got.

The patterns registered with TVM's table (for discovery: ``get_patterns_with_prefix("energon")``) carry
:func:`structural_check`, which reads the site without a machine and compiles nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from tvm import relax

from .. import executor
from ..executor import CompiledProgram, EnergonTarget
from ..isa.errors import EnergonError
from ..schedules.workload import AttentionWorkload
from .analysis import NotOffloadable, Scope, analyze

#: Function attribute carrying the site name from the check to the composite function.
SITE_ATTR = "energon_site"


@dataclass
class Verdict:
    """What the check decided for one site."""

    offloaded: bool
    reason: str
    pattern: str
    workload: AttentionWorkload | None = None
    form: str | None = None
    program: CompiledProgram | None = None


@dataclass
class PartitionSession:
    """What the checks and the lowering of one ``partition_for_energon`` call share."""

    target: EnergonTarget
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    root_names: dict = field(default_factory=dict)
    programs: dict[AttentionWorkload, CompiledProgram] = field(default_factory=dict)
    #: weights kept as function parameters (``from_onnx(keep_params_in_input=True)``), as constants
    weights: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.target.config

    def resolver(self, bindings):
        """Variable -> definition: ``bindings`` first, then the weights' values."""
        def resolve(var):
            value = bindings.get(var)
            return self.weights.get(var) if value is None else value
        return resolve

    def record(self, name: str, verdict: Verdict) -> None:
        if name not in self.verdicts:
            self.order.append(name)
        self.verdicts[name] = verdict

    def demote(self, name: str, reason: str) -> None:
        """The lowering could not emit a site the check accepted: it stays on the host."""
        old = self.verdicts.get(name)
        self.record(name, Verdict(False, reason, old.pattern if old else "", old.workload if old else None,
                                  old.form if old else None))

    def confirm(self, name: str, program: CompiledProgram) -> None:
        """The lowering emitted ``name`` with ``program`` (the report shows what really runs)."""
        if name in self.verdicts:
            self.verdicts[name].workload = program.workload
            self.verdicts[name].program = program

    def compile(self, workload: AttentionWorkload) -> CompiledProgram:
        """The program of ``workload`` (compiled once per distinct workload)."""
        if workload not in self.programs:
            self.programs[workload] = executor.compile_call(workload, self.target)
        return self.programs[workload]


def _leaking_intermediate(ctx, root_var) -> str | None:
    """Name of a value inside the match that is also used outside it (fusing would duplicate or
    break it), else None."""
    inside = set(ctx.matched_bindings.keys())
    usages = ctx.var_usages
    for var in inside:
        if var.same_as(root_var):
            continue
        if not isinstance(var, relax.DataflowVar):
            return var.name
        users = usages[var] if var in usages else []
        for user in users:
            if user not in inside:
                return f"{var.name} (also used by {user.name})"
    return None


def judge(session: PartitionSession, scope: Scope, root, pattern: str, site: str):
    """(verdict, plan): read the site and apply the machine's limits."""
    try:
        plan = analyze(scope, root)
    except NotOffloadable as err:
        return Verdict(False, str(err), pattern), None
    try:
        workload = plan.workload(session.target.params_for(site))
    except EnergonError as err:
        return Verdict(False, str(err), pattern, form=plan.form), None
    cfg = session.config
    if workload.head_dim > cfg.max_head_dim:
        return Verdict(False, f"head dim {workload.head_dim} exceeds max_head_dim {cfg.max_head_dim} of config "
                              f"{cfg.name!r}", pattern, workload, plan.form), plan
    try:
        program = session.compile(workload)
    except EnergonError as err:
        return Verdict(False, f"the program compiler rejected the call: {err}", pattern, workload,
                       plan.form), plan
    return Verdict(True, "accepted", pattern, workload, plan.form, program), plan


def check_site(ctx, pattern: str, session: PartitionSession) -> bool:
    """FusionPattern check: is the matched attention block offloadable? Records the verdict."""
    root = ctx.matched_expr
    root_var = ctx.value_to_bound_var[root]
    name = root_var.name
    try:
        bound = {var: value for value, var in ctx.value_to_bound_var.items()}
        scope = Scope(dict(ctx.matched_bindings.items()), session.resolver(bound))
        verdict, _ = judge(session, scope, root, pattern, name)
        if verdict.offloaded:
            leak = _leaking_intermediate(ctx, root_var)
            if leak is not None:
                verdict = Verdict(False, f"intermediate value {leak} is used outside the attention block",
                                  pattern, verdict.workload, verdict.form)
    except Exception as err:  # a bug here must not take the user's model down: keep it on the host
        warnings.warn(f"energon check of {name} failed: {err!r}", RuntimeWarning, stacklevel=1)
        verdict = Verdict(False, f"internal error while checking: {err!r}", pattern)
    session.record(name, verdict)
    if verdict.offloaded:
        session.root_names[root] = name
    return verdict.offloaded


def site_attrs(annotated, session: PartitionSession) -> dict[str, str]:
    """FusionPattern attrs_getter: tag the composite function with its site name."""
    name = session.root_names.get(annotated["root"])
    return {} if name is None else {SITE_ATTR: name}


def structural_check(ctx) -> bool:
    """The registered patterns' check: does the match read as attention Energon could take on some
    machine (operands, scale, softmax axis, mask)? Needs no target and compiles nothing."""
    try:
        bound = {var: value for value, var in ctx.value_to_bound_var.items()}
        analyze(Scope(dict(ctx.matched_bindings.items()), bound.get), ctx.matched_expr)
    except NotOffloadable:
        return False
    return True
