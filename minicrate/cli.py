"""Command line: ``python -m minicrate COMMAND ...`` (or the ``minicrate`` script).

Each sub-command lives in its own module under :mod:`minicrate.commands` and
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
this file only discovers them, so adding a command never touches this file
(a module without ``NAME``, such as the shared options, is not a command).

Errors from bad input, files and the disk print as one line without a traceback
(exit code 1); Ctrl-C outside a training loop prints one line too (exit code 130).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from minicrate import commands


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{commands.__name__}.{info.name}")
            if hasattr(module, "NAME"):
                yield module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minicrate", description="CRATE, the white-box transformer, from scratch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as err:
        # Errors from bad input are explained by their message; no traceback.
        print(f"minicrate {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop's own handling (loading data, a second Ctrl-C):
        # one line, and the shell's code for SIGINT.
        print(f"minicrate {args.command}: interrupted; stopped at once, nothing more was written "
              "(a run keeps its last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
