"""``minicrate quickstart`` (``make run``): train CRATE on the digits and open it up.

Trains the ``digits`` recipe (minicrate.training.classifier.RECIPES) with the hand-written
backward, prints the test accuracy, then writes the layer-wise measurement
(R^c and sparsity per layer, trained vs initialisation) and the class-token
attention figure into the run directory.
"""

from __future__ import annotations

from minicrate.commands import arguments as a
from minicrate.commands.arguments import add_resume_arguments

NAME = "quickstart"
HELP = "train CRATE on sklearn's digits, print test accuracy, write measurement + attention figures"


def add_arguments(p):
    p.add_argument(
        "--out", type=a.out_dir, default="runs/quickstart", help="run directory (default runs/quickstart)"
    )
    p.add_argument("--epochs", type=a.epochs, help="override the recipe's number of epochs")
    p.add_argument("--seed", type=a.seed, help="override the recipe's seed")
    add_resume_arguments(p)
    p.add_argument(
        "--threads", type=a.threads, default=1, help="BLAS threads for NumPy (0: library default)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    import os
    import time

    from minicrate.measure.layerwise import format_table
    from minicrate.models.classifier import describe
    from minicrate.runs import attention_run, measure_run
    from minicrate.training.classifier import recipe, train
    from minicrate.training.rundir import TrainingInterrupted, limit_threads

    start = time.perf_counter()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    model_config, train_config = recipe("digits", **overrides)
    print(f"minicrate quickstart: training {describe(model_config)}", flush=True)
    print(
        f"on sklearn's 8x8 digits ({train_config.optimizer}, lr {train_config.lr}, "
        f"{train_config.epochs} epochs, hand-written backward, NumPy)",
        flush=True,
    )
    try:
        with limit_threads(args.threads):
            result = train(
                model_config,
                train_config,
                args.out,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                handle_signals=True,
                log=lambda line: print(line, flush=True),
                threads=args.threads,
            )
            measured, json_path, measure_png = measure_run(args.out)
            attention_png = attention_run(args.out, n_images=4)
    except TrainingInterrupted as err:
        print(f"minicrate quickstart: {err}", flush=True)
        return 130
    print()
    print(
        f"TEST ACCURACY: {100 * result['test_accuracy']:.2f}% "
        f"on {result['n_test']} held-out digits "
        f"(training took {result['wall_time_s']:.0f} s)"
    )
    print()
    print("Layer-wise white-box measurements (the paper's protocol), trained vs at initialisation:")
    print(format_table(measured))
    print()
    for label, path in (
        ("curves", os.path.join(args.out, "curves.png")),
        ("metrics", os.path.join(args.out, "metrics.json")),
        ("measurement", measure_png),
        ("measure.json", json_path),
        ("attention", attention_png),
    ):
        print(f"  {label:<12} {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0
