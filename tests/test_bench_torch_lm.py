"""PyTorch autograd as an oracle for the character language model, and bench_lm's plumbing.

The model in benchmarks/torch_lm.py is minicrate.models.lm written with torch
autograd (the official layers of benchmarks/torch_crate.py, causally masked in
the causal form).  Loaded with minicrate's weights, its logits, loss and every
gradient must equal minicrate's to float64 rounding.  Skipped where torch is
not installed (it is a benchmark dependency only).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_lm, torch_lm  # noqa: E402
from minicrate.models import lm  # noqa: E402

V, B, N = 11, 3, 7


def _tiny(form="causal", tie=True):
    return lm.LMConfig(vocab_size=V, form=form, context=8, dim=12, depth=2, heads=3,
                       tie_embedding=tie, dtype="float64")


def _batch(config, seed=0):
    """Ids ``(B, N)`` (the masked form may read the mask id), targets and 0/1 weights."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, config.embed_rows, size=(B, N))
    targets = rng.integers(0, V, size=(B, N))
    weights = (rng.random((B, N)) < 0.4).astype(np.float64)
    weights[0, 0] = 1.0  # at least one selected position
    return inputs, targets, None if config.causal else weights


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("form,tie", [("causal", True), ("causal", False), ("masked", True)],
                         ids=["causal-tied", "causal-untied", "masked-tied"])
def test_minicrate_lm_equals_torch_autograd(form, tie):
    config = _tiny(form, tie)
    params = lm.init_params(config, seed=3)
    inputs, targets, weights = _batch(config)
    loss, grads, logits = lm.loss_and_grads(params, inputs, targets, config, weights)
    model = torch_lm.load_minicrate_params(torch_lm.from_config(config), params)
    t_loss = model.loss(torch.from_numpy(inputs), torch.from_numpy(targets),
                        None if weights is None else torch.from_numpy(weights))
    t_loss.backward()
    t_grads = torch_lm.grads_as_minicrate(model, params)
    assert abs(loss - t_loss.item()) <= 1e-12 * abs(t_loss.item())
    with torch.no_grad():
        assert _rel(logits, model(torch.from_numpy(inputs)).numpy()) < 1e-12
    assert set(grads) == set(t_grads)
    errors = {k: _rel(grads[k], t_grads[k]) for k in grads}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-10, f"gradient of {worst} differs: rel. error {errors[worst]:.2e}"


def test_causal_model_ignores_later_tokens():
    """Changing the last character changes no earlier position's logits (the mask works)."""
    config = _tiny()
    model = torch_lm.load_minicrate_params(torch_lm.from_config(config),
                                           lm.init_params(config, seed=5))
    inputs, _, _ = _batch(config)
    changed = inputs.copy()
    changed[:, -1] = (changed[:, -1] + 1) % V
    with torch.no_grad():
        a, b = model(torch.from_numpy(inputs)), model(torch.from_numpy(changed))
    assert torch.equal(a[:, :-1], b[:, :-1])
    assert not torch.equal(a[:, -1], b[:, -1])


def test_lm_weight_mapping_round_trip_and_key_check():
    config = _tiny(tie=False)
    params = lm.init_params(config, seed=1)
    model = torch_lm.load_minicrate_params(torch_lm.from_config(config), params)
    for p in model.parameters():
        p.grad = p.detach().clone()  # grads_as_minicrate reads .grad: map the weights back
    back = torch_lm.grads_as_minicrate(model, params)
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    with pytest.raises(KeyError, match="only in minicrate"):
        torch_lm.load_minicrate_params(model, {**params, "extra": params["head.b"]})
    with pytest.raises(ValueError, match="official"):
        torch_lm.from_config(lm.LMConfig(vocab_size=V, context=8, dim=12, depth=1, heads=3,
                                         tie_out=True))


def test_bench_lm_runners_agree_in_float64():
    """bench_lm's own check on a tiny model: minicrate's step in two chunks against eager torch."""
    config = _tiny()
    params = lm.init_params(config, seed=2)
    inputs, targets, _ = _batch(config)
    mc = bench_lm.MinicrateLM(config, params, inputs, targets, workers=2)
    tc = bench_lm.TorchLM(config, params, inputs, targets)
    check, ok = bench_lm.check_pair(mc, tc, "float64")
    assert ok, check
    assert check["logits_rel_error"] < 1e-12 and check["grad_max_rel_error"] < 1e-9
