"""Sub-commands of ``python -m minicrate``; one module each (see minicrate.cli)."""
