"""Using a trained character language model (:mod:`minicrate.models.lm`).

Sampling text from the causal model (:func:`generate`, one character at a time from
:func:`next_char_distribution`) and filling in masked characters with the masked model
(:func:`fill_masks`).
"""

from __future__ import annotations

from minicrate.core.backend import asarray_like, device_of, namespace, random_uniform, to_numpy
from minicrate.core.validate import (
    check_array,
    check_config,
    check_int,
    check_params_shapes,
    check_positive,
    describe,
)
from minicrate.models.lm import LMConfig, param_shapes, predict


def next_char_distribution(logits, *, temperature=1.0, top_k=None):
    r"""Sampling distribution from one position's logits ``(V,)``.

    :math:`p \propto \exp(\ell / T)` restricted to the ``top_k`` largest logits
    (ties at the k-th value are kept).  ``temperature`` must be > 0; greedy
    decoding is ``temperature=0`` in :func:`generate`.
    """
    check_array(logits, "logits", ndim=1)
    xp = namespace(logits)
    temperature = check_positive(temperature, "temperature")
    if top_k is not None:
        top_k = check_int(top_k, "top_k", minimum=1)
    scaled = logits / temperature
    V = scaled.shape[-1]
    if top_k is not None:
        if top_k < V:
            kth = xp.sort(scaled)[V - top_k]
            neg = xp.asarray(-xp.inf, dtype=scaled.dtype, device=device_of(scaled))
            scaled = xp.where(scaled >= kth, scaled, neg)
    shifted = xp.exp(scaled - xp.max(scaled))
    return shifted / xp.sum(shifted)


def _draw(probs, seed, step):
    """Inverse-CDF draw from host probabilities with a uniform number that depends
    only on ``(seed, step)``: the same seed gives the same text on every backend."""
    u = float(to_numpy(random_uniform((1,), seed=[int(seed), int(step)], low=0.0, high=1.0))[0])
    cdf = to_numpy(probs).astype("float64").cumsum()
    return int(min((cdf < u * cdf[-1]).sum(), cdf.size - 1))


def generate(params, config: LMConfig, vocab, prompt, length, *, temperature=1.0, top_k=None,
             seed=0):
    """Continue ``prompt`` by ``length`` characters with the causal model.

    Each step runs the model on the last ``config.context`` characters and
    draws the next one from :func:`next_char_distribution` (greedy argmax when
    ``temperature == 0``).  The random numbers are drawn on the host from
    ``seed`` and the step number, so a seed always gives the same text.

    Args:
        params, config: a causal model.
        vocab: the :class:`minicrate.data.text.Vocab` it was trained with.
        prompt: non-empty text of known characters (else ``ValueError``
            naming the unknown ones).
        length: number of characters to add.

    Returns:
        the prompt followed by the generated characters (a ``str``).
    """
    check_config(config, LMConfig)
    if not config.causal:
        raise ValueError("generate needs a causal model; a masked model fills in masks "
                         "(minicrate.models.sampling.fill_masks)")
    _check_vocab(vocab, config)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {describe(prompt)}")
    if not prompt:
        raise ValueError("prompt must contain at least one character")
    length = check_int(length, "length", minimum=0)
    temperature = check_positive(temperature, "temperature", allow_zero=True)
    if top_k is not None:
        top_k = check_int(top_k, "top_k", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    check_params_shapes(params, param_shapes(config))
    ids = [int(i) for i in vocab.encode(prompt)]
    E = params["tok_embedding"]
    xp = namespace(E)
    for step in range(length):
        window = asarray_like([ids[-config.context:]], E, dtype=xp.int64)
        logits = predict(params, window, config)
        last = logits[0, -1, :]
        if temperature == 0:
            ids.append(int(xp.argmax(last)))
        else:
            ids.append(_draw(next_char_distribution(last, temperature=temperature, top_k=top_k),
                             seed, step))
    return vocab.decode(ids)


def _check_vocab(vocab, config):
    """``vocab`` must be a :class:`minicrate.data.text.Vocab` of the model's size."""
    from minicrate.data.text import Vocab

    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a minicrate.data.text.Vocab, got {describe(vocab)}")
    if vocab.size != config.vocab_size:
        raise ValueError(f"vocab has {vocab.size} characters but the model's vocab_size is "
                         f"{config.vocab_size}")


def fill_masks(params, config: LMConfig, vocab, text, *, mask_char="_"):
    """Replace every ``mask_char`` in ``text`` by the masked model's most likely character.

    Returns ``(filled_text, positions)``.  ``text`` must fit the context and
    contain only known characters besides ``mask_char``.
    """
    check_config(config, LMConfig)
    if config.causal:
        raise ValueError("fill_masks needs a masked model; a causal model samples (generate)")
    _check_vocab(vocab, config)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {describe(text)}")
    if not (isinstance(mask_char, str) and len(mask_char) == 1):
        raise ValueError(f"mask_char must be one character, got {mask_char!r}")
    check_params_shapes(params, param_shapes(config))
    if len(text) > config.context:
        raise ValueError(f"text of {len(text)} characters is longer than the context "
                         f"({config.context})")
    positions = [i for i, c in enumerate(text) if c == mask_char]
    if not positions:
        raise ValueError(f"text contains no mask character {mask_char!r}")
    plain = "".join(vocab.chars[0] if c == mask_char else c for c in text)
    ids = [int(i) for i in vocab.encode(plain)]
    for i in positions:
        ids[i] = config.mask_id
    E = params["tok_embedding"]
    xp = namespace(E)
    logits = predict(params, asarray_like([ids], E, dtype=xp.int64), config)
    best = to_numpy(xp.argmax(logits[0, ...], axis=-1))
    chars = list(text)
    for i in positions:
        chars[i] = vocab.chars[int(best[i])]
    return "".join(chars), positions
