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


def run(args):
    from minicrate.runs import attention_run
    from minicrate.training.rundir import require_kind

    require_kind(args.path, "classifier", NAME)
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
