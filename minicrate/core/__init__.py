"""Floor 0: array backends, input validation, the allocator setting and checkpoint files."""
