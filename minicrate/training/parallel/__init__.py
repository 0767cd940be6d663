"""Splitting a batch over the CPU cores: threads, or worker processes with shared memory."""
