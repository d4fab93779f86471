"""The selection policies on the command line: --target-energon-policy and each policy's own option, what
every report names, and tuning records that never cross policies.

Oracles: the parameters of :meth:`MPMRFParams.for_policy` (the numerics contract) and rounds written out
by hand; texts spelled out literally; the numpy reference (``reference_attention``) recomputing every
offloaded call of a run from the inputs the call received.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from energon_tvm.isa.numerics import POLICIES, FilterRound, MPMRFParams

from energon_tvm.tvmc.errors import TVMCError
from energon_tvm.tvmc.main import main
from energon_tvm.tvmc.target import POLICY_HELP, parse_params, parse_target

# -- option parsing (no TVM) -------------------------------------------------------------------------
GOOD = [
    ({}, MPMRFParams()),  # no policy option: today's rounds, unchanged
    ({"policy": "mpmrf"}, MPMRFParams()),
    ({"policy": "mpmrf", "rule": "mpmrf", "alpha": "0,-0.25"},
     MPMRFParams((FilterRound(4, 2, 0.0), FilterRound(4, 4, -0.25)))),
    ({"policy": "mpmrf", "rounds": "none"}, MPMRFParams(())),
    ({"policy": "topk"}, MPMRFParams((FilterRound(4, 4, rule="topk", fraction=0.25),))),
    ({"policy": "topk", "topk": "0.5"}, MPMRFParams((FilterRound(4, 4, rule="topk", fraction=0.5),))),
    ({"policy": "topk", "topk": "1"}, MPMRFParams((FilterRound(4, 4, rule="topk", fraction=1.0),))),
    ({"policy": "topk", "topk": str(1 / 65536)}, MPMRFParams((FilterRound(4, 4, rule="topk", fraction=1 / 65536),))),
    ({"policy": "sanger"}, MPMRFParams((FilterRound(4, 4, rule="sanger", probability=0.01),))),
    ({"policy": "sanger", "sanger": "0"}, MPMRFParams((FilterRound(4, 4, rule="sanger", probability=0.0),))),
    ({"policy": "sanger", "sanger": "1"}, MPMRFParams((FilterRound(4, 4, rule="sanger", probability=1.0),))),
    ({"policy": "dense"}, MPMRFParams(())),
]


@pytest.mark.parametrize("options, want", GOOD, ids=[json.dumps(o) for o, _ in GOOD])
def test_each_policy_builds_the_contracts_params(options, want):
    got = parse_params(**options)
    assert got == want
    name = options.get("policy", "mpmrf")
    assert got.policy == ("dense" if options.get("rounds") == "none" else name)
    if name in ("topk", "sanger", "dense"):  # the contract's constructor gives the same rounds
        value = options.get(name)
        assert got == MPMRFParams.for_policy(name, None if value is None else float(value))
    assert parse_target("energon, llvm", **options).params == want


#: (options, what the one-line error must name: the option, the value seen, the limit or the way out)
BAD = [
    ({"policy": "spatten"}, ["--target-energon-policy", "'spatten'", "mpmrf, topk, sanger, dense"]),
    ({"policy": ""}, ["--target-energon-policy", "''", "one of"]),
    ({"topk": "0.5"}, ["--target-energon-topk 0.5", "the policy is mpmrf (the default)",
                       "--target-energon-policy topk"]),
    ({"sanger": "0.1"}, ["--target-energon-sanger 0.1", "mpmrf", "--target-energon-policy sanger"]),
    ({"policy": "topk", "sanger": "0.1"}, ["--target-energon-sanger 0.1", "the policy is topk"]),
    ({"policy": "sanger", "topk": "0.5"}, ["--target-energon-topk 0.5", "the policy is sanger"]),
    ({"policy": "dense", "topk": "0.5"}, ["--target-energon-topk 0.5", "the policy is dense"]),
    ({"policy": "mpmrf", "sanger": "0.1"}, ["--target-energon-sanger 0.1", "the policy is mpmrf"]),
    ({"policy": "topk", "topk": "0"}, ["--target-energon-topk '0'", "(0, 1]"]),
    ({"policy": "topk", "topk": "1.5"}, ["--target-energon-topk '1.5'", "(0, 1]"]),
    ({"policy": "topk", "topk": "-0.25"}, ["--target-energon-topk '-0.25'", "(0, 1]"]),
    ({"policy": "topk", "topk": "nan"}, ["--target-energon-topk 'nan'", "(0, 1]"]),
    ({"policy": "topk", "topk": "inf"}, ["--target-energon-topk 'inf'", "(0, 1]"]),
    ({"policy": "topk", "topk": "1e-6"}, ["--target-energon-topk '1e-6'", "at least 1/65536"]),
    ({"policy": "topk", "topk": "0.25,0.5"}, ["--target-energon-topk '0.25,0.5'", "one number"]),
    ({"policy": "sanger", "sanger": "-0.1"}, ["--target-energon-sanger '-0.1'", "[0, 1]"]),
    ({"policy": "sanger", "sanger": "1.01"}, ["--target-energon-sanger '1.01'", "[0, 1]"]),
    ({"policy": "sanger", "sanger": "high"}, ["--target-energon-sanger 'high'", "[0, 1]"]),
    ({"policy": "topk", "rule": "gap"}, ["--target-energon-rule gap", "mpmrf policy", "not to topk",
                                         "--target-energon-topk"]),
    ({"policy": "sanger", "alpha": "0,0"}, ["--target-energon-alpha 0,0", "not to sanger"]),
    ({"policy": "topk", "gap": "8,4"}, ["--target-energon-gap 8,4", "not to topk"]),
    ({"policy": "dense", "gap": "8,4"}, ["--target-energon-gap 8,4", "not to dense", "no filter round"]),
    ({"policy": "topk", "rounds": "4x4"}, ["--target-energon-rounds 4x4", "not to topk", "Q4xK4 fraction=0.25"]),
    ({"policy": "dense", "rounds": "none"}, ["--target-energon-rounds none", "not to dense"]),
    ({"rule": "topk"}, ["--target-energon-rule 'topk'", "mpmrf, gap", "--target-energon-policy topk"]),
    ({"rule": "sanger"}, ["--target-energon-rule 'sanger'", "--target-energon-policy sanger"]),
    ({"policy": "topk", "thresholds": "t.json"}, ["--target-energon-thresholds", "mpmrf policy",
                                                  "--target-energon-policy topk"]),
    ({"policy": "dense", "thresholds": "t.json"}, ["--target-energon-thresholds", "--target-energon-policy dense"]),
    ({"sanger": "0.1", "thresholds": "t.json"}, ["--target-energon-thresholds", "--target-energon-sanger 0.1"]),
]


@pytest.mark.parametrize("options, named", BAD, ids=[json.dumps(o) for o, _ in BAD])
def test_every_bad_combination_is_one_line_naming_option_value_and_limit(options, named):
    with pytest.raises(TVMCError) as err:
        parse_target("energon, llvm", **options)
    message = str(err.value)
    assert "\n" not in message
    for text in named:
        assert text in message, (text, message)


def test_policy_options_need_energon_in_the_target():
    for options in ({"policy": "topk"}, {"policy": "dense"}, {"topk": "0.5"}, {"sanger": "0.1"}):
        with pytest.raises(TVMCError, match="need energon in --target"):
            parse_target("llvm", **options)


def test_the_command_line_refuses_them_before_importing_tvm(tmp_path):
    """compile and tune, in a fresh interpreter: exit 1, one line on stderr, no output, TVM never imported."""
    cases = [["--target-energon-policy", "bogus"], ["--target-energon-topk", "0.5"],
             ["--target-energon-policy", "topk", "--target-energon-topk", "2"],
             ["--target-energon-policy", "sanger", "--target-energon-sanger", "-1"],
             ["--target-energon-policy", "sanger", "--target-energon-rule", "gap"],
             ["--target-energon-policy", "topk", "--target-energon-thresholds", str(tmp_path / "t.json")]]
    script = f"""
import contextlib, io, json, sys
from energon_tvm.tvmc.main import main
model = {str(tmp_path / "m.onnx")!r}
open(model, "wb").write(b"not read")
out = []
for extra in {cases!r}:
    for command, output in (("compile", "o.tar"), ("tune", "r.jsonl")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([command, model, "-o", {str(tmp_path)!r} + "/" + output, *extra])
        out.append([command, code, err.getvalue().splitlines()])
print(json.dumps({{"runs": out, "tvm": "tvm" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert not got["tvm"]
    for command, code, lines in got["runs"]:
        assert code == 1 and len(lines) == 1 and lines[0].startswith("tvmc: error: --target-energon-"), (command, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("command", ["compile", "tune"])
def test_help_says_what_each_policy_is(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for policy, line in POLICY_HELP.items():
        assert f"{policy} = {line}" in text
    assert "--target-energon-topk" in text and "--target-energon-sanger" in text
    assert "in (0, 1] (default 0.25)" in text and "in [0, 1] (default 0.01)" in text
    assert set(POLICY_HELP) == set(POLICIES)


@pytest.mark.parametrize("rule", ["topk", "sanger", "dense", "max"])
def test_calibrate_takes_only_the_calibrated_rules(rule, tmp_path):
    from energon_tvm.calibration import CALIBRATED_RULES, ThresholdsError
    from energon_tvm.tvmc.thresholds import calibrate_model

    with pytest.raises(ThresholdsError, match=f"--target-energon-rule '{rule}': one of gap, mpmrf") as err:
        calibrate_model(tmp_path / "absent.onnx", tmp_path / "absent.npz", rule=rule)
    assert ("--target-energon-policy" in str(err.value)) == (rule in ("topk", "sanger"))
    for good in CALIBRATED_RULES:  # past the rule: the next check (the model file) answers
        with pytest.raises(TVMCError, match="does not exist"):
            calibrate_model(tmp_path / "absent.onnx", tmp_path / "absent.npz", rule=good)


# -- compiles: the package and every report name the policy -------------------------------------------
#: (policy, its value option, the selection as every report writes it)
COMPILED = [("mpmrf", None, "mpmrf (Q4xK2 gap=8, Q4xK4 gap=4)"),
            ("topk", "0.5", "topk (Q4xK4 fraction=0.5)"),
            ("sanger", None, "sanger (Q4xK4 probability=0.01)"),
            ("dense", None, "dense (no filter round)")]


@pytest.fixture(scope="module")
def packages(model_files, tmp_path_factory):
    """The test model compiled under each policy, through the command line (sanger's through the API)."""
    from energon_tvm.tvmc import compile_model, write

    root = tmp_path_factory.mktemp("policies")
    out = {}
    for policy, value, _ in COMPILED:
        path = root / f"{policy}.tar"
        if policy == "sanger":
            write(compile_model(model_files / "model.onnx", policy="sanger"), path)
        else:
            extra = [] if value is None else [f"--target-energon-{policy}", value]
            assert main(["compile", str(model_files / "model.onnx"), "-o", str(path),
                         "--target-energon-policy", policy, *extra]) == 0
        out[policy] = path
    return out


@pytest.mark.parametrize("policy, value, text", COMPILED, ids=[c[0] for c in COMPILED])
def test_the_package_carries_the_policys_params(packages, policy, value, text):
    from energon_tvm.tvmc import read_package

    want = MPMRFParams.for_policy(policy, None if value is None else float(value))
    assert want == (MPMRFParams() if policy == "mpmrf" else want)
    m = read_package(packages[policy]).manifest  # read back and checked (schema, programs, params)
    assert MPMRFParams.from_dict(m["params"]) == want
    assert m["target"] == f"energon (edge; {text}), llvm ({m['host']['mcpu']})"  # the host CPU it was built for
    assert len(m["calls"]) == 2
    for call in m["calls"]:
        assert MPMRFParams.from_dict(call["workload"]["params"]) == want


@pytest.mark.parametrize("policy, value, text", COMPILED, ids=[c[0] for c in COMPILED])
def test_inspect_names_the_policy_in_the_header_and_per_call(packages, policy, value, text, capsys):
    capsys.readouterr()
    assert main(["inspect", str(packages[policy]), "--no-code"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"selection: {text}, every call" in lines
    calls = [line for line in lines if line.startswith("=== call ")]
    assert calls == [f"=== call 0: site lv13, policy {policy} (schedule: heuristic, ranked by edp) ===",
                     f"=== call 1: site lv29, policy {policy} (schedule: heuristic, ranked by edp) ==="]
    workloads = [line for line in lines if line.startswith("workload: ")]
    assert len(workloads) == 2 and all(line.endswith(f"; policy {text}") for line in workloads)
    rows = [line.split() for line in lines if line.startswith("  lv")]
    value_cells = {"mpmrf": ["gap", "8", "gap", "4"], "topk": ["fraction", "0.5"], "sanger": ["probability", "0.01"],
                   "dense": []}[policy]
    assert rows == [["lv13", "all", *value_cells], ["lv29", "all", *value_cells]]


@pytest.fixture(scope="module")
def topk_run(packages, model_files):
    from energon_tvm.tvmc.runner import run_package

    return run_package(packages["topk"], inputs=model_files / "inputs.npz", capture=True)


def test_a_topk_run_computes_what_the_reference_does(topk_run):
    from energon_tvm.mpmrf import reference_attention

    assert len(topk_run.calls) == 2
    for call in topk_run.calls:
        assert call.workload.params == MPMRFParams.for_policy("topk", 0.5)
        i = call.inputs
        ref = reference_attention(call.workload, i["q"], i["k"], i["v"], i["bias"])
        machine = call.stats.machine
        assert machine["candidates"] == int(ref.candidates.sum())
        assert list(machine["kept_per_round"]) == [int(m.sum()) for m in ref.kept]
        # top-k keeps about half of each row's candidates (ceil, ties kept): fewer than all, at least half
        assert ref.candidates.sum() / 2 <= ref.kept[0].sum() < ref.candidates.sum()
        np.testing.assert_allclose(call.output, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())


def test_profile_top_and_report_name_the_policy(topk_run):
    from energon_tvm.tvmc import report_html as rh
    from energon_tvm.tvmc.commands.run import _profile_lines, _top_lines

    profile = _profile_lines(topk_run)
    at = profile[0].split().index("policy") - 3  # "DRAM KiB", "energy uJ", "x bound" are two words each
    for line in profile[1:4]:  # two calls and the total
        assert line.split()[at + (1 if line.split()[0] == "all" else 0)] == "topk", line
    assert _top_lines(topk_run, 1)[2].split()[6] == "topk"  # rank, call, site, cycles, x bound, binds, policy

    page = rh.html_report(topk_run)
    assert "<td>topk (Q4xK4 fraction=0.5)</td>" in page
    assert page.count("<td>topk (Q4xK4 fraction=0.5)</td>") == 2  # one per call in the table of calls
    assert f"<td>{rh.POLICY_LABEL}</td><td>topk (Q4xK4 fraction=0.5), every call</td>" in page


# -- tuning records never cross policies ----------------------------------------------------------------
def _tuned_records(packages, path):
    """Tune the topk package's first workload for three trials (the tuner API, in this process)."""
    from energon_tvm.schedules.workload import AttentionWorkload

    from energon_tvm.tuner import InlineRunner, profile_from_arrays, tune
    from energon_tvm.tvmc import read_package

    m = read_package(packages["topk"]).manifest
    w = AttentionWorkload.from_dict(m["calls"][0]["workload"])
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((w.batch, w.heads, s, w.head_dim)).astype(np.float32)
               for s in (w.seq_q, w.seq_k, w.seq_k))
    tune(w, "edge", profile_from_arrays(w, q, k, v, None), trials=3, tuner="random", records=path,
         runner=InlineRunner(), progress=False)
    return w


def test_records_of_a_topk_workload_are_used_for_topk_calls_only(packages, model_files, tmp_path):
    from energon_tvm.isa.config import load_config

    from energon_tvm.executor import HEURISTIC, TUNED, record_id
    from energon_tvm.tuner import best_record, read_records
    from energon_tvm.tvmc import compile_model

    records = tmp_path / "records.jsonl"
    w = _tuned_records(packages, records)
    assert w.params.policy == "topk" and len(read_records(records)) == 3
    best = best_record(records, w, load_config("edge"))
    assert best is not None

    topk = compile_model(model_files / "model.onnx", policy="topk", topk="0.5", tuning_records=records)
    assert [c.schedule_source for c in topk.calls] == [TUNED, TUNED]  # both sites share the workload
    assert {c.schedule_record for c in topk.calls} == {record_id(best)}
    assert all(c.schedule == best.schedule.to_dict() for c in topk.calls)
    for policy in ("mpmrf", "sanger", "dense"):
        other = compile_model(model_files / "model.onnx", policy=policy, tuning_records=records)
        assert [c.schedule_source for c in other.calls] == [HEURISTIC, HEURISTIC], policy


def test_a_record_keyed_like_another_policys_workload_is_not_applied():
    """A record is matched on its workload key; should two policies' workloads share a key (the key once
    named every rule but MP-MRF's alike), the record's own workload still keeps it to its policy."""
    from dataclasses import replace

    from energon_tvm.isa.config import load_config
    from energon_tvm.schedules import default_schedule
    from energon_tvm.schedules.workload import AttentionWorkload

    from energon_tvm.tuner import TuningRecord, best_record

    cfg = load_config("edge")
    sanger = AttentionWorkload(batch=1, heads=2, seq_q=6, seq_k=6, head_dim=8,
                               params=MPMRFParams.for_policy("sanger"))
    gap = replace(sanger, params=MPMRFParams((FilterRound(4, 4, rule="gap", gap=655 / 64),)))  # same fixed value
    topk = replace(sanger, params=MPMRFParams.for_policy("topk", 0.01))  # 655 / 65536 too

    def record(measured_on, key_of, with_workload=True):
        return TuningRecord(key_of.key(), cfg.fingerprint.hex(), default_schedule(measured_on, cfg), 10**6,
                            config=cfg.name, workload=measured_on.to_dict() if with_workload else None)

    for call in (sanger, gap, topk):
        assert best_record([record(call, call)], call, cfg) is not None  # its own record is used
        for measured_on in (sanger, gap, topk):
            if measured_on is not call:  # keyed as the call's workload, measured on another policy's
                assert best_record([record(measured_on, call)], call, cfg) is None, (call.key(), measured_on.key())
    # a record without its workload predates the ranking policies: MP-MRF's rounds only
    assert best_record([record(gap, gap, with_workload=False)], gap, cfg) is not None
    assert best_record([record(sanger, sanger, with_workload=False)], sanger, cfg) is None


def test_a_data_sets_profile_names_each_calls_policy(packages, model_files, tmp_path, capsys):
    with np.load(model_files / "inputs.npz") as z:
        np.savez(tmp_path / "data.npz", **{k: np.stack([z[k], z[k]]) for k in z.files})  # two samples
    capsys.readouterr()
    assert main(["run", str(packages["sanger"]), "-i", str(tmp_path / "data.npz"), "--backend", "reference",
                 "--profile"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["call", "site", "policy"])
    assert [line.split()[:3] for line in lines[header + 1:]] == [["0", "lv13", "sanger"], ["1", "lv29", "sanger"]]
