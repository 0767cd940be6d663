"""PyTorch autograd as an oracle for the whole classifier, and the benchmark's plumbing.

The model in benchmarks/torch_crate.py is the official ``model/crate.py``
written with torch autograd (three-product ISTA, ``nn.Linear``/``nn.LayerNorm``).
Loaded with minicrate's weights, its loss and every gradient must equal
minicrate's to float64 rounding, for the plain blocks and the fused layer.
Skipped where torch is not installed (it is a benchmark dependency only).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minicrate.models.classifier as mcm  # noqa: E402
from benchmarks import bench_speed, torch_crate  # noqa: E402
from minicrate.models.embedding import patchify  # noqa: E402


def _batch(config, B, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((B, config.channels, config.image_size, config.image_size))
    labels = rng.integers(0, config.num_classes, size=B)
    return images, labels


def _torch_loss_and_grads(config, params, images, labels):
    model = torch_crate.from_config(config, dtype=torch.float64)
    torch_crate.load_minicrate_params(model, params)
    loss = model.loss(torch.from_numpy(images), torch.from_numpy(labels))
    loss.backward()
    return loss.item(), torch_crate.grads_as_minicrate(model, params), model


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("shape", [
    dict(image_size=8, patch_size=2, channels=1, dim=16, depth=2, heads=2, num_classes=5),
    dict(image_size=8, patch_size=4, channels=3, dim=12, depth=3, heads=3, num_classes=4,
         pool="mean"),
], ids=["cls", "mean-pool-rgb"])
def test_minicrate_equals_torch_autograd(shape, fast):
    config = mcm.CRATEConfig(**shape, dtype="float64")
    params = mcm.init_params(config, seed=4)
    images, labels = _batch(config, 5)
    loss, grads, logits = mcm.loss_and_grads(params, images, labels, config, fast=fast)
    t_loss, t_grads, model = _torch_loss_and_grads(config, params, images, labels)
    assert abs(loss - t_loss) <= 1e-12 * abs(t_loss)
    with torch.no_grad():
        t_logits = model(torch.from_numpy(images)).numpy()
    assert _rel(logits, t_logits) < 1e-12
    assert set(grads) == set(t_grads)
    errors = {k: _rel(grads[k], t_grads[k]) for k in grads}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, f"gradient of {worst} differs: rel. error {errors[worst]:.2e}"


def test_patchify_order_matches_official_rearrange():
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' in both implementations."""
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float64).reshape(2, 3, 8, 8)
    ours = patchify(x, 4)
    theirs = torch_crate.patchify(torch.from_numpy(x), 4).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # first patch, first entries: pixel (0, 0) of channels 0, 1, 2, then pixel (0, 1)
    first = [x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0], x[0, 0, 0, 1]]
    np.testing.assert_array_equal(ours[0, 0, :4], first)


def test_weight_mapping_round_trip_and_key_check():
    config = mcm.CRATEConfig(image_size=8, patch_size=2, dim=8, depth=1, heads=2, dtype="float64")
    params = mcm.init_params(config, seed=1)
    model = torch_crate.load_minicrate_params(torch_crate.from_config(config), params)
    for p in model.parameters():
        p.grad = p.detach().clone()  # grads_as_minicrate reads .grad: map the weights back
    back = torch_crate.grads_as_minicrate(model, params)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    with pytest.raises(KeyError, match="only in minicrate"):
        torch_crate.load_minicrate_params(model, {**params, "extra": params["head.b"]})


def test_flop_counts_match_the_issue_figures():
    """(b): 20.97 GFLOP forward; fwd+bwd = 3 × forward = 62.9 GFLOP when every product's
    backward takes two products; ISTA in two products removes 3 d² products per token."""
    cfg = bench_speed.CONFIGS["b"]
    full = bench_speed.gemm_flops(cfg, image_grad=True)
    assert full["forward"] + full["backward"] == 3 * full["forward"]
    assert round(full["forward"] / 1e9, 2) == 20.97
    assert round(3 * full["forward"] / 1e9, 1) == 62.9
    two = bench_speed.gemm_flops(cfg, ista_products=2, image_grad=True)
    tok = 2 * 64 * 65 * 192 * 192
    assert 3 * full["forward"] - 3 * two["forward"] == 3 * 12 * tok
    sym = bench_speed.gemm_flops(cfg, ista_products=2, symmetric_scores=True, image_grad=True)
    assert two["backward"] - sym["backward"] == 12 * 2 * 64 * 3 * 65 * 65 * 64


def test_benchmark_runners_agree_in_float64():
    """The benchmark's own check: every minicrate variant and torch, config (a), float64."""
    torch_runner = None
    for variant in ("minicrate", "minicrate[threads]", "minicrate[plain]"):
        runner = bench_speed.MinicrateRunner("a", "float64", variant=variant)
        if torch_runner is None:
            torch_runner = bench_speed.TorchRunner("a", "float64", runner.params)
        check = bench_speed.compare(runner, torch_runner)
        assert check["loss_rel_error"] < 1e-12, variant
        assert check["grad_max_rel_error"] < 1e-9, (variant, check["grad_worst_param"])
