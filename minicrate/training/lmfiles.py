"""The files of a language-model run: its checkpoint (with ``lm_config``) and ``vocab.json``.

:func:`load_run` is what ``minicrate sample`` reads; :mod:`minicrate.training.lm` re-exports
all three functions.  A damaged or crafted file is a
:class:`~minicrate.core.checkpoint.CheckpointError` naming the file and the entry.
"""

from __future__ import annotations

import os

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import get_backend, host_to
from minicrate.data.text import Vocab
from minicrate.models import lm
from minicrate.models.lm import LMConfig
from minicrate.training.rundir import CHECKPOINT, VOCAB


def load_checkpoint(path):
    """``(params, LMConfig, extra)`` of a train-lm checkpoint file (NumPy arrays)."""
    params, _, extra = ckpt.load(path)
    if "lm_config" not in extra:
        raise ckpt.CheckpointError(f"{path!r} is not a language-model checkpoint (no lm_config); "
                                   "classifier runs are read by 'minicrate train'")
    try:
        config = LMConfig.from_dict(extra["lm_config"])
    except (TypeError, ValueError) as err:
        raise ckpt.CheckpointError(f"{path!r}: entry 'lm_config' is not a valid LMConfig ({err})") from None
    return params, config, extra


def read_vocab(path):
    """The :class:`~minicrate.data.text.Vocab` in ``path``; a damaged file is a CheckpointError."""
    try:
        return Vocab.load(path)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ckpt.CheckpointError(f"{path!r} is not a readable vocabulary ({err})") from None


def load_run(run_dir, *, backend="numpy"):
    """``(params, LMConfig, vocab, extra)`` of a train-lm run directory (or checkpoint file)."""
    path = os.fspath(run_dir)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    ck = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.exists(ck):
        raise FileNotFoundError(f"no checkpoint at {ck!r} (give a train-lm run directory)")
    params, config, extra = load_checkpoint(ck)
    ckpt.check_params(params, lm.init_params(config), source=ck)
    vocab = read_vocab(os.path.join(folder, VOCAB))
    if vocab.size != config.vocab_size:
        raise ValueError(f"{VOCAB} has {vocab.size} characters but the model expects "
                         f"{config.vocab_size}")
    xp = get_backend(backend)
    return {k: host_to(xp, v, v.dtype.name) for k, v in params.items()}, config, vocab, extra
