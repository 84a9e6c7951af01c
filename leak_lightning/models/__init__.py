"""Plain nn.Modules; the LightningModule in ..module wraps them."""

from .cnn import LeakCNN

__all__ = ["LeakCNN"]
