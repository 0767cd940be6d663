"""``minicrate train-dino``: train a CRATE (or ViT) backbone without labels, SimDINO or DINO."""

from __future__ import annotations

from minicrate.commands import arguments as a
from minicrate.commands.arguments import add_optimisation_arguments, add_resume_arguments

NAME = "train-dino"
HELP = ("train a backbone without labels by SimDINO or DINO on MNIST-5k or digits (k-NN and probe "
        "on frozen features beside pixel, untrained and supervised baselines; --resume)")


def add_arguments(p):
    p.add_argument("--method", choices=["simdino", "dino"], default="simdino",
                   help="SimDINO (coding-rate term, the default) or DINO (prototypes, centring, sharpening)")
    p.add_argument("--data", choices=["digits", "mnist"], default="mnist",
                   help="data set; also picks the recipe whose defaults the other options override")
    g = p.add_argument_group("model (defaults: the recipe's, minicrate.training.dino.SELFSUP_RECIPES)")
    g.add_argument("--block", choices=["crate", "transformer"], default="crate",
                   help="CRATE layers, or standard transformer blocks (a ViT with CRATE's parameter "
                        "count, as `compare` builds it) under the same training")
    g.add_argument("--dim", type=a.integer(1, a.MAX_WIDTH), help="token width d")
    g.add_argument("--depth", type=a.integer(1, a.MAX_DEPTH), help="number of layers L")
    g.add_argument("--heads", type=a.integer(1, a.MAX_HEADS), help="number of heads K (p = d/K)")
    g.add_argument("--pool", choices=["cls", "mean"], help="the feature: class token or mean token")
    g.add_argument("--dtype", choices=["float32", "float64"])
    s = p.add_argument_group("self-distillation (defaults: the recipe's)")
    s.add_argument("--local-views", type=a.integer(0, 16), dest="n_local", help="local views per image (4)")
    s.add_argument("--momentum", type=a.real(0.0, 1.0), help="teacher EMA momentum at the start (0.996)")
    s.add_argument("--gamma", type=a.non_negative_real,
                   help="SimDINO's coding-rate weight (default (b + B)/(b·B), the released code's)")
    s.add_argument("--supervised-epochs", type=a.integer(0, a.MAX_EPOCHS), dest="supervised_epochs",
                   help="epochs of the supervised baseline (0: skip it)")
    add_optimisation_arguments(p, seeds="the initialisation, batch order and views")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy or array_api_strict")
    p.add_argument("--out", type=a.out_dir, help="run directory (default runs/<method>-<data>)")
    add_resume_arguments(p)
    p.add_argument("--checkpoint-every", type=a.integer(0, a.MAX_STEPS), default=0, metavar="STEPS",
                   help="also checkpoint every this many steps (default: at each evaluation only)")
    p.add_argument("--threads", type=a.threads, default=1, help="BLAS threads for NumPy (0: library default)")
    p.add_argument("--workers", type=a.workers, default=0,
                   help="split each step's views over this many threads (0, the default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs_from_args(args):
    """``(SelfSupConfig, TrainConfig, SelfSupRecipe)``: the recipe with the options applied."""
    import dataclasses

    from minicrate.training.dino import selfsup_recipe

    config, tc, recipe = selfsup_recipe(args.data, args.method, block=args.block)
    bb_over = {k: getattr(args, k) for k in ("dim", "depth", "heads", "pool", "dtype")
               if getattr(args, k, None) is not None}
    if bb_over:
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, **bb_over))
    train_over = a.optimisation_overrides(args, tc)
    recipe_over = {k: getattr(args, k) for k in ("momentum", "gamma", "supervised_epochs")
                   if getattr(args, k, None) is not None}
    if getattr(args, "n_local", None) is not None:
        recipe_over["views"] = dataclasses.replace(recipe.views, n_local=args.n_local)
    if "epochs" in train_over:  # a short run keeps the teacher-temperature warm-up inside it
        recipe_over["warmup_teacher_epochs"] = min(recipe.warmup_teacher_epochs, train_over["epochs"] / 2)
    return config, dataclasses.replace(tc, **train_over), dataclasses.replace(recipe, **recipe_over)


def check(args):
    """Options that depend on each other (the CLI calls this before :func:`run`)."""
    config, tc, recipe = configs_from_args(args)
    a.check_shift(tc.shift, config.backbone.image_size)
    # the student holds every view's activations at once
    a.check_model_memory(config.backbone, tc.batch_size * recipe.views.n_views)


def run(args):
    import os

    from minicrate.models.classifier import describe
    from minicrate.training.dino import train_dino
    from minicrate.training.rundir import TrainingInterrupted

    config, tc, recipe = configs_from_args(args)
    out = args.out or os.path.join("runs", f"{args.method}-{args.data}")
    v = recipe.views
    print(f"{args.method}: {describe(config.backbone)} + head {config.hidden_dim}/{config.bottleneck_dim}"
          f"{'' if args.method == 'simdino' else f'/{config.out_dim}'}; {v.n_global} global + {v.n_local} "
          f"local views; {tc.optimizer} lr {tc.lr}, {tc.epochs} epochs of batch {tc.batch_size}, backend "
          f"{tc.backend} -> {out}", flush=True)
    try:
        result = train_dino(config, tc, recipe, out, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.no_progress, handle_signals=True,
                            log=lambda line: print(line, flush=True), threads=args.threads,
                            workers=args.workers)
    except TrainingInterrupted as err:
        print(f"minicrate train-dino: {err}", flush=True)
        return 130
    m = result["metrics"]
    probe = "" if m["probe_accuracy"] is None else f", probe {100 * m['probe_accuracy']:.2f}%"
    print(f"teacher k-NN {100 * m['knn_accuracy']:.2f}%{probe} after {result['steps']} steps, "
          f"{result['wall_time_s']:.1f} s; run directory {out}")
    return 0
