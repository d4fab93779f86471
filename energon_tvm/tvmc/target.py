"""``--target "energon, llvm"`` and its ``--target-energon-*`` options, parsed into one record."""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.config import HardwareConfig, load_config
from ..isa.numerics import DEFAULT_RULE, DEFAULT_VALUES, RULE_RANGE, THRESHOLD_RULES, MPMRFParams
from .errors import TVMCError

KINDS = ("energon", "llvm")
#: options each target kind takes on the command line as --target-<kind>-<option>
OPTIONS = {"energon": {"config": "hardware config: edge, server or a .toml file (default edge)",
                       "rounds": "filter rounds as QxK bits, e.g. 4x2,4x4 (the default); none = the dense "
                                 "INT16 baseline",
                       "rule": "threshold rule of the filter rounds: mpmrf (MP-MRF's mean/max rule, set by "
                               "alpha) or gap (keep keys within a gap in logits of the row's best) (default: "
                               "the project's default rule)",
                       "alpha": "mpmrf rule: threshold alpha per filter round in [-1, 1], comma separated, e.g. "
                                "-1,-1 (default: the project's defaults)",
                       "gap": "gap rule: the gap in logits per filter round, comma separated, e.g. 6,3 (default: "
                              "the project's defaults)",
                       "thresholds": "per-site, per-head thresholds from a file tvmc calibrate wrote (instead of "
                                     "--target-energon-rule/-alpha/-gap; tvmc compile)"},
           "llvm": {"mcpu": "CPU to build the host code for, e.g. skylake-avx512 (default: generic x86-64, "
                            "which runs on any x86-64 machine)"}}


def add_target_arguments(p) -> None:
    """``--target`` and the ``--target-<kind>-<option>`` flags generated from :data:`OPTIONS`, as every
    subcommand that compiles takes them."""
    p.add_argument("--target", default="energon, llvm", help='"energon, llvm" (default) or "llvm"')
    for kind, options in OPTIONS.items():
        for option, help_text in options.items():
            p.add_argument(f"--target-{kind}-{option}", dest=f"target_{kind}_{option}", help=help_text)


def target_options(args) -> dict:
    """The keyword arguments of ``compile_model`` / ``tune_model`` that the target flags set (not
    ``--target-energon-thresholds``, which both take as ``thresholds``; ``tvmc calibrate`` refuses it)."""
    return {"target": args.target, "config": args.target_energon_config, "alpha": args.target_energon_alpha,
            "rounds": args.target_energon_rounds, "rule": args.target_energon_rule, "gap": args.target_energon_gap,
            "mcpu": args.target_llvm_mcpu}


@dataclass(frozen=True)
class Target:
    offload: bool            # energon in the target: attention goes to the accelerator
    host: str                # the host target kind (llvm)
    config: HardwareConfig
    params: MPMRFParams
    mcpu: str | None = None  # the host CPU the llvm code is built for (None: generic)
    thresholds: str | None = None  # the thresholds file the per-site parameters come from (its name)

    def describe(self) -> str:
        rounds = self.params.describe() if self.thresholds is None else f"thresholds {self.thresholds}"
        host = f"{self.host} ({self.mcpu})" if self.mcpu else self.host
        return (f"energon ({self.config.name}; {rounds}), {host}" if self.offload else host)


def parse_params(rounds: str | None = None, rule: str | None = None, alpha: str | None = None,
                 gap: str | None = None) -> MPMRFParams:
    """The filter rounds of ``--target-energon-rounds`` (``"4x2,4x4"``; ``"none"``: no filter round, the
    dense INT16 baseline) with the threshold rule of ``--target-energon-rule`` and the values of
    ``--target-energon-alpha`` (mpmrf) or ``--target-energon-gap`` (gap); what is not given is the
    project's default (:data:`energon_tvm.isa.numerics.DEFAULT_VALUES`)."""
    if rounds is not None and rounds.strip().lower() in ("none", "dense", ""):
        if alpha is not None or gap is not None:
            raise TVMCError("--target-energon-rounds none has no filter round to give thresholds to")
        return MPMRFParams(())
    if rule is not None and rule not in THRESHOLD_RULES:
        raise TVMCError(f"--target-energon-rule {rule!r}: one of {', '.join(THRESHOLD_RULES)}")
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
                 thresholds: str | None = None) -> Target:
    """The target of ``--target`` and its options. With ``thresholds`` (a thresholds file's path) the
    parameters are the file's, per site: the rule and values options are refused, and ``rounds`` must be
    the file's rounds (checked by :func:`~energon_tvm.tvmc.thresholds.read_thresholds`'s caller)."""
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
    if not offload and (config or alpha or rounds or rule or gap or thresholds):
        raise TVMCError("--target-energon-* options need energon in --target")
    if thresholds is not None:
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
    cfg = load_config(config or "edge")
    if default_params is not None and not (alpha or rounds or rule or gap):
        params = default_params
    else:
        params = parse_params(rounds, rule, alpha, gap)
    from pathlib import Path

    return Target(offload, "llvm", cfg, params, mcpu, None if thresholds is None else Path(thresholds).name)
