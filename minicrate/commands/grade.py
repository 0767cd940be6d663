"""``minicrate grade PATH``: grade a student's file against the reference.

``PATH`` is a ``.py`` file or a notebook (``.ipynb`` or MyST ``.md``).  The
file itself is imported (``importlib.util.spec_from_file_location`` under a
fresh module name; notebooks are converted to a temporary module first), and
every task whose function it defines is checked by
:func:`minicrate.grading.check`.  Exit status 0 when every graded task passed.
"""

from __future__ import annotations

import json

from minicrate.commands import arguments as a

NAME = "grade"
HELP = "grade a student's .py/.ipynb/.md file with the exercise checks (minicrate.grading)"


def add_arguments(p):
    p.add_argument("path", nargs="?", help="the student's file (.py, .ipynb or MyST .md)")
    p.add_argument(
        "--task",
        action="append",
        dest="tasks",
        metavar="ID",
        help="grade only this task (repeatable), e.g. --task 3.2",
    )
    p.add_argument(
        "--seed",
        type=a.seed,
        default=None,
        help="seed of the generated cases (instructors: a private one)",
    )
    p.add_argument("--examples", type=a.integer(1, 100_000), default=None, help="number of generated cases per task")
    p.add_argument("--json", type=a.out_file, metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--gradescope",
        type=a.out_file,
        metavar="FILE",
        help="also write Gradescope's results.json (one test per task, 1 point each)",
    )
    p.add_argument("--list", action="store_true", help="list the tasks and what they check")


def check(args):
    """A file to grade (or ``--list``), and every ``--task`` names a task (the CLI calls this
    before :func:`run`)."""
    if args.tasks:
        from minicrate import grading

        known = grading.TASKS
        for task in args.tasks:
            if task not in known:
                raise a.UsageError("--task", task, "one of " + ", ".join(known))
    if not args.list and not args.path:
        raise a.UsageError("path", None, "the student's file to grade (or --list)")


def run(args):
    from minicrate import grading

    if args.list:
        print(grading.describe())
        return 0
    if not args.path:
        raise ValueError("give the student's file to grade (or --list)")
    options = {}
    if args.seed is not None:
        options["seed"] = args.seed
    if args.examples is not None:
        options["examples"] = args.examples
    results = grading.grade_file(args.path, args.tasks, **options)
    if not results:
        print(
            f"{args.path}: defines none of the task functions "
            f"({', '.join(t.function for t in grading.TASKS.values())})"
        )
        return 1
    for r in results:
        print(r)
    if any("relative error" in str(r) for r in results):  # the measure, explained once
        from minicrate.grading.compare import ERROR_MEASURE

        print("\n" + ERROR_MEASURE)
    total = sum(r.score for r in results)
    print(
        f"\n{sum(r.passed for r in results)} of {len(results)} tasks passed; "
        f"score {total:.2f} / {len(results)}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([r.to_dict() for r in results], fh, indent=2)
    if args.gradescope:
        with open(args.gradescope, "w", encoding="utf-8") as fh:
            json.dump(grading.gradescope_json(results), fh, indent=2)
    return 0 if all(r.passed for r in results) else 1
