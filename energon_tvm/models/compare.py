"""Selection policies side by side on one machine: what each keeps, what that costs the task, and what
it saves in cycles and energy.

Every policy of :data:`energon_tvm.isa.numerics.POLICIES` is run over a sweep of its own knob
(:data:`POLICY_SWEEP`): MP-MRF's rounds (the gap rule at three settings and the paper's mean/max rule),
SpAtten-style top-k at three fractions, Sanger's predicted-probability threshold at three thresholds,
and the dense INT16 baseline. For each setting:

* **accuracy**: the task metric of a real pretrained encoder whose every attention runs the policy's
  numpy reference (:mod:`.evaluation`, paired against float attention, with standard errors);
* **the machine on the model**: the encoder's own attention inputs of ``n_machine`` test sentences, one
  inference each at the sentence's length (padded to a multiple of 8, the padding a mask row), every
  layer's call scheduled by the heuristic and simulated on the reference's kept sets (timing-only runs,
  which give a full run's cycles, DRAM bytes and energy), beside the call's lower bound
  (:mod:`energon_tvm.schedules.bounds`);
* **the machine on BERT-base S=512**: synthetic structured attention (:func:`energon_tvm.workloads.structured_qkv`),
  12 heads, D 64, the same way.

:func:`compare` returns a :class:`Comparison`; :func:`markdown` and :func:`plot` render it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..isa.numerics import MASK_THRESHOLD, POLICIES, MPMRFParams
from . import evaluation

#: each policy's operating points: setting name -> parameters, loosest first
POLICY_SWEEP: dict[str, dict[str, MPMRFParams]] = {
    "mpmrf": {"gap 12/5": MPMRFParams.from_values("gap", (12.0, 5.0)),
              "gap 8/4": MPMRFParams.from_values("gap", (8.0, 4.0)),
              "gap 6/3": MPMRFParams.from_values("gap", (6.0, 3.0)),
              "mpmrf 0/-0.25": MPMRFParams.from_values("mpmrf", (0.0, -0.25))},
    "topk": {f"topk {f:g}": MPMRFParams.for_policy("topk", f) for f in (0.5, 0.35, 0.2)},
    "sanger": {f"sanger {p:g}": MPMRFParams.for_policy("sanger", p) for p in (0.002, 0.01, 0.02)},
    "dense": {"dense INT16": MPMRFParams.for_policy("dense")},
}
SYNTHETIC = ("BERT-base S=512", 12, 512, 64)


def sweep_settings(policies: Sequence[str] = POLICIES) -> dict[str, MPMRFParams]:
    """The settings of ``policies``, in :data:`POLICY_SWEEP`'s order."""
    out: dict[str, MPMRFParams] = {}
    for p in policies:
        if p not in POLICY_SWEEP:
            from ..isa.errors import EnergonError

            raise EnergonError(f"policy {p!r}: one of {', '.join(POLICY_SWEEP)}")
        out.update(POLICY_SWEEP[p])
    return out


@dataclass(frozen=True)
class MachineFigures:
    """One setting on one machine, per inference (mean over the inputs): pairs kept over candidates
    after the last round, simulated cycles and their lower bound (summed over the calls), what binds
    most of the bound, energy, DRAM bytes and the compulsory DRAM bytes."""

    setting: str
    policy: str
    kept: float
    cycles: float
    cycles_se: float
    bound_cycles: float
    binds: str
    energy_uj: float
    dram_bytes: float
    compulsory_dram_bytes: float
    inputs: int


@dataclass(frozen=True)
class Comparison:
    model: str
    config: str
    accuracy: tuple[evaluation.TaskResult, ...]
    machine: tuple[MachineFigures, ...]
    synthetic: tuple[MachineFigures, ...]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"model": self.model, "config": self.config, "seconds": self.seconds,
                "accuracy": [r.to_dict() for r in self.accuracy],
                "machine": [asdict(m) for m in self.machine], "synthetic": [asdict(m) for m in self.synthetic]}

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        return cls(d["model"], d["config"], tuple(evaluation.TaskResult.from_dict(r) for r in d["accuracy"]),
                   tuple(MachineFigures(**m) for m in d["machine"]),
                   tuple(MachineFigures(**m) for m in d["synthetic"]), d.get("seconds", 0.0))


def padding_row(mask: np.ndarray | None) -> np.ndarray | None:
    """A captured additive mask [B, 1|H, Sq, Sk] reduced to the one row every query shares (a padding
    mask, which the machine reads as one bias row), or None when nothing is masked. A mask whose rows
    differ is returned as it is."""
    if mask is None:
        return None
    m = np.asarray(mask, np.float32)
    if not np.any(m <= MASK_THRESHOLD) and not np.any(m):
        return None
    if m.ndim == 4 and np.all(m == m[:, :, :1, :]):
        return np.ascontiguousarray(m[:, :, :1, :])
    return m


def simulate_call(q, k, v, mask, scale, params: MPMRFParams, cfg):
    """(stats, bound) of one attention call: its heuristic schedule simulated (timing-only) on the kept
    sets of the reference, and the call's lower bound from the same kept sets."""
    from ..runtime_sim import Simulator
    from ..schedules import AttentionWorkload, call_bound, default_schedule, emit_program
    from ..tuner import profile_from_arrays

    b, h, s, d = q.shape
    w = AttentionWorkload(b, h, s, k.shape[2], d, bias_shape=None if mask is None else mask.shape, scale=scale,
                          params=params)
    profile = profile_from_arrays(w, q, k, v, mask)
    program = emit_program(w, default_schedule(w, cfg), cfg)
    return Simulator(cfg).run(program, profile=profile).stats, call_bound(w, cfg, profile)


def _figures(setting: str, params: MPMRFParams, inferences: Sequence[Sequence[tuple]], cfg) -> MachineFigures:
    """Sum every call of an inference, average the inferences; what binds is the unit that binds the
    most bound cycles of all their calls (``total_bound``'s rule)."""
    from ..schedules.bounds import total_bound

    per, every_bound = [], []
    kept = cand = 0
    for calls in inferences:
        stats, bounds = zip(*(simulate_call(*c, params, cfg) for c in calls))
        every_bound += bounds
        total = total_bound(bounds)
        per.append((sum(s["cycles"] for s in stats), total.cycles,
                    sum(s["energy_pj"]["total"] for s in stats) / 1e6,
                    sum(s["dram_bytes"]["read_total"] + s["dram_bytes"]["write_total"] for s in stats),
                    total.compulsory_dram_bytes))
        for s in stats:
            cand += s["candidates"]
            kept += s["kept_per_round"][-1] if s["kept_per_round"] else s["candidates"]
    cycles = np.array([p[0] for p in per], np.float64)
    return MachineFigures(setting, params.policy, kept / cand if cand else 1.0, float(cycles.mean()),
                          float(cycles.std(ddof=1) / np.sqrt(len(cycles))) if len(cycles) > 1 else 0.0,
                          float(np.mean([p[1] for p in per])), total_bound(every_bound).binds,
                          float(np.mean([p[2] for p in per])), float(np.mean([p[3] for p in per])),
                          float(np.mean([p[4] for p in per])), len(per))


def model_inferences(samples: Mapping[str, Sequence]) -> list[list[tuple]]:
    """Captured attention samples (site -> one sample per sentence) regrouped per sentence: the calls of
    one inference, in layer order, as (q, k, v, mask row, scale)."""
    sites = list(samples)
    n = len(samples[sites[0]])
    return [[(s.q, s.k, s.v, padding_row(s.mask), s.scale) for s in (samples[site][i] for site in sites)]
            for i in range(n)]


def machine_figures(inferences, settings: Mapping[str, MPMRFParams], cfg, progress: bool = True
                    ) -> list[MachineFigures]:
    """:class:`MachineFigures` of every setting over ``inferences`` (lists of calls)."""
    from tqdm import tqdm

    return [_figures(name, params, inferences, cfg)
            for name, params in tqdm(settings.items(), desc="simulating", unit="setting", leave=False,
                                     disable=not progress)]


def synthetic_inference(seed: int = 0) -> list[tuple]:
    """One BERT-base S=512 call of structured Q/K (:data:`SYNTHETIC`)."""
    from ..workloads import structured_qkv

    _, h, s, d = SYNTHETIC
    q, k, v = structured_qkv(np.random.default_rng(seed), 1, h, s, s, d)
    return [(q, k, v, None, None)]


def compare(model_name: str = "all-MiniLM-L6-v2", task_names: Sequence[str] = ("movies-polarity",),
            settings: Mapping[str, MPMRFParams] | None = None, *, config: str = "edge", n_test: int | None = None,
            n_machine: int = 16, seed: int = 0, batch: int = 64, synthetic: bool = True,
            progress: bool = True) -> Comparison:
    """Every setting (default: :func:`sweep_settings`) on ``model_name``'s tasks and on the machine
    (``n_machine`` 0: accuracy only; ``synthetic``: also the BERT-base S=512 synthetic call)."""
    from ..isa.config import load_config
    from . import tasks, zoo

    t0 = time.perf_counter()
    settings = sweep_settings() if settings is None else dict(settings)
    cfg = load_config(config)
    accuracy = evaluation.evaluate_model(model_name, task_names, budgets=(), fixed=settings, seed=seed,
                                         n_test=n_test, batch=batch, progress=progress)
    hook = evaluation.LayerAttention()
    model = zoo.load_model(model_name, attention=hook)
    texts = list(tasks.load_task(task_names[0], seed=seed).test_texts[:n_machine])
    machine = []
    if n_machine:
        samples = evaluation.calibration_samples(lambda t: zoo.embed(model_name, model, t, batch=1), hook, texts)
        machine = machine_figures(model_inferences(samples), settings, cfg, progress)
    synth = machine_figures([synthetic_inference(seed)], settings, cfg, progress) if synthetic else []
    return Comparison(model_name, config, tuple(accuracy), tuple(machine), tuple(synth), time.perf_counter() - t0)


def _accuracy_rows(c: Comparison) -> dict[tuple[str, str], evaluation.SettingResult]:
    return {(r.task, s.setting): s for r in c.accuracy for s in r.settings}


def markdown(c: Comparison) -> str:
    """Per task, every setting's kept ratio, metric and paired change against float attention; then the
    machine's figures per inference on the model and on the synthetic workload, each beside its bound."""
    out = []
    for r in c.accuracy:
        scale, unit = (100.0, " points") if r.metric_name == "accuracy" else (1.0, "")
        digits = 2 if scale == 100.0 else 4
        out += [f"**{c.model}, {r.task}** ({r.metric_name}, {r.n_test} test items; change against float "
                f"attention, paired)", "",
                f"| policy | setting | kept | {r.metric_name} | SE | vs float{unit} | SE of diff |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for s in r.settings:
            policy = "float" if s.setting == "dense" else next(
                (p for p, sw in POLICY_SWEEP.items() if s.setting in sw), "")
            kept = f"{s.kept[-1]:.3f}" if s.kept else "1"
            out.append(f"| {policy} | {s.setting} | {kept} | {scale * s.metric:.{digits}f} | {scale * s.se:.{digits}f} "
                       f"| {scale * s.diff:+.{digits}f} | {scale * s.diff_se:.{digits}f} |")
        out.append("")
    inputs = c.machine[0].inputs if c.machine else 0
    for title, rows in ((f"{c.model} on `{c.config}`, per inference (mean over {inputs} test sentences at their "
                         f"own length)", c.machine),
                        (f"{SYNTHETIC[0]} synthetic attention (structured Q/K, 12 heads, D 64) on `{c.config}`",
                         c.synthetic)):
        if not rows:
            continue
        dense = next((m for m in rows if m.policy == "dense"), None)
        out += [f"**{title}**", "",
                "| policy | setting | kept | cycles | bound (binds) | x bound | energy uJ | DRAM KiB | x compulsory "
                "| speedup vs dense | energy vs dense |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in rows:
            vs = (f"{dense.cycles / m.cycles:.2f}x", f"{m.energy_uj / dense.energy_uj:.2f}") if dense else ("", "")
            se = f" +- {m.cycles_se:,.0f}" if m.inputs > 1 else ""
            out.append(f"| {m.policy} | {m.setting} | {m.kept:.3f} | {m.cycles:,.0f}{se} | {m.bound_cycles:,.0f} "
                       f"({m.binds}) | {m.cycles / m.bound_cycles:.2f}x | {m.energy_uj:.1f} "
                       f"| {m.dram_bytes / 1024:,.0f} | {m.dram_bytes / m.compulsory_dram_bytes:.2f}x "
                       f"| {vs[0]} | {vs[1]} |")
        out.append("")
    return "\n".join(out)


def plot(c: Comparison, path) -> None:
    """One Pareto figure: per task, the change against float attention (in units of the task's
    tolerance, with its standard error) over the kept ratio, over simulated cycles and over energy per
    inference on the model; one marker and line per policy, the band "as good as dense"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = _accuracy_rows(c)
    machine = {m.setting: m for m in c.machine}
    tasks = [r for r in c.accuracy]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(14, 3.6 * len(tasks)), squeeze=False)
    markers = {"mpmrf": "o", "topk": "s", "sanger": "^", "dense": "D"}
    xs = (("kept ratio (kept / candidate pairs)", lambda s, m: s.kept[-1] if s.kept else 1.0),
          ("simulated cycles per inference", lambda s, m: m.cycles),
          ("energy per inference (uJ)", lambda s, m: m.energy_uj))
    for row, r in zip(axes, tasks):
        tol = evaluation.TOLERANCE[r.metric_name]
        for policy, sweep in POLICY_SWEEP.items():
            pts = [(acc[(r.task, name)], machine.get(name)) for name in sweep if (r.task, name) in acc]
            for ax, (_, x) in zip(row, xs):
                shown = pts if x is xs[0][1] else [(s, m) for s, m in pts if m is not None]  # kept needs no run
                if not shown:
                    continue
                ax.errorbar([x(s, m) for s, m in shown], [s.diff / tol for s, _ in shown],
                            yerr=[s.diff_se / tol for s, _ in shown], fmt=markers.get(policy, "o") + "-",
                            capsize=2, label=policy)
                for s, m in shown:
                    ax.annotate(s.setting.split(" ", 1)[-1], (x(s, m), s.diff / tol), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        for ax, (label, _) in zip(row, xs):
            ax.axhline(0, color="k", lw=1)
            ax.axhspan(-1, 1, color="k", alpha=0.07)
            ax.set_xlabel(label)
        row[0].set_ylabel(f"{r.task}:\nchange vs float / tolerance")
        row[0].legend(fontsize=7, title="policy", title_fontsize=7, loc="lower right")
    fig.suptitle(f"{c.model}: task metric against kept pairs, cycles and energy on {c.config} "
                 f"(band: within {evaluation.TOLERANCE['accuracy'] * 100:g} points / "
                 f"{evaluation.TOLERANCE['spearman']:g} Spearman of float attention)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
