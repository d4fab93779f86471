"""The HTML report of ``tvmc run --report``: one self-contained page (charts embedded as PNG) with the
package and its machine, the figures of one inference against their lower bounds, each offloaded call
(its selection policy and rounds, machine, schedule, cycles against its bound and what binds it, per-unit busy time),
cycle / energy / DRAM breakdowns, kept ratio per layer and head, and accuracy against a reference run
when one is given.

Byte counts are binary, as on the command line (``tvmc run --profile``): KiB = 1,024 bytes, MiB =
1,048,576 bytes. The chart builders (:func:`cycles_chart`, :func:`energy_chart`, :func:`dram_chart`,
:func:`kept_chart`) return matplotlib figures, so their layout can be checked before they are embedded.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass, fields

import numpy as np

from ..isa.config import HardwareConfig, load_config
from ..isa.errors import ConfigError
from ..isa.numerics import POLICIES
from ..schedules.bounds import call_bound_from_stats, total_bound
from ..schedules.schedule import Schedule
from .target import selection_text

KIB, MIB = 1 << 10, 1 << 20
#: the summary's row naming what the calls select by
POLICY_LABEL = (f"selection policy ({', '.join(POLICIES[:-1])} or {POLICIES[-1]}; its filter rounds: Q bits x K "
                f"bits, threshold rule and value)")

#: the machine's four units, by the label the simulator's statistics use (runtime_sim/machine.py)
UNIT_ROLES = {
    "load": "DMA from DRAM into the on-chip buffers (Q, K bit-planes, the kept K/V rows, bias, parameters)",
    "filter": "the Filtering Unit (low-bit Q.K scores, per-row threshold, selector)",
    "attend": "the Attention Unit (INT16 Q.K, scale and bias, softmax, P.V, normalisation)",
    "store": "DMA of the output tiles back to DRAM",
}
#: what a lower bound's ``binds`` names (schedules/bounds.py)
BINDS_MEANING = {
    "filter": "the Filtering Unit's work at its peak rate",
    "attention": "the Attention Unit's work at its peak rate",
    "dram": "the DRAM traffic at full bandwidth",
}
#: memory-map tensors (schedules/emit.py plan_memory) as a reader names them
TENSOR_NAMES = {"q": "Q", "kv": "K and V rows", "kplanes": "K bit-planes", "bias": "bias / mask",
                "param": "per-head parameters", "out": "output"}


def kib(nbytes: float) -> str:
    """Bytes as KiB with one decimal, the figure ``tvmc run --profile`` prints in its DRAM KiB column."""
    return f"{nbytes / KIB:.1f}"


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.2f}"


def run_config(manifest: dict) -> HardwareConfig | None:
    """The hardware config a package was compiled for, from its manifest (None when it cannot be rebuilt
    here: a user's config file, without ``HardwareConfig.from_dict``)."""
    meta = manifest.get("config", {})
    from_dict = getattr(HardwareConfig, "from_dict", None)
    try:
        cfg = from_dict(meta["values"]) if from_dict is not None and "values" in meta else load_config(meta["name"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
    return cfg if cfg.fingerprint.hex() == meta.get("fingerprint") else None


def call_bounds(result) -> list:
    """Each call's lower bound (``energon_tvm.schedules.bounds``, count form: a run's statistics keep counts,
    not masks), None for a call without machine figures or whose config is unknown here."""
    cfg = run_config(result.manifest)
    return [call_bound_from_stats(c.workload, cfg, c.stats)
            if cfg is not None and "cycles" in c.stats and c.stats.get("config") == cfg.name else None
            for c in result.calls]


def bound_total(bounds: list):
    """The bound of the whole inference (None unless every call has one)."""
    return total_bound(bounds) if bounds and all(b is not None for b in bounds) else None


# -- what each call was compiled with ----------------------------------------------------------------
def policy_text(params) -> str:
    """A call's selection as the target string writes it: the policy and its rounds, ``mpmrf (Q4xK2
    alpha=0, Q4xK4 alpha=-0.25)``, ``topk (Q4xK4 fraction=0.25)``, ``dense (no filter round)``."""
    return selection_text(params)


def schedule_text(entry: dict | None) -> str:
    """A manifest call's schedule, every knob named, and where it came from."""
    if not entry:
        return "n/a (not in the manifest)"
    knobs = entry.get("schedule", {})
    known = [f.name for f in fields(Schedule)]  # the schedule's own order; knobs it does not know go last
    order = sorted(knobs, key=lambda k: (known.index(k) if k in known else len(known), k))
    return ", ".join(f"{k}={knobs[k]}" for k in order) + f" ({schedule_origin(entry)})"


def schedule_origin(entry: dict) -> str:
    """Where a manifest call's schedule came from: ``heuristic, ranked by edp`` or ``tuning records,
    record 0123456789ab, tuned for cycles`` (packages older than the objective name none)."""
    source = entry.get("schedule_source", "?")
    if entry.get("schedule_record"):
        source += f", record {entry['schedule_record']}"
    if entry.get("schedule_objective"):
        source += f", {'tuned for' if entry.get('schedule_record') else 'ranked by'} {entry['schedule_objective']}"
    return source


def kept_text(ratios) -> str:
    """Kept ratio after each round, as ``tvmc run --profile`` prints it: ``0.473 / 0.264``."""
    return " / ".join(f"{r:.3f}" for r in ratios) or "dense"


@dataclass(frozen=True)
class CallRow:
    """One offloaded call as the report shows it: the record, its bound (or None), its manifest entry."""

    index: int
    record: object
    bound: object
    entry: dict | None

    @property
    def stats(self):
        return self.record.stats

    @property
    def simulated(self) -> bool:
        return "cycles" in self.stats

    @property
    def dram_bytes(self) -> int:
        d = self.stats["dram_bytes"]
        return d["read_total"] + d["write_total"]


def call_rows(result, bounds) -> list[CallRow]:
    by_site = {e["site"]: e for e in result.manifest.get("calls", [])}
    return [CallRow(i, c, b, by_site.get(c.site)) for i, (c, b) in enumerate(zip(result.calls, bounds))]


# -- charts ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cycles_chart(rows: list[CallRow]):
    """Busy cycles per unit (grouped bars), each call's simulated cycles and its lower bound (horizontal
    marks across the call's group); the legend sits outside the axes, right of them."""
    plt = _pyplot()
    rows = [r for r in rows if r.simulated]
    units = list(rows[0].stats["units"])
    n = len(rows)
    fig, ax = plt.subplots(figsize=(min(16, 5 + 0.6 * n), 3.2))
    x = np.arange(n)
    width = 0.8 / len(units)
    for j, u in enumerate(units):
        busy = [r.stats["units"][u]["busy"] for r in rows]
        ax.bar(x - 0.4 + (j + 0.5) * width, busy, width, label=f"{u.upper()} busy")
    ax.hlines([r.stats["cycles"] for r in rows], x - 0.45, x + 0.45, colors="k", linewidth=2,
              label="call cycles (simulated)")
    marked = [(i, r.bound.cycles) for i, r in zip(x, rows) if r.bound is not None]
    if marked:
        at, cycles = zip(*marked)
        ax.hlines(cycles, np.array(at) - 0.45, np.array(at) + 0.45, colors="tab:red", linestyles="dashed",
                  linewidth=2, label="lower bound")
    ax.set_xticks(x, [f"{r.index}\n{r.record.site}" for r in rows], fontsize=7 if n > 12 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("offloaded call (# and site)")
    ax.set_ylabel("cycles")
    ax.set_title("Cycles per call and busy cycles per unit")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def _energy_label(key: str) -> str:
    if key.startswith("sram_"):
        return f"{key[5:]} buffer (SRAM)"
    return {"filter_unit": "Filtering Unit", "attention_unit": "Attention Unit", "dram": "DRAM",
            "leakage": "leakage"}.get(key, key)


def _hbar(title: str, xlabel: str, items: list[tuple[str, float]], fmt: str, color: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * max(len(items), 1)))
    bars = ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color=color)
    ax.bar_label(bars, fmt=fmt, padding=3, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    return fig


def energy_components(stats) -> list[tuple[str, float]]:
    """Energy by component summed over the simulated statistics ``stats`` (each with an ``energy_pj``
    split; a record without one, as on the reference backend, adds nothing), µJ, largest first;
    components that cost nothing are left out."""
    energy = defaultdict(float)
    for s in stats:
        for k, v in (s.get("energy_pj") or {}).items():
            if k != "total":
                energy[_energy_label(k)] += v / 1e6
    return sorted(((k, v) for k, v in energy.items() if v > 0), key=lambda kv: -kv[1])


def energy_chart(rows: list[CallRow]):
    """Energy of one inference by component, µJ, largest first."""
    items = energy_components(r.stats for r in rows if r.simulated)
    return _hbar("Energy per inference by component", "energy (µJ)", items, "%.2f", "tab:blue")


def dram_chart(rows: list[CallRow]):
    """DRAM bytes of one inference by memory-map tensor and direction, KiB, largest first."""
    dram = defaultdict(float)
    for r in rows:
        if r.simulated:
            for direction in ("read", "write"):
                for k, v in r.stats["dram_bytes"][direction].items():
                    dram[f"{TENSOR_NAMES.get(k, k)} ({direction})"] += v / KIB
    items = sorted(dram.items(), key=lambda kv: -kv[1])
    return _hbar("DRAM traffic per inference by tensor", "DRAM traffic (KiB, 1 KiB = 1,024 bytes)", items,
                 "%.1f", "tab:orange")


def kept_chart(rows: list[CallRow]):
    """Kept ratio after the last filter round per call and head; None when a call has no rounds."""
    per_call = [r.stats.get("kept_ratio_by_head", []) for r in rows]
    if not per_call or not all(per_call):
        return None
    plt = _pyplot()
    grid = np.array([h[-1] for h in per_call], float)
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.45 * grid.shape[1]), 1.2 + 0.3 * grid.shape[0]))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(grid.max(), 1e-9), aspect="auto")
    ax.set_xlabel("head (batch-major: b x H + h)")
    ax.set_ylabel("call (# and site)")
    ax.set_yticks(np.arange(len(rows)), [f"{r.index} {r.record.site}" for r in rows], fontsize=7)
    ax.set_title("Kept ratio after the last filter round, per head")
    fig.colorbar(im, ax=ax, label="kept pairs / candidate pairs")
    return fig


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _charts(rows: list[CallRow]) -> list[tuple[str, str]]:
    """(embedded image, caption) per chart."""
    simulated = [r for r in rows if r.simulated]
    if not simulated:
        return []
    out = [(_png(cycles_chart(simulated), "cycles per call"),
            "Per call: busy cycles of each unit (bars), the call's simulated cycles (black) and its lower bound "
            "(red, dashed). The units run concurrently, so a call takes at least its busiest unit's cycles, "
            "not their sum; the gap between black and red is the most a better schedule could still gain."),
           (_png(energy_chart(simulated), "energy by component"),
            "Energy of one inference (all offloaded calls) by component, in µJ: compute in each unit, on-chip "
            "SRAM accesses per buffer, DRAM transfers, and leakage over the run's time."),
           (_png(dram_chart(simulated), "DRAM traffic by tensor"),
            "DRAM bytes of one inference (all offloaded calls) by tensor of the memory map, reads and writes, "
            "in KiB.")]
    kept = kept_chart(simulated)
    if kept is not None:
        out.append((_png(kept, "kept ratio per call and head"),
                    "Fraction of each head's candidate query-key pairs that survive the last filter round and "
                    "reach the Attention Unit (colour scale from 0 to the largest value shown)."))
    return out


# -- tables ------------------------------------------------------------------------------------------
def _table(headers, rows, caption: str = "", cls: str = "") -> str:
    head = "".join(f'<th scope="col">{html.escape(str(h))}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _policy(rows: list[CallRow]) -> str:
    texts = {policy_text(r.record.workload.params) for r in rows}
    if len(texts) == 1:
        return f"{texts.pop()}, every call"
    return "differs per call (see the table of offloaded calls)" if texts else "n/a (no offloaded call)"


def _no_machine(rows: list[CallRow]) -> str | None:
    """Why a run has no machine figures (None when it has them)."""
    if not rows:
        return "n/a (no offloaded call)"
    if not any(r.simulated for r in rows):
        return f"n/a (the calls ran on the {rows[0].stats.get('executor', '?')} backend: no machine figures)"
    return None


def _summary(result, rows: list[CallRow], total) -> str:
    m = result.manifest
    t = result.totals()
    cfg = m.get("config", {})
    clock = cfg.get("values", {}).get("clock_ghz")
    items = [
        ["model", f"{m['model']['path']} ({m['model']['format']}, sha256 {(m['model'].get('sha256') or '?')[:12]})"],
        ["target", m["target"]],
        ["hardware config", f"{cfg.get('name', '?')} (fingerprint {cfg.get('fingerprint', '?')}"
                            + (f", clock {clock:g} GHz)" if clock else ")")],
        [POLICY_LABEL, _policy(rows)],
        ["inputs", ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in m["inputs"])],
        ["outputs", ", ".join(f"{o['name']} {o['dtype']}{o['shape']}" for o in m["outputs"])],
        ["attention sites", f"{_sites_found(m)} found, {len(m['calls'])} offloaded" if m.get("offload", True)
         else f"{_sites_found(m)} found, none offloaded: the package was compiled for the host only"],
    ]
    missing = _no_machine(rows)
    if missing:
        items += [[k, missing] for k in ("simulated cycles per inference", "lower bound per inference",
                                         "DRAM traffic per inference", "energy per inference")]
    else:
        micros = sum(r.stats["time_us"] for r in rows if r.simulated)
        dram = t["dram_bytes"]
        items.append(["simulated cycles per inference", f"{t['cycles']:,} cycles ({micros:,.1f} µs)"])
        if total is None:
            items.append(["lower bound per inference", "n/a (the package's config is not known here)"])
        else:
            items += [
                ["lower bound per inference", f"{total.cycles:,} cycles, the calls' bounds added; most of it set "
                                              f"by {total.binds} ({BINDS_MEANING.get(total.binds, total.binds)})"],
                ["simulated / lower bound", f"{total.ratio(t['cycles']):.2f}x"],
            ]
        items.append(["DRAM traffic per inference", f"{kib(dram)} KiB ({mib(dram)} MiB)"])
        if total is not None and total.tiling_min_dram_bytes:
            items.append(["DRAM against its minimum",
                          f"{dram / total.tiling_min_dram_bytes:.2f}x the tiling minimum of "
                          f"{kib(total.tiling_min_dram_bytes)} KiB (compulsory traffic "
                          f"{kib(total.compulsory_dram_bytes)} KiB)"])
        items.append(["energy per inference", f"{t['energy_pj'] / 1e6:.3f} µJ"])
        if total is not None and total.energy_pj:
            items.append(["energy against its bound",
                          f"{total.energy_ratio(t['energy_pj']):.2f}x the least energy any schedule could take "
                          f"({total.energy_pj / 1e6:.3f} µJ: every action once, the tiling minimum's DRAM "
                          f"bytes, each buffered byte written and read once)"])
    items += [
        ["kept ratio per round (1 / 2 / ...; kept pairs / candidate pairs, all calls)",
         kept_text(t["kept_ratio"]) if rows else "n/a (no offloaded call)"],
        ["host wall time per run (model on the host, attention simulated; one figure per measurement)",
         ", ".join(f"{s * 1e3:,.1f} ms" for s in result.wall_seconds) or "n/a"],
    ]
    return _table(["quantity", "value"], items)


def _compiled_table(rows: list[CallRow]) -> str:
    body = []
    for r in rows:
        w = r.record.workload
        body.append([r.index, r.record.site, f"{w.batch}x{w.heads}x{w.seq_q}x{w.seq_k}x{w.head_dim}", w.mask_kind,
                     policy_text(w.params), r.stats.get("config", "n/a (not simulated)"), schedule_text(r.entry)])
    return _table(["#", "site", "workload BxHxSqxSkxD", "mask", "selection policy", "hardware config",
                   "schedule (source)"], body, "What each call ran: its workload, policy, machine and schedule")


def _figures_table(rows: list[CallRow], result, total) -> str:
    units = next((list(r.stats["units"]) for r in rows if r.simulated), [])
    body = []
    for r in rows:
        s, b = r.stats, r.bound
        kept = kept_text(s.get("kept_ratio", []))
        if not r.simulated:
            body.append([r.index, r.record.site] + ["n/a"] * 7 + [kept] + ["n/a"] * len(units))
            continue
        body.append([r.index, r.record.site, f"{s['cycles']:,}", f"{s['time_us']:,.2f}",
                     "n/a" if b is None else f"{b.cycles:,}", "n/a" if b is None else f"{b.ratio(s['cycles']):.2f}x",
                     "n/a" if b is None else b.binds, f"{s['energy_pj']['total'] / 1e6:.3f}", kib(r.dram_bytes), kept]
                    + [f"{s['units'][u]['utilization']:.0%}" for u in units])
    t = result.totals()
    sim = [r for r in rows if r.simulated]
    if len(rows) > 1 and sim:
        body.append(["all", f"{len(rows)} calls", f"{t['cycles']:,}", f"{sum(r.stats['time_us'] for r in sim):,.2f}",
                     "n/a" if total is None else f"{total.cycles:,}",
                     "n/a" if total is None else f"{total.ratio(t['cycles']):.2f}x",
                     "n/a" if total is None else total.binds, f"{t['energy_pj'] / 1e6:.3f}", kib(t["dram_bytes"]),
                     kept_text(t["kept_ratio"])]
                    + [f"{sum(r.stats['units'][u]['busy'] for r in sim) / t['cycles']:.0%}" if t["cycles"] else "n/a"
                       for u in units])
    return _table(["#", "site", "cycles", "time (µs)", "lower bound (cycles)", "x bound (cycles / bound)", "binds",
                   "energy (µJ)", "DRAM (KiB)", "kept ratio per round (1 / 2 / ...)"]
                  + [f"{u.upper()} busy (% of cycles)" for u in units], body,
                  "What each call did on the simulated machine", "figures")


def _notes(rows: list[CallRow], total) -> str:
    units = next((list(r.stats["units"]) for r in rows if r.simulated), [])
    items = [f"<li><b>{html.escape(u.upper())} busy</b>: cycles the unit was executing, over the call's cycles; "
             f"{u.upper()} is {html.escape(UNIT_ROLES.get(u, 'a unit of the machine'))}.</li>" for u in units]
    items += [
        "<li><b>lower bound</b>: the fewest cycles any schedule of the call could take on this machine with the "
        "kept counts of this run: the first DRAM access's latency plus the largest of three unit bounds "
        "(docs/scheduler.md, Lower bounds); <b>x bound</b> is the call's cycles over it. <b>binds</b> names that unit: "
        + "; ".join(f"{html.escape(k)} = {html.escape(v)}" for k, v in BINDS_MEANING.items())
        + ". The bound is computed from counts (kept pairs per round), not from which pairs were kept, so it can "
        "lie below the bound the kept masks themselves would give.</li>",
        "<li><b>kept ratio</b>: query-key pairs left after each filter round (round 1 / round 2 / ...) over "
        "the candidate pairs (the pairs the mask allows); <i>dense</i> when the policy has no filter round.</li>",
        "<li><b>KiB</b> = 1,024 bytes, <b>MiB</b> = 1,048,576 bytes, as on the command line "
        "(<code>tvmc run --profile</code>); energy in µJ; time at the config's clock.</li>",
    ]
    if total is None and rows:
        items.append("<li>Bounds are n/a: the package's hardware config cannot be rebuilt here.</li>")
    return "<ul class=\"notes\">" + "".join(items) + "</ul>"


def _sites_found(manifest: dict):
    """The attention sites the compile found (packages of earlier versions say only what they list)."""
    found = manifest.get("attention_sites")
    return len(manifest["offloads"]) if found is None else found


def _thresholds(result) -> str:
    """The per layer x head table of thresholds (:func:`~energon_tvm.tvmc.inspect.threshold_rows`), with
    the kept ratio per head measured in this run (the simulator's per-call ``kept_ratio_by_head``; n/a on
    the reference backend, which records none)."""
    from .inspect import threshold_rows

    m = result.manifest
    if not m.get("calls"):
        return ""
    kept = {c.site: c.stats.machine.get("kept_ratio_by_head") for c in result.calls}
    header, rows = threshold_rows(m, kept)
    header = [h.replace("kept r", "kept (this run) r") for h in header]
    thr = m.get("thresholds")
    caption = (f"from {thr['file']} (rule {thr['rule']}, calibrated to a mean kept mass of {thr['budget']:g} per head)"
               if thr else "the target's thresholds, one set for every head of a layer (kept ratio: the heads' mean)")
    return "<h2>Thresholds per layer and head</h2>" + _table(header, rows, caption)


def html_report(result, accuracy: dict | None = None) -> str:
    m = result.manifest
    bounds = call_bounds(result)
    total = bound_total(bounds)
    rows = call_rows(result, bounds)
    if rows:
        calls = _compiled_table(rows) + _figures_table(rows, result, total) + _notes(rows, total)
    else:
        calls = "<p>No call was offloaded: the whole model ran on the host.</p>"
    if m["offloads"]:
        sites = _table(["site", "offloaded", "pattern", "reason"],
                       [[r["site"], "yes" if r["offloaded"] else "no", r.get("pattern") or "-", r["reason"]]
                        for r in m["offloads"]])
    elif m.get("offload", True):
        sites = "<p>No attention site was found in the model.</p>"
    else:
        sites = (f"<p>{_sites_found(m)} found; none offloaded: the package was compiled for the host only "
                 f"(--target llvm), so the manifest lists no site.</p>")
    acc = ""
    if accuracy:
        acc = "<h2>Accuracy against the reference run</h2>" + _table(
            ["output", "cosine similarity", "max abs error (output's units)"],
            [[k, f"{v['cosine']:.6f}", f"{v['max_abs_error']:.3g}"] for k, v in accuracy.items()])
    charts = "".join(f"<figure>{img}<figcaption>{html.escape(cap)}</figcaption></figure>"
                     for img, cap in _charts(rows))
    breakdowns = f"<h2>Breakdowns</h2>{charts}" if charts else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Energon run: {html.escape(m['model']['path'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }}
caption {{ text-align: left; font-weight: 600; padding: 0.3em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
table.figures td {{ white-space: nowrap; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 1.5em 0; }}
figure img {{ max-width: 100%; height: auto; }}
figcaption {{ font-size: 0.9em; color: #444; max-width: 60em; }}
ul.notes {{ font-size: 0.9em; color: #333; }}
</style></head><body>
<h1>Energon simulated run: {html.escape(m['model']['path'])}</h1>
<h2>Summary</h2>{_summary(result, rows, total)}
{acc}
<h2>Offloaded calls</h2>{calls}
{_thresholds(result)}
{breakdowns}
<h2>Attention sites</h2>{sites}
<p>energon-tvm {html.escape(m['versions']['energon_tvm'])}, TVM {html.escape(m['versions']['tvm'])}, config
{html.escape(m['config']['name'])} ({html.escape(m['config']['fingerprint'])}).</p>
</body></html>
"""
