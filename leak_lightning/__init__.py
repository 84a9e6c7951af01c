"""leak_lightning: acoustic water-leak detection trained with PyTorch Lightning.

    from leak_lightning import LeakDetector
    det = LeakDetector.from_checkpoint("runs/x/checkpoints/best.ckpt")
    det.predict("clip.wav").leak
"""

__version__ = "0.3.0"
__all__ = ["LeakDetector", "Prediction", "__version__"]


def __getattr__(name: str):
    # lazy: the builder's decoder processes import this package and must not pay for torch and Lightning
    if name in ("LeakDetector", "Prediction"):
        from .inference import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'leak_lightning' has no attribute {name!r}")
