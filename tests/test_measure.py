"""Layer-wise measurement (spec §6.1) and the attention figure on a tiny checkpoint."""

import json

import numpy as np
import pytest

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import host_to, to_numpy
from minicrate.data.images import load
from minicrate.measure.layerwise import (
    attention_maps,
    class_token_maps,
    format_table,
    layerwise,
    layerwise_comparison,
)
from minicrate.models.classifier import CRATEConfig, forward, init_params, intermediates
from minicrate.objective.rates import measured_compression_rate, nonzero_fraction
from minicrate.runs import attention_run, measure_run
from minicrate.training.classifier import TrainConfig

TINY = CRATEConfig(image_size=8, patch_size=4, dim=16, depth=3, heads=2, num_classes=10)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture
def tiny_run(tmp_path):
    """A checkpoint in the training loop's layout: params moved away from init."""
    params = init_params(TINY, seed=5)
    rng = np.random.default_rng(0)
    moved = {k: v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
    extra = {"train_config": TrainConfig(data="digits", seed=5, epochs=1).__dict__}
    ckpt.save(tmp_path / "checkpoint.npz", moved, TINY, extra=extra)
    return tmp_path, moved


def test_layerwise_matches_the_rate_functions(digits):
    params = init_params(TINY, seed=1)
    images = digits.x_test[:40]
    result = layerwise(params, TINY, images, batch_size=16)  # batches must not change the numbers
    _, cache = forward(params, images, TINY)
    inter = intermediates(cache)
    for layer in range(TINY.depth):
        rc = measured_compression_rate(
            inter["mssa_inputs"][layer], inter["U"][layer], reduction="none"
        )
        nz = nonzero_fraction(inter["ista_outputs"][layer], reduction="none")
        assert result["rc"][layer] == pytest.approx(float(np.mean(rc.astype(np.float64))), rel=1e-5)
        assert result["rc_std"][layer] == pytest.approx(
            float(np.std(rc.astype(np.float64))), rel=1e-4
        )
        assert result["nonzero"][layer] == pytest.approx(float(np.mean(nz)), rel=1e-6)
    # Unit-norm projections bound R^c: per head, N unit columns in R^p give at most
    # ½ m log(1 + c N/m) with m = min(N, p), c = p/(N·0.01) (equal eigenvalues; spec §6.2).
    N, p, K = TINY.num_patches + 1, TINY.head_dim, TINY.heads
    m, c = min(N, p), p / (N * 0.01)
    bound = K * 0.5 * m * np.log1p(c * N / m)
    assert all(0 < v <= bound * (1 + 1e-6) for v in result["rc"])
    assert all(0 <= v <= 1 for v in result["nonzero"])
    assert result["n_images"] == 40


def test_comparison_table_and_figure(tmp_path, digits):
    trained = init_params(TINY, seed=2)
    trained["layers.2.D"] = trained["layers.2.D"] * 0  # an ISTA with D = 0 outputs ReLU(X − ηλ)
    init = init_params(TINY, seed=1)
    result = layerwise_comparison(trained, init, TINY, digits.x_test[:30])
    assert result["layers"] == [1, 2, 3] and result["eps_sq"] == 0.01
    assert result["trained"]["nonzero"] != result["init"]["nonzero"]
    table = format_table(result).splitlines()
    assert len(table) == 1 + TINY.depth and "R^c trained" in table[0]
    assert table[1].split()[0] == "1"
    from minicrate.measure.plotting import plot_layerwise

    path = plot_layerwise(result, str(tmp_path / "m.png"))
    assert open(path, "rb").read(8) == PNG


def test_measure_run_writes_json_and_png(tiny_run):
    run_dir, moved = tiny_run
    result, json_path, png = measure_run(run_dir, n_images=25)
    saved = json.loads(open(json_path).read())
    assert set(saved) >= {"trained", "init", "layers", "protocol", "checkpoint", "init_seed"}
    assert saved["init_seed"] == 5 and saved["data"] == "digits" and saved["subset"] == "test"
    assert len(saved["trained"]["rc"]) == len(saved["init"]["nonzero"]) == TINY.depth
    assert open(png, "rb").read(8) == PNG
    # "init" is the same architecture at the run's seed.
    expected = layerwise(init_params(TINY, seed=5), TINY, load("digits").x_test[:25])
    assert saved["init"]["rc"] == pytest.approx(expected["rc"])
    assert saved["trained"]["rc"] != pytest.approx(expected["rc"])


def test_attention_maps_and_figure(tiny_run, digits):
    run_dir, moved = tiny_run
    maps, preds = attention_maps(moved, TINY, digits.x_test[:3], layer=-1)
    assert maps.shape == (3, TINY.heads, 2, 2) and preds.shape == (3,)
    assert np.all(maps >= 0) and np.all(maps.sum(axis=(-1, -2)) <= 1 + 1e-6)
    png = attention_run(run_dir, n_images=3, layer=0)
    assert open(png, "rb").read(8) == PNG
    with pytest.raises(ValueError, match="layer must be in"):
        attention_maps(moved, TINY, digits.x_test[:1], layer=3)


def test_class_token_maps_is_the_class_rows_on_the_patch_grid(xp):
    """(n, K, N, N) attention, class token first -> (n, K, g, g): row 0 without its first
    entry, in row-major patch order, on the array's own backend."""
    n, K, g = 2, 3, 2  # TINY: 8 / 4 = 2 patches a side, N = 1 + 4
    A = np.random.default_rng(0).random((n, K, 1 + g * g, 1 + g * g))
    maps = class_token_maps(host_to(xp, A, "float64"), TINY)
    assert maps.shape == (n, K, g, g)
    got = to_numpy(maps)
    for i in range(n):
        for k in range(K):
            for r in range(g):
                for c in range(g):
                    assert got[i, k, r, c] == A[i, k, 0, 1 + r * g + c]


def test_measure_refuses_bad_inputs(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    with pytest.raises(ValueError, match="n_images"):
        measure_run(run_dir, n_images=0)
    with pytest.raises(ValueError, match="subset"):
        measure_run(run_dir, subset="val")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        measure_run(tmp_path / "nowhere")
