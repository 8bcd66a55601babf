"""An exponential moving average of the weights over training, which becomes the saved model."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

# The decay after n updates is min(decay, (1 + n) / (WARMUP_UPDATES + n)): early on the average
# follows the weights closely, so a short run does not save an average of its random start.
WARMUP_UPDATES = 10


class WeightAverage(TrainerCallback):
    """Keeps an exponential moving average of `module`'s parameters, updated after each step.

    The average of the last few thousand updates is a flatter point than the last step's weights,
    which often carries better to unseen data; for the demo preset it measured the same as the
    last step (training/README.md), whose cosine schedule has already decayed the rate.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module = module
        self.decay = decay
        self.updates = 0
        self.average = {name: p.detach().clone() for name, p in module.named_parameters()}

    def update(self) -> None:
        """Fold the module's current parameters into the average."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (WARMUP_UPDATES + self.updates))
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                self.average[name].lerp_(p.detach(), 1.0 - decay)

    def load_into_module(self) -> None:
        """Replace the module's parameters by the average."""
        log.info("weights: the average of %d updates (decay %g)", self.updates, self.decay)
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                p.copy_(self.average[name])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Average in the step just taken."""
        self.update()
