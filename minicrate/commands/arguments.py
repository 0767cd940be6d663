"""The command line's one argument layer: the checked option types every command uses, and the
options shared by the training commands (``train``, ``train-mae``, ``train-lm``).

Every number and path is checked while the arguments are parsed, before any work: a value of
the wrong type, NaN or infinity, out of its range, or too large to finish is refused as one
line naming the option, what it got and what was expected (exit status 2, like any other
usage error).  A check that needs two options at once (``--shift`` smaller than the image)
raises :class:`UsageError` from a command's ``check(args)``, which the CLI reports the same way.
"""

from __future__ import annotations

import argparse
import math
import os

# What a run can finish: larger values are refused with the limit named (not run forever).
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000
MAX_BATCH = 100_000
MAX_WIDTH = 4096  # --dim
MAX_DEPTH = 256
MAX_HEADS = 1024
MAX_CONTEXT = 4096  # characters per window of a language model
MAX_FIGURE_IMAGES = 64  # images drawn in one figure (attention, reconstruct)
MAX_IMAGES = 100_000  # images measured
MAX_SAMPLE_LENGTH = 1_000_000
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024
# Directories a run must never write into (or under): the root itself and the system's own.
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys",
               "/usr", "/var/run", "/run")
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/lib", "/usr")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


class UsageError(ValueError):
    """A combination of options that cannot work; reported like argparse's errors (exit 2).

    ``str(err)`` is ``argument OPTION: got VALUE; expected WHAT``."""

    def __init__(self, option, got, expected):
        super().__init__(f"argument {option}: got {got!r}; expected {expected}")
        self.option, self.got, self.expected = option, got, expected


def _refuse(text, expected):
    return argparse.ArgumentTypeError(f"got {text!r}; expected {expected}")


def _bounds(lo, hi, *, lo_open=False):
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}" if isinstance(lo, float) else
                     f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi:,}" if isinstance(hi, int) else f"<= {hi:g}")
    return " and ".join(parts)


def integer(lo=None, hi=None, *, why=None):
    """An argparse ``type``: an integer in ``[lo, hi]`` (``why`` says where ``hi`` comes from)."""

    def parse(text):
        expected = f"an integer {_bounds(lo, hi)}".strip()
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise _refuse(text, expected) from None
        if lo is not None and value < lo:
            raise _refuse(text, expected)
        if hi is not None and value > hi:
            raise _refuse(text, expected + (f" ({why})" if why else " (larger values cannot finish)"))
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    parse.kind, parse.lo, parse.hi = "integer", lo, hi  # what the fuzz test reads
    return parse


def real(lo=None, hi=None, *, lo_open=False, hi_open=False):
    """An argparse ``type``: a finite float in the range (``lo_open``: ``> lo``)."""

    def parse(text):
        expected = f"a finite number {_bounds(lo, hi, lo_open=lo_open)}".strip()
        if hi is not None and hi_open:
            expected = expected.replace(f"<= {hi:g}", f"< {hi:g}")
        try:
            value = float(text)
        except ValueError:
            raise _refuse(text, expected) from None
        if not math.isfinite(value):
            raise _refuse(text, expected)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise _refuse(text, expected)
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise _refuse(text, expected)
        return value

    parse.__name__ = "number"
    parse.kind, parse.lo, parse.hi, parse.lo_open, parse.hi_open = "number", lo, hi, lo_open, hi_open
    return parse


def cores():
    """The cores this process may use (``sched_getaffinity`` where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def workers(text):
    """``--workers``: 0 (one per core) up to the number of cores of this machine."""
    n = cores()
    return integer(0, n, why=f"this machine has {n} cores; 0 uses one per core")(text)


workers.kind, workers.lo, workers.hi = "integer", 0, cores()


positive = integer(1)
non_negative = integer(0)
seed = integer(0, MAX_SEED)
threads = integer(0, MAX_THREADS)
epochs = integer(1, MAX_EPOCHS)
steps = integer(1, MAX_STEPS)
batch = integer(1, MAX_BATCH)
learning_rate = real(0.0, lo_open=True)
non_negative_real = real(0.0)


def _system_dir(real_path):
    if real_path in SYSTEM_DIRS:
        return real_path
    for tree in SYSTEM_TREES:
        if real_path.startswith(tree + os.sep):
            return tree
    return None


def _check_writable_place(text, what):
    """The checks every output path shares: not inside a file, not a system directory, and
    its closest existing folder writable.  Returns the absolute path."""
    if not text or "\0" in text:
        raise _refuse(text, f"a {what}")
    path = os.path.abspath(os.path.expanduser(text))
    system = _system_dir(os.path.realpath(path))
    if system:
        raise _refuse(text, f"a {what} outside the system directory {system}")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise _refuse(text, f"a {what}, but {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _refuse(text, f"a {what} in a folder this user may write ({parent} is not writable)")
    return path


def out_dir(text):
    """``--out`` of a run or a measurement: a directory (existing or to be made) that can be
    written; not an existing file, not under a file, not a system directory."""
    path = _check_writable_place(text, "directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise _refuse(text, "a directory, but it is an existing file")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise _refuse(text, "a directory this user may write")
    return text


def figure_file(text):
    """``--out`` of a figure: a .png, .pdf or .svg file that can be written (not a directory)."""
    if os.path.isdir(text):
        raise _refuse(text, "a figure file (.png, .pdf or .svg), but it is a directory")
    if not text.lower().endswith(FIGURE_SUFFIXES):
        raise _refuse(text, "a figure file ending in .png, .pdf or .svg")
    _check_writable_place(text, "figure file")
    return text


def existing_path(text):
    """A run directory or a checkpoint file that exists."""
    if not text or not os.path.exists(text):
        raise _refuse(text, "an existing run directory or .npz checkpoint")
    return text


def out_file(text):
    """A file to write (``--json``, ``--gradescope``): not a directory, in a writable folder."""
    if os.path.isdir(text):
        raise _refuse(text, "a file, but it is a directory")
    _check_writable_place(text, "file")
    return text


def check_shift(shift, image_size, option="--shift"):
    """``--shift`` must be smaller than the image (a larger one moves every pixel out)."""
    if shift is not None and shift >= image_size:
        raise UsageError(option, shift, f"a shift smaller than the {image_size}×{image_size} "
                                        f"images (at most {image_size - 1}; 0: off)")


def add_model_arguments(p):
    """The classifier's model options (each overrides the recipe's preset)."""
    g = p.add_argument_group("model (defaults: the recipe's preset)")
    g.add_argument("--preset", help="model preset (minicrate.models.classifier.PRESETS), e.g. digits, mnist")
    g.add_argument("--dim", type=integer(1, MAX_WIDTH), help="token width d")
    g.add_argument("--depth", type=integer(1, MAX_DEPTH), help="number of layers L")
    g.add_argument("--heads", type=integer(1, MAX_HEADS), help="number of heads K (p = d/K)")
    g.add_argument("--patch", type=integer(1, 64), dest="patch_size", help="patch size in pixels")
    g.add_argument(
        "--pool", choices=["cls", "mean"], help="classify from the class token or the mean token"
    )
    g.add_argument("--dtype", choices=["float32", "float64"])


def add_optimisation_arguments(p, *, seeds):
    """The optimisation options every training command takes; ``seeds`` says what ``--seed`` seeds."""
    g = p.add_argument_group("optimisation (defaults: the recipe's)")
    g.add_argument("--optimizer", choices=["adamw", "lion", "sgd"])
    g.add_argument("--lr", type=learning_rate, help="peak learning rate")
    g.add_argument("--wd", type=non_negative_real, dest="weight_decay", help="decoupled weight decay")
    g.add_argument("--beta2", type=real(0.0, 1.0, hi_open=True), dest="adam_beta2",
                   help="AdamW's second-moment decay β₂ (β₁ is 0.9)")
    g.add_argument("--epochs", type=epochs)
    g.add_argument("--eval-every", type=epochs, dest="eval_every_epochs", metavar="EPOCHS",
                   help="evaluate (and checkpoint) every this many epochs, and after the last")
    g.add_argument("--batch", type=batch, dest="batch_size")
    g.add_argument("--warmup", type=real(0.0, MAX_EPOCHS), dest="warmup_epochs",
                   help="linear warm-up, in epochs")
    g.add_argument("--clip", type=non_negative_real, help="clip the global gradient norm (0: off)")
    g.add_argument("--shift", type=non_negative,
                   help="random-shift augmentation in pixels (0: off; smaller than the image)")
    g.add_argument("--seed", type=seed, help=f"seed of {seeds}")


def optimisation_overrides(args, train_config):
    """The recipe fields the options of :func:`add_optimisation_arguments` set, as a dict for
    ``dataclasses.replace(train_config, ...)``: ``--clip 0`` is no clipping, a short ``--epochs``
    keeps the recipe's warm-up only while it fits (at most half the run), and the backend and
    ``--checkpoint-every`` always come along."""
    over = {k: getattr(args, k) for k in ("optimizer", "lr", "weight_decay", "epochs", "batch_size",
                                           "warmup_epochs", "clip", "shift", "seed", "eval_every_epochs",
                                           "adam_beta2")
            if getattr(args, k, None) is not None}
    if over.get("clip") == 0:
        over["clip"] = None
    if "epochs" in over and "warmup_epochs" not in over:
        over["warmup_epochs"] = min(train_config.warmup_epochs, over["epochs"] / 2)
    over.update(backend=args.backend, checkpoint_every=args.checkpoint_every)
    return over


def add_resume_arguments(p):
    """``--resume`` and ``--overwrite``, which exclude each other: what to do with an ``--out``
    that already holds a run (without either, such a directory is refused)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="start again from scratch in an --out that holds a run (its checkpoint, "
                        "metrics, curves and vocabulary are replaced)")


def memory_bytes():
    """The machine's physical memory in bytes (``None`` where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def step_bytes(batch, tokens, dim, depth, heads, dtype):
    """A rough estimate of the bytes one training step holds: each layer keeps its attention
    scores (three ``tokens × tokens`` arrays per head) and about twenty token-wide activations
    for the backward."""
    itemsize = 8 if str(dtype) == "float64" else 4
    per_layer = batch * heads * tokens**2 * 3 + batch * tokens * dim * 20
    return itemsize * depth * per_layer


def check_model_memory(model_config, batch_size, depth=None):
    """:func:`check_memory` for an image model (``depth``: the layers in all, if not its own)."""
    c = model_config
    tokens = c.num_patches + 1
    needed = step_bytes(batch_size, tokens, c.dim, depth or c.depth, c.heads, c.dtype)
    check_memory(needed, "--batch", batch_size, f"{tokens} tokens, --dim {c.dim}, --depth {c.depth}, "
                 f"--heads {c.heads}, --dtype {c.dtype}")


def check_memory(needed, option, value, setting):
    """Refuse a run whose estimated memory, ``needed`` bytes, exceeds half of this machine's:
    ``option`` got ``value``; ``setting`` names the other options the estimate used."""
    total = memory_bytes()
    if total and needed > total / 2:
        raise UsageError(option, value, f"a run that fits in memory: with {setting} it needs about "
                         f"{needed / 2**30:,.1f} GiB, and this machine has {total / 2**30:,.0f} GiB "
                         f"(make {option} or those smaller)")
