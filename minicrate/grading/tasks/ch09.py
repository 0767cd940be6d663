"""Chapter 9's exercise tasks (interim: still defined in legacy_training)."""

from minicrate.grading.tasks.legacy_training import TRAINING_TASKS

TASKS = [t for t in TRAINING_TASKS if t.id.startswith("9.")]
