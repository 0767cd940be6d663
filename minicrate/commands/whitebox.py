"""``minicrate whitebox``: the white-box study (do the paper's layer-wise claims show, and does
each layer do its derived step?), as JSON and a figure."""

from __future__ import annotations

import os

from minicrate.commands import arguments as a

NAME = "whitebox"
HELP = ("the white-box study: train the chosen setting (both forms), measure R^c and sparsity per "
        "layer and epoch, check each layer's two steps and the synthetic case (JSON + PNG)")


def add_arguments(p):
    p.add_argument("--out", type=a.out_dir, default=os.path.join("runs", "whitebox"),
                   help="directory for whitebox.json, whitebox.png and the two runs (default "
                        "runs/whitebox)")
    p.add_argument("--data", choices=["mnist", "digits"], default="mnist",
                   help="mnist: the study's setting (default); digits: the same model on 8×8 "
                        "digits, a quick look")
    p.add_argument("--epochs", type=a.integer(1, a.MAX_EPOCHS), default=None,
                   help="override the setting's epochs (snapshots past it are dropped)")
    p.add_argument("--images", type=a.integer(1, a.MAX_IMAGES), default=500,
                   help="test images measured (default 500)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a study already in --out (its runs, JSON and figure)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _row(label, values, fmt):
    return f"{label:<22}" + "".join(format(v, fmt).rjust(8) for v in values)


def run(args):
    from minicrate.training.whitebox import SETTING, study

    if os.path.exists(os.path.join(args.out, "whitebox.json")) and not args.overwrite:
        raise a.UsageError("--out", args.out, "a folder without a white-box study (it holds "
                                              "whitebox.json; pass --overwrite to replace it)")
    setting = {**SETTING, "data": args.data,
               "recipe": {**SETTING["recipe"], **({"epochs": args.epochs} if args.epochs else {})}}
    result = study(args.out, setting=setting, n_images=args.images, overwrite=args.overwrite,
                   progress=not args.no_progress)
    form = setting["form"]
    print(f"{form} form, {len(result['trained']['rc'])} layers, test accuracy "
          f"{100 * result['test_accuracy']:.2f}% (mean over {result['n_images']} test images)")
    print(_row("layer", range(1, len(result["trained"]["rc"]) + 1), "d"))
    for key, label, fmt in (("rc", "R^c", ".1f"), ("nonzero", "nonzero", ".3f")):
        print(_row(f"{label} trained", result["trained"][key], fmt))
        print(_row(f"{label} init", result["init"][key], fmt))
    for name, f in result["forms"].items():
        s = result["steps"][name]["trained"]
        print(_row(f"{name}: MSSA lowers R^c", s["mssa_lowers"], ".2f"))
        print(_row(f"{name}: ISTA lowers", s["ista_lowers"], ".2f"))
        print(f"{name} form targets: {f['targets']}")
    print(f"synthetic case, true bases: R^c falls at every layer: {result['synthetic']['monotone']['true']}")
    print(f"wrote {os.path.join(args.out, 'whitebox.json')} and {os.path.join(args.out, 'whitebox.png')} "
          f"in {result['wall_time_s']:.0f} s")
    return 0
