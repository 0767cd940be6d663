"""Floor 1: the finite-difference vector-Jacobian checker and the shared Hypothesis strategies."""
