"""``minicrate train``: train CRATE on real digits with the hand-written backward."""

from __future__ import annotations

from minicrate.commands import arguments as a
from minicrate.commands.arguments import (
    add_model_arguments,
    add_optimisation_arguments,
    add_resume_arguments,
)

NAME = "train"
HELP = "train CRATE on digits or MNIST-5k (progress bar, checkpoint at each evaluation, --resume)"


def add_arguments(p):
    p.add_argument(
        "--data",
        choices=["digits", "mnist"],
        default="digits",
        help="data set; also picks the recipe whose defaults the other options override",
    )
    add_model_arguments(p)
    add_optimisation_arguments(p, seeds="the initialisation, batch order and augmentation")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy or array_api_strict")
    p.add_argument("--out", type=a.out_dir, help="run directory (default runs/<data>)")
    add_resume_arguments(p)
    p.add_argument(
        "--checkpoint-every",
        type=a.integer(0, a.MAX_STEPS),
        default=0,
        metavar="STEPS",
        help="also checkpoint every this many steps (default: at each evaluation only)",
    )
    p.add_argument(
        "--threads", type=a.threads, default=1, help="BLAS threads for NumPy (0: library default)"
    )
    p.add_argument(
        "--workers",
        type=a.workers,
        default=1,
        help="split each batch over this many worker processes (NumPy; 0: one per core)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs_from_args(args):
    """``(CRATEConfig, TrainConfig)``: the recipe of ``args.data`` with the options applied."""
    import dataclasses

    from minicrate.models.classifier import preset
    from minicrate.training.classifier import recipe

    model_config, train_config = recipe(args.data)
    if args.preset:
        model_config = preset(args.preset)
    model_over = {
        k: getattr(args, k)
        for k in ("dim", "depth", "heads", "patch_size", "pool", "dtype")
        if getattr(args, k, None) is not None
    }
    if model_over:
        model_config = dataclasses.replace(model_config, **model_over)
    train_over = {
        k: getattr(args, k)
        for k in (
            "optimizer",
            "lr",
            "weight_decay",
            "epochs",
            "batch_size",
            "warmup_epochs",
            "clip",
            "shift",
            "seed",
        )
        if getattr(args, k, None) is not None
    }
    if train_over.get("clip") == 0:
        train_over["clip"] = None
    train_over.update(backend=args.backend, checkpoint_every=args.checkpoint_every)
    return model_config, dataclasses.replace(train_config, **train_over)


def check(args):
    """Options that depend on each other (the CLI calls this before :func:`run`)."""
    from minicrate.commands.arguments import check_model_memory, check_shift

    model_config, train_config = configs_from_args(args)
    check_shift(train_config.shift, model_config.image_size)
    check_model_memory(model_config, train_config.batch_size)


def run(args):
    import os

    from minicrate.models.classifier import describe
    from minicrate.training.classifier import train
    from minicrate.training.rundir import TrainingInterrupted, limit_threads

    model_config, train_config = configs_from_args(args)
    out = args.out or os.path.join("runs", args.data)
    print(
        f"{describe(model_config)}; {train_config.optimizer} lr {train_config.lr} "
        f"wd {train_config.weight_decay}, {train_config.epochs} epochs of batch "
        f"{train_config.batch_size}, backend {train_config.backend} -> {out}",
        flush=True,
    )
    try:
        with limit_threads(args.threads):
            result = train(
                model_config,
                train_config,
                out,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                handle_signals=True,
                log=lambda line: print(line, flush=True),
                threads=args.threads,
                workers=args.workers,
            )
    except TrainingInterrupted as err:
        print(f"minicrate train: {err}", flush=True)
        return 130
    print(
        f"test accuracy {100 * result['test_accuracy']:.2f}% after {result['steps']} steps, "
        f"{result['wall_time_s']:.1f} s; run directory {out}"
    )
    return 0
