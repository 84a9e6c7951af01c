"""The optimizer and schedule the configs name by default (LightningCLI callables: `model.optimizer`,
`model.scheduler`); any torch optimizer or scheduler can be named instead."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW(torch.optim.AdamW):
    """torch's AdamW whose `fused=None` means: fused when the parameters live on CUDA (one kernel launch per
    step instead of one per op and tensor group; the same update rule either way)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool | None = None) -> None:
        params = list(params)
        if fused is None:
            tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
            fused = bool(tensors) and all(p.is_cuda for p in tensors)
        super().__init__(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, fused=fused or None)


class CosineToEnd(torch.optim.lr_scheduler.CosineAnnealingLR):
    """Cosine decay from the optimizer's rate to `min_lr_ratio` of it over the run's optimizer steps.

    The run's length is known only once the trainer has its data: LeakClassifier sets `T_max` then (and
    stretches it for a resumed run that goes on longer).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, min_lr_ratio: float = 0.01, total_steps: int = 1) -> None:
        base = optimizer.param_groups[0]["lr"]
        super().__init__(optimizer, T_max=max(1, total_steps), eta_min=base * min_lr_ratio)
