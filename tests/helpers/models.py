"""LeakClassifier built in Python the way the CLI builds it: a LeakCNN sized from the features."""

from __future__ import annotations

from dataclasses import asdict


def classifier(names=("A", "LEAK", "C"), features=None, net: dict | None = None, **kw):
    from leak_lightning.audio.features import FeatureConfig
    from leak_lightning.models import LeakCNN
    from leak_lightning.training.module import LeakClassifier

    f = features or FeatureConfig()
    cnn = LeakCNN(len(names), f.n_mels, f.t_frames, **(net or {}))
    return LeakClassifier(cnn, class_names=list(names), feature_config=asdict(f), **kw)
