"""A few training steps of every model kind, fingerprinted: the runs of tests/test_bit_identity.py.

Run as ``python tests/bit_runs.py OUT_DIR`` it prints one JSON object, run name -> sha256 of
the parameters.  The test starts it with OpenBLAS pinned to one kernel family and one thread
(``OPENBLAS_CORETYPE=Haswell``, ``OPENBLAS_NUM_THREADS=1``), so the same code gives the same
bits on any x86-64 machine with AVX2, whatever CPU OpenBLAS would otherwise pick.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

LM_PLAYS = ["tragedies/macbeth", "comedies/twelfth-night", "roman/julius-caesar"]
LM_RUNS = {"lm_causal": ("causal", 1), "lm_masked": ("masked", 1), "lm_causal_2": ("causal", 2)}


def fingerprint(params):
    """sha256 over the sorted names and the raw bytes of each parameter."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(params[k])).tobytes())
    return h.hexdigest()


def quiet(*args, **kwargs):
    pass


def run_all(out):
    from minicrate.data.text import load_corpus
    from minicrate.models.classifier import CRATEConfig
    from minicrate.models.lm import LMConfig
    from minicrate.models.mae import mae_preset
    from minicrate.training.classifier import TrainConfig, train
    from minicrate.training.lm import LMTrainConfig, train_lm
    from minicrate.training.mae import train_mae

    found = {}
    cfg = CRATEConfig(image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=10, pool="mean")
    tc = TrainConfig(data="digits", lr=3e-3, epochs=1, batch_size=64, warmup_epochs=0.5, shift=1, seed=3)
    found["classifier"] = train(cfg, tc, out / "c", progress=False, log=quiet, stop_after_steps=5)["params"]
    cfg = mae_preset("digits", dim=16, depth=1, heads=2)
    tc = TrainConfig(data="digits", epochs=1, batch_size=256, lr=2e-3, warmup_epochs=0.5, shift=1, seed=2)
    # one chunk, as the reference ran (train_mae now splits batches over the cores by default)
    found["mae"] = train_mae(cfg, tc, out / "m", progress=False, probe=False, stop_after_steps=4,
                             log=quiet, workers=1)["params"]
    corpus = load_corpus(plays=LM_PLAYS, val_plays=1)
    for key, (form, workers) in LM_RUNS.items():
        cfg = LMConfig(vocab_size=corpus.vocab.size, form=form, context=16, dim=8, depth=1, heads=2)
        tc = LMTrainConfig(form=form, steps=6, batch_size=4, warmup_steps=2, eval_every=3, eval_windows=8,
                           workers=workers)
        found[key] = train_lm(cfg, tc, out / key, progress=False, corpus=corpus, log=quiet,
                              stop_after_steps=4)["params"]
    return {k: fingerprint(v) for k, v in found.items()}


if __name__ == "__main__":
    print(json.dumps(run_all(Path(sys.argv[1]))))
