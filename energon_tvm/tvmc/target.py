"""``--target "energon, llvm"`` and its ``--target-energon-*`` options, parsed into one record.

The selection policy (``--target-energon-policy``, :data:`~energon_tvm.isa.numerics.POLICIES`) says how
each call chooses the keys it attends to; ``mpmrf`` (the default) takes the rounds, rule and values
options, and each one-round policy takes one option of its own, named after it (``--target-energon-topk
FRACTION``, ``--target-energon-sanger PROBABILITY``). An option given for another policy is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..isa.config import HardwareConfig, load_config
from ..isa.numerics import (
    DEFAULT_RULE,
    DEFAULT_VALUES,
    KEEP_ONE,
    POLICIES,
    POLICY_ROUNDS,
    POLICY_RULES,
    RULE_RANGE,
    RULE_VALUE,
    MPMRFParams,
)
from .errors import TVMCError

KINDS = ("energon", "llvm")
#: what each selection policy is, in one line (the help of --target-energon-policy, docs/tvmc.md)
POLICY_HELP = {
    "mpmrf": "MP-MRF's multi-round filtering (Q4xK2 then Q4xK4 by default; its mean/max rule or the gap rule)",
    "topk": "SpAtten's top-k: one Q4xK4 round keeping a fraction of each row's candidates",
    "sanger": "Sanger's rule: one Q4xK4 round keeping the keys whose predicted softmax probability reaches a "
              "threshold",
    "dense": "no filter round: every unmasked key, the dense INT16 baseline",
}
#: the policy the options select when --target-energon-policy is not given
DEFAULT_POLICY = "mpmrf"
#: the policies of one round whose value has an option of its own, --target-energon-<policy>
KNOB_POLICIES = tuple(p for p in POLICIES if len(POLICY_ROUNDS[p]) == 1)
#: what the value of each one-round policy's option means
KNOB_MEANING = {"topk": "the fraction of each row's candidates kept",
                "sanger": "the predicted softmax probability a key must reach to be kept"}
#: the options of the mpmrf policy, refused with any other
MPMRF_OPTIONS = ("rounds", "rule", "alpha", "gap")


def _knob_name(policy: str) -> str:
    """What a one-round policy's value is called: ``fraction`` (topk), ``probability`` (sanger)."""
    return RULE_VALUE[POLICY_ROUNDS[policy][0].rule]


def _knob_default(policy: str) -> float:
    return POLICY_ROUNDS[policy][0].value


def _knob_limit(policy: str) -> str:
    """The range of a one-round policy's value, as the help and the errors say it."""
    lo, hi = RULE_RANGE[POLICY_ROUNDS[policy][0].rule]
    return f"(0, {hi:g}]" if lo > 0 else f"[{lo:g}, {hi:g}]"


#: options each target kind takes on the command line as --target-<kind>-<option>
OPTIONS = {"energon": {"config": "hardware config: edge, server or a .toml file (default edge)",
                       "policy": "selection policy: " + "; ".join(f"{p} = {h}" for p, h in POLICY_HELP.items())
                                 + f" (default {DEFAULT_POLICY})",
                       "rounds": "mpmrf policy: filter rounds as QxK bits, e.g. 4x2,4x4 (the default); none = the "
                                 "dense INT16 baseline",
                       "rule": "mpmrf policy: threshold rule of the filter rounds: mpmrf (MP-MRF's mean/max rule, "
                               "set by alpha) or gap (keep keys within a gap in logits of the row's best) (default: "
                               "the project's default rule)",
                       "alpha": "mpmrf policy, mpmrf rule: threshold alpha per filter round in [-1, 1], comma "
                                "separated, e.g. -1,-1 (default: the project's defaults)",
                       "gap": "mpmrf policy, gap rule: the gap in logits per filter round, comma separated, e.g. 6,3 "
                              "(default: the project's defaults)",
                       **{p: f"{p} policy: {KNOB_MEANING[p]}, in {_knob_limit(p)} (default {_knob_default(p):g})"
                          for p in KNOB_POLICIES},
                       "thresholds": "per-site, per-head thresholds from a file tvmc calibrate wrote (mpmrf policy; "
                                     "instead of --target-energon-rule/-alpha/-gap)"},
           "llvm": {"mcpu": "CPU to build the host code for, e.g. x86-64-v3 or skylake-avx512 (default: the "
                            "highest x86-64 level this CPU has, x86-64-v2, -v3 or -v4, which CPUs without it refuse "
                            "to run; x86-64: a package any x86-64 CPU runs)",
                    "fast-math": "on: exp, erf, tanh, GELU and softmax of the host code as TVM's fast approximations "
                                 "(FastMathTransform: vectorised polynomials instead of a libm call per element; "
                                 "outputs within about 1e-6 of the exact build, not equal to it); off (default)"}}


def add_target_arguments(p) -> None:
    """``--target`` and the ``--target-<kind>-<option>`` flags generated from :data:`OPTIONS`, as every
    subcommand that compiles takes them."""
    p.add_argument("--target", default="energon, llvm", help='"energon, llvm" (default) or "llvm"')
    for kind, options in OPTIONS.items():
        for option, help_text in options.items():
            p.add_argument(f"--target-{kind}-{option}", dest=f"target_{kind}_{option.replace('-', '_')}",
                           help=help_text)


def target_options(args) -> dict:
    """The keyword arguments of ``compile_model`` / ``tune_model`` that the target flags set (not
    ``--target-energon-thresholds``, which both take as ``thresholds``; ``tvmc calibrate`` refuses it)."""
    return {"target": args.target, "config": args.target_energon_config, "alpha": args.target_energon_alpha,
            "rounds": args.target_energon_rounds, "rule": args.target_energon_rule, "gap": args.target_energon_gap,
            "policy": args.target_energon_policy, "topk": args.target_energon_topk,
            "sanger": args.target_energon_sanger, "mcpu": args.target_llvm_mcpu,
            "fast_math": args.target_llvm_fast_math}


def selection_text(params: MPMRFParams) -> str:
    """A call's selection as every report names it: the policy, then its rounds: ``mpmrf (Q4xK2 gap=8,
    Q4xK4 gap=4)``, ``topk (Q4xK4 fraction=0.25)``, ``dense (no filter round)``."""
    return f"{params.policy} ({params.describe() if params.rounds else 'no filter round'})"


@dataclass(frozen=True)
class Target:
    offload: bool            # energon in the target: attention goes to the accelerator
    host: str                # the host target kind (llvm)
    config: HardwareConfig
    params: MPMRFParams
    mcpu: str | None = None  # the host CPU the llvm code is built for (None: not given / LLVM's generic CPU)
    thresholds: str | None = None  # the thresholds file the per-site parameters come from (its name)
    fast_math: bool = False  # the host code's exp, erf, tanh, GELU and softmax are TVM's fast approximations

    def describe(self) -> str:
        rounds = (selection_text(self.params) if self.thresholds is None
                  else f"{self.params.policy} thresholds {self.thresholds}")
        notes = [n for n in (self.mcpu, "fast-math" if self.fast_math else None) if n]
        host = f"{self.host} ({', '.join(notes)})" if notes else self.host
        return (f"energon ({self.config.name}; {rounds}), {host}" if self.offload else host)


def parse_policy(policy: str | None) -> str:
    """``--target-energon-policy``: one of :data:`~energon_tvm.isa.numerics.POLICIES` (None: the default)."""
    if policy is None:
        return DEFAULT_POLICY
    if policy not in POLICIES:
        raise TVMCError(f"--target-energon-policy {policy!r}: one of {', '.join(POLICIES)}")
    return policy


def parse_knob(policy: str, text: str) -> float:
    """``--target-energon-<policy> VALUE`` of a one-round policy: one number in its range (top-k's fraction
    in (0, 1], at least one 1/KEEP_ONE step; Sanger's probability in [0, 1])."""
    lo, hi = RULE_RANGE[POLICY_ROUNDS[policy][0].rule]
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    limit = f"must be one number in {_knob_limit(policy)}, {KNOB_MEANING[policy]}"
    if not (math.isfinite(value) and (0.0 < value if lo > 0 else lo <= value) and value <= hi):
        raise TVMCError(f"--target-energon-{policy} {text!r}: {limit}")
    if value < lo:
        raise TVMCError(f"--target-energon-{policy} {text!r}: {limit}, and at least 1/{KEEP_ONE} (the steps the "
                        f"threshold unit holds it in)")
    return value


def parse_params(rounds: str | None = None, rule: str | None = None, alpha: str | None = None,
                 gap: str | None = None, policy: str | None = None, topk: str | None = None,
                 sanger: str | None = None) -> MPMRFParams:
    """The parameters of the selection policy of ``--target-energon-policy`` (default mpmrf).

    ``mpmrf``: the filter rounds of ``--target-energon-rounds`` (``"4x2,4x4"``; ``"none"``: no filter round,
    the dense INT16 baseline) with the threshold rule of ``--target-energon-rule`` and the values of
    ``--target-energon-alpha`` (mpmrf) or ``--target-energon-gap`` (gap); what is not given is the
    project's default (:data:`energon_tvm.isa.numerics.DEFAULT_VALUES`). The other policies:
    :meth:`MPMRFParams.for_policy` at the value of their own option (``topk``: ``--target-energon-topk``,
    ``sanger``: ``--target-energon-sanger``) or at its default; the mpmrf options are refused with them."""
    name = parse_policy(policy)
    knobs = {"topk": topk, "sanger": sanger}
    for knob, text in knobs.items():
        if text is not None and knob != name:
            chosen = f"{name} (the default)" if policy is None else name
            raise TVMCError(f"--target-energon-{knob} {text} sets the {_knob_name(knob)} of the {knob} policy; the "
                            f"policy is {chosen}: give --target-energon-policy {knob}, or drop "
                            f"--target-energon-{knob}")
    if name != "mpmrf":
        given = [(o, v) for o, v in zip(MPMRF_OPTIONS, (rounds, rule, alpha, gap)) if v is not None]
        if given:
            option, text = given[0]
            fixed = MPMRFParams.for_policy(name)
            raise TVMCError(f"--target-energon-{option} {text} applies to the mpmrf policy, not to {name}, whose "
                            f"rounds are its own ({selection_text(fixed)}"
                            + (f"; its value is --target-energon-{name}" if name in knobs else "") + ")")
        text = knobs.get(name)
        return MPMRFParams.for_policy(name, None if text is None else parse_knob(name, text))
    if rounds is not None and rounds.strip().lower() in ("none", "dense", ""):
        if alpha is not None or gap is not None:
            raise TVMCError("--target-energon-rounds none has no filter round to give thresholds to")
        return MPMRFParams(())
    rules = POLICY_RULES["mpmrf"]
    if rule is not None and rule not in rules:
        hint = (f"; {rule} is a policy of its own: give --target-energon-policy {rule}"
                if rule in POLICIES and rule != "mpmrf" else "")
        raise TVMCError(f"--target-energon-rule {rule!r}: one of {', '.join(rules)} (the rules of the mpmrf "
                        f"policy){hint}")
    rule = rule or ("mpmrf" if alpha is not None else "gap" if gap is not None else DEFAULT_RULE)
    wrong = {"mpmrf": ("gap", gap), "gap": ("alpha", alpha)}[rule]
    if wrong[1] is not None:
        raise TVMCError(f"--target-energon-{wrong[0]} does not apply to the {rule} rule; give "
                        f"--target-energon-{'alpha' if rule == 'mpmrf' else 'gap'}")
    bits = [(r.q_bits, r.k_bits) for r in MPMRFParams().rounds]
    if rounds is not None:
        try:
            bits = [tuple(int(b) for b in item.lower().split("x")) for item in rounds.split(",")]
            if any(len(b) != 2 for b in bits):
                raise ValueError
        except ValueError:
            raise TVMCError(f"bad --target-energon-rounds {rounds!r}: give QxK bit pairs such as 4x2,4x4, "
                            f"or none") from None
    option, text = ("alpha", alpha) if rule == "mpmrf" else ("gap", gap)
    defaults = list(DEFAULT_VALUES[rule])
    values = defaults[:len(bits)] + [defaults[-1]] * max(0, len(bits) - len(defaults))
    if text is not None:
        lo, hi = RULE_RANGE[rule]
        try:
            values = [float(a) for a in text.split(",") if a.strip()]
        except ValueError:
            raise TVMCError(f"bad --target-energon-{option} {text!r}: give numbers in [{lo:g}, {hi:g}] "
                            f"separated by commas") from None
        if len(values) != len(bits):
            raise TVMCError(f"--target-energon-{option} gives {len(values)} value(s); the filter has {len(bits)} "
                            f"round(s) ({', '.join(f'Q{q}xK{k}' for q, k in bits)})")
    try:
        return MPMRFParams.from_values(rule, values, bits)
    except ValueError as err:
        raise TVMCError(f"bad --target-energon-{option if text is not None else 'rounds'}: {err}") from None


def parse_target(text: str, config: str | None = None, alpha: str | None = None,
                 default_params: MPMRFParams | None = None, rounds: str | None = None,
                 mcpu: str | None = None, rule: str | None = None, gap: str | None = None,
                 thresholds: str | None = None, policy: str | None = None, topk: str | None = None,
                 sanger: str | None = None, fast_math: str | bool | None = None) -> Target:
    """The target of ``--target`` and its options. With ``thresholds`` (a thresholds file's path) the
    parameters are the file's, per site: the rule and values options are refused, the policy must be
    mpmrf, and ``rounds`` must be the file's rounds (checked by
    :func:`~energon_tvm.tvmc.thresholds.read_thresholds`'s caller)."""
    kinds = [k.strip() for k in (text or "").split(",")]
    if not any(kinds):
        raise TVMCError("empty --target; use \"energon, llvm\" or \"llvm\"")
    if not all(kinds):
        raise TVMCError(f"--target {text!r} has an empty item; use \"energon, llvm\" or \"llvm\"")
    unknown = [k for k in kinds if k.split()[0] not in KINDS]
    if unknown:
        raise TVMCError(f"unknown target kind {unknown[0]!r} in --target {text!r}; known: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise TVMCError(f"--target {text!r} names a kind twice")
    if "llvm" not in kinds:
        raise TVMCError(f"--target {text!r} has no host target: everything but attention runs on llvm, add it")
    if any(" " in k for k in kinds):
        raise TVMCError(f"--target {text!r}: give target options as --target-<kind>-<option>, not inline")
    offload = "energon" in kinds
    selection = (rounds, rule, alpha, gap, policy, topk, sanger)
    if not offload and (config or thresholds or any(v is not None for v in selection)):
        raise TVMCError("--target-energon-* options need energon in --target")
    if thresholds is not None:
        other = [f"--target-energon-policy {policy}"] if parse_policy(policy) != "mpmrf" else []
        other += [f"--target-energon-{k} {v}" for k, v in (("topk", topk), ("sanger", sanger)) if v is not None]
        if other:
            raise TVMCError(f"--target-energon-thresholds holds thresholds of the mpmrf policy (its mean/max or gap "
                            f"rule); drop {other[0]}, or the thresholds file")
        given = [f"--target-energon-{o}" for o, v in (("rule", rule), ("alpha", alpha), ("gap", gap)) if v is not None]
        if given:
            raise TVMCError(f"--target-energon-thresholds sets every site's rule and values; drop {', '.join(given)}")
        if rounds is not None and rounds.strip().lower() in ("none", "dense", ""):
            raise TVMCError(f"--target-energon-rounds {rounds} has no filter round for --target-energon-thresholds "
                            f"to give thresholds to")
    if mcpu is not None:
        from ..host import valid_mcpu

        if not valid_mcpu(mcpu):
            raise TVMCError(f"--target-llvm-mcpu {mcpu!r} is not a CPU LLVM knows (e.g. x86-64-v3, "
                            f"skylake-avx512, znver4)")
    approximate = parse_fast_math(fast_math)
    cfg = load_config(config or "edge")
    if default_params is not None and all(v is None for v in selection):
        params = default_params
    else:
        params = parse_params(rounds, rule, alpha, gap, policy, topk, sanger)
    from pathlib import Path

    return Target(offload, "llvm", cfg, params, mcpu, None if thresholds is None else Path(thresholds).name,
                  approximate)


def parse_fast_math(value: str | bool | None) -> bool:
    """``--target-llvm-fast-math``: on or off (None: off; a bool from Python callers as it is)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    choice = {"on": True, "off": False}.get(str(value).strip().lower())
    if choice is None:
        raise TVMCError(f"--target-llvm-fast-math {value!r}: on or off")
    return choice
