"""Grading the exercise notebooks against the library (see :mod:`minicrate.grading.core`)."""

from minicrate.grading.core import *  # noqa: F403
from minicrate.grading.core import __getattr__  # noqa: F401  (TASKS, built lazily)
