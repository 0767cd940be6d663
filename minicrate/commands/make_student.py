"""``minicrate make-student SRC DEST``: the student version of the exercise notebooks.

Every MyST notebook in ``SRC`` is written to ``DEST`` as ``.md`` and ``.ipynb`` with
its solution regions replaced by ``NotImplementedError`` stubs and its outputs
cleared (:func:`minicrate.grading.student.make_student` says exactly how).  Everything
is checked before ``DEST`` is touched; a ``DEST`` holding files this command did not
write is refused unless ``--force``.
"""

from __future__ import annotations

from minicrate.commands import arguments as a
from minicrate.grading.student import FORMATS, make_student

NAME = "make-student"
HELP = "strip the solutions from the exercise notebooks into a clean folder for students"


def add_arguments(p):
    p.add_argument("src", help="folder of MyST exercise notebooks (exercises)")
    p.add_argument("dest", help="output folder (created; replaced if made by this command before)")
    p.add_argument("--force", action="store_true",
                   help="replace DEST even if it holds files make-student did not write")
    p.add_argument("--format", choices=FORMATS, default="student", dest="fmt",
                   help="student: the handout (default); otter: otter-grader master notebooks "
                        "(for otter assign); nbgrader: nbgrader source notebooks (for nbgrader "
                        "generate_assignment); the last two keep the solutions")
    p.add_argument("--hidden-seed", type=a.integer(0, 2**32 - 1), default=None,
                   help="otter only: add a hidden test per task on the cases of this seed")


def check(args):
    if args.hidden_seed is not None and args.fmt != "otter":
        raise a.UsageError("--hidden-seed", args.hidden_seed, "it only with --format otter")


def run(args):
    written = make_student(args.src, args.dest, force=args.force, fmt=args.fmt,
                           hidden_seed=args.hidden_seed)
    what = {"student": "student notebooks (.md and .ipynb, solutions stripped, no outputs)",
            "otter": "otter master notebooks (run otter assign on each; see README.md there)",
            "nbgrader": "nbgrader source notebooks (see README.md there)"}[args.fmt]
    print(f"wrote {len(written)} {what} to {args.dest}: {', '.join(written)}")
    return 0
