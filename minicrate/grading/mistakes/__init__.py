"""Known mistakes of the exercises, built from the library's own outputs.

The tasks of :mod:`minicrate.grading.tasks` recognise wrong implementations
by comparing a student's output with each known mistake's.  The rule (issue 15):
a mistake is written as a change to the library's own reference output where
it can be (a factor-2 slip is ``2 * ref``; a missing term is the reference minus
that term) so the grader holds no second copy of the math; where a full twin is
unavoidable it lives here, in ``grading/mistakes/``, and is tested equal to the
library at default switches.  The modules here hold the builders several tasks
share (one per block: :mod:`~minicrate.grading.mistakes.mssa`, ...).
"""
