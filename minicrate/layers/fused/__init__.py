"""The fused fast forms of the encoder and decoder layers, tested equal to the reference blocks."""
