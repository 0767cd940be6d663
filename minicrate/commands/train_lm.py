"""``minicrate train-lm``: train a character-level CRATE language model on Shakespeare.

This module parses the arguments and calls :func:`minicrate.training.lm.train_lm`
(the loop is :func:`minicrate.training.loop.fit`).  ``LMTrainConfig``, ``train_lm``,
``evaluate``, ``load_run`` and the other names that used to live here are
re-exported for older imports.
"""

from __future__ import annotations

import os

from minicrate.commands import arguments as a
from minicrate.commands.arguments import add_resume_arguments
from minicrate.training.lm import (  # noqa: F401  (re-exported: older imports name them here)
    DEFAULT_LR,
    LMTrainConfig,
    bigram_cross_entropy,
    evaluate,
    load_run,
    loss_and_grads,
    train_lm,
    unigram_cross_entropy,
    validation_set,
)
from minicrate.training.rundir import CHECKPOINT, CURVES, METRICS, VOCAB, TrainingInterrupted  # noqa: F401

NAME = "train-lm"
HELP = "train a character-level CRATE language model (causal or masked) on Shakespeare"


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
    p.add_argument("--out", type=a.out_dir, default=None, help="run directory (default runs/lm-<form>)")
    add_resume_arguments(p)
    p.add_argument("--steps", type=a.steps, default=3000)
    p.add_argument("--batch-size", type=a.batch, default=32)
    p.add_argument("--context", type=a.integer(1, a.MAX_CONTEXT), default=64, help="characters per window")
    p.add_argument("--dim", type=a.integer(1, a.MAX_WIDTH), default=128)
    p.add_argument("--depth", type=a.integer(1, a.MAX_DEPTH), default=4)
    p.add_argument("--heads", type=a.integer(1, a.MAX_HEADS), default=4)
    p.add_argument("--untied-head", action="store_true", help="a separate head matrix")
    p.add_argument("--embed-std", type=a.non_negative_real, default=0.02,
                   help="std of the initial token and position embeddings")
    p.add_argument("--pos-init", choices=["normal", "sinusoidal"], default="normal",
                   help="start of the learned positional embedding")
    p.add_argument("--eta", type=a.real(0.0, lo_open=True), default=0.1, help="ISTA step size η (official 0.1)")
    p.add_argument("--lam", type=a.non_negative_real, default=0.1, help="ISTA sparsity weight λ (official 0.1)")
    p.add_argument("--lr", type=a.learning_rate, default=None,
                   help="peak learning rate (default 5e-3 causal, 1e-3 masked)")
    p.add_argument("--min-lr", type=a.non_negative_real, default=None, help="final learning rate (default lr/10)")
    p.add_argument("--warmup-steps", type=a.integer(0, a.MAX_STEPS), default=50)
    p.add_argument("--weight-decay", type=a.non_negative_real, default=0.1)
    p.add_argument("--clip", type=a.non_negative_real, default=1.0, help="global gradient-norm bound (0: off)")
    p.add_argument("--seed", type=a.seed, default=0)
    p.add_argument("--split-seed", type=a.seed, default=0, help="which plays are held out")
    p.add_argument("--val-plays", type=a.integer(1, 30), default=4)
    p.add_argument("--markdown", action="store_true", help="keep the Markdown markers")
    p.add_argument("--eval-every", type=a.integer(1, a.MAX_STEPS), default=250, help="steps between evaluations "
                   "(each also writes a checkpoint)")
    p.add_argument("--eval-windows", type=a.integer(1, a.MAX_BATCH), default=128)
    p.add_argument("--checkpoint-every", type=a.integer(0, a.MAX_STEPS), default=0, help="extra checkpoints (steps)")
    p.add_argument("--time-limit", type=a.non_negative_real, default=None, help="stop after this many seconds")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--workers", type=a.workers, default=0, help="threads per batch (0: one per core "
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


def check(args):
    """Options that depend on each other, and the memory the run needs (the CLI calls this
    before :func:`run`)."""
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.form]
    if args.min_lr is not None and args.min_lr > lr:
        raise a.UsageError("--min-lr", args.min_lr, f"a final learning rate <= the peak --lr {lr:g}")
    if args.dim % args.heads:
        raise a.UsageError("--heads", args.heads, f"a divisor of --dim {args.dim}")
    needed = a.step_bytes(args.batch_size, args.context, args.dim, args.depth, args.heads, args.dtype)
    a.check_memory(needed, "--context", args.context,
                   f"--batch-size {args.batch_size}, --dim {args.dim}, --depth {args.depth}, "
                   f"--heads {args.heads}, --dtype {args.dtype}")


def run(args):
    from minicrate.data.text import load_corpus
    from minicrate.models import lm
    from minicrate.training.rundir import check_run_dir

    tc = train_config_from(args)
    out = args.out or os.path.join("runs", f"lm-{args.form}")
    check_run_dir(out, resume=args.resume, overwrite=args.overwrite)  # before reading the plays
    corpus = load_corpus(val_plays=tc.val_plays, seed=tc.split_seed, markdown=tc.markdown)
    mc = model_config_for(corpus.vocab.size, args)
    print(f"{mc.form} CRATE language model: {lm.param_count(mc):,} parameters, "
          f"{corpus.vocab.size} characters; {corpus.train.size:,} training characters "
          f"({len(corpus.train_plays)} plays), {corpus.val.size:,} validation characters "
          f"({', '.join(corpus.val_plays)})")
    try:
        result = train_lm(mc, tc, out, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress,
                          handle_signals=True, corpus=corpus)
    except TrainingInterrupted as err:
        print(err)
        return 130
    print(f"{result['status']}: {result['steps']} steps in {result['wall_time_s']:.0f} s, "
          f"validation loss {result['val_loss']:.4f} nats/char; run directory {out}")
    return 0
