"""Floor 6: the one training loop (loop.fit), run directories, optimisers, the schedule and one task per model."""
