"""Training a character-level CRATE language model: recipe, evaluation, the task for the loop.

Inside :func:`minicrate.training.loop.fit` (:class:`LMTask`)::

    for step s = 0 .. steps-1:
        windows  = random windows of the training plays   (default_rng([seed, s]))
        causal:  inputs = w[:, :-1], targets = w[:, 1:]
        masked:  15 % of w replaced by the mask id; loss on those positions only
        loss, g  = minicrate.models.lm.loss_and_grads(...)  (hand-written backward; the
                   batch split over threads by minicrate.training.parallel.threads)
        every eval_every steps and at the end:
            validation loss (and masked accuracy) on fixed windows of the held-out
            plays, metrics.json, curves.png, checkpoint.npz (atomic)

A run directory holds ``checkpoint.npz``, ``vocab.json``, ``metrics.json``
and ``curves.png``; ``minicrate sample RUN_DIR`` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import numpy as np

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import get_backend, namespace, to_numpy
from minicrate.core.validate import finite_checks
from minicrate.data.text import causal_batch, fixed_windows, masked_batch, random_windows
from minicrate.models import lm
from minicrate.models.loss import lm_loss_forward
from minicrate.models.sampling import generate
from minicrate.training.lmfiles import load_checkpoint, load_run, read_vocab  # noqa: F401
from minicrate.training.loop import fit
from minicrate.training.optim import make_optimizer
from minicrate.training.parallel.threads import one_thread_blas, split_grads, split_map
from minicrate.training.rundir import VOCAB, check_run_dir


@dataclasses.dataclass
class LMTrainConfig:
    """How to train a language model (the shape lives in :class:`minicrate.models.lm.LMConfig`).

    ``time_limit_s`` ends the run early (after a final evaluation) once that
    much wall time has passed; the learning-rate schedule still assumes
    ``steps`` steps, so set ``steps`` to what fits when comparing runs.
    """

    form: str = "causal"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-3
    min_lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    clip: float | None = 1.0
    seed: int = 0
    split_seed: int = 0
    val_plays: int = 4
    markdown: bool = False
    eval_every: int = 250
    eval_windows: int = 128
    checkpoint_every: int = 0
    time_limit_s: float | None = None
    backend: str = "numpy"
    workers: int = 0  # threads per batch; 0: one per usable core on NumPy, else 1

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "eval_every", "eval_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not self.warmup_steps >= 0:  # a warm-up longer than the run is cut to it by the loop
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


# Peak learning rates measured to work (benchmarks/train_lm.py): the masked model stays at the
# most-frequent-character baseline for thousands of steps at 5e-3 (its attention never becomes
# local); at 1e-3 it leaves the baseline within a few hundred steps.
DEFAULT_LR = {"causal": 5e-3, "masked": 1e-3}

RESUME_FREE = frozenset({"steps", "backend", "eval_windows", "checkpoint_every", "time_limit_s",
                "eval_every", "workers"})


def chunk_loss_and_grads(params, inputs, targets, weights, config):
    """:func:`minicrate.models.lm.loss_and_grads` of one chunk, as ``(loss, grads)``: the logits
    stay where they were computed (from a worker process they would travel back unused)."""
    return lm.loss_and_grads(params, inputs, targets, config, weights)[:2]


def loss_and_grads(params, inputs, targets, config, weights=None, *, workers=1, processes=None):
    """:func:`minicrate.models.lm.loss_and_grads` with the batch split over ``workers`` chunks
    (:func:`minicrate.training.parallel.threads.split_grads`: worker processes on NumPy).

    Args:
        inputs, targets: ``(B, N)`` token ids; weights: ``(B, N)`` or ``None`` (all positions).
        processes: as for :func:`~minicrate.training.parallel.threads.split_grads`.
    Returns:
        ``(loss, grads, None)``.  The loss is a mean over the selected positions, so
        chunk i enters with the share ``n_i / n`` of those positions (all of them for the
        causal form, the masked ones for the masked form): the one-chunk result up to
        rounding (:func:`minicrate.training.parallel.threads.weighted_combine`).
    """
    if workers <= 1 or inputs.shape[0] < 2:
        return lm.loss_and_grads(params, inputs, targets, config, weights)
    if weights is None:  # every position counts: weights of one, so the chunks split like the ids
        weights = np.ones(inputs.shape, dtype=np.float64)
    loss, grads = split_grads(chunk_loss_and_grads, params, (inputs, targets, weights), config,
                              workers=workers, processes=processes,
                              shares=lambda s: float(weights[s].sum()))
    return loss, grads, None


def validation_set(corpus, model_config, count, seed):
    """Fixed validation windows (and, for the masked form, fixed masks)."""
    if model_config.causal:
        return {"windows": fixed_windows(corpus.val, model_config.context + 1, count)}
    windows = fixed_windows(corpus.val, model_config.context, count)
    inputs, targets, weights = masked_batch(windows, model_config.mask_id,
                                            np.random.default_rng([seed, 777]),
                                            rate=model_config.mask_rate)
    return {"inputs": inputs, "targets": targets, "weights": weights}


def evaluate(params, model_config, val, *, batch_size=64, baseline_char=None, workers=1):
    """Validation cross-entropy in nats/char (and masked accuracy) over ``val``.

    Returns ``{"loss"}`` for the causal form; the masked form adds
    ``"accuracy"`` (argmax at masked positions) and, given ``baseline_char``
    (an id), ``"baseline_accuracy"``: how often always guessing it is right.
    The inference path (:func:`minicrate.models.lm.predict`: no cache), each batch split over
    ``workers`` chunks (:func:`minicrate.training.parallel.threads.split_map`).
    """
    xp = namespace(params["tok_embedding"])
    total, count, correct = 0.0, 0.0, 0.0
    if model_config.causal:
        w = val["windows"]
        inputs, targets, weights = w[:, :-1], w[:, 1:], np.ones(w[:, 1:].shape)
    else:
        inputs, targets, weights = val["inputs"], val["targets"], val["weights"]
    with finite_checks(False):
        for start in range(0, len(inputs), batch_size):
            sl = slice(start, start + batch_size)
            xb = inputs[sl]
            logits = split_map(lm.predict, params, (xb,), model_config, workers=workers)
            loss, _ = lm_loss_forward(logits, targets[sl], weights[sl])
            n = float(weights[sl].sum())
            total += float(loss) * n
            count += n
            if not model_config.causal:
                pred = to_numpy(xp.argmax(logits, axis=-1))
                correct += float(((pred == targets[sl]) * weights[sl]).sum())
    out = {"loss": total / count}
    if not model_config.causal:
        out["accuracy"] = correct / count
        if baseline_char is not None:
            out["baseline_accuracy"] = float(((targets == baseline_char) * weights).sum() / count)
    return out


def unigram_cross_entropy(corpus):
    """Cross-entropy (nats/char) of the training unigram on the validation text:
    the loss of a model that ignores context (about 3.3)."""
    u = corpus.unigram()
    u = np.maximum(u, 1e-12)
    return float(-np.log(u[corpus.val]).mean())


def bigram_cross_entropy(corpus, alpha=1.0):
    """Cross-entropy (nats/char) on the validation text of a bigram model counted on
    the training text (add-``alpha`` smoothing): the loss of a model that looks at the
    previous character only (about 2.5)."""
    V = corpus.vocab.size
    counts = np.full((V, V), alpha)
    np.add.at(counts, (corpus.train[:-1], corpus.train[1:]), 1.0)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-logp[corpus.val[:-1], corpus.val[1:]].mean())


class LMTask:
    """A character language model for :func:`minicrate.training.loop.fit`: evaluation on the
    held-out plays every ``eval_every`` steps, a short sample at the end (causal form)."""

    resume_free = RESUME_FREE

    def __init__(self, model_config, train_config, corpus):
        tc, mc = train_config, model_config
        self.tc, self.mc, self.corpus = tc, mc, corpus
        self.xp = get_backend(tc.backend)
        from minicrate.training.parallel.threads import default_workers

        self.workers = tc.workers or default_workers(self.xp)
        self.window = mc.context + (1 if mc.causal else 0)
        self.steps_per_epoch = max(1, corpus.train.size // (tc.batch_size * mc.context))
        self.total_steps, self.eval_every, self.warmup_steps = tc.steps, tc.eval_every, tc.warmup_steps
        self.val = validation_set(corpus, mc, tc.eval_windows, tc.split_seed)
        self.baseline_char = int(np.argmax(corpus.unigram()))
        self.unigram_ce = unigram_cross_entropy(corpus)
        self.bigram_ce = bigram_cross_entropy(corpus)

    def config_dict(self):
        d = dataclasses.asdict(self.tc)
        d["betas"] = list(self.tc.betas)  # as JSON stores it
        return d

    def init_params(self):
        return lm.init_params(self.mc, seed=self.tc.seed, backend=self.xp)

    def make_optimizer(self, params):
        ndim = {k: v.ndim for k, v in params.items()}
        decay = lambda key: ndim[key] >= 2  # matrices and embeddings; not LN, biases
        tc = self.tc
        return make_optimizer("adamw", tc.lr, weight_decay=tc.weight_decay, decay=decay, betas=tc.betas)

    def load_checkpoint(self, path):
        saved, saved_config, extra = load_checkpoint(path)
        if saved_config != self.mc:
            ckpt.check_config(saved_config.to_dict(), self.mc.to_dict(), source=path)
        ckpt.check_params(saved, lm.init_params(self.mc), source=path)
        vocab_file = os.path.join(os.path.dirname(os.fspath(path)), VOCAB)
        if os.path.exists(vocab_file) and read_vocab(vocab_file) != self.corpus.vocab:
            raise ckpt.CheckpointError(f"{vocab_file!r} is not this corpus's vocabulary "
                                       f"({self.corpus.vocab.size} characters): not the run's text")
        return saved, extra

    def run_files(self):
        """``vocab.json``, written once every check of the run has passed."""
        return {VOCAB: self.corpus.vocab.to_json()}

    def save_checkpoint(self, path, params, extra):
        ckpt.save(path, params, None, extra=extra)

    def checkpoint_extra(self, step):
        return {"lm_config": self.mc.to_dict()}

    def batch(self, step):
        """``(inputs, targets, weights)``: ``(B, N)`` ids, weights ``None`` for the causal form."""
        rng = np.random.default_rng([self.tc.seed, step])
        windows = random_windows(self.corpus.train, self.window, self.tc.batch_size, rng)
        if self.mc.causal:
            return (*causal_batch(windows), None)
        return masked_batch(windows, self.mc.mask_id, rng, rate=self.mc.mask_rate)

    def loss_and_grads(self, params, batch):
        inputs, targets, weights = batch
        return loss_and_grads(params, inputs, targets, self.mc, weights, workers=self.workers)

    def new_running(self):
        return {"loss_sum": 0.0, "n": 0}

    def accumulate(self, running, loss, batch, aux):
        running["loss_sum"] += loss
        running["n"] += 1

    def where(self, step):
        return f"step {step + 1}"

    def bar_desc(self, step):
        return f"train-lm {self.mc.form}"

    def evaluate(self, params, *, step, lr, running, final, period_s, wall_s):
        mc, vocab = self.mc, self.corpus.vocab
        result = evaluate(params, mc, self.val, baseline_char=self.baseline_char, workers=self.workers)
        entry = {"step": step, "epoch": step / self.steps_per_epoch, "lr": lr,
                 "train_loss": running["loss_sum"] / max(1, running["n"]),
                 "val_loss": result["loss"], "wall_time_s": wall_s}
        if not mc.causal:
            entry["val_accuracy"] = result["accuracy"]
            entry["val_baseline_accuracy"] = result["baseline_accuracy"]
        elif final:  # a short sample at the end (sampling 120 characters costs 120 forwards)
            prompt = "ROMEO:" if set("ROMEO:") <= set(vocab.chars) else vocab.chars[0]
            with one_thread_blas() if self.workers > 1 else contextlib.nullcontext():
                entry["sample"] = generate(params, mc, vocab, prompt, 120, temperature=0.8, top_k=10,
                                           seed=self.tc.seed)
        return entry

    def log_line(self, e):
        extra = (f"  masked acc {e['val_accuracy']:.3f} (baseline {e['val_baseline_accuracy']:.3f})"
                 if not self.mc.causal else "")
        return (f"step {e['step']:>6}/{self.tc.steps}  train {e['train_loss']:.4f}  val "
                f"{e['val_loss']:.4f} nats/char{extra}  ({e['wall_time_s']:.0f} s)")

    def metrics(self, status, message, history, step, wall_s):
        mc, corpus, last = self.mc, self.corpus, (history[-1] if history else {})
        metrics = {
            "status": status, "message": message, "form": mc.form,
            "model_config": mc.to_dict(), "train_config": dataclasses.asdict(self.tc),
            "param_count": lm.param_count(mc), "vocab_size": corpus.vocab.size,
            "markdown": corpus.markdown, "train_plays": corpus.train_plays,
            "val_plays": corpus.val_plays, "n_train_chars": int(corpus.train.size),
            "n_val_chars": int(corpus.val.size), "steps": step,
            "steps_per_epoch": self.steps_per_epoch, "epochs": step / self.steps_per_epoch,
            "wall_time_s": wall_s, "unigram_val_cross_entropy": self.unigram_ce,
            "bigram_val_cross_entropy": self.bigram_ce,
            "most_frequent_char": corpus.vocab.chars[self.baseline_char],
            "val_loss": last.get("val_loss"), "history": history,
        }
        if not mc.causal:
            metrics["val_masked_accuracy"] = last.get("val_accuracy")
            metrics["val_baseline_accuracy"] = last.get("val_baseline_accuracy")
        elif "sample" in last:
            metrics["sample"] = last["sample"]
        return metrics

    def plot(self, history, path):
        from minicrate.measure.plotting import plot_lm_curves

        plot_lm_curves(history, path, form=self.mc.form, unigram=self.unigram_ce, bigram=self.bigram_ce,
                       title=f"{self.mc.form} CRATE on Shakespeare ({lm.param_count(self.mc):,} parameters)")

    def finish(self, params, log):
        pass

    def result(self, params, history, step, metrics, status):
        return {"params": params, "history": history, "steps": step,
                "val_loss": history[-1]["val_loss"] if history else None,
                "wall_time_s": metrics["wall_time_s"], "status": status}


def train_lm(model_config, train_config, out_dir, *, resume=False, overwrite=False, progress=True,
             handle_signals=False, stop_after_steps=None, corpus=None, log=print):
    """Train (or resume) a character language model; write the run directory.

    Args:
        model_config: :class:`minicrate.models.lm.LMConfig` (its ``vocab_size`` must
            match the corpus).
        train_config: :class:`LMTrainConfig` (a warm-up longer than ``steps`` is cut to it).
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoint.npz`` (same model and recipe;
            ``steps`` and evaluation settings may change).
        overwrite, progress, handle_signals, stop_after_steps, log: as in
            :func:`minicrate.training.classifier.train`.
        corpus: a :class:`minicrate.data.text.Corpus` (default: all plays, split by
            ``train_config``), for tests that use a few plays.

    Returns:
        dict ``params``, ``history``, ``val_loss``, ``steps``, ``wall_time_s``, ``status``.
    """
    from minicrate.core.allocator import keep_freed_memory
    from minicrate.data.text import load_corpus

    tc, mc = train_config, model_config
    if not isinstance(tc, LMTrainConfig):
        raise TypeError(f"train_config must be an LMTrainConfig, got {type(tc).__name__}")
    if tc.form != mc.form:
        raise ValueError(f"train config form {tc.form!r} differs from model form {mc.form!r}")
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)  # before loading any data
    if corpus is None:
        corpus = load_corpus(val_plays=tc.val_plays, seed=tc.split_seed, markdown=tc.markdown)
    if corpus.vocab.size != mc.vocab_size:
        raise ValueError(f"model vocab_size {mc.vocab_size} != corpus vocabulary "
                         f"{corpus.vocab.size}")
    out_dir = os.fspath(out_dir)
    keep_freed_memory()  # the run owns this process: reuse freed arrays, no page faults
    task = LMTask(mc, tc, corpus)  # vocab.json is written by fit, after every check of the run
    return fit(task, tc, out_dir, resume=resume, overwrite=overwrite, progress=progress,
               handle_signals=handle_signals, stop_after_steps=stop_after_steps, log=log)
