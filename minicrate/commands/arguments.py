"""Command-line options shared by the training commands (``train``, ``train-mae``, ``train-lm``)."""

from __future__ import annotations


def add_model_arguments(p):
    """The classifier's model options (each overrides the recipe's preset)."""
    g = p.add_argument_group("model (defaults: the recipe's preset)")
    g.add_argument("--preset", help="model preset (minicrate.models.classifier.PRESETS), e.g. digits, mnist")
    g.add_argument("--dim", type=int, help="token width d")
    g.add_argument("--depth", type=int, help="number of layers L")
    g.add_argument("--heads", type=int, help="number of heads K (p = d/K)")
    g.add_argument("--patch", type=int, dest="patch_size", help="patch size in pixels")
    g.add_argument(
        "--pool", choices=["cls", "mean"], help="classify from the class token or the mean token"
    )
    g.add_argument("--dtype", choices=["float32", "float64"])


def add_optimisation_arguments(p, *, seeds):
    """The optimisation options every training command takes; ``seeds`` says what ``--seed`` seeds."""
    g = p.add_argument_group("optimisation (defaults: the recipe's)")
    g.add_argument("--optimizer", choices=["adamw", "lion", "sgd"])
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--wd", type=float, dest="weight_decay", help="decoupled weight decay")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch", type=int, dest="batch_size")
    g.add_argument("--warmup", type=float, dest="warmup_epochs", help="linear warm-up, in epochs")
    g.add_argument("--clip", type=float, help="clip the global gradient norm (0: off)")
    g.add_argument("--shift", type=int, help="random-shift augmentation in pixels (0: off)")
    g.add_argument("--seed", type=int, help=f"seed of {seeds}")


def add_resume_arguments(p):
    """``--resume`` and ``--overwrite``, which exclude each other: what to do with an ``--out``
    that already holds a run (without either, such a directory is refused)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="start again from scratch in an --out that holds a run (its checkpoint, "
                        "metrics, curves and vocabulary are replaced)")
