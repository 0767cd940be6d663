"""Ctrl-C while the command line is still starting.

``python -m minicrate COMMAND`` imports the whole library (NumPy, the layers, the
commands: about half a second) before :func:`minicrate.cli.main` can catch anything,
so a Ctrl-C in that window would print Python's traceback of whatever import it
interrupted.  While the command line starts, Ctrl-C is therefore answered by
:func:`interrupted_while_starting` (one line, exit status 130, as the CLI does later);
``main`` hands SIGINT back to Python's own handler once it is running.  A program that
merely imports minicrate keeps Python's handler: only the two ways of starting the
command line are recognised.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def started_as_command() -> bool:
    """True while ``python -m minicrate`` (``sys.argv[0]`` is ``"-m"`` while the package is
    imported) or the ``minicrate`` script starts."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" or os.path.basename(argv0) == "minicrate"


def interrupted_while_starting(signum, frame):  # noqa: ARG001 (a signal handler's signature)
    # os.write and os._exit: nothing half-imported may run (no atexit, no flushing of
    # buffers that a half-initialised module may own).
    os.write(2, b"minicrate: interrupted while starting; nothing was done\n")
    os._exit(130)


def quiet_ctrl_c_while_starting() -> None:
    """Answer Ctrl-C with one line until :func:`restore_ctrl_c` (command line only)."""
    if (started_as_command() and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, interrupted_while_starting)


def restore_ctrl_c() -> None:
    """Give SIGINT back to Python (``KeyboardInterrupt``), if the startup handler holds it."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is interrupted_while_starting):
        signal.signal(signal.SIGINT, signal.default_int_handler)
