"""The redesigned loop reproduces the parameters of the old loops bit for bit.

``tests/data/bit_reference.json`` holds sha256 fingerprints of the parameters after a few
steps, recorded before the training loops were merged into :func:`minicrate.training.loop.fit`
(same settings as below).  The fingerprints hold on the machine that recorded them (same
BLAS, same thread count); elsewhere a mismatch can be rounding, so the test is skipped when
``MINICRATE_BIT_REFERENCE=skip``.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

REFERENCE = json.loads((Path(__file__).parent / "data" / "bit_reference.json").read_text())
pytestmark = pytest.mark.skipif(os.environ.get("MINICRATE_BIT_REFERENCE") == "skip",
                                reason="bit reference disabled")


def fingerprint(params):
    """sha256 over the sorted names and the raw bytes of each parameter."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(params[k])).tobytes())
    return h.hexdigest()


def quiet(*args, **kwargs):
    pass


def test_classifier(tmp_path):
    from minicrate.models.classifier import CRATEConfig
    from minicrate.training.classifier import TrainConfig, train

    cfg = CRATEConfig(image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=10, pool="mean")
    tc = TrainConfig(data="digits", lr=3e-3, epochs=1, batch_size=64, warmup_epochs=0.5, shift=1, seed=3)
    r = train(cfg, tc, tmp_path / "c", progress=False, log=quiet, stop_after_steps=5)
    assert fingerprint(r["params"]) == REFERENCE["classifier"]["sha256"]


def test_mae(tmp_path):
    import minicrate
    from minicrate.models.mae import mae_preset
    from minicrate.training.classifier import TrainConfig

    cfg = mae_preset("digits", dim=16, depth=1, heads=2)
    tc = TrainConfig(data="digits", epochs=1, batch_size=256, lr=2e-3, warmup_epochs=0.5, shift=1, seed=2)
    r = minicrate.train_mae(cfg, tc, tmp_path / "m", progress=False, probe=False,
                            stop_after_steps=4, log=quiet)
    assert fingerprint(r["params"]) == REFERENCE["mae"]["sha256"]


@pytest.mark.parametrize("form,workers,key", [("causal", 1, "lm_causal"), ("masked", 1, "lm_masked"),
                                              ("causal", 2, "lm_causal_2")])
def test_lm(tmp_path, form, workers, key):
    from minicrate.data.text import load_corpus
    from minicrate.models.lm import LMConfig
    from minicrate.training.lm import LMTrainConfig, train_lm

    corpus = load_corpus(plays=["tragedies/macbeth", "comedies/twelfth-night", "roman/julius-caesar"],
                         val_plays=1)
    cfg = LMConfig(vocab_size=corpus.vocab.size, form=form, context=16, dim=8, depth=1, heads=2)
    tc = LMTrainConfig(form=form, steps=6, batch_size=4, warmup_steps=2, eval_every=3, eval_windows=8,
                       workers=workers)
    r = train_lm(cfg, tc, tmp_path / "l", progress=False, corpus=corpus, log=quiet, stop_after_steps=4)
    assert fingerprint(r["params"]) == REFERENCE[key]["sha256"]
