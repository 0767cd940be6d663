"""``minicrate evaluate``: test accuracy of a trained run or checkpoint."""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "evaluate"
HELP = "test accuracy (overall and per class) of a run directory or checkpoint"


def add_arguments(p):
    p.add_argument("path", type=a.existing_path, help="run directory (its latest checkpoint) or a .npz checkpoint")
    p.add_argument(
        "--data", choices=["digits", "mnist"], help="default: the data the run trained on"
    )
    p.add_argument("--backend", default="numpy")
    p.add_argument(
        "--threads", type=a.threads, default=1, help="BLAS threads for NumPy (0: library default)"
    )


def run(args):
    import numpy as np

    from minicrate.models.classifier import describe
    from minicrate.runs import run_context
    from minicrate.training.classifier import evaluate
    from minicrate.training.rundir import limit_threads, require_kind

    require_kind(args.path, "classifier", NAME)
    params, config, _, split, _ = run_context(args.path, args.data, args.backend)
    with limit_threads(args.threads):
        result = evaluate(params, config, split.x_test, split.y_test)
    print(describe(config, params))
    print(
        f"{split.name}: {len(split.y_test)} test images, accuracy {100 * result['accuracy']:.2f}%, "
        f"loss {result['loss']:.4f}"
    )
    per_class = [
        np.mean(result["predictions"][split.y_test == c] == c) for c in range(split.num_classes)
    ]
    print("per class: " + "  ".join(f"{c}:{100 * a:.0f}%" for c, a in enumerate(per_class)))
    return 0
