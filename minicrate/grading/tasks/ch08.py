"""Chapter 8's exercise tasks (interim: still defined in legacy_encoder)."""

from minicrate.grading.tasks.legacy_encoder import ENCODER_TASKS

TASKS = [t for t in ENCODER_TASKS if t.id.startswith("8.")]
