"""``minicrate attention``: the class token's attention per head for a few test images."""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "attention"
HELP = "figure of the class token's attention per head for a few test images"


def add_arguments(p):
    p.add_argument("path", type=a.existing_path, help="run directory (its latest checkpoint) or a .npz checkpoint")
    p.add_argument(
        "--images", type=a.integer(1, a.MAX_FIGURE_IMAGES, why="images in one figure"), default=4,
        help="number of test images (one per class first)"
    )
    p.add_argument("--layer", type=a.integer(-a.MAX_DEPTH, a.MAX_DEPTH), default=-1,
                   help="layer index, 0-based (default: the last)")
    p.add_argument(
        "--data", choices=["digits", "mnist"], help="default: the data the run trained on"
    )
    p.add_argument("--out", type=a.figure_file,
                   help=".png, .pdf or .svg path (default: attention.png in the run directory)")
    p.add_argument("--backend", default="numpy")


def check_layer(path, layer):
    """Refuse ``--layer`` outside the run's depth before any data is loaded, reading the
    depth from the checkpoint's header alone (a header without one is left to the loader)."""
    from minicrate.core.checkpoint import read_header
    from minicrate.training.rundir import checkpoint_path

    depth = (read_header(checkpoint_path(path)).get("config") or {}).get("depth")
    if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 1 \
            and not -depth <= layer < depth:
        raise a.UsageError("--layer", layer, f"an integer from {-depth} to {depth - 1} (the run "
                                            f"has {depth} layers, counted from 0)")


def run(args):
    from minicrate.runs import attention_run
    from minicrate.training.rundir import require_kind

    require_kind(args.path, "classifier", NAME)
    check_layer(args.path, args.layer)
    png = attention_run(
        args.path,
        n_images=args.images,
        layer=args.layer,
        out=args.out,
        data=args.data,
        backend=args.backend,
    )
    print(f"wrote {png}")
    return 0
