"""``minicrate measure``: the paper's layer-wise R^c and sparsity, trained vs init."""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "measure"
HELP = "layer-wise compression R^c and sparsity, trained vs at initialisation (table + PNG)"


def add_arguments(p):
    p.add_argument("path", type=a.existing_path, help="run directory (its latest checkpoint) or a .npz checkpoint")
    p.add_argument("--images", type=a.integer(1, a.MAX_IMAGES), default=500, help="number of images measured")
    p.add_argument("--subset", choices=["test", "train"], default="test")
    p.add_argument(
        "--data", choices=["digits", "mnist"], help="default: the data the run trained on"
    )
    p.add_argument("--out", type=a.out_dir, help="directory for measure.json and measure.png (default: the run's)")
    p.add_argument("--backend", default="numpy")


def run(args):
    from minicrate.measure.layerwise import format_table
    from minicrate.runs import measure_run
    from minicrate.training.rundir import require_kind

    require_kind(args.path, "classifier", NAME)
    result, json_path, png = measure_run(
        args.path,
        n_images=args.images,
        subset=args.subset,
        out_dir=args.out,
        data=args.data,
        backend=args.backend,
    )
    print(
        f"layer-wise measurements on {result['trained']['n_images']} {args.subset} images "
        "(R^c: the official protocol, eps^2 = 0.01; nonzero: fraction of the ISTA output)"
    )
    print(format_table(result))
    print(f"wrote {json_path} and {png}")
    return 0
