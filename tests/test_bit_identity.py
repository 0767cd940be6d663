"""The redesigned package reproduces the parameters of the code before the redesign, bit for bit.

``tests/data/bit_reference.json`` holds sha256 fingerprints of the parameters after a few
training steps of every model kind (classifier, CRATE-MAE, causal and masked language models,
one of them split over two workers), recorded from commit f769489 -- before the training loops
were merged into :func:`minicrate.training.loop.fit` and the modules moved -- by
``tests/data/record_bit_reference.py``.  The runs (``tests/bit_runs.py``) start in a fresh
process with OpenBLAS pinned to its Haswell kernels and one thread, so rounding does not depend
on which CPU the machine has; any x86-64 machine with AVX2 must give these bits.  Set
``MINICRATE_BIT_REFERENCE=skip`` to skip (another BLAS, another architecture).
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REFERENCE = json.loads((HERE / "data" / "bit_reference.json").read_text())


def _avx2():
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(os.environ.get("MINICRATE_BIT_REFERENCE") == "skip", reason="bit reference disabled"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not _avx2(),
                       reason="the reference is pinned to OpenBLAS's Haswell (AVX2) kernels"),
]


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    env = {**os.environ, **REFERENCE["settings"]}
    out = tmp_path_factory.mktemp("bit")
    proc = subprocess.run([sys.executable, str(HERE / "bit_runs.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", sorted(REFERENCE["sha256"]))
def test_same_bits_as_before_the_redesign(fingerprints, run):
    assert fingerprints[run] == REFERENCE["sha256"][run], (
        f"{run}: the parameters after a few steps differ from the code before the redesign"
    )
