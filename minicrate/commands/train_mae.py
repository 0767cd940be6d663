"""``minicrate train-mae``: train CRATE-MAE (encoder + inverse decoder) on real digits."""

from __future__ import annotations

from minicrate.commands import arguments as a
from minicrate.commands.arguments import add_optimisation_arguments, add_resume_arguments

NAME = "train-mae"
HELP = "train CRATE-MAE on MNIST-5k or digits (masked-patch MSE, checkpoint at each evaluation, --resume, linear probe)"


def add_arguments(p):
    p.add_argument("--data", choices=["digits", "mnist"], default="mnist",
                   help="data set; also picks the recipe whose defaults the other options override")
    g = p.add_argument_group("model (defaults: the recipe's preset, minicrate.models.mae.MAE_PRESETS)")
    g.add_argument("--preset", help="MAE preset, e.g. mnist, digits")
    g.add_argument("--dim", type=a.integer(1, a.MAX_WIDTH), help="token width d (a multiple of 4 and of --heads)")
    g.add_argument("--depth", type=a.integer(1, a.MAX_DEPTH), help="encoder layers L (the decoder has as many)")
    g.add_argument("--heads", type=a.integer(1, a.MAX_HEADS), help="number of heads K (p = d/K)")
    g.add_argument("--image-size", type=a.integer(1, 512), dest="image_size",
                   help="canvas side in pixels the images are centred on (MNIST: 28 or more)")
    g.add_argument("--patch", type=a.integer(1, 64), dest="patch_size", help="patch size in pixels")
    g.add_argument("--mask-ratio", type=a.real(0.0, 1.0, lo_open=True, hi_open=True), dest="mask_ratio",
                   help="fraction of patches masked (0.75)")
    g.add_argument("--lam", type=a.non_negative_real, help="encoder ISTA λ (0.5 in the released CRATE-MAE)")
    g.add_argument("--tie-decoder", action="store_true", default=None,
                   help="share each decoder layer's E and U with the mirror encoder layer's D and U")
    g.add_argument("--out-init-gain", type=a.non_negative_real, dest="out_init_gain",
                   help="initial scale of the attention output maps W_out (1: as released; default 0.1)")
    g.add_argument("--dtype", choices=["float32", "float64"])
    add_optimisation_arguments(p, seeds="the initialisation, batch order and masks")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy or array_api_strict")
    p.add_argument("--out", type=a.out_dir, help="run directory (default runs/mae-<data>)")
    add_resume_arguments(p)
    p.add_argument("--checkpoint-every", type=a.integer(0, a.MAX_STEPS), default=0, metavar="STEPS",
                   help="also checkpoint every this many steps (default: at each evaluation only)")
    p.add_argument("--no-probe", action="store_true", help="skip the final linear probe")
    p.add_argument("--threads", type=a.threads, default=1, help="BLAS threads for NumPy (0: library default)")
    p.add_argument("--workers", type=a.workers, default=0,
                   help="split each batch over this many worker processes (NumPy; 0: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs_from_args(args):
    """``(MAEConfig, TrainConfig)``: the recipe of ``args.data`` with the options applied."""
    import dataclasses

    from minicrate.models.mae import mae_preset
    from minicrate.training.mae import mae_recipe

    model_config, train_config = mae_recipe(args.data)
    if args.preset:
        model_config = mae_preset(args.preset)
    model_fields = ("image_size", "dim", "depth", "heads", "patch_size", "mask_ratio", "lam", "tie_decoder",
                    "out_init_gain", "dtype")
    model_over = {k: getattr(args, k) for k in model_fields if getattr(args, k, None) is not None}
    if model_over:
        model_config = dataclasses.replace(model_config, **model_over)
    train_over = a.optimisation_overrides(args, train_config)
    return model_config, dataclasses.replace(train_config, **train_over)


def check(args):
    """Options that depend on each other (the CLI calls this before :func:`run`)."""
    model_config, train_config = configs_from_args(args)
    a.check_shift(train_config.shift, model_config.image_size)
    a.check_model_memory(model_config, train_config.batch_size, depth=2 * model_config.depth)


def run(args):
    import os

    from minicrate.models.mae import mae_param_count
    from minicrate.training.mae import train_mae
    from minicrate.training.rundir import TrainingInterrupted, limit_threads

    model_config, train_config = configs_from_args(args)
    out = args.out or os.path.join("runs", f"mae-{args.data}")
    c, t = model_config, train_config
    print(f"CRATE-MAE d={c.dim} depth={c.depth}+{c.depth} heads={c.heads} patch={c.patch_size} "
          f"tokens={c.num_patches + 1} mask={c.mask_ratio} params={mae_param_count(c):,}"
          f"{' (decoder tied to encoder)' if c.tie_decoder else ''}; {t.optimizer} lr {t.lr} wd "
          f"{t.weight_decay}, {t.epochs} epochs of batch {t.batch_size}, backend {t.backend} -> {out}", flush=True)
    try:
        with limit_threads(args.threads):
            result = train_mae(model_config, train_config, out, resume=args.resume, overwrite=args.overwrite,
                               progress=not args.no_progress,
                               handle_signals=True, probe=not args.no_probe, workers=args.workers,
                               log=lambda line: print(line, flush=True))
    except TrainingInterrupted as err:
        print(f"minicrate train-mae: {err}", flush=True)
        return 130
    print(f"test masked-patch MSE {result['test_mse']:.4f} vs mean-patch baseline {result['baseline_mse']:.4f} "
          f"({result['test_mse'] / result['baseline_mse']:.3f}×) after {result['steps']} steps, "
          f"{result['wall_time_s']:.1f} s; run directory {out}")
    return 0
