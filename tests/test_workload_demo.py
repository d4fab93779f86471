"""The README's main job (today: the demo) runs and its simulated output equals the reference."""

from energon_tvm.workload_demo import main


def test_demo_runs_and_checks_itself(capsys):
    assert main(["--seq", "64", "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "output equals the MP-MRF reference: yes" in out
    assert "speedup over dense on the same machine" in out
