"""Cross-cutting ``TrainerCallback``s (the non-finite guard). Plots live with their users: curves in
``runs.py``, the confusion matrix in ``supervised/train.py``."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class NonFiniteGuardCallback(TrainerCallback):
    """Stop training at the first non-finite gradient norm, trained weights or logged loss, naming the step.

    The gradient norm is checked in ``on_pre_optimizer_step``, before the optimizer applies the
    update. Our trainers (:class:`~hf_finetune.trainer_mixin.RunTrainerMixin`) check the norm that
    ``Trainer`` has just computed for clipping and logging, and this callback then skips its own
    pass over the gradients. The trained weights are checked (min and max of each tensor: NaN and
    +/-inf show there, and nothing can overflow) in ``on_step_end`` of a step whose checkpoint,
    evaluation or end of training follows, and at each epoch's end, so no poisoned weights are
    saved. Between those, non-finite weights make the next loss and gradient non-finite, which the
    gradient check catches; checking every step instead cost ~1% of a MiniLM step.

    Example:
        >>> trainer = Trainer(model, args, callbacks=[NonFiniteGuardCallback()])  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.checked_step: int | None = None  # the step whose gradient norm the trainer has checked

    def check_grad_norm(self, norm, step: int) -> None:
        """Raise :class:`NonFiniteLossError` when ``norm`` (a float or scalar tensor) is not finite."""
        value = float(norm)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"Non-finite gradient norm ({value}) at step {step + 1}: training stopped "
                "before that update. Lower the learning rate, enable max_grad_norm, or check the data."
            )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or self.checked_step == state.global_step:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            self.check_grad_norm(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))), state.global_step)

    def check_weights(self, model, step: int) -> None:
        """Raise :class:`NonFiniteLossError` when a trained weight of ``model`` is NaN or infinite."""
        if model is None:
            return
        with torch.no_grad():
            ends = [torch.stack(torch.aminmax(p.detach())) for p in model.parameters() if p.requires_grad and p.numel()]
            if ends and not torch.isfinite(torch.cat(ends)).all():
                raise NonFiniteLossError(
                    f"Non-finite weights after the update of step {step}: training stopped before they were "
                    "saved. Lower the learning rate or enable max_grad_norm."
                )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save or control.should_evaluate or control.should_training_stop:
            self.check_weights(model, state.global_step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.check_weights(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteLossError(f"Non-finite {key} ({value}) logged at step {state.global_step}.")
