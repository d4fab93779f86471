"""Thresholds files: what ``tvmc calibrate`` writes and ``tvmc compile --target-energon-thresholds`` reads.

A thresholds file is a :class:`~energon_tvm.calibration.Calibration` record (``Calibration.to_dict``) with
two more keys: ``model`` (the calibrated model file's name and SHA-256) and ``input_shapes`` (the
``--input-shapes`` it was calibrated under, or null). This module owns reading and checking it against
the model being compiled (digest, rounds, sites, head counts) and its summary in a package's manifest;
every mistake is one :class:`~energon_tvm.calibration.ThresholdsError` line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..calibration import DEFAULT_BUDGET, FORMAT, Calibration, ThresholdsError
from ..isa.numerics import MPMRFParams
from .errors import open_user_file

#: the most bytes a thresholds file may hold (a real one holds a few values per layer and head)
MAX_BYTES = 16 << 20
#: the keys a thresholds file adds to the Calibration record
FILE_KEYS = ("model", "input_shapes")


@dataclass(frozen=True)
class ThresholdsFile:
    """A read and checked thresholds file: where it is, its digest, the calibration and the model it was
    calibrated for."""

    path: str
    sha256: str
    calibration: Calibration
    model_name: str
    model_sha256: str
    input_shapes: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name

    def fail(self, message: str) -> ThresholdsError:
        return ThresholdsError(f"thresholds file {self.path}: {message}")

    def site_params(self) -> dict[str, MPMRFParams]:
        """Site name -> its MP-MRF parameters (``EnergonTarget.site_params``)."""
        return {s.name: self.calibration.params_for(s.name) for s in self.calibration.sites}

    def check_model(self, model_path, model_sha256: str) -> None:
        if model_sha256 != self.model_sha256:
            raise self.fail(f"calibrated for model {self.model_name} (sha256 {self.model_sha256[:12]}...), not for "
                            f"{Path(model_path).name} (sha256 {model_sha256[:12]}...); run tvmc calibrate on this "
                            f"model")

    def check_rounds(self, bits: tuple[tuple[int, int], ...] | None) -> None:
        """``bits``: the ``--target-energon-rounds`` given (None: not given, the file's rounds apply)."""
        if bits is not None and tuple(bits) != self.calibration.bits:
            raise self.fail(f"calibrated for rounds {_rounds(self.calibration.bits)}; --target-energon-rounds "
                            f"gives {_rounds(bits)}")

    def check_sites(self, report) -> None:
        """Every offloaded site of ``report`` (an OffloadReport) has thresholds, every site of the file is
        one of the model's and was offloaded with them (a head count that differs keeps a site on the
        host: that is named)."""
        by_name = {r.site: r for r in report}
        cal_sites = {s.name: s for s in self.calibration.sites}
        extra = [n for n in cal_sites if n not in by_name]
        if extra:
            raise self.fail(f"site {extra[0]!r} is not an attention site of the model (its sites: "
                            f"{', '.join(by_name) or 'none'})")
        missing = [r.site for r in report.offloaded if r.site not in cal_sites]
        if missing:
            raise self.fail(f"the model's attention site {missing[0]!r} has no thresholds (the file has "
                            f"{', '.join(cal_sites)})")
        for name, site in cal_sites.items():
            record = by_name[name]
            if record.offloaded:
                continue
            heads = None if record.workload is None else record.workload.heads
            if heads is not None and heads != site.heads:
                raise self.fail(f"site {name!r} has {site.heads} head(s) in the file; the model's has {heads}")
            raise self.fail(f"site {name!r} stays on the host with these thresholds ({site.heads} head(s) in the "
                            f"file): {record.reason}")

    def manifest_record(self) -> dict:
        """What a package's manifest keeps of the file (``thresholds``): its name and digest, the settings
        and, per site, the values per round per head with the calibration's mass and kept ratios."""
        c = self.calibration
        return {"file": self.name, "sha256": self.sha256, "rule": c.rule, "budget": c.budget,
                "bits": [list(b) for b in c.bits],
                "sites": [{"name": s.name, "heads": s.heads, "values": [list(v) for v in s.values],
                           "mass_mean": list(s.quality.mass_mean),
                           "kept_ratio": [list(r) for r in s.quality.kept_ratio], "flagged": list(s.flagged)}
                          for s in c.sites]}


def _rounds(bits) -> str:
    return ",".join(f"{q}x{k}" for q, k in bits)


def thresholds_record(calibration: Calibration, model_path, model_sha256: str,
                      input_shapes: str | None = None) -> dict:
    """The JSON record of a thresholds file."""
    return {**calibration.to_dict(), "model": {"path": Path(model_path).name, "sha256": model_sha256},
            "input_shapes": input_shapes}


def read_thresholds(path) -> ThresholdsFile:
    """Read and check the thresholds file at ``path`` (every field; :meth:`Calibration.from_dict`)."""
    import hashlib

    with open_user_file(path, "thresholds file", ThresholdsError) as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ThresholdsError(f"thresholds file {path}: larger than {MAX_BYTES >> 20} MiB; not a thresholds file")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ThresholdsError(f"thresholds file {path}: not JSON ({type(err).__name__}: {err}); tvmc calibrate "
                              f"writes it") from None
    if not isinstance(doc, dict):
        raise ThresholdsError(f"thresholds file {path}: holds a {type(doc).__name__}, not a thresholds record")
    if doc.get("format") != FORMAT:  # another kind of JSON: say so rather than name its first missing field
        raise ThresholdsError(f"thresholds file {path}: not a thresholds file (format {doc.get('format')!r}, not "
                              f"{FORMAT!r}); tvmc calibrate writes them")
    try:
        calibration = Calibration.from_dict({k: v for k, v in doc.items() if k not in FILE_KEYS})
    except ThresholdsError as err:
        raise ThresholdsError(f"thresholds file {path}: {err}") from None
    model, shapes = doc.get("model"), doc.get("input_shapes")
    if not (isinstance(model, dict) and set(model) == {"path", "sha256"} and isinstance(model["path"], str)
            and isinstance(model["sha256"], str) and len(model["sha256"]) == 64):
        raise ThresholdsError(f"thresholds file {path}: 'model' = {str(model)[:60]!r} must be {{'path': name, "
                              f"'sha256': 64 hex digits}}")
    if shapes is not None and not isinstance(shapes, str):
        raise ThresholdsError(f"thresholds file {path}: 'input_shapes' = {shapes!r} must be a string or null")
    return ThresholdsFile(str(path), hashlib.sha256(raw).hexdigest(), calibration, model["path"],
                          model["sha256"], shapes)


@dataclass(frozen=True)
class CalibrateResult:
    """What :func:`calibrate_model` made: the calibration, the thresholds file's record, the inputs
    run and the seconds each step took."""

    calibration: Calibration
    record: dict
    inputs: int
    timings: dict


def parse_quality(text) -> float:
    """``--target-energon-quality``: a budget in (0, 1]."""
    import math

    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ThresholdsError(f"--target-energon-quality {text!r}: must be a number in (0, 1], the mean fraction "
                              f"of each row's softmax mass the kept keys hold")
    return value


def parse_calibration_rounds(text: str | None) -> tuple[tuple[int, int], ...]:
    """``--target-energon-rounds`` for calibration: QxK pairs (the project's default when not given); at
    least one round (there is nothing to calibrate without)."""
    from .target import parse_params

    if text is not None and text.strip().lower() in ("none", "dense", ""):
        raise ThresholdsError(f"--target-energon-rounds {text!r}: calibration needs at least one filter round")
    return tuple((r.q_bits, r.k_bits) for r in parse_params(text).rounds)


def calibrate_model(model_path, inputs, *, quality: float = DEFAULT_BUDGET, rule: str = "gap",
                    rounds: str | None = None, config: str | None = None, model_format: str | None = None,
                    input_shapes: str | None = None,
                    progress: bool = False, verbose: int = 0, log=None) -> CalibrateResult:
    """``tvmc calibrate``: compile the model with every attention site offloaded and every key kept (no
    filter round), run it on the reference backend over every input of ``inputs`` (a data set, as
    ``tvmc run`` reads them), capture each site's q, k, v and mask, and calibrate the thresholds of
    ``rounds`` under ``rule`` to the mass budget ``quality``
    (:func:`~energon_tvm.calibration.calibrate`). Every option is checked before any work."""
    import tempfile
    import time

    from ..calibration import CALIBRATED_RULES, calibrate
    from .compiler import compile_model, write
    from .errors import TVMCError
    from .runner import attention_samples
    from .shapes import format_input_shapes, parse_input_shapes

    budget = parse_quality(quality)
    if rule not in CALIBRATED_RULES:
        from .target import KNOB_POLICIES

        hint = (f"; {rule} is a policy set by its one value (tvmc compile --target-energon-policy {rule} "
                f"--target-energon-{rule} VALUE)" if rule in KNOB_POLICIES else "")
        raise ThresholdsError(f"--target-energon-rule {rule!r}: one of {', '.join(CALIBRATED_RULES)} (the rules "
                              f"calibration searches){hint}")
    bits = parse_calibration_rounds(rounds)
    if not Path(model_path).is_file():
        raise TVMCError(f"model file {str(model_path)!r} does not exist")
    if not Path(inputs).exists():
        raise TVMCError(f"--calibration {str(inputs)!r} does not exist")
    shapes = format_input_shapes(parse_input_shapes(input_shapes)) if input_shapes else None
    say = log or (lambda _msg: None)
    timings = {}
    t0 = time.perf_counter()
    result = compile_model(model_path, model_format=model_format, config=config, rounds="none",
                           input_shapes=shapes, verbose=verbose, log=log)
    timings["compile"] = time.perf_counter() - t0
    if not result.calls:
        raise TVMCError(f"{Path(model_path).name}: no attention site was offloaded to Energon, nothing to calibrate "
                        f"(tvmc compile --dump-offloads - says why)")
    say(f"compiled {Path(model_path).name} dense: {len(result.calls)} attention site(s)")
    with tempfile.TemporaryDirectory(prefix="energon-cal-") as tmp:
        package = Path(tmp) / "dense.tar"
        write(result, package)
        t0 = time.perf_counter()
        samples = attention_samples(package, inputs, progress=progress)
        timings["run"] = time.perf_counter() - t0
    n_inputs = len(next(iter(samples.values()))) if samples else 0
    t0 = time.perf_counter()
    calibration = calibrate(samples, rule=rule, bits=bits, budget=budget, progress="calibrating" if progress else None)
    timings["calibrate"] = time.perf_counter() - t0
    record = thresholds_record(calibration, model_path, result.model_sha256, shapes)
    return CalibrateResult(calibration, record, n_inputs, timings)


def summary_lines(calibration: Calibration) -> list[str]:
    """One line per site: the mean kept ratio after each round and the mean mass, over its heads."""
    lines = []
    for s in calibration.sites:
        q = s.quality
        kept = ", ".join(f"round {r + 1} {sum(k) / len(k):.3f}" for r, k in enumerate(q.kept_ratio))
        flagged = (f"; head(s) {', '.join(map(str, s.flagged))} keep everything (budget not reached)"
                   if s.flagged else "")
        lines.append(f"  {s.name}: {s.heads} head(s), kept ratio {kept}; mass {sum(q.mass_mean) / s.heads:.4f} "
                     f"(min head {min(q.mass_mean):.4f}){flagged}")
    return lines
