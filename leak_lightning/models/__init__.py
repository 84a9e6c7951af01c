"""Plain nn.Modules and their parts (no Lightning); the LightningModule in ..module wraps them."""

from .cnn import LeakCNN
from .recording import RecordingNet

__all__ = ["LeakCNN", "RecordingNet"]
