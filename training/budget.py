"""A wall-clock training budget: the learning rate warms up and decays over elapsed time."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

MIN_LR_FRACTION = 0.02


class TimeBudget(TrainerCallback):
    """Stops training at `budget_s` and drives a cosine schedule by the fraction of it spent.

    On a shared or slow machine a step-count schedule either overruns the time available or
    stops before the rate has decayed; following the clock makes both ends meet.
    """

    def __init__(self, budget_s: float, warmup_ratio: float) -> None:
        self.budget_s = budget_s
        self.warmup_ratio = warmup_ratio
        self.started: float | None = None

    def fraction(self) -> float:
        """Share of the budget spent, 0 before training starts."""
        if self.started is None:
            return 0.0
        return min(1.0, (time.monotonic() - self.started) / self.budget_s)

    def _multiplier(self, step: int) -> float:
        # Warmup and decay both follow the clock, so a slow machine warms up as long.
        f = self.fraction()
        warm = min(1.0, f / self.warmup_ratio) if self.warmup_ratio > 0 else 1.0
        cosine = 0.5 * (1.0 + math.cos(math.pi * f))
        return warm * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cosine)

    def optimizers(self, model: torch.nn.Module, lr: float, weight_decay: float) -> tuple[Any, Any]:
        """AdamW and a LambdaLR following this budget, for `Trainer(optimizers=...)`."""
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            foreach=True,  # one kernel per step for all tensors: on a CPU too
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self._multiplier)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the clock."""
        self.started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Stop once the budget is spent."""
        if self.fraction() >= 1.0 and not control.should_training_stop:
            log.info("time budget of %.0f s spent at step %d; stopping", self.budget_s, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = True
