"""Floor 3: the reference blocks (MSSA, ISTA, the encoder and decoder layers); fused/ holds the fast forms."""
