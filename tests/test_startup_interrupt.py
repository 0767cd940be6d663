"""Ctrl-C while ``python -m minicrate`` is still importing the library: one line, status 130.

The child announces itself just before the import starts (a pipe line) and the signal
follows 0.1 s later, inside the import (about 0.4 s on an idle machine, longer when
loaded); ``sys.argv[0] = "-m"`` is what Python sets while ``python -m minicrate`` imports
the package.  The first milliseconds, before the package's first line runs, stay
Python's (nothing of minicrate's can run there).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = ("import sys; sys.argv[0] = {argv0!r}; print('ready', flush=True); "
         "import minicrate.cli; sys.exit(minicrate.cli.main(['rates']))")


def _interrupt(argv0, delay):
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(argv0=argv0)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
@pytest.mark.parametrize("argv0", ["-m", "/usr/local/bin/minicrate"])
def test_ctrl_c_during_the_import_is_one_line(argv0):
    code, _, err = _interrupt(argv0, 0.1)  # NumPy and the layers are still loading
    assert code == 130, err
    assert err == "minicrate: interrupted while starting; nothing was done\n"


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
@pytest.mark.parametrize("delay", [0.2, 0.4, 0.8])
def test_ctrl_c_at_any_moment_of_starting_never_shows_a_traceback(delay):
    code, _, err = _interrupt("-m", delay)
    assert "Traceback" not in err, err
    assert code in (0, 130), err  # 0: the command had already finished
    if code == 130:
        assert len(err.splitlines()) == 1 and "interrupted" in err, err


def test_a_program_that_imports_minicrate_keeps_pythons_handler():
    # Not started as the command line: Ctrl-C stays Python's KeyboardInterrupt.
    out = subprocess.run([sys.executable, "-c", "import signal, minicrate; "
                          "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
