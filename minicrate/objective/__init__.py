"""Floor 2: the coding rate, compression rate, rate reduction and sparse rate reduction, with gradients."""
