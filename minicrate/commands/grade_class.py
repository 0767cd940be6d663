"""``minicrate grade-class SUBMISSIONS --out gradebook.csv``: grade a whole class.

Every file (``.py``, ``.ipynb``, MyST ``.md``) or sub-folder of ``SUBMISSIONS``
is one student.  Each student's code runs in its own subprocess, with a
wall-clock limit per task (``--timeout``) and a memory limit (``--memory``);
the subprocess only runs the student's functions on the cases, and the
comparison with the reference happens in this process
(:mod:`minicrate.grading.classroom`).  The gradebook is long-format CSV,
``student,task,score,status,message``, written row by row as each task
finishes; a summary per task prints at the end (``--json`` writes the same
data, with every task's full report).  Exit status 0 when every row is ``ok``.
"""

from __future__ import annotations

import json
import os

from minicrate.commands import arguments as a

NAME = "grade-class"
HELP = "grade a folder of student submissions, each sandboxed, into a CSV gradebook"


def add_arguments(p):
    p.add_argument("submissions", help="folder: one file or sub-folder per student")
    p.add_argument("--out", type=a.out_file, default="gradebook.csv", metavar="FILE",
                   help="the CSV gradebook to write (default gradebook.csv)")
    p.add_argument("--task", action="append", dest="tasks", metavar="ID",
                   help="grade this task (repeatable); default: the tasks of the notebooks the "
                   "files are named after, else every task a file defines")
    p.add_argument("--timeout", type=a.real(0.0, 86_400.0, lo_open=True), default=60.0,
                   metavar="SECONDS", help="wall-clock limit per task and student (default 60)")
    p.add_argument("--memory", type=a.integer(256, 1 << 20), default=4096, metavar="MB",
                   help="address-space limit of each student's process in MiB (default 4096)")
    p.add_argument("--jobs", type=a.integer(1, 256), default=1, metavar="N",
                   help="students graded at the same time (default 1)")
    p.add_argument("--seed", type=a.seed, default=None,
                   help="seed of the generated cases (instructors: a private one)")
    p.add_argument("--examples", type=a.integer(1, 100_000), default=None,
                   help="number of generated cases per task")
    p.add_argument("--json", type=a.out_file, metavar="FILE",
                   help="also write the rows, full reports and summary as JSON")


def check(args):
    """The folder exists and every ``--task`` is a task: one line naming the valid ones."""
    if not os.path.isdir(args.submissions):
        raise a.UsageError("submissions", args.submissions, "a folder of submissions")
    if args.tasks:
        from minicrate import grading

        known = list(grading.TASKS)
        for task in args.tasks:
            if task not in known:
                raise a.UsageError("--task", task, "one of " + ", ".join(known))


def run(args):
    from minicrate.grading import classroom
    from minicrate.grading.compare import ERROR_MEASURE

    book = classroom.CsvGradebook(args.out)

    def on_row(row):
        book(row)
        print(f"{row.student:<20} {row.task:<6} {row.score:5.2f}  {row.status:<8} "
              f"{row.message[:100]}", flush=True)

    try:
        rows = classroom.grade_class(
            args.submissions, args.tasks, timeout=args.timeout, jobs=args.jobs,
            memory_mb=args.memory, seed=args.seed, examples=args.examples, on_row=on_row,
        )
    finally:
        book.close()
    if not rows:
        print(f"{args.submissions}: no submissions (.py, .ipynb, .md files or sub-folders)")
        return 1
    summary = classroom.summarize(rows)
    print(f"\n{len({r.student for r in rows})} students, {len(rows)} rows -> {args.out}")
    print("task    students  mean  " + "  ".join(classroom.STATUSES))
    for task, s in summary.items():
        counts = "  ".join(f"{s['statuses'].get(k, 0):>{len(k)}}" for k in classroom.STATUSES)
        print(f"{task:<7} {s['students']:>8}  {s['mean_score']:.2f}  {counts}")
        for mistake, count in s["common_mistakes"]:
            print(f"        {count} x {mistake[:110]}")
    if any("relative error" in r.message for r in rows):
        print("\n" + ERROR_MEASURE)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(classroom.to_json(rows), fh, indent=2)
    return 0 if all(r.status == "ok" for r in rows) else 1
