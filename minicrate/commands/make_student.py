"""``minicrate make-student SRC DEST``: the student version of the exercise notebooks.

Every MyST notebook in ``SRC`` is written to ``DEST`` as ``.md`` and ``.ipynb`` with
its solution regions replaced by ``NotImplementedError`` stubs and its outputs
cleared (:func:`minicrate.grading.student.make_student` says exactly how).  Everything
is checked before ``DEST`` is touched; a ``DEST`` holding files this command did not
write is refused unless ``--force``.
"""

from __future__ import annotations

from minicrate.grading.student import make_student

NAME = "make-student"
HELP = "strip the solutions from the exercise notebooks into a clean folder for students"


def add_arguments(p):
    p.add_argument("src", help="folder of MyST exercise notebooks (exercises)")
    p.add_argument("dest", help="output folder (created; replaced if made by this command before)")
    p.add_argument("--force", action="store_true",
                   help="replace DEST even if it holds files make-student did not write")


def run(args):
    written = make_student(args.src, args.dest, force=args.force)
    print(
        f"wrote {len(written)} student notebooks (.md and .ipynb, solutions stripped, no outputs) "
        f"to {args.dest}: {', '.join(written)}"
    )
    return 0
