"""Record tests/data/bit_reference.json from the code *before* the redesign (commit f769489).

The runs are those of ``tests/bit_runs.py``, written against the old API::

    git worktree add /tmp/old f769489
    cd /tmp/old && PYTHONPATH=/tmp/old OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 \\
        OMP_NUM_THREADS=1 python /path/to/minicrate/tests/data/record_bit_reference.py OUT_DIR

It prints the fingerprints as JSON (``bit_reference.json`` keeps them under ``"sha256"``).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bit_runs  # noqa: E402  (tests/bit_runs.py: the settings and the fingerprint)
from minicrate.lm import LMConfig  # noqa: E402
from minicrate.mae import mae_preset, train_mae  # noqa: E402
from minicrate.model import CRATEConfig  # noqa: E402
from minicrate.text import load_corpus  # noqa: E402
from minicrate.train import TrainConfig, train  # noqa: E402

from minicrate.commands.train_lm import LMTrainConfig, train_lm  # noqa: E402  (the old layout)


def main(out):
    q, found = bit_runs.quiet, {}
    cfg = CRATEConfig(image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=10, pool="mean")
    tc = TrainConfig(data="digits", lr=3e-3, epochs=1, batch_size=64, warmup_epochs=0.5, shift=1, seed=3)
    found["classifier"] = train(cfg, tc, out / "c", progress=False, log=q, stop_after_steps=5)["params"]
    cfg = mae_preset("digits", dim=16, depth=1, heads=2)
    tc = TrainConfig(data="digits", epochs=1, batch_size=256, lr=2e-3, warmup_epochs=0.5, shift=1, seed=2)
    found["mae"] = train_mae(cfg, tc, out / "m", progress=False, probe=False, stop_after_steps=4,
                             log=q)["params"]
    corpus = load_corpus(plays=bit_runs.LM_PLAYS, val_plays=1)
    for key, (form, workers) in bit_runs.LM_RUNS.items():
        cfg = LMConfig(vocab_size=corpus.vocab.size, form=form, context=16, dim=8, depth=1, heads=2)
        tc = LMTrainConfig(form=form, steps=6, batch_size=4, warmup_steps=2, eval_every=3, eval_windows=8,
                           workers=workers)
        found[key] = train_lm(cfg, tc, out / key, progress=False, corpus=corpus, log=q,
                              stop_after_steps=4)["params"]
    return {k: bit_runs.fingerprint(v) for k, v in found.items()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
