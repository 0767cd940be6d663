"""Floor 1: linear, ReLU, softmax, LayerNorm and the head reshapes, each a forward/backward pair."""
