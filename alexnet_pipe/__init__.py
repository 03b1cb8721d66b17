"""alexnet-pipe: AlexNet (Krizhevsky et al., NIPS 2012) from raw ImageNet to a trained model."""

__version__ = "0.1.0"
