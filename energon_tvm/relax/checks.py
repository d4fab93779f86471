"""The checks behind the ``energon.*`` patterns: what Energon can take, and the record of why not.

FuseOpsByPattern calls :func:`check_site` for every match; it reads the match with
:mod:`~energon_tvm.relax.analysis`, applies the machine's limits (dtype, static shapes, head dim,
broadcastable mask, a workload the program compiler accepts) and records the verdict in the active
:class:`PartitionSession`, so that ``partition_for_energon`` can report every site. The session also
caches each workload's program blob so that the lowering reuses what the check compiled.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from tvm import relax

from .. import executor
from ..isa.config import HardwareConfig, load_config
from ..isa.errors import EnergonError
from ..isa.numerics import MPMRFParams
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


@dataclass
class PartitionSession:
    """State shared by the checks and the lowering during one ``partition_for_energon`` call."""

    config: HardwareConfig
    params: MPMRFParams
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    root_names: dict = field(default_factory=dict)
    blobs: dict[AttentionWorkload, bytes] = field(default_factory=dict)
    #: weights kept as function parameters (``from_onnx(keep_params_in_input=True)``), as constants
    weights: dict = field(default_factory=dict)

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

    def confirm(self, name: str, workload: AttentionWorkload) -> None:
        """The lowering emitted ``name`` for ``workload`` (the report shows what really runs)."""
        if name in self.verdicts:
            self.verdicts[name].workload = workload

    def blob(self, workload: AttentionWorkload) -> bytes:
        """The program blob of ``workload`` (compiled once per distinct workload)."""
        if workload not in self.blobs:
            self.blobs[workload] = executor.compile_call(workload, self.config)
        return self.blobs[workload]


_local = threading.local()


def current_session() -> PartitionSession:
    """The session of the partition in progress; outside one (someone running the patterns by hand)
    a throwaway session with the default machine and parameters."""
    session = getattr(_local, "session", None)
    if session is None:
        session = PartitionSession(load_config("edge"), MPMRFParams())
        _local.session = session
    return session


@contextmanager
def session_scope(session: PartitionSession):
    previous = getattr(_local, "session", None)
    _local.session = session
    try:
        yield session
    finally:
        _local.session = previous


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


def judge(session: PartitionSession, scope: Scope, root, pattern: str):
    """(verdict, plan): read the site and apply the machine's limits."""
    try:
        plan = analyze(scope, root)
    except NotOffloadable as err:
        return Verdict(False, str(err), pattern), None
    try:
        workload = plan.workload(session.params)
    except EnergonError as err:
        return Verdict(False, str(err), pattern, form=plan.form), None
    limit = session.config.max_head_dim
    if workload.head_dim > limit:
        return Verdict(False, f"head dim {workload.head_dim} exceeds max_head_dim {limit} of config "
                              f"{session.config.name!r}", pattern, workload, plan.form), plan
    try:
        session.blob(workload)
    except EnergonError as err:
        return Verdict(False, f"the program compiler rejected the call: {err}", pattern, workload,
                       plan.form), plan
    return Verdict(True, "accepted", pattern, workload, plan.form), plan


def check_site(ctx, pattern: str) -> bool:
    """FusionPattern check: is the matched attention block offloadable? Records the verdict."""
    session = current_session()
    root = ctx.matched_expr
    root_var = ctx.value_to_bound_var[root]
    name = root_var.name
    try:
        bound = {var: value for value, var in ctx.value_to_bound_var.items()}
        scope = Scope(dict(ctx.matched_bindings.items()), session.resolver(bound))
        verdict, _ = judge(session, scope, root, pattern)
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


def site_attrs(annotated) -> dict[str, str]:
    """FusionPattern attrs_getter: tag the composite function with its site name."""
    name = current_session().root_names.get(annotated["root"])
    return {} if name is None else {SITE_ATTR: name}
