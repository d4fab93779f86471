"""``--target "energon, llvm"`` and its ``--target-energon-*`` options, parsed into one record."""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.config import HardwareConfig, load_config
from ..isa.numerics import MPMRFParams
from .errors import TVMCError

KINDS = ("energon", "llvm")
#: options each target kind takes on the command line as --target-<kind>-<option>
OPTIONS = {"energon": {"config": "hardware config: edge, server or a .toml file (default edge)",
                       "rounds": "filter rounds as QxK bits, e.g. 4x2,4x4 (the default); none = the dense "
                                 "INT16 baseline",
                       "alpha": "threshold alpha per filter round in [-1, 1], comma separated, e.g. -1,-1 "
                                "(default: the project's defaults)"},
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
    """The keyword arguments of ``compile_model`` / ``tune_model`` that the target flags set."""
    return {"target": args.target, "config": args.target_energon_config, "alpha": args.target_energon_alpha,
            "rounds": args.target_energon_rounds, "mcpu": args.target_llvm_mcpu}


@dataclass(frozen=True)
class Target:
    offload: bool            # energon in the target: attention goes to the accelerator
    host: str                # the host target kind (llvm)
    config: HardwareConfig
    params: MPMRFParams
    mcpu: str | None = None  # the host CPU the llvm code is built for (None: generic)

    def describe(self) -> str:
        rounds = ", ".join(f"Q{r.q_bits}xK{r.k_bits} alpha={r.alpha:g}" for r in self.params.rounds) or "dense"
        host = f"{self.host} ({self.mcpu})" if self.mcpu else self.host
        return (f"energon ({self.config.name}; {rounds}), {host}" if self.offload else host)


def parse_alphas(text: str | None, default: MPMRFParams) -> MPMRFParams:
    if text is None:
        return default
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise TVMCError(f"bad --target-energon-alpha {text!r}: give numbers in [-1, 1] separated by commas") from None
    bits = [(r.q_bits, r.k_bits) for r in default.rounds]
    if len(alphas) != len(bits):
        raise TVMCError(f"--target-energon-alpha gives {len(alphas)} value(s); the filter has {len(bits)} "
                        f"round(s) ({', '.join(f'Q{q}xK{k}' for q, k in bits)})")
    try:
        return MPMRFParams.from_alphas(alphas, bits)
    except ValueError as err:
        raise TVMCError(f"bad --target-energon-alpha: {err}") from None


def parse_rounds(text: str | None) -> MPMRFParams:
    """``"4x2,4x4"`` -> rounds with the default alphas; ``"none"`` -> no filter round (dense INT16)."""
    default = MPMRFParams()
    if text is None:
        return default
    if text.strip().lower() in ("none", "dense", ""):
        return MPMRFParams(())
    try:
        bits = [tuple(int(b) for b in item.lower().split("x")) for item in text.split(",")]
        if any(len(b) != 2 for b in bits):
            raise ValueError
    except ValueError:
        raise TVMCError(f"bad --target-energon-rounds {text!r}: give QxK bit pairs such as 4x2,4x4, or none") from None
    alphas = [r.alpha for r in default.rounds][:len(bits)] + [0.0] * max(0, len(bits) - len(default.rounds))
    try:
        return MPMRFParams.from_alphas(alphas, bits)
    except ValueError as err:
        raise TVMCError(f"bad --target-energon-rounds: {err}") from None


def parse_target(text: str, config: str | None = None, alpha: str | None = None,
                 default_params: MPMRFParams | None = None, rounds: str | None = None,
                 mcpu: str | None = None) -> Target:
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
    if not offload and (config or alpha or rounds):
        raise TVMCError("--target-energon-* options need energon in --target")
    if mcpu is not None:
        from ..host import valid_mcpu

        if not valid_mcpu(mcpu):
            raise TVMCError(f"--target-llvm-mcpu {mcpu!r} is not a CPU LLVM knows (e.g. x86-64-v3, "
                            f"skylake-avx512, znver4)")
    cfg = load_config(config or "edge")
    params = parse_alphas(alpha, default_params or parse_rounds(rounds))
    return Target(offload, "llvm", cfg, params, mcpu)
