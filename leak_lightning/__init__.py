"""leak_lightning: acoustic water-leak detection trained with PyTorch Lightning."""

__version__ = "0.1.0"
