"""The white-box chapter's cached MNIST results and the references they are read against.

book/white-box.md loads book/data/white_box_mnist.json, written by
benchmarks/white_box_mnist.py; these tests check that the file holds what the chapter reads,
that its numbers are consistent with each other, and that the script's references of the
measured R^c (collapsed tokens, isotropic tokens, the largest value) are right.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import white_box_mnist as wb  # noqa: E402
from minicrate.objective.rates import measured_compression_rate  # noqa: E402

DATA = ROOT / "book" / "data" / "white_box_mnist.json"


@pytest.mark.parametrize("N, K, p", [(5, 4, 16), (17, 4, 24), (40, 2, 8)])
def test_references_bracket_the_measurement(N, K, p):
    r = wb.references(N, K, p, 0.01, n_draws=20)
    assert r["collapsed"] == pytest.approx(K / 2 * math.log1p(p / 0.01), rel=1e-9)
    assert r["collapsed"] < r["isotropic"] < r["maximum"]
    # Random tokens in random (non-orthogonal) bases never beat the closed-form maximum,
    # and tokens on one line in every head give the collapsed value whatever the bases.
    rng = np.random.default_rng(1)
    U = rng.standard_normal((K, K * p, p))
    X = rng.standard_normal((30, N, K * p))
    values = np.asarray(measured_compression_rate(X, U, eps_sq=0.01, reduction="none"))
    assert values.max() <= r["maximum"] + 1e-9
    line = np.ones((1, N, 1)) * rng.standard_normal((1, 1, K * p))
    assert float(measured_compression_rate(line, U, eps_sq=0.01)) == pytest.approx(r["collapsed"])


def test_head_overlap_and_coherence_extremes():
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 12)))[0]
    orthogonal = np.stack([Q[:, 0:4], Q[:, 4:8], Q[:, 8:12]])
    assert wb.head_overlap(orthogonal) == pytest.approx(0.0, abs=1e-12)
    same = np.stack([Q[:, 0:4], Q[:, 0:4] @ np.diag([2.0, 1.0, 1.0, 3.0])])
    assert wb.head_overlap(same) == pytest.approx(1.0)
    assert wb.dictionary_coherence(Q) == pytest.approx(0.0, abs=1e-12)


def test_cached_results_hold_what_the_chapter_reads():
    d = json.loads(DATA.read_text())
    assert d["script"] == "benchmarks/white_box_mnist.py"
    epochs = [s["epoch"] for s in d["snapshots"]]
    assert epochs == sorted(epochs) and epochs[0] == 0 and epochs[-1] == d["recipe"]["epochs"]
    r = d["references"]
    assert r["collapsed"] < r["isotropic"] < r["maximum"]
    for s in d["snapshots"]:
        lw = s["layerwise"]
        assert len(lw["rc"]) == len(lw["nonzero"]) == d["depth"]
        assert all(r["collapsed"] <= v <= r["maximum"] for v in lw["rc"])
        assert all(0 <= v <= 1 for v in lw["nonzero"])
    for which in ("init", "trained"):
        assert len(d["structure"][which]["head_overlap"]) == d["depth"]
        a = d["attention"][which]
        assert all(d["attention"]["uniform"] <= v <= 1 for v in a["self_weight"])
        assert all(0 < v <= 1 for v in a["other_entropy_ratio"])
    maps = np.asarray(d["maps"]["trained"])
    grid = round(math.sqrt(d["n_tokens"] - 1))
    assert maps.shape == (len(d["maps"]["test_indices"]), d["heads"], grid, grid)
