"""Character language models: finite-difference checks of every piece and of the whole
model (float64, rtol 1e-6), causality, sampling and error messages.

Expected FD relative errors are ~1e-9; the tolerance is 1e-6.
"""

import numpy as np
import pytest

from minicrate.checks.gradcheck import check_vjp
from minicrate.checks.strategies import normal
from minicrate.core.backend import host_to, to_numpy
from minicrate.data.text import Vocab
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.measure.layerwise import lm_layerwise
from minicrate.models import lm, sampling

V, B, N = 5, 2, 4


def tiny(form="causal", **kw):
    # embed_std 1: with GPT-2's 0.02 the FD step h = 1e-3 would be 5 % of a token's scale
    # and the first LayerNorm far from linear over it (truncation error ~1e-3).
    base = dict(vocab_size=V, form=form, context=5, dim=4, depth=2, heads=2, dtype="float64",
                embed_std=1.0)
    base.update(kw)
    return lm.LMConfig(**base)


def tokens(seed, high=V, shape=(B, N)):
    return np.random.default_rng(seed).integers(0, high, size=shape)


def ista_margin(layer_caches, lam=0.1):
    """Smallest |pre-activation| of the ISTA ReLUs: FD needs it well above 2h."""
    out = []
    for c in layer_caches:
        X, D, eta = c["ista"]["X"], c["ista"]["D"], c["ista"]["eta"]
        xp = lm.namespace(X)
        P = X + eta * ((X - X @ xp.matrix_transpose(D)) @ D) - eta * lam
        out.append(float(xp.min(xp.abs(P))))
    return min(out)


def kink_free_model(config, xp, ids, margin=0.02):
    """The first seed whose ISTA pre-activations all lie > ``margin`` from 0 (a
    finite difference across a ReLU kink is meaningless).  Seeds give the same
    numbers on every backend, so every backend checks the same model."""
    for seed in range(100):
        params = lm.init_params(config, seed=seed, backend=xp)
        _, plain = lm.forward(params, ids, config, fast=False)
        if ista_margin(plain["layers"]) > margin:
            return params
    raise AssertionError("no kink-free seed found")  # pragma: no cover


def test_embedding_vjp(xp):
    E = normal(xp, (V + 1, 3), 1)
    P = normal(xp, (6, 3), 2)
    ids = tokens(3, high=V + 1)
    dY = normal(xp, (B, N, 3), 4)
    _, cache = lm.embed_forward(ids, E, P)
    g = lm.embed_backward(dY, cache)
    f = lambda E, P: lm.embed_forward(ids, E, P)
    check_vjp(f, {"E": E, "P": P}, dY, {"E": g["E"], "P": g["P"]}).raise_if_failed()
    # Rows of characters that do not occur, and unused positions, get exactly zero.
    unused = sorted(set(range(V + 1)) - set(ids.ravel().tolist()))
    assert all(float(xp.max(xp.abs(g["E"][i, :]))) == 0.0 for i in unused)
    assert float(xp.max(xp.abs(g["P"][N:, :]))) == 0.0


def test_head_vjp(xp):
    Z = normal(xp, (B, N, 4), 5)
    gamma = 1.0 + 0.3 * normal(xp, (4,), 6)
    beta = normal(xp, (4,), 7)
    W = normal(xp, (V, 4), 8)
    b = normal(xp, (V,), 9)
    dY = normal(xp, (B, N, V), 10)
    _, cache = lm.head_forward(Z, gamma, beta, W, b)
    dZ, g = lm.head_backward(dY, cache)
    inputs = {"Z": Z, "gamma": gamma, "beta": beta, "W": W, "b": b}
    grads = {"Z": dZ, "gamma": g["gamma"], "beta": g["beta"], "W": g["W"], "b": g["b"]}
    check_vjp(lm.head_forward, inputs, dY, grads).raise_if_failed()


@pytest.mark.parametrize("masked", [False, True])
def test_loss_vjp_and_value(xp, masked):
    logits = normal(xp, (B, N, V), 11, scale=2.0)
    y = tokens(12)
    w = (np.random.default_rng(13).random((B, N)) < 0.5).astype(float) if masked else None
    if masked:
        w[0, 0] = 1.0
    loss, cache = lm.lm_loss_forward(logits, y, w)
    dl = lm.lm_loss_backward(1.0, cache)
    f = lambda logits: lm.lm_loss_forward(logits, y, w)
    check_vjp(f, {"logits": logits}, host_to(xp, np.array(1.0)), {"logits": dl}).raise_if_failed()
    # The value is the mean negative log-likelihood over the selected positions.
    L = to_numpy(logits)
    logp = L - np.log(np.exp(L).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    ww = np.ones((B, N)) if w is None else w
    assert np.isclose(float(loss), (nll * ww).sum() / ww.sum(), rtol=1e-12)


def test_causal_encoder_layer_vjp(xp):
    """Causal MSSA, checked through the whole layer (LN, causal MSSA, LN, ISTA)."""
    config = tiny()
    params = lm.layer_params(lm.init_params(config, seed=4, backend=xp), 0)
    Z = normal(xp, (B, N, 4), 14)
    dY = normal(xp, (B, N, 4), 15)
    Y, cache = encoder_layer_forward(Z, params, causal=True)
    assert ista_margin([cache]) > 0.02
    assert float(xp.max(xp.abs(xp.sum(cache["mssa"]["A"], axis=-1) - 1.0))) < 1e-12
    upper = to_numpy(cache["mssa"]["A"])[..., np.triu_indices(N, 1)[0], np.triu_indices(N, 1)[1]]
    assert np.all(upper == 0.0)
    dZ, g = encoder_layer_backward(dY, cache)
    names = ["U", "W_out", "b_out", "ln1_gamma", "D"]

    def f(Z, **p):
        return encoder_layer_forward(Z, {**params, **p}, causal=True)

    inputs = {"Z": Z, **{k: params[k] for k in names}}
    grads = {"Z": dZ, **{k: g[k] for k in names}}
    check_vjp(f, inputs, dY, grads, max_entries=10).raise_if_failed()


def _check_whole_model(xp, form, tie, max_entries, fast):
    config = tiny(form, tie_embedding=tie)
    ids = tokens(21, high=config.embed_rows)  # the masked model may read the mask id
    params = kink_free_model(config, xp, ids)
    logits, cache = lm.forward(params, ids, config, fast=fast)
    dY = normal(xp, tuple(logits.shape), 22)
    grads = lm.backward(dY, cache)
    assert set(grads) == set(params)

    def f(**p):
        return lm.forward(p, ids, config, fast=fast)

    check_vjp(f, params, dY, grads, max_entries=max_entries).raise_if_failed()


def test_whole_causal_model_vjp(xp):
    """Every parameter of a two-layer causal model with a tied head, on every backend
    (the plain encoder blocks)."""
    _check_whole_model(xp, "causal", True, max_entries=3, fast=False)


@pytest.mark.parametrize("form,tie,fast", [("masked", True, False), ("causal", False, False),
                                           ("causal", True, True), ("masked", True, True)])
def test_whole_model_vjp_other_forms_and_fused_layers(form, tie, fast):
    _check_whole_model(lm.namespace(np.zeros(1)), form, tie, max_entries=5, fast=fast)


@pytest.mark.parametrize("form", ["causal", "masked"])
def test_fused_layers_match_the_plain_blocks(form):
    config = tiny(form, depth=3)
    params = lm.init_params(config, seed=9)
    ids = tokens(2, high=config.embed_rows, shape=(3, 5))
    a, ca = lm.forward(params, ids, config, fast=True)
    b, cb = lm.forward(params, ids, config, fast=False)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    dY = normal(np, a.shape, 3)
    ga, gb = lm.backward(dY, ca), lm.backward(dY, cb)
    for k in params:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-10, atol=1e-12)
    ia, ib = lm.intermediates(ca), lm.intermediates(cb)
    for key in ("mssa_inputs", "ista_outputs", "attention"):
        for x, y in zip(ia[key], ib[key], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_causal_output_ignores_the_future():
    config = tiny(depth=3)
    params = lm.init_params(config, seed=2, backend="numpy")
    ids = tokens(30, shape=(3, 5))
    base, _ = lm.forward(params, ids, config)
    for t in range(4):
        changed = ids.copy()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + t) % V
        out, _ = lm.forward(params, changed, config)
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])
    # The masked model is bidirectional: changing the last token moves the first output.
    mconfig = tiny("masked")
    mparams = lm.init_params(mconfig, seed=2)
    changed = ids.copy()
    changed[:, -1] = (changed[:, -1] + 1) % V
    first = lambda x: lm.forward(mparams, x, mconfig)[0][:, 0]
    moved = first(ids) - first(changed)
    assert np.abs(moved).max() > 1e-9  # exactly 0 would mean no attention to the future


def test_tied_head_shares_the_embedding_and_mask_row():
    config = tiny("masked")
    params = lm.init_params(config, seed=0)
    assert params["tok_embedding"].shape == (V + 1, 4) and "head.W" not in params
    assert lm.param_count(config) == sum(v.size for v in params.values())
    untied = tiny(tie_embedding=False)
    assert lm.param_count(untied) == sum(v.size for v in lm.init_params(untied).values())
    # The mask row is read but never predicted: its head gradient is zero, so
    # with no mask in the input its whole gradient is zero.
    ids = tokens(3)
    _, g, _ = lm.loss_and_grads(params, ids, ids, config)
    assert np.all(g["tok_embedding"][V] == 0)


def test_loss_and_grads_train_a_tiny_model():
    """A few hundred plain gradient steps memorise a short repeating text."""
    config = tiny(depth=1, dim=8, context=8)
    params = lm.init_params(config, seed=0)
    seq = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3]] * 2)
    first, _, _ = lm.loss_and_grads(params, seq[:, :-1], seq[:, 1:], config)
    for _ in range(150):
        loss, grads, _ = lm.loss_and_grads(params, seq[:, :-1], seq[:, 1:], config)
        params = {k: v - 0.5 * grads[k] for k, v in params.items()}
    assert first > 1.4 and loss < 0.1


def _sampling_model(xp):
    vocab = Vocab(list("abcde"))
    config = tiny(context=5)
    return vocab, config, lm.init_params(config, seed=11, backend=xp)


def test_seeded_sampling_is_reproducible(xp):
    vocab, config, params = _sampling_model(xp)
    a = sampling.generate(params, config, vocab, "ab", 12, temperature=1.5, seed=3)
    b = sampling.generate(params, config, vocab, "ab", 12, temperature=1.5, seed=3)
    c = sampling.generate(params, config, vocab, "ab", 12, temperature=1.5, seed=4)
    assert a == b and a != c and a.startswith("ab") and len(a) == 14
    # The same seed gives the same text on NumPy.
    _, _, host_params = _sampling_model(lm.namespace(np.zeros(1)))
    assert sampling.generate(host_params, config, vocab, "ab", 12, temperature=1.5, seed=3) == a
    # top_k = 1 is greedy decoding.
    greedy = sampling.generate(params, config, vocab, "ab", 6, temperature=0)
    assert sampling.generate(params, config, vocab, "ab", 6, top_k=1, seed=9) == greedy


def test_top_k_and_temperature_distribution():
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0])
    p = to_numpy(sampling.next_char_distribution(logits, temperature=0.5, top_k=2))
    assert np.isclose(p.sum(), 1) and p[1] == p[3] and np.isclose(p[1], 0.5)
    assert np.all(p[[0, 2, 4]] == 0)
    q = to_numpy(sampling.next_char_distribution(logits, temperature=2.0))
    ref = np.exp(logits / 2) / np.exp(logits / 2).sum()
    np.testing.assert_allclose(q, ref, rtol=1e-12)


def test_unknown_prompt_character_and_wrong_form_are_clear_errors():
    vocab, config, params = _sampling_model(lm.namespace(np.zeros(1)))
    with pytest.raises(ValueError, match=r"not in the vocabulary: 'Z'"):
        sampling.generate(params, config, vocab, "abZ", 3)
    with pytest.raises(ValueError, match="at least one character"):
        sampling.generate(params, config, vocab, "", 3)
    with pytest.raises(ValueError, match="masked model"):
        sampling.fill_masks(params, config, vocab, "a_c")
    mconfig = tiny("masked")
    mparams = lm.init_params(mconfig)
    with pytest.raises(ValueError, match="causal model"):
        sampling.generate(mparams, mconfig, vocab, "ab", 3)
    filled, where = sampling.fill_masks(mparams, mconfig, vocab, "a_c_")
    assert where == [1, 3] and filled[0] == "a" and filled[2] == "c" and "_" not in filled
    with pytest.raises(ValueError, match="longer than the context"):
        lm.embed_forward(tokens(0, shape=(1, 9)), mparams["tok_embedding"],
                         mparams["pos_embedding"])
    with pytest.raises(ValueError, match="divisible"):
        lm.LMConfig(vocab_size=5, dim=6, heads=4)
    with pytest.raises(ValueError, match="form"):
        lm.LMConfig(vocab_size=5, form="gpt")


def test_intermediates_for_layerwise_measurements():
    config = tiny(depth=3)
    params = lm.init_params(config, seed=1)
    _, cache = lm.forward(params, tokens(0), config)
    inter = lm.intermediates(cache)
    assert len(inter["mssa_inputs"]) == len(inter["ista_outputs"]) == 3
    assert inter["attention"][0].shape == (B, 2, N, N)
    assert all(float(np.min(z)) >= 0 for z in inter["ista_outputs"])


# ----------------------------------------------------------------------------------------
# train-lm / sample: a few steps on three plays
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_plays():
    from minicrate.data.text import load_corpus

    return load_corpus(plays=["tragedies/macbeth", "comedies/twelfth-night",
                              "roman/julius-caesar"], val_plays=1)


def _run(form, out, corpus, **kw):
    from minicrate.training.lm import LMTrainConfig, train_lm

    mc = lm.LMConfig(vocab_size=corpus.vocab.size, form=form, context=16, dim=8, depth=1,
                     heads=2)
    tc = LMTrainConfig(form=form, steps=6, batch_size=4, warmup_steps=2, eval_every=3,
                       eval_windows=8)
    return train_lm(mc, tc, out, progress=False, corpus=corpus, log=lambda *a: None, **kw)



def test_train_lm_caps_a_warmup_longer_than_the_run(tmp_path, three_plays):
    """A warm-up longer than ``steps`` is cut to the run (as ``train`` does), not refused."""
    from minicrate.training.lm import LMTrainConfig, train_lm

    mc = lm.LMConfig(vocab_size=three_plays.vocab.size, form="causal", context=16, dim=8, depth=1,
                     heads=2)
    tc = LMTrainConfig(form="causal", steps=3, batch_size=4, warmup_steps=50, eval_every=3,
                       eval_windows=8, workers=1)
    result = train_lm(mc, tc, tmp_path, progress=False, corpus=three_plays, log=lambda *a: None)
    assert result["status"] == "completed" and result["steps"] == 3
    assert result["history"][-1]["lr"] == pytest.approx(tc.lr)  # the last warm-up step: the peak

def test_train_lm_resume_continues_the_same_run(tmp_path, three_plays):
    import json

    from minicrate.training.lm import load_run

    full = _run("causal", tmp_path / "full", three_plays)
    part = _run("causal", tmp_path / "part", three_plays, stop_after_steps=4)
    assert part["status"] == "interrupted" and part["steps"] == 4
    resumed = _run("causal", tmp_path / "part", three_plays, resume=True)
    assert resumed["steps"] == 6 and resumed["status"] == "completed"
    for k, v in full["params"].items():
        np.testing.assert_array_equal(v, resumed["params"][k])
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [3, 6]
    assert metrics["val_loss"] == full["val_loss"] and "sample" in metrics
    assert 3.0 < metrics["unigram_val_cross_entropy"] < 3.6
    assert 2.0 < metrics["bigram_val_cross_entropy"] < metrics["unigram_val_cross_entropy"]
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000
    params, config, vocab, _ = load_run(tmp_path / "full")
    assert config.form == "causal" and vocab == three_plays.vocab


def test_masked_run_reports_accuracy_and_sample_cli(tmp_path, three_plays, capsys):
    import json

    from minicrate import cli

    _run("masked", tmp_path / "m", three_plays)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert 0 <= metrics["val_masked_accuracy"] <= 1
    assert metrics["most_frequent_char"] == " "
    assert 0 < metrics["val_baseline_accuracy"] < 0.5  # ~0.16 (spaces) on large samples
    _run("causal", tmp_path / "c", three_plays)
    assert cli.main(["sample", str(tmp_path / "c"), "--length", "10", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["sample", str(tmp_path / "c"), "--length", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first and first.startswith("ROMEO:")
    assert cli.main(["sample", str(tmp_path / "c"), "--prompt", "ROMEO: ~"]) == 1
    assert "not in the vocabulary: '~'" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "m"), "--prompt", "To b_ or not"]) == 0
    assert capsys.readouterr().out.startswith("To b")


def test_layerwise_measurements_match_the_rates_functions():
    from minicrate.objective.rates import measured_compression_rate, nonzero_fraction

    config = tiny(depth=2)
    params = lm.init_params(config, seed=3)
    ids = tokens(5, shape=(3, 5))
    out = lm_layerwise(params, config, ids)
    _, cache = lm.forward(params, ids, config)
    inter = lm.intermediates(cache)
    for layer in range(2):
        rc = measured_compression_rate(inter["mssa_inputs"][layer], params[f"layers.{layer}.U"])
        assert np.isclose(out["rc"][layer], float(rc), rtol=1e-12)
        nz = nonzero_fraction(inter["ista_outputs"][layer])
        assert np.isclose(out["nonzero"][layer], float(nz), rtol=1e-12)
        assert 0 < out["nonzero"][layer] <= 1 and out["rc_std"][layer] >= 0


@pytest.mark.parametrize("form", ["causal", "masked"])
def test_batch_split_over_threads_matches_one_chunk(form):
    from minicrate.training.lm import loss_and_grads as split_step

    config = tiny(form)
    params = lm.init_params(config, seed=5)
    ids = tokens(8, shape=(5, 4))
    weights = None
    if form == "masked":
        weights = np.zeros((5, 4))
        weights[[0, 1, 1, 2, 3, 4, 4, 4], [0, 1, 2, 3, 0, 1, 2, 3]] = 1.0
    one = lm.loss_and_grads(params, ids, ids, config, weights)
    three = split_step(params, ids, ids, config, weights, workers=3)
    assert np.isclose(one[0], three[0], rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(three[1][k], one[1][k], rtol=1e-10, atol=1e-13)


def test_sinusoidal_positions_are_local_and_scaled(xp):
    P = to_numpy(lm.sinusoidal_positions(32, 16, xp=xp, rms=0.5))
    assert P.shape == (32, 16) and np.isclose(np.sqrt((P**2).mean()), 0.5, rtol=1e-6)
    G = P @ P.T
    # The Gram depends on the offset only and is largest at offset 0.
    np.testing.assert_allclose(np.diag(G, 3), G[0, 3], rtol=1e-9)
    assert np.all(G[10, 10] > np.delete(G[10], 10))
    config = tiny(pos_init="sinusoidal")
    params = lm.init_params(config, backend=xp)
    np.testing.assert_allclose(to_numpy(params["pos_embedding"]),
                               to_numpy(lm.sinusoidal_positions(5, 4, xp=xp, rms=1.0)))
    with pytest.raises(ValueError, match="pos_init"):
        tiny(pos_init="rope")
