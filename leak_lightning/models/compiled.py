"""torch.compile for a network, with eager mode as the fallback for compile failures only."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException  # torch.compiler exports no such base; see lightning_private.py

log = logging.getLogger("leak_lightning.module")

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class CompileOptions:
    """How the network is compiled.

    Args:
        enabled: torch.compile the network; None = when training on CUDA (validation inside `fit` uses the
            compiled network too; standalone validate/test/predict run eager: compiling costs tens of
            seconds, more than scoring a split of ordinary size takes).
        mode: torch.compile's mode; "reduce-overhead" replays CUDA graphs (fewer kernel launches per step),
            "max-autotune" also searches kernel configurations.
        cache: folder for inductor's compiled kernels (TORCHINDUCTOR_CACHE_DIR; default: torch's own,
            /tmp/torchinductor_<user>): a later run on the machine reuses them.
    """

    enabled: bool | None = None
    mode: CompileMode = "default"
    cache: str | None = None


class CompiledNet:
    """Calls `torch.compile(net)`; a compile failure (dynamo or a backend, raised at the first call) logs
    one warning and runs `net` eagerly from then on. Any other error (out of memory, a shape mismatch in
    eager code) is raised: it would be a silent slowdown, or a silent retry of a real fault, otherwise.

    Not an nn.Module on purpose: the LightningModule keeps the parameters under `net.` in checkpoints.
    """

    def __init__(self, net: nn.Module, mode: CompileMode = "default", cache: str | None = None,
                 backend: str | Callable = "inductor") -> None:
        if cache:  # inductor's on-disk cache: a second run reuses the compiled kernels
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        self.net = net
        self.compiled: Callable | None = torch.compile(net, mode=None if backend != "inductor" else mode,
                                                       backend=backend)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except TorchDynamoException as err:
                cause = getattr(err, "inner_exception", None) or err  # a backend's own error, when it raised one
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                log.warning("torch.compile failed (%s: %s); continuing in eager mode", type(cause).__name__, first)
                self.compiled = None
        return self.net(x)
