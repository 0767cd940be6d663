"""Run ``minicrate compare`` on every data set and keep the results (issue 17).

Usage::

    python benchmarks/run_compare.py                       # digits (seeds 0 1 2), then mnist,
                                                           # shakespeare and mae-mnist (seed 0)
    python benchmarks/run_compare.py --data mnist --seeds 0 1 2

Each comparison writes ``benchmarks/results/compare-<data>/``: ``compare.json`` (the rows, the
learning curves and the layer-wise measurements), ``compare.md`` (the table) and
``compare.png``; the run directories under ``runs/`` are not kept in git (``.gitignore``).
A line per comparison with its wall time and the load average goes to ``log.txt`` there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_SEEDS = {"digits": [0, 1, 2], "mnist": [0], "shakespeare": [0], "mae-mnist": [0]}


def main(argv=None):
    from minicrate.measure.comparison import summary
    from minicrate.training.compare import DATASETS, compare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 for digits, 0 for the others")
    args = p.parse_args(argv)
    for data in args.data:
        out = os.path.join(RESULTS, f"compare-{data}")
        t0 = time.perf_counter()
        report = compare(data, out, seeds=args.seeds or DEFAULT_SEEDS[data])
        line = (f"{time.strftime('%Y-%m-%d %H:%M')} {data}: {time.perf_counter() - t0:.0f} s, load average "
                f"{os.getloadavg()}; " + "; ".join(f"{s['model']}{'/' + s['form'] if s['form'] else ''} "
                                                    f"{s['score']} {s['mean']:.4f}" for s in summary(report["rows"])))
        print(line)
        with open(os.path.join(out, "log.txt"), "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
