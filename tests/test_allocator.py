"""minicrate.core.allocator: freed arrays are reused instead of coming back as page faults."""

import os
import subprocess
import sys

import pytest

from minicrate.core import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three training steps of a small CRATE after two warm-up steps; print the minor page faults.
CHILD = """
import resource, sys
import numpy as np
import minicrate as mc
from minicrate.core.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
config = mc.CRATEConfig(image_size=8, patch_size=2, dim=64, depth=4, heads=4, num_classes=10)
params = mc.init_params(config, seed=0)
rng = np.random.default_rng(0)
images = rng.standard_normal((128, 1, 8, 8)).astype(np.float32)
labels = rng.integers(0, 10, size=128)
for step in range(5):
    if step == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    mc.loss_and_grads(params, images, labels, config)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode, **env):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, **env}, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(allocator._mallopt() is None, reason="no glibc mallopt here")
def test_keeping_freed_memory_removes_the_page_faults():
    kept, faults_kept = _faults("keep")
    _, faults_default = _faults("default")
    assert kept
    # glibc's defaults return big freed blocks to the system: thousands of faults per step
    assert faults_default >= 3 * 1000
    assert faults_kept < faults_default / 20
    off, faults_off = _faults("keep", MINICRATE_KEEP_FREED_MEMORY="0")
    assert not off and faults_off >= 3 * 1000


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        allocator.keep_freed_memory(0)
