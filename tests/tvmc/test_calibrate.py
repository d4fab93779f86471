"""tvmc calibrate -> thresholds file -> tvmc compile --target-energon-thresholds, on the two-site fixture model.

Oracles: the kept sets the simulator reports per head are recomputed with the numpy MP-MRF reference under
the file's per-head parameters, and the held-out kept mass from float64 softmax probabilities written out
here (not calibration.py's measure)."""

import copy
import json

import numpy as np
import pytest

from energon_tvm.tvmc.main import main

BUDGET = 0.95
TRAIN, HELD = 12, 6


@pytest.fixture(scope="module")
def calibrated(model_files, tmp_path_factory):
    """Calibration and held-out data sets (the fixture's padding mask, inputs scaled so that attention
    is peaked), the thresholds file and the package compiled with it."""
    root = tmp_path_factory.mktemp("calibrate")
    base = np.load(model_files / "inputs.npz")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((TRAIN + HELD,) + base["x"].shape) * 2).astype(np.float32)
    mask = np.repeat(base["mask"][None], TRAIN + HELD, 0)
    np.savez(root / "train.npz", x=x[:TRAIN], mask=mask[:TRAIN])
    np.savez(root / "held.npz", x=x[TRAIN:], mask=mask[TRAIN:])
    np.savez(root / "held0.npz", x=x[TRAIN], mask=mask[TRAIN])
    model = model_files / "model.onnx"
    assert main(["calibrate", str(model), "--calibration", str(root / "train.npz"), "-o", str(root / "thr.json"),
                 "--target-energon-quality", str(BUDGET)]) == 0
    assert main(["compile", str(model), "--target-energon-thresholds", str(root / "thr.json"),
                 "-o", str(root / "cal.tar")]) == 0
    return root, model


def _held_calls(root, backend):
    from energon_tvm.tvmc.runner import PackageSession, read_samples

    with PackageSession(root / "cal.tar") as session:
        data = read_samples(session.manifest, root / "held.npz")
        return [session.run(data.feeds(i), capture=True, backend=backend)[1] for i in range(data.count)]


def test_file_records_per_head_thresholds_and_the_model(calibrated):
    from energon_tvm.tvmc.package import sha256

    root, model = calibrated
    doc = json.loads((root / "thr.json").read_text())
    assert doc["model"] == {"path": "model.onnx", "sha256": sha256(model.read_bytes())}
    assert doc["budget"] == BUDGET and doc["rule"] == "gap" and doc["bits"] == [[4, 2], [4, 4]]
    assert [s["name"] for s in doc["sites"]] == ["lv13", "lv29"] and all(s["heads"] == 2 for s in doc["sites"])
    # the heads got values of their own somewhere: otherwise nothing per head is tested below
    assert any(len(set(v)) > 1 for s in doc["sites"] for v in s["values"])


def test_simulator_keeps_what_the_reference_keeps_with_the_per_head_params(calibrated):
    from energon_tvm.calibration import Calibration
    from energon_tvm.mpmrf import reference_attention

    root, _ = calibrated
    doc = json.loads((root / "thr.json").read_text())
    cal = Calibration.from_dict({k: v for k, v in doc.items() if k not in ("model", "input_shapes")})
    runs = _held_calls(root, "simulator")
    assert len(runs) == HELD and all(len(calls) == 2 for calls in runs)
    for calls in runs:
        for call in calls:
            w = call.workload
            assert w.params == cal.params_for(call.site)  # the package's workload carries the file's per-head values
            x = call.inputs
            ref = reference_attention(w, x["q"], x["k"], x["v"], x["bias"])
            cand = ref.candidates.sum(axis=(0, 2, 3))
            want = [(m.sum(axis=(0, 2, 3)) / cand).tolist() for m in ref.kept]
            assert np.allclose(call.stats.machine["kept_ratio_by_head"], want, rtol=0, atol=1e-12)
            assert list(call.stats.kept_per_round) == [int(m.sum()) for m in ref.kept]
            np.testing.assert_array_equal(call.output, ref.output)


def test_held_out_mass_reaches_the_budget(calibrated):
    root, _ = calibrated
    masses = {}
    for calls in _held_calls(root, "reference"):
        for call in calls:
            from energon_tvm.mpmrf import reference_attention, workload_mask

            x, w = call.inputs, call.workload
            kept = reference_attention(w, x["q"], x["k"], x["v"], x["bias"]).kept[-1]
            logits = np.einsum("bhqd,bhkd->bhqk", x["q"].astype(np.float64), x["k"].astype(np.float64))
            logits = logits * w.effective_scale + np.broadcast_to(workload_mask(w, x["bias"]), logits.shape)
            cand = logits > -1e8
            p = np.exp(np.where(cand, logits, -np.inf) - logits.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            row_mass = (p * kept).sum(axis=-1)  # [B, H, Sq]
            for h in range(w.heads):
                masses.setdefault((call.site, h), []).extend(row_mass[:, h][cand[:, h].any(-1)].tolist())
    mean = {key: float(np.mean(m)) for key, m in masses.items()}
    assert len(mean) == 4
    assert min(mean.values()) >= BUDGET - 0.02, mean
    assert min(mean.values()) < 1.0  # keys were dropped: the budget was not met by keeping everything


def _edit(doc, kind):
    d = copy.deepcopy(doc)
    site = d["sites"][0]
    if kind == "heads":
        site["heads"] = 3
        for key in ("values", "kept_ratio"):
            site[key] = [r + [r[0]] for r in site[key]]
        for key in ("mass_mean", "mass_p10", "rows"):
            site[key] = site[key] + [site[key][0]]
    elif kind == "extra":
        d["sites"][1]["name"] = "lv99"
    elif kind == "missing":
        d["sites"] = d["sites"][:1]
    elif kind == "digest":
        d["model"]["sha256"] = "0" * 64
    elif kind == "malformed":
        site["values"][0][0] = 1000.0
    elif kind == "not_thresholds":
        d = {"format": "energon-package"}
    return d


@pytest.mark.parametrize("kind, args, message", [
    ("not_thresholds", [], "not a thresholds file (format 'energon-package', not 'energon-thresholds')"),
    ("malformed", [], "sites[0].values[0][0] = 1000.0 must be a finite number in [0, 63.9844]"),
    ("digest", [], "calibrated for model model.onnx (sha256 000000000000...), not for model.onnx"),
    ("extra", [], "site 'lv99' is not an attention site of the model (its sites: lv13, lv29)"),
    ("missing", [], "the model's attention site 'lv29' has no thresholds (the file has lv13)"),
    ("heads", [], "site 'lv13' stays on the host with these thresholds (3 head(s) in the file): filter round "
                  "Q4xK2 has 3 per-head threshold values for an attention of 2 heads"),
    (None, ["--target-energon-rounds", "4x4,4x4"], "calibrated for rounds 4x2,4x4; --target-energon-rounds "
                                                   "gives 4x4,4x4"),
    (None, ["--target-energon-gap", "4,2"], "--target-energon-thresholds sets every site's rule and values; "
                                            "drop --target-energon-gap"),
    (None, ["--target-energon-rule", "mpmrf"], "drop --target-energon-rule"),
])
def test_bad_thresholds_are_one_line_errors(calibrated, tmp_path, capsys, kind, args, message):
    root, model = calibrated
    path = root / "thr.json"
    if kind is not None:
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(_edit(json.loads((root / "thr.json").read_text()), kind)))
    capsys.readouterr()
    code = main(["compile", str(model), "--target-energon-thresholds", str(path), "-o", str(tmp_path / "x.tar"),
                 *args])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize("args, message", [
    (["--target-energon-quality", "1.5"], "--target-energon-quality '1.5': must be a number in (0, 1]"),
    (["--target-energon-quality", "0"], "--target-energon-quality '0': must be a number in (0, 1]"),
    (["--target-energon-rounds", "none"], "calibration needs at least one filter round"),
    (["--target-energon-rule", "max"], "--target-energon-rule 'max': one of"),
])
def test_calibrate_refuses_bad_options_before_work(model_files, tmp_path, capsys, args, message):
    code = main(["calibrate", str(model_files / "model.onnx"), "--calibration", str(model_files / "inputs.npz"),
                 "-o", str(tmp_path / "t.json"), *args])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_calibrate_refuses_missing_inputs(model_files, tmp_path, capsys):
    code = main(["calibrate", str(model_files / "model.onnx"), "--calibration", str(tmp_path / "none.npz"),
                 "-o", str(tmp_path / "t.json")])
    assert code == 1 and "--calibration" in capsys.readouterr().err


def test_inspect_prints_the_per_head_table(calibrated, package, capsys):
    root, _ = calibrated
    doc = json.loads((root / "thr.json").read_text())
    capsys.readouterr()
    assert main(["inspect", str(root / "cal.tar"), "--no-code"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  lv")]
    assert len(rows) == 4  # two layers x two heads
    for s in doc["sites"]:
        for h in range(2):
            row = next(r for r in rows if r[:2] == [s["name"], str(h)])
            assert row[2:6] == ["gap", f"{s['values'][0][h]:g}", "gap", f"{s['values'][1][h]:g}"]
            assert float(row[6]) == pytest.approx(s["kept_ratio"][0][h], abs=5e-4)
            assert float(row[-1]) == pytest.approx(s["mass_mean"][h], abs=5e-5)
    assert main(["inspect", str(package), "--no-code"]) == 0  # no thresholds: one row per layer
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  lv")]
    assert [r[:2] for r in rows] == [["lv13", "all"], ["lv29", "all"]]


def test_report_shows_the_runs_kept_ratio_per_head(calibrated):
    import re

    from energon_tvm.tvmc.report_html import html_report
    from energon_tvm.tvmc.runner import run_package

    root, _ = calibrated
    result = run_package(root / "cal.tar", inputs=root / "held0.npz")
    page = html_report(result)
    section = page[page.index("Thresholds per layer and head"):page.index("</table>", page.index("Thresholds per"))]
    rows = [re.findall(r"<td>([^<]*)</td>", r) for r in section.split("<tr>")[2:]]
    assert len(rows) == 4
    for call in result.calls:
        by_head = call.stats.machine["kept_ratio_by_head"]  # [round][head]
        for h in range(2):
            row = next(r for r in rows if r[:2] == [call.site, str(h)])
            assert [float(x) for x in row[4:6]] == pytest.approx([by_head[0][h], by_head[1][h]], abs=5e-4)
    assert min(min(r) for c in result.calls for r in c.stats.machine["kept_ratio_by_head"]) < 1.0
