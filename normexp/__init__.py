"""normexp: how normalization layers behave as the batch size shrinks (BN vs GN on CIFAR-10)."""

__version__ = "0.1.0"
