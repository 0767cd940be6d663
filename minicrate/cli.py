"""Command line: ``python -m minicrate COMMAND ...`` (or the ``minicrate`` script).

Each sub-command lives in its own module under :mod:`minicrate.commands` and
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``,
and may define ``check(args)`` for checks that need several options at once;
this file only discovers them, so adding a command never touches this file
(a module without ``NAME``, such as the shared options, is not a command).

Every error is one line on stderr, without a traceback (``--debug`` shows it):

* usage errors -- an option of the wrong type, out of its range, a path of the wrong
  kind (:mod:`minicrate.commands.arguments` checks them all) -- exit with status 2;
* errors while running -- bad files, the disk, a run directory of the wrong kind --
  exit with status 1;
* Ctrl-C outside a training loop exits with status 130 (also while the library is still
  being imported: :mod:`minicrate.core.startup`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from minicrate import commands
from minicrate.commands.arguments import UsageError
from minicrate.core.startup import restore_ctrl_c


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block): ``minicrate train:
    error: argument --epochs: got '0'; expected an integer >= 1 and <= 100,000``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{commands.__name__}.{info.name}")
            if hasattr(module, "NAME"):
                yield module


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minicrate", description="CRATE, the white-box transformer, from scratch.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also accepted after COMMAND)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error")
        p.set_defaults(_run=module.run, _check=getattr(module, "check", None), _parser=p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()  # imports every command: the last of starting up
    restore_ctrl_c()  # from here on Ctrl-C is a KeyboardInterrupt, handled below
    args, unknown = parser.parse_known_args(argv)  # a usage error exits here: status 2, one line
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if unknown:  # named by the command they were given to, not by the top-level parser
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)} (see minicrate "
                           f"{args.command} --help)")
    prog = f"minicrate {args.command}"
    if args._check is not None:
        try:  # the options together make a model config, a recipe: a bad one is a usage error
            args._check(args)
        except (ValueError, TypeError) as err:
            if args.debug:
                raise
            args._parser.error(str(err))
    try:
        return int(args._run(args) or 0)
    except UsageError as err:  # found only while running, but still a usage error
        if args.debug:
            raise
        args._parser.error(str(err))
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop's own handling (loading data, a second Ctrl-C):
        # one line, and the shell's code for SIGINT.
        print(f"{prog}: interrupted; stopped at once, nothing more was written "
              "(a run keeps its last checkpoint)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, LookupError,
            ArithmeticError, MemoryError) as err:
        # Errors from bad input are explained by their message; no traceback.
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: still one line, and how to see more
        if args.debug:
            raise
        print(f"{prog}: error: unexpected {type(err).__name__}: {_one_line(err)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(err):
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"unknown key {err.args[0]!r}"
    if isinstance(err, MemoryError):
        text = f"not enough memory ({text or 'the allocation failed'}); ask for a smaller model or batch"
    return text or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
