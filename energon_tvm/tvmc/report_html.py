"""The HTML report of ``tvmc run --report``: one self-contained page (charts embedded as PNG) with the
model summary, the offloaded calls (each one's cycles against its lower bound), cycle / energy / DRAM
breakdowns, kept ratio per layer and head, and accuracy against a reference run when one is given."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict

import numpy as np

from ..isa.config import HardwareConfig, load_config
from ..isa.errors import ConfigError
from ..schedules.bounds import call_bound_from_stats, total_bound


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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(calls, bounds) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if not calls:
        return out
    labels = [f"{i}" for i in range(len(calls))]
    units = ["load", "filter", "attend", "store"]
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = np.zeros(len(calls))
    for u in units:
        busy = np.array([c.stats["units"][u]["busy"] for c in calls], float)
        ax.bar(labels, busy, bottom=bottom, label=f"{u} busy")
        bottom += busy
    ax.plot(labels, [c.stats["cycles"] for c in calls], "k.-", label="call cycles")
    marked = [(x, b.cycles) for x, b in zip(labels, bounds) if b is not None]
    if marked:
        ax.plot(*zip(*marked), "rv", linestyle="none", label="lower bound")
    ax.set_xlabel("offloaded call")
    ax.set_ylabel("cycles")
    ax.set_title("Cycles per call (busy cycles per unit, stacked; units overlap in time)")
    ax.legend(fontsize=7, ncol=5)
    out.append(_png(fig))

    energy, dram = defaultdict(float), defaultdict(float)
    for c in calls:
        for k, v in c.stats["energy_pj"].items():
            if k != "total":
                energy[k] += v / 1e6
        for direction in ("read", "write"):
            for k, v in c.stats["dram_bytes"][direction].items():
                dram[f"{direction} {k}"] += v / 1e6
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    items = sorted(((k, v) for k, v in energy.items() if v > 0), key=lambda kv: -kv[1])
    axes[0].barh([k for k, _ in items], [v for _, v in items])
    axes[0].set_xlabel("uJ")
    axes[0].set_title("Energy by component")
    items = sorted(dram.items(), key=lambda kv: -kv[1])
    axes[1].barh([k for k, _ in items], [v for _, v in items], color="tab:orange")
    axes[1].set_xlabel("MB")
    axes[1].set_title("DRAM traffic by tensor")
    out.append(_png(fig))

    rows = [c.stats.get("kept_ratio_by_head", []) for c in calls]
    if rows and all(rows):
        grid = np.array([r[-1] for r in rows], float)
        fig, ax = plt.subplots(figsize=(min(12, 1 + 0.5 * grid.shape[1]), 1 + 0.35 * grid.shape[0]))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(grid.max(), 1e-9), aspect="auto")
        ax.set_xlabel("head slot (batch-major)")
        ax.set_ylabel("call (layer)")
        ax.set_title("Kept ratio after the last filter round")
        fig.colorbar(im, ax=ax)
        out.append(_png(fig))
    return out


def html_report(result, accuracy: dict | None = None) -> str:
    m = result.manifest
    t = result.totals()
    calls = result.calls
    bounds = call_bounds(result)
    total = bound_total(bounds)
    summary = _table(["", ""], [
        ["model", f"{m['model']['path']} ({m['model']['format']}, sha256 {m['model']['sha256'][:12]})"],
        ["target", m["target"]],
        ["inputs", ", ".join(f"{i['name']}{i['shape']}" for i in m["inputs"])],
        ["outputs", ", ".join(f"{o['name']}{o['shape']}" for o in m["outputs"])],
        ["attention sites", f"{len(m['offloads'])} found, {len(m['calls'])} offloaded"],
        ["simulated cycles per inference",
         f"{t['cycles']:,} ({t['cycles'] / (m['config']['values']['clock_ghz'] * 1e3):.1f} us)"],
        ["cycles against the lower bound", "n/a (config not known here)" if total is None else
         f"{total.format(t['cycles'], t['dram_bytes'])} ({total.cycles:,} cycles, count form)"],
        ["energy per inference", f"{t['energy_pj'] / 1e6:.3f} uJ"],
        ["DRAM traffic per inference", f"{t['dram_bytes'] / 1e6:.3f} MB"],
        ["kept ratio per round", " / ".join(f"{r:.3f}" for r in t["kept_ratio"]) or "dense"],
        ["host wall time", ", ".join(f"{s * 1e3:.0f} ms" for s in result.wall_seconds)],
    ])
    rows = []
    for i, (c, b) in enumerate(zip(calls, bounds)):
        w = c.workload
        s = c.stats
        rows.append([i, c.site, f"{w.batch}x{w.heads}x{w.seq_q}x{w.seq_k}x{w.head_dim} {w.mask_kind}",
                     f"{s['cycles']:,}", "n/a" if b is None else f"{b.cycles:,}",
                     "n/a" if b is None else f"{b.ratio(s['cycles']):.2f}x ({b.binds})",
                     f"{s['energy_pj']['total'] / 1e6:.3f}",
                     f"{(s['dram_bytes']['read_total'] + s['dram_bytes']['write_total']) / 1e3:.1f}",
                     " / ".join(f"{r:.3f}" for r in s.get("kept_ratio", [])) or "dense",
                     " ".join(f"{u[0]}{s['units'][u]['utilization']:.0%}" for u in s["units"])])
    call_table = _table(["#", "site", "workload (BxHxSqxSkxD)", "cycles", "bound cycles", "x bound (binds)",
                         "energy uJ", "DRAM KB", "kept ratio", "utilization l/f/a/s"], rows)
    sites = _table(["site", "offloaded", "reason"], [[r["site"], "yes" if r["offloaded"] else "no", r["reason"]]
                                                     for r in m["offloads"]])
    acc = ""
    if accuracy:
        acc = "<h2>Accuracy against the reference run</h2>" + _table(
            ["output", "cosine similarity", "max abs error"],
            [[k, f"{v['cosine']:.6f}", f"{v['max_abs_error']:.3g}"] for k, v in accuracy.items()])
    charts = "".join(f"<figure>{c}</figure>" for c in _charts(calls, bounds))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Energon run: {html.escape(m['model']['path'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 1em 0; }}
</style></head><body>
<h1>Energon simulated run: {html.escape(m['model']['path'])}</h1>
<h2>Summary</h2>{summary}
{acc}
<h2>Offloaded calls</h2>{call_table}
<h2>Breakdowns</h2>{charts}
<h2>Attention sites</h2>{sites}
<p>energon-tvm {html.escape(m['versions']['energon_tvm'])}, TVM {html.escape(m['versions']['tvm'])}, config
{html.escape(m['config']['name'])} ({html.escape(m['config']['fingerprint'])}).</p>
</body></html>
"""
