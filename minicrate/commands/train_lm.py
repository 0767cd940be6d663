"""``minicrate train-lm``: train a character-level CRATE language model on Shakespeare.

The loop (:func:`train_lm`) follows :mod:`minicrate.training.classifier`'s conventions::

    for step s = 0 .. steps-1:
        windows  = random windows of the training plays   (a function of (seed, s))
        causal:  inputs = w[:, :-1], targets = w[:, 1:]
        masked:  15 % of w replaced by the mask id; loss on those positions only
        loss, g  = minicrate.models.lm.loss_and_grads(...)       (hand-written backward)
        g        = clip_by_global_norm(g); AdamW step with warm-up + cosine lr
        every eval_every steps and at the end:
            validation loss (and masked accuracy) on fixed windows of the held-out
            plays, metrics.json, curves.png, checkpoint.npz (atomic)

Every random choice depends only on the seed and the step, and the checkpoint
holds the parameters, the optimiser state and the step, so ``--resume``
continues the same run.  SIGINT/SIGTERM save a checkpoint between two steps.

A run directory holds ``checkpoint.npz``, ``vocab.json``, ``metrics.json``
and ``curves.png``; ``minicrate sample RUN_DIR`` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

NAME = "train-lm"
HELP = "train a character-level CRATE language model (causal or masked) on Shakespeare"

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
CURVES = "curves.png"
VOCAB = "vocab.json"


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
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got "
                             f"{self.warmup_steps}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


# Peak learning rates measured to work (benchmarks/train_lm.py): the masked model stays at the
# most-frequent-character baseline for thousands of steps at 5e-3 (its attention never becomes
# local); at 1e-3 it leaves the baseline within a few hundred steps.
DEFAULT_LR = {"causal": 5e-3, "masked": 1e-3}

_RESUME_FREE = {"steps", "backend", "eval_windows", "checkpoint_every", "time_limit_s",
                "eval_every", "workers"}


# ----------------------------------------------------------------------------------------
# One step's gradients, the batch split over the cores
# ----------------------------------------------------------------------------------------


def loss_and_grads(params, inputs, targets, config, weights=None, *, workers=1):
    """:func:`minicrate.models.lm.loss_and_grads` with the batch split over ``workers`` threads.

    Each chunk of windows runs the whole forward and backward in its own thread
    with one-thread BLAS (:mod:`minicrate.training.parallel.threads`): on a small model this uses
    every core for the elementwise work too, and it avoids BLAS threads fighting
    over a busy machine.  The loss is a mean over the selected positions, so
    chunk i enters with the share ``n_i / n`` of those positions (all of them
    for the causal form, the masked ones for the masked form) -- the result is
    the one-chunk computation up to rounding.
    """
    from minicrate.models import lm
    from minicrate.training.parallel.threads import map_chunks

    B = inputs.shape[0]
    if workers <= 1 or B < 2:
        return lm.loss_and_grads(params, inputs, targets, config, weights)

    def part(s):
        w = None if weights is None else weights[s]
        return s, lm.loss_and_grads(params, inputs[s], targets[s], config, w)

    results = map_chunks(part, B, workers)
    shares = [float(weights[s].sum()) if weights is not None else (s.stop - s.start) * 1.0
              for s, _ in results]
    total = sum(shares)
    loss, grads = 0.0, None
    for share, (_, (loss_i, grads_i, _)) in zip(shares, results, strict=True):
        w = share / total
        loss += w * loss_i
        if grads is None:
            grads = {k: w * g for k, g in grads_i.items()}
        else:
            grads = {k: grads[k] + w * g for k, g in grads_i.items()}
    return loss, grads, None


# ----------------------------------------------------------------------------------------
# Evaluation on held-out plays
# ----------------------------------------------------------------------------------------


def validation_set(corpus, model_config, count, seed):
    """Fixed validation windows (and, for the masked form, fixed masks)."""
    import numpy as np

    from minicrate.data.text import fixed_windows, masked_batch

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
    Each batch is split over ``workers`` threads (:mod:`minicrate.training.parallel.threads`).
    """
    import numpy as np

    from minicrate.core.backend import namespace, to_numpy
    from minicrate.core.validate import finite_checks
    from minicrate.models import lm
    from minicrate.training.parallel.threads import map_chunks

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
            parts = map_chunks(lambda c, xb=xb: lm.forward(params, xb[c], model_config)[0],
                               len(xb), workers)
            logits = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
            loss, _ = lm.lm_loss_forward(logits, targets[sl], weights[sl])
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
    import numpy as np

    u = corpus.unigram()
    u = np.maximum(u, 1e-12)
    return float(-np.log(u[corpus.val]).mean())


def bigram_cross_entropy(corpus, alpha=1.0):
    """Cross-entropy (nats/char) on the validation text of a bigram model counted on
    the training text (add-``alpha`` smoothing): the loss of a model that looks at the
    previous character only (about 2.5)."""
    import numpy as np

    V = corpus.vocab.size
    counts = np.full((V, V), alpha)
    np.add.at(counts, (corpus.train[:-1], corpus.train[1:]), 1.0)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-logp[corpus.val[:-1], corpus.val[1:]].mean())


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------


def _load_checkpoint(path):
    from minicrate.core import checkpoint as ckpt
    from minicrate.models.lm import LMConfig

    params, _, extra = ckpt.load(path)
    if "lm_config" not in extra:
        raise ckpt.CheckpointError(f"{path!r} is not a language-model checkpoint (no lm_config); "
                                   "classifier runs are read by 'minicrate train'")
    return params, LMConfig.from_dict(extra["lm_config"]), extra


def load_run(run_dir, *, backend="numpy"):
    """``(params, LMConfig, vocab, extra)`` of a train-lm run directory (or checkpoint file)."""
    from minicrate.core import checkpoint as ckpt
    from minicrate.core.backend import get_backend, host_to
    from minicrate.data.text import Vocab
    from minicrate.models.lm import init_params

    path = os.fspath(run_dir)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    ck = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.exists(ck):
        raise FileNotFoundError(f"no checkpoint at {ck!r} (give a train-lm run directory)")
    params, config, extra = _load_checkpoint(ck)
    ckpt.check_params(params, init_params(config), source=ck)
    vocab = Vocab.load(os.path.join(folder, VOCAB))
    if vocab.size != config.vocab_size:
        raise ValueError(f"{VOCAB} has {vocab.size} characters but the model expects "
                         f"{config.vocab_size}")
    xp = get_backend(backend)
    return {k: host_to(xp, v, v.dtype.name) for k, v in params.items()}, config, vocab, extra


def train_lm(model_config, train_config, out_dir, *, resume=False, progress=True,
             handle_signals=False, stop_after_steps=None, corpus=None, log=print):
    """Train (or resume) a character language model; write the run directory.

    Args:
        model_config: :class:`minicrate.models.lm.LMConfig` (its ``vocab_size`` must
            match the corpus; use :func:`model_config_for`).
        train_config: :class:`LMTrainConfig`.
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoint.npz`` (same model and recipe;
            ``steps`` and evaluation settings may change).
        progress: tqdm bar.
        handle_signals: SIGINT/SIGTERM -> checkpoint and ``TrainingInterrupted``.
        stop_after_steps: stop (with a checkpoint) after that many steps in total.
        corpus: a :class:`minicrate.data.text.Corpus` (default: all plays, split by
            ``train_config``), for tests that use a few plays.

    Returns:
        dict ``params``, ``history``, ``val_loss``, ``steps``, ``wall_time_s``, ``status``.
    """
    import numpy as np

    from minicrate.core import checkpoint as ckpt
    from minicrate.core.allocator import keep_freed_memory
    from minicrate.core.backend import get_backend, host_to
    from minicrate.core.validate import finite_checks
    from minicrate.data.text import causal_batch, load_corpus, masked_batch, random_windows
    from minicrate.models import lm
    from minicrate.training.classifier import TrainingDiverged, TrainingInterrupted, _progress_factory, _Signals
    from minicrate.training.optim import clip_by_global_norm, make_optimizer
    from minicrate.training.parallel.threads import default_workers, one_thread_blas
    from minicrate.training.schedule import warmup_cosine

    tc, mc = train_config, model_config
    if tc.form != mc.form:
        raise ValueError(f"train config form {tc.form!r} differs from model form {mc.form!r}")
    if corpus is None:
        corpus = load_corpus(val_plays=tc.val_plays, seed=tc.split_seed, markdown=tc.markdown)
    if corpus.vocab.size != mc.vocab_size:
        raise ValueError(f"model vocab_size {mc.vocab_size} != corpus vocabulary "
                         f"{corpus.vocab.size}")
    os.makedirs(out_dir, exist_ok=True)
    ck_file = os.path.join(out_dir, CHECKPOINT)
    corpus.vocab.save(os.path.join(out_dir, VOCAB))
    keep_freed_memory()  # the run owns this process: reuse freed arrays, no page faults
    xp = get_backend(tc.backend)
    workers = tc.workers or default_workers(xp)
    window = mc.context + (1 if mc.causal else 0)
    steps_per_epoch = max(1, corpus.train.size // (tc.batch_size * mc.context))
    params = lm.init_params(mc, seed=tc.seed, backend=xp)
    decay = lambda key: params[key].ndim >= 2  # matrices and embeddings; not LN, biases
    optimizer = make_optimizer("adamw", tc.lr, weight_decay=tc.weight_decay, decay=decay,
                               betas=tc.betas)
    step, history, wall_before = 0, [], 0.0
    running = {"loss_sum": 0.0, "n": 0}
    if resume:
        if not os.path.exists(ck_file):
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_file!r}")
        saved, saved_config, extra = _load_checkpoint(ck_file)
        if saved_config != mc:
            ckpt.check_config(saved_config.to_dict(), mc.to_dict(), source=ck_file)
        ckpt.check_params(saved, params, source=ck_file)
        old, now = extra["train_config"], dataclasses.asdict(tc)
        now["betas"] = list(now["betas"])
        diffs = [f"{k}: {old.get(k)!r} vs {now[k]!r}" for k in now
                 if k not in _RESUME_FREE and old.get(k) != now[k]]
        if diffs:
            raise ckpt.CheckpointError(f"{ck_file} was trained with a different recipe ("
                                       + "; ".join(diffs) + ")")
        params.update({k: host_to(xp, v, v.dtype.name) for k, v in saved.items()})
        optimizer.load_state_dict(extra["optimizer"], like=params)
        step, history = int(extra["step"]), list(extra["history"])
        running, wall_before = dict(extra["running"]), float(extra["wall_time_s"])
        log(f"resumed {ck_file} at step {step}")

    val = validation_set(corpus, mc, tc.eval_windows, tc.split_seed)
    baseline_char = int(np.argmax(corpus.unigram()))
    unigram_ce = unigram_cross_entropy(corpus)
    bigram_ce = bigram_cross_entropy(corpus)
    t0 = time.perf_counter()
    wall = lambda: wall_before + (time.perf_counter() - t0)

    def save_state(status):
        extra = {"lm_config": mc.to_dict(), "train_config": dataclasses.asdict(tc),
                 "optimizer": optimizer.state_dict(), "step": step, "history": history,
                 "running": dict(running), "wall_time_s": wall(), "status": status}
        extra["train_config"]["betas"] = list(tc.betas)
        ckpt.save(ck_file, params, None, extra=extra)

    def write_metrics(status, message=None):
        from minicrate.training.classifier import _write_json

        last = history[-1] if history else {}
        metrics = {
            "status": status, "message": message, "form": mc.form,
            "model_config": mc.to_dict(), "train_config": dataclasses.asdict(tc),
            "param_count": lm.param_count(mc), "vocab_size": corpus.vocab.size,
            "markdown": corpus.markdown, "train_plays": corpus.train_plays,
            "val_plays": corpus.val_plays, "n_train_chars": int(corpus.train.size),
            "n_val_chars": int(corpus.val.size), "steps": step, "steps_per_epoch": steps_per_epoch,
            "epochs": step / steps_per_epoch, "wall_time_s": wall(),
            "unigram_val_cross_entropy": unigram_ce, "bigram_val_cross_entropy": bigram_ce,
            "most_frequent_char": corpus.vocab.chars[baseline_char],
            "val_loss": last.get("val_loss"), "history": history,
        }
        if not mc.causal:
            metrics["val_masked_accuracy"] = last.get("val_accuracy")
            metrics["val_baseline_accuracy"] = last.get("val_baseline_accuracy")
        elif history and "sample" in last:
            metrics["sample"] = last["sample"]
        _write_json(os.path.join(out_dir, METRICS), metrics)
        return metrics

    def plot():
        if history:
            plot_lm_curves(history, os.path.join(out_dir, CURVES), form=mc.form,
                           unigram=unigram_ce, bigram=bigram_ce,
                           title=f"{mc.form} CRATE on Shakespeare "
                                 f"({lm.param_count(mc):,} parameters)")

    def evaluate_now(final):
        result = evaluate(params, mc, val, baseline_char=baseline_char, workers=workers)
        entry = {"step": step, "epoch": step / steps_per_epoch, "lr": lr,
                 "train_loss": running["loss_sum"] / max(1, running["n"]),
                 "val_loss": result["loss"], "wall_time_s": wall()}
        if not mc.causal:
            entry["val_accuracy"] = result["accuracy"]
            entry["val_baseline_accuracy"] = result["baseline_accuracy"]
        elif final:  # a short sample at the end (sampling 120 characters costs 120 forwards)
            prompt = "ROMEO:" if set("ROMEO:") <= set(corpus.vocab.chars) else corpus.vocab.chars[0]
            with one_thread_blas() if workers > 1 else contextlib.nullcontext():
                entry["sample"] = lm.generate(params, mc, corpus.vocab, prompt, 120,
                                              temperature=0.8, top_k=10, seed=tc.seed)
        history.append(entry)
        running.update(loss_sum=0.0, n=0)
        extra = (f"  masked acc {entry['val_accuracy']:.3f} (baseline "
                 f"{entry['val_baseline_accuracy']:.3f})" if not mc.causal else "")
        log(f"step {step:>6}/{tc.steps}  train {entry['train_loss']:.4f}  val "
            f"{entry['val_loss']:.4f} nats/char{extra}  ({entry['wall_time_s']:.0f} s)")

    bar = _progress_factory(progress)(total=tc.steps, initial=step, desc=f"train-lm {mc.form}")
    status, message, lr = "completed", None, tc.lr
    with _Signals(handle_signals) as signals, finite_checks(False):
        while step < tc.steps:
            rng = np.random.default_rng([tc.seed, step])
            windows = random_windows(corpus.train, window, tc.batch_size, rng)
            if mc.causal:
                inputs, targets = causal_batch(windows)
                weights = None
            else:
                inputs, targets, weights = masked_batch(windows, mc.mask_id, rng,
                                                        rate=mc.mask_rate)
            lr = warmup_cosine(step, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                               base_lr=tc.lr, min_lr=tc.min_lr)
            loss, grads, _ = loss_and_grads(params, inputs, targets, mc, weights, workers=workers)
            gnorm = None
            if tc.clip is not None:
                grads, gnorm = clip_by_global_norm(grads, tc.clip)
            if not math.isfinite(loss) or (gnorm is not None and not math.isfinite(gnorm)):
                bar.close()
                message = (f"training stopped: loss {loss}, gradient norm {gnorm} at step "
                           f"{step + 1}; the last checkpoint is kept. Try a lower --lr.")
                write_metrics("diverged", message)
                plot()
                raise TrainingDiverged(message)
            optimizer.step(params, grads, lr=lr)
            step += 1
            running["loss_sum"] += loss
            running["n"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
            out_of_time = tc.time_limit_s is not None and wall() >= tc.time_limit_s
            stop = bool(signals.received) or (stop_after_steps is not None
                                              and step >= stop_after_steps)
            if step % tc.eval_every == 0 or step == tc.steps or out_of_time:
                evaluate_now(final=step == tc.steps or out_of_time)
                save_state("running" if step < tc.steps else "completed")
                write_metrics("running" if step < tc.steps else "completed")
            elif stop or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                save_state("running")
            if out_of_time and step < tc.steps:
                status = "time_limit"
                message = f"stopped by the time limit ({tc.time_limit_s:.0f} s) after step {step}"
                save_state(status)
                break
            if stop and step < tc.steps:
                bar.close()
                why = f"signal {signals.received}" if signals.received else "stop_after_steps"
                message = (f"stopped by {why} after step {step}; checkpoint saved, continue "
                           "with --resume")
                write_metrics("interrupted", message)
                plot()
                if signals.received:
                    raise TrainingInterrupted(message)
                log(message)
                return {"params": params, "history": history, "steps": step,
                        "val_loss": history[-1]["val_loss"] if history else None,
                        "wall_time_s": wall(), "status": "interrupted"}
    bar.close()
    plot()
    metrics = write_metrics(status, message)
    if message:
        log(message)
    return {"params": params, "history": history, "steps": step, "val_loss": metrics["val_loss"],
            "wall_time_s": metrics["wall_time_s"], "status": status}


def plot_lm_curves(history, path, *, form, unigram=None, bigram=None, title="language model"):
    """Train/validation loss per step (and masked accuracy vs baseline) as a PNG."""
    from minicrate.measure.plotting import _figure, _save

    steps = [h["step"] for h in history]
    masked = form == "masked"
    fig = _figure(9 if masked else 5.5, 3.4)
    axes = fig.subplots(1, 2 if masked else 1)
    ax1 = axes[0] if masked else axes
    ax1.plot(steps, [h["train_loss"] for h in history], "o-", ms=3, label="train (running mean)")
    ax1.plot(steps, [h["val_loss"] for h in history], "s-", ms=3, label="validation plays")
    if unigram is not None and not masked:
        ax1.axhline(unigram, color="gray", ls="--", lw=1, label=f"unigram {unigram:.2f}")
    if bigram is not None and not masked:
        ax1.axhline(bigram, color="gray", ls=":", lw=1, label=f"bigram {bigram:.2f}")
    best = min(h["val_loss"] for h in history)
    ax1.set(xlabel="step", ylabel="cross-entropy (nats/char)",
            title=f"loss (best validation {best:.3f})")
    if masked:
        ax2 = axes[1]
        ax2.plot(steps, [100 * h["val_accuracy"] for h in history], "s-", ms=3, label="model")
        ax2.plot(steps, [100 * h["val_baseline_accuracy"] for h in history], "--", color="gray",
                 label="most frequent character")
        ax2.set(xlabel="step", ylabel="accuracy (%)", title="masked-character accuracy")
    for ax in (axes if masked else [axes]):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def model_config_for(vocab_size, args_or_dict):
    """An :class:`minicrate.models.lm.LMConfig` from CLI arguments (or a dict of them)."""
    from minicrate.models.lm import LMConfig

    a = args_or_dict if isinstance(args_or_dict, dict) else vars(args_or_dict)
    return LMConfig(vocab_size=vocab_size, form=a["form"], context=a["context"], dim=a["dim"],
                    depth=a["depth"], heads=a["heads"], tie_embedding=not a["untied_head"],
                    eta=a.get("eta", 0.1), lam=a.get("lam", 0.1),
                    embed_std=a.get("embed_std", 0.02), pos_init=a.get("pos_init", "normal"),
                    dtype=a["dtype"])


def add_arguments(p):
    p.add_argument("--form", choices=["causal", "masked"], default="causal",
                   help="causal (GPT-style, next character) or masked (BERT-style, 15%% masks)")
    p.add_argument("--out", default=None, help="run directory (default runs/lm-<form>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context", type=int, default=64, help="characters per window")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--untied-head", action="store_true", help="a separate head matrix")
    p.add_argument("--embed-std", type=float, default=0.02,
                   help="std of the initial token and position embeddings")
    p.add_argument("--pos-init", choices=["normal", "sinusoidal"], default="normal",
                   help="start of the learned positional embedding")
    p.add_argument("--eta", type=float, default=0.1, help="ISTA step size η (official 0.1)")
    p.add_argument("--lam", type=float, default=0.1, help="ISTA sparsity weight λ (official 0.1)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 5e-3 causal, 1e-3 masked)")
    p.add_argument("--min-lr", type=float, default=None, help="final learning rate (default lr/10)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm bound (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0, help="which plays are held out")
    p.add_argument("--val-plays", type=int, default=4)
    p.add_argument("--markdown", action="store_true", help="keep the Markdown markers")
    p.add_argument("--eval-every", type=int, default=250, help="steps between evaluations "
                   "(each also writes a checkpoint)")
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--checkpoint-every", type=int, default=0, help="extra checkpoints (steps)")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--workers", type=int, default=0, help="threads per batch (0: one per core "
                   "on NumPy)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--no-progress", action="store_true")


def train_config_from(args):
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.form]
    return LMTrainConfig(
        form=args.form, steps=args.steps, batch_size=args.batch_size, lr=lr,
        min_lr=args.min_lr if args.min_lr is not None else lr / 10,
        warmup_steps=min(args.warmup_steps, args.steps),
        weight_decay=args.weight_decay, clip=args.clip or None, seed=args.seed,
        split_seed=args.split_seed, val_plays=args.val_plays, markdown=args.markdown,
        eval_every=args.eval_every, eval_windows=args.eval_windows,
        checkpoint_every=args.checkpoint_every, time_limit_s=args.time_limit,
        backend=args.backend, workers=args.workers)


def run(args):
    from minicrate.data.text import load_corpus
    from minicrate.models import lm
    from minicrate.training.classifier import TrainingInterrupted

    tc = train_config_from(args)
    corpus = load_corpus(val_plays=tc.val_plays, seed=tc.split_seed, markdown=tc.markdown)
    mc = model_config_for(corpus.vocab.size, args)
    out = args.out or os.path.join("runs", f"lm-{args.form}")
    print(f"{mc.form} CRATE language model: {lm.param_count(mc):,} parameters, "
          f"{corpus.vocab.size} characters; {corpus.train.size:,} training characters "
          f"({len(corpus.train_plays)} plays), {corpus.val.size:,} validation characters "
          f"({', '.join(corpus.val_plays)})")
    try:
        result = train_lm(mc, tc, out, resume=args.resume, progress=not args.no_progress,
                          handle_signals=True, corpus=corpus)
    except TrainingInterrupted as err:
        print(err)
        return 130
    print(f"{result['status']}: {result['steps']} steps in {result['wall_time_s']:.0f} s, "
          f"validation loss {result['val_loss']:.4f} nats/char; run directory {out}")
    return 0
