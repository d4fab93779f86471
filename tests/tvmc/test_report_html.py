"""The HTML run report's pieces, on a real run of the small two-site package: units (binary bytes, as
the command line prints them), headers, the per-call policy / config / schedule, figures against their
lower bounds, and chart layout (the cycles chart's legend clear of its bars) checked on the matplotlib
figures themselves."""

import re
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
from energon_tvm.isa.instructions import Unit
from energon_tvm.schedules.bounds import call_bound_from_stats

from energon_tvm.tvmc import report_html as rh
from energon_tvm.tvmc import run_package
from energon_tvm.tvmc.commands.run import _profile_lines
from energon_tvm.tvmc.runner import PackageSession, RunResult, make_inputs


class _Tables(HTMLParser):
    """Every table of a page: caption, header cells, body rows (cell texts)."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell, self._part = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "headers": [], "rows": []})
        elif tag in ("thead", "tbody", "caption"):
            self._part = tag
        elif tag == "tr" and self._part == "tbody":
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell).strip()
            t = self.tables[-1]
            (t["headers"] if self._part == "thead" else t["rows"][-1]).append(text)
            self._cell = None
        elif tag == "caption":
            self._part = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._part == "caption":
            self.tables[-1]["caption"] += data


def tables(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def table_with(page: str, header: str) -> dict:
    return next(t for t in tables(page) if header in t["headers"])


def column(table: dict, header: str) -> list[str]:
    i = table["headers"].index(header)
    return [row[i] for row in table["rows"]]


@pytest.fixture(scope="module")
def result(package, model_files):
    return run_package(package, inputs=model_files / "inputs.npz")


@pytest.fixture(scope="module")
def page(result):
    return rh.html_report(result)


def test_every_table_has_a_header_and_every_figure_column_a_unit(page):
    found = tables(page)
    assert len(found) == 5  # summary, what each call ran, what each call did, thresholds per layer, sites
    for t in found:
        assert t["headers"] and all(t["headers"]), t["headers"]
        assert all(len(row) == len(t["headers"]) for row in t["rows"]), t
    figures = table_with(page, "x bound (cycles / bound)")
    assert figures["headers"] == [
        "#", "site", "cycles", "time (µs)", "lower bound (cycles)", "x bound (cycles / bound)", "binds", "energy (µJ)",
        "DRAM (KiB)", "kept ratio per round (1 / 2 / ...)"] + [f"{u.label.upper()} busy (% of cycles)" for u in Unit]


def test_units_are_the_machines_own(page):
    """The utilisation columns and their notes name the simulator's four units, each explained."""
    assert set(rh.UNIT_ROLES) == {u.label for u in Unit}
    for u in Unit:
        assert f"<b>{u.label.upper()} busy</b>" in page
    assert "l/f/a/s" not in page


def test_bytes_are_binary_and_match_the_command_line(result, page):
    figures = table_with(page, "DRAM (KiB)")
    dram = column(figures, "DRAM (KiB)")
    expected = [(c.stats["dram_bytes"]["read_total"] + c.stats["dram_bytes"]["write_total"]) / 1024
                for c in result.calls]
    assert dram[:-1] == [f"{b:.1f}" for b in expected]
    assert dram[-1] == f"{sum(expected):.1f}"  # the totals row
    # the same figures tvmc run --profile prints in its DRAM column
    profile = [line.split() for line in _profile_lines(result)[1:1 + len(result.calls)]]
    assert [row[3] for row in profile] == dram[:-1]
    summary = table_with(page, "quantity")
    value = dict(summary["rows"])["DRAM traffic per inference"]
    total = sum(expected) * 1024
    assert value == f"{total / 1024:.1f} KiB ({total / 2**20:.2f} MiB)"
    assert not re.search(r"\b[kKMG]B\b", page), "a decimal byte unit (KB / MB / GB) is left in the report"


def test_profile_splits_the_energy_by_component(result):
    """--profile's energy line: every component once, largest first, summing to the totals row; its
    DRAM share is the run's DRAM bytes at the config's pJ per byte."""
    from energon_tvm.isa.config import load_config

    lines = _profile_lines(result)
    head = "energy by component, uJ: "
    line = next(x for x in lines if x.startswith(head))
    parts = [re.fullmatch(r"(.+) ([\d.]+) \((\d+)%\)", p).groups() for p in line[len(head):].split(", ")]
    labels, values = [p[0] for p in parts], [float(p[1]) for p in parts]
    assert len(set(labels)) == len(labels) and {"DRAM", "Attention Unit", "Filtering Unit"} <= set(labels)
    assert values == sorted(values, reverse=True)
    total = float(next(x for x in lines if x.lstrip().startswith("all")).split()[5])
    assert abs(sum(values) - total) <= 0.0005 * (len(values) + 1)
    assert abs(sum(int(p[2]) for p in parts) - 100) <= len(parts) / 2
    cfg = load_config(result.calls[0].stats["config"])
    dram = sum(c.stats["dram_bytes"]["read_total"] + c.stats["dram_bytes"]["write_total"] for c in result.calls)
    assert values[labels.index("DRAM")] == pytest.approx(dram * cfg.energy.dram_per_byte / 1e6, abs=0.0005)


def test_each_call_shows_its_policy_config_schedule_and_bound(result, page):
    ran = table_with(page, "schedule (source)")
    did = table_with(page, "x bound (cycles / bound)")
    entries = {e["site"]: e for e in result.manifest["calls"]}
    cfg = rh.run_config(result.manifest)
    assert cfg is not None
    for i, call in enumerate(result.calls):
        row = dict(zip(ran["headers"], ran["rows"][i]))
        w = call.workload
        assert row["site"] == call.site
        assert row["workload BxHxSqxSkxD"] == f"{w.batch}x{w.heads}x{w.seq_q}x{w.seq_k}x{w.head_dim}"
        assert row["mask"] == "padding"
        assert row["selection policy"] == f"{w.params.policy} ({w.params.describe()})"
        assert row["selection policy"] == "mpmrf (Q4xK2 gap=8, Q4xK4 gap=4)"  # the default policy
        assert row["hardware config"] == "edge" == call.stats["config"]
        knobs = entries[call.site]["schedule"]
        assert row["schedule (source)"].endswith("(heuristic, ranked by edp)")
        for k, v in knobs.items():
            assert f"{k}={v}" in row["schedule (source)"]
        assert row["schedule (source)"].startswith(f"q_tile={knobs['q_tile']}, k_chunk={knobs['k_chunk']}")

        fig = dict(zip(did["headers"], did["rows"][i]))
        s = call.stats
        bound = call_bound_from_stats(w, cfg, s)
        assert fig["cycles"] == f"{s['cycles']:,}"
        assert fig["lower bound (cycles)"] == f"{bound.cycles:,}"
        assert fig["x bound (cycles / bound)"] == f"{s['cycles'] / bound.cycles:.2f}x"
        assert fig["binds"] == bound.binds
        assert fig["energy (µJ)"] == f"{s['energy_pj']['total'] / 1e6:.3f}"
        assert fig["kept ratio per round (1 / 2 / ...)"] == " / ".join(f"{r:.3f}" for r in s["kept_ratio"])
        for u in Unit:
            busy = s["units"][u.label]["busy"] / s["cycles"]
            assert fig[f"{u.label.upper()} busy (% of cycles)"] == f"{busy:.0%}"
    totals = dict(zip(did["headers"], did["rows"][-1]))
    cycles = sum(c.stats["cycles"] for c in result.calls)
    bound_cycles = sum(call_bound_from_stats(c.workload, cfg, c.stats).cycles for c in result.calls)
    assert totals["#"] == "all" and totals["cycles"] == f"{cycles:,}"
    assert totals["lower bound (cycles)"] == f"{bound_cycles:,}"
    assert totals["x bound (cycles / bound)"] == f"{cycles / bound_cycles:.2f}x"


def test_summary_has_the_bound_beside_the_cycles(result, page):
    summary = dict(table_with(page, "quantity")["rows"])
    cycles = sum(c.stats["cycles"] for c in result.calls)
    micros = sum(c.stats["time_us"] for c in result.calls)
    cfg = rh.run_config(result.manifest)
    bounds = [call_bound_from_stats(c.workload, cfg, c.stats) for c in result.calls]
    assert summary["simulated cycles per inference"] == f"{cycles:,} cycles ({micros:,.1f} µs)"
    assert summary["lower bound per inference"].startswith(f"{sum(b.cycles for b in bounds):,} cycles")
    assert summary["simulated / lower bound"] == f"{cycles / sum(b.cycles for b in bounds):.2f}x"
    assert summary[rh.POLICY_LABEL] == "mpmrf (Q4xK2 gap=8, Q4xK4 gap=4), every call"
    energy, least = sum(c.stats["energy_pj"]["total"] for c in result.calls), sum(b.energy_pj for b in bounds)
    assert energy >= least > 0
    assert summary["energy against its bound"].startswith(f"{energy / least:.2f}x the least energy any schedule")


def test_profile_puts_the_energy_beside_its_bound(result):
    lines = _profile_lines(result)
    line = next(x for x in lines if x.startswith("energy ") and "its lower bound" in x)
    cfg = rh.run_config(result.manifest)
    least = sum(call_bound_from_stats(c.workload, cfg, c.stats).energy_pj for c in result.calls)
    energy = sum(c.stats["energy_pj"]["total"] for c in result.calls)
    assert line == (f"energy {energy / 1e6:.3f} uJ, {energy / least:.2f}x its lower bound of "
                    f"{least / 1e6:.3f} uJ")


def _rows(result):
    return rh.call_rows(result, rh.call_bounds(result))


def _overlap(a, b) -> bool:
    """Whether two display-space boxes share area (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("calls", [2, 24])
def test_the_cycles_legend_is_clear_of_the_bars(result, calls):
    rows = _rows(result)
    rows = [replace(rows[i % len(rows)], index=i) for i in range(calls)]  # a deeper model: more groups
    fig = rh.cycles_chart(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    marks = [c.get_window_extent(renderer) for c in ax.collections]  # call cycles and bound lines
    assert len(bars) == len(Unit) * calls and len(marks) == 2
    assert not any(_overlap(legend, b) for b in bars + marks)
    assert not _overlap(legend, ax.get_window_extent(renderer))  # outside the axes altogether
    # every bar's height is its unit's busy cycles; the marks are the call's cycles and its bound
    busy = [[r.stats["units"][u.label]["busy"] for r in rows] for u in Unit]
    assert [p.get_height() for p in ax.patches] == [b for unit in busy for b in unit]
    segments = [np.array(c.get_segments())[:, 0, 1] for c in ax.collections]
    assert segments[0].tolist() == [r.stats["cycles"] for r in rows]
    assert segments[1].tolist() == [r.bound.cycles for r in rows]
    rh._pyplot().close(fig)


def test_energy_and_dram_charts_add_up_to_the_run(result):
    rows = _rows(result)
    fig = rh.energy_chart(rows)
    total = sum(c.stats["energy_pj"]["total"] for c in result.calls) / 1e6
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert sum(widths) == pytest.approx(total, rel=1e-12)
    assert widths == sorted(widths)  # drawn bottom-up: the largest on top
    assert fig.axes[0].get_xlabel() == "energy (µJ)"
    rh._pyplot().close(fig)
    fig = rh.dram_chart(rows)
    dram = sum(c.stats["dram_bytes"]["read_total"] + c.stats["dram_bytes"]["write_total"] for c in result.calls)
    assert sum(p.get_width() for p in fig.axes[0].patches) == pytest.approx(dram / 1024, rel=1e-12)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "output (write)" in labels and "Q (read)" in labels
    assert fig.axes[0].get_xlabel().startswith("DRAM traffic (KiB")
    rh._pyplot().close(fig)


def test_kept_chart_shows_the_last_rounds_ratio_per_head(result):
    fig = rh.kept_chart(_rows(result))
    grid = fig.axes[0].get_images()[0].get_array()
    expected = [c.stats["kept_ratio_by_head"][-1] for c in result.calls]
    np.testing.assert_array_equal(np.asarray(grid), np.array(expected))
    w = result.calls[0].workload
    kept = [c.stats["kept_per_round"][-1] / c.stats["candidates"] for c in result.calls]
    # each head has the same candidates (a shared padding mask): the mean over heads is the call's ratio
    assert np.asarray(grid).mean(axis=1) == pytest.approx(kept, rel=1e-12)
    assert np.asarray(grid).shape == (len(result.calls), w.batch * w.heads)
    rh._pyplot().close(fig)


def test_every_chart_has_a_caption(page):
    figures = re.findall(r"<figure>(.*?)</figure>", page, re.S)
    assert len(figures) == 4
    for f in figures:
        assert re.search(r'<img alt="[^"]+" src="data:image/png;base64,', f)
        assert re.search(r"<figcaption>[^<]{40,}</figcaption>", f)


def test_a_run_without_machine_figures_is_reported(package, model_files):
    """The reference backend has kept sets but no cycles: the report says n/a instead of failing."""
    with PackageSession(package) as session:
        feeds = make_inputs(session.manifest, model_files / "inputs.npz")
        outputs, calls = session.run(feeds, backend="reference")
        result = RunResult(session.package, outputs, calls, [0.01])
    page = rh.html_report(result)
    did = table_with(page, "x bound (cycles / bound)")
    assert column(did, "cycles") == ["n/a"] * len(calls)
    assert column(did, "kept ratio per round (1 / 2 / ...)") == [
        " / ".join(f"{r:.3f}" for r in c.stats.kept_ratio) for c in calls]
    assert "<figure>" not in page and "<h2>Breakdowns</h2>" not in page


def test_a_host_only_run_is_reported(model_files, tmp_path):
    from energon_tvm.tvmc import compile_model, write

    write(compile_model(model_files / "model.onnx", target="llvm"), tmp_path / "host.tar")
    result = run_package(tmp_path / "host.tar", inputs=model_files / "inputs.npz")
    assert result.calls == []
    page = rh.html_report(result)
    assert "No call was offloaded" in page and "<figure>" not in page
    assert "2 found; none offloaded: the package was compiled for the host only" in page
    assert len(tables(page)) == 1  # the summary
    summary = dict(table_with(page, "quantity")["rows"])
    assert summary["simulated cycles per inference"] == "n/a (no offloaded call)"
    assert summary["attention sites"] == "2 found, none offloaded: the package was compiled for the host only"
    for t in tables(page):
        assert t["headers"] and all(t["headers"])
