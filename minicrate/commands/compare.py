"""``minicrate compare``: CRATE against the standard transformer, same recipe, budget and measurement."""

from __future__ import annotations

from minicrate.commands.arguments import MAX_STEPS, integer, out_dir, seed, threads

NAME = "compare"
HELP = ("train CRATE and a transformer of the same size (ViT, GPT, BERT, ViT-MAE) side by side; "
        "write compare.json, compare.md and compare.png")


def add_arguments(p):
    from minicrate.training.compare import DATASETS

    p.add_argument("--data", choices=DATASETS, required=True,
                   help="digits, mnist (classification), shakespeare (causal and masked LMs), mae-mnist")
    p.add_argument("--out", required=True, type=out_dir, help="directory for compare.json/.md/.png and the runs")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0], help="seeds (each trains both models)")
    p.add_argument("--length", type=integer(1, MAX_STEPS),
                   help="epochs (steps for shakespeare) instead of the comparison's budget")
    p.add_argument("--threads", type=threads, default=1, help="BLAS threads (default 1)")


def run(args):
    from minicrate.measure.comparison import summary
    from minicrate.training.compare import compare

    report = compare(args.data, args.out, seeds=args.seeds, length=args.length, threads=args.threads)
    print()
    print(f"{'model':<8} {'form':<7} {'parameters':>10}  {'score':<17} {'mean':>9} {'± half-range':>12}  wall s")
    for s in summary(report["rows"]):
        scale = 100 if s["score"] in ("test_accuracy", "masked_accuracy") else 1
        print(f"{s['model']:<8} {s['form'] or '-':<7} {s['params']:>10,}  {s['score']:<17} "
              f"{scale * s['mean']:>9.4f} {scale * s['spread']:>12.4f}  {s['wall_time_s']:.0f}")
    print(f"wrote {args.out}/compare.json, compare.md and compare.png "
          f"({report['total_wall_time_s']:.0f} s in all)")
    return 0
