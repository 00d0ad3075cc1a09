"""Cross-cutting ``TrainerCallback``s (the non-finite guard). Plots live with their users: curves in
``runs.py``, the confusion matrix in ``supervised/train.py``."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class NonFiniteGuardCallback(TrainerCallback):
    """Stop training at the first non-finite gradient norm or logged loss, naming the step.

    The gradient check runs in ``on_pre_optimizer_step``, before the optimizer applies the update
    and before the step's checkpoint; the trained weights are checked again in ``on_optimizer_step``
    (a finite gradient times a huge learning rate can still overflow them), also before the step's
    checkpoint, so no poisoned weights are written.

    Example:
        >>> trainer = Trainer(model, args, callbacks=[NonFiniteGuardCallback()])  # doctest: +SKIP
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            raise NonFiniteLossError(
                f"Non-finite gradient norm ({norm.item()}) at step {state.global_step + 1}: training stopped "
                "before that update. Lower the learning rate, enable max_grad_norm, or check the data."
            )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        weights = [p.detach() for p in model.parameters() if p.requires_grad]
        if not weights:
            return
        largest = torch.stack(torch._foreach_norm(weights, ord=float("inf")))  # max |w|: cannot overflow
        if not torch.isfinite(largest).all():
            raise NonFiniteLossError(
                f"Non-finite weights after the update of step {state.global_step + 1}: training stopped before "
                "they were saved. Lower the learning rate or enable max_grad_norm."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteLossError(f"Non-finite {key} ({value}) logged at step {state.global_step}.")
