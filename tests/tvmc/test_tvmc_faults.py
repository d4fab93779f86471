"""tvmc under faults: a reader that goes away mid-output, options that would fail last, memory budgets."""

import subprocess
import sys

from energon_tvm.tvmc.main import EXIT_BROKEN_PIPE


def test_a_closed_pipe_ends_quietly(tmp_path):
    from energon_tvm.isa.config import load_config
    from energon_tvm.schedules.emit import emit_program
    from energon_tvm.schedules.schedule import Schedule
    from energon_tvm.schedules.workload import AttentionWorkload

    cfg = load_config("edge")
    program = tmp_path / "prog.bin"  # ~3,800 instructions: ~350 KB of listing, far more than a pipe holds
    program.write_bytes(emit_program(AttentionWorkload(1, 2, 256, 256, 32), Schedule(16, 16), cfg).to_bytes())
    # `tvmc inspect prog.bin | head -1`
    proc = subprocess.Popen([sys.executable, "-m", "energon_tvm.tvmc", "inspect", str(program)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE == 141
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first.startswith(b"program: ") and err == ""



def test_input_nested_past_a_parser_without_a_guard_is_one_line(capsys):
    from energon_tvm.tvmc import main as cli

    def add_arguments(p):
        pass

    def run(args):  # a parser with no depth guard of its own, fed hostile input
        import json

        return json.loads("[" * 100_000)

    cli.command("nested-input", "test only")(add_arguments)(run)
    try:
        assert cli.main(["nested-input"]) == 1
    finally:
        cli._COMMANDS.pop("nested-input")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tvmc: error: input nested too deeply to read (RecursionError); -v shows where"]


def test_what_would_fail_last_fails_first(model_files, tmp_path, monkeypatch, capsys):
    """Bad dump kinds, missing output folders and a negative seed are refused before any compile or run."""
    from energon_tvm.tvmc import compiler, runner
    from energon_tvm.tvmc.main import main

    def no_work(*args, **kwargs):
        raise AssertionError("the command did work before checking its options")

    monkeypatch.setattr(compiler, "compile_model", no_work)
    monkeypatch.setattr(runner, "run_package", no_work)
    model, missing = model_files / "model.onnx", tmp_path / "nope"
    cases = [
        (["compile", model, "-o", tmp_path / "m.tar", "--dump-code", "asm"], "unknown --dump-code kind(s) asm"),
        (["compile", model, "-o", missing / "m.tar"], f"folder {str(missing)!r} does not exist"),
        (["compile", model, "-o", tmp_path / "m.tar", "--dump-offloads", missing / "o.txt"], "does not exist"),
        (["compile", model, "-o", tmp_path], "is a folder"),
        (["run", tmp_path / "m.tar", "--outputs", missing / "out.npz"], "--outputs"),
        (["run", tmp_path / "m.tar", "--trace", missing / "t.json"], "--trace"),
        (["run", tmp_path / "m.tar", "--report", missing / "r.html"], "--report"),
        (["run", tmp_path / "m.tar", "--seed", "-1"], "--seed -1: must be a non-negative integer"),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tvmc: error:") and message in err[0], (argv, err)
    assert not (tmp_path / "m.tar").exists()
