"""``tvmc``: the command line, a thin shell over :mod:`energon_tvm.tvmc`'s Python API.

Subcommands live in :mod:`energon_tvm.tvmc.commands`, one module each; a module registers itself with
:func:`command`, so adding a subcommand is adding one file. A user's mistake (an
:class:`~energon_tvm.isa.errors.EnergonError`) prints one line on stderr and exits 1; ``-v`` shows the
traceback too. So does input nested too deeply for a parser that has no guard of its own (a
``RecursionError``: the parsers of records and configs raise typed errors first).

A reader that goes away (``tvmc inspect pkg.tar | head -1``) ends the command quietly with exit status
141 (:data:`EXIT_BROKEN_PIPE`, 128 + SIGPIPE): what a shell reports for a tool SIGPIPE killed, so a
``set -o pipefail`` script sees tvmc as it sees ``cat``, and no traceback is printed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable

from ..isa.errors import EnergonError

_COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def command(name: str, help: str):  # noqa: A002 - argparse's word
    """Register a subcommand: decorate ``add_arguments(parser)``; it returns the ``run(args)`` function."""
    def register(add_arguments):
        def bind(run):
            _COMMANDS[name] = (add_arguments, run, help)
            return run
        return bind
    return register


def _load_commands() -> None:
    from . import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{mod.name}")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="tvmc", description="Compile models for the Energon dynamic-sparse-"
                                     "attention accelerator, inspect the generated ISA, run simulated execution.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output; tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(_COMMANDS):
        add_arguments, run, help_text = _COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text)
        # its own dest: a subparser's default would otherwise overwrite the -v given before the command
        p.add_argument("-v", "--verbose", action="count", default=0, dest="command_verbose", help=argparse.SUPPRESS)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


#: a value that argparse would take for an option because it starts with "-": -1, -0.5, -1,-0.25
_NEGATIVE_NUMBERS = re.compile(r"^-(\d+\.?\d*|\.\d+)(,\s*-?(\d+\.?\d*|\.\d+))*$")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--opt -1,-1`` -> ``--opt=-1,-1``: argparse reads a lone negative list as an unknown option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_NUMBERS.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


#: exit status when stdout's reader has gone away: 128 + SIGPIPE, as for a tool the signal killed
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows at the latest here, inside the handler below
    except BrokenPipeError:
        # the Python docs' recipe (signal module, "Note on SIGPIPE"): point stdout at devnull, so the
        # interpreter's own flush at exit does not fail again and print "Exception ignored ..."
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (an embedding, a test's capture)
            pass
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(list(sys.argv[1:] if argv is None else argv)))
    # `tvmc -v compile ...` and `tvmc compile ... -v` both count; the commands read args.verbose (the
    # compile step passes it on to hide known-harmless third-party output unless -v)
    args.verbose += getattr(args, "command_verbose", 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    if args.version:
        from .. import __version__

        print(f"energon-tvm {__version__}")
        return 0
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except EnergonError as err:
        if args.verbose:
            raise
        print("tvmc: error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message
        return 1
    except RecursionError:
        if args.verbose:
            raise
        print("tvmc: error: input nested too deeply to read (RecursionError); -v shows where", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tvmc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
