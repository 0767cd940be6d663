"""Chapter 11's exercise tasks (interim: still defined in legacy_decoder)."""

from minicrate.grading.tasks.legacy_decoder import DECODER_TASKS

TASKS = [t for t in DECODER_TASKS if t.id.startswith("11.")]
