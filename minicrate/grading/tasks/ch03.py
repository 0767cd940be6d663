"""Chapter 3's exercise tasks (interim: still defined in legacy_rates)."""

from minicrate.grading.tasks.legacy_rates import RATE_TASKS

TASKS = [t for t in RATE_TASKS if t.id.startswith("3.")]
