"""Floor 5: layer-wise measurement, probes, encoder/decoder round trips and plots."""
