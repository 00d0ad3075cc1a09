"""``self_supervised`` method trainer: ``Trainer`` + the objective's collator, per-epoch masks, fixed eval masks."""

from __future__ import annotations

import math

from transformers import Trainer, TrainerCallback

from ..models import head_module_names
from ..trainer_mixin import RunTrainerMixin
from .collators import (
    EVAL_EPOCH,
    CausalLMCollator,
    FIMCollator,
    MaskedLMCollator,
    MaskingEpochCallback,
    SpanMaskingCollator,
    WholeWordMaskingCollator,
)
from .config import SelfSupervisedConfig

# Arguments the trainer sets on the config it is given: the collators read special_tokens_mask /
# offset_mapping, which Trainer would drop as unused; only the loss is evaluated (gathering
# batch x length x vocab logits would cost gigabytes).
SET_BY_TRAINER = {"remove_unused_columns": False, "prediction_loss_only": True}


class SelfSupervisedTrainer(RunTrainerMixin, Trainer):
    """The ``self_supervised`` method's ``Trainer``: the objective's collator, fresh masks per epoch, fixed eval masks.

    ``args.objective`` and the masking fields mean the same here as in a recipe: with no
    ``data_collator`` given, the objective's collator is built from them (seeded with ``args.seed``)
    and re-seeded at every epoch; evaluation uses one fixed set of masks, so eval losses are
    comparable, and reports perplexity (``exp(eval_loss)``). ``mlm_head_warmup_steps`` trains only the
    LM head for its first steps.

    Example:
        >>> args = SelfSupervisedConfig("out", objective="span", mean_span_length=3, max_steps=100)  # doctest: +SKIP
        >>> SelfSupervisedTrainer(model=model, args=args, train_dataset=blocks, processing_class=tok).train()  # doctest: +SKIP
    """

    def __init__(self, model=None, args=None, data_collator=None, *pos, callbacks=None, **kwargs):
        if args is not None and getattr(args, "objective", None) is not None:
            for name, value in SET_BY_TRAINER.items():
                setattr(args, name, value)
            if data_collator is None and kwargs.get("processing_class") is not None:
                data_collator = make_collator(args, kwargs["processing_class"])
        callbacks = list(callbacks or [])
        if hasattr(data_collator, "set_epoch") and not any(isinstance(c, MaskingEpochCallback) for c in callbacks):
            callbacks.append(MaskingEpochCallback(data_collator))
        steps = getattr(args, "mlm_head_warmup_steps", 0)
        if steps and model is not None and not hasattr(model, "peft_config"):
            callbacks.append(HeadWarmupCallback(model, steps))
        super().__init__(model, args, data_collator, *pos, callbacks=callbacks, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        collator = self.data_collator
        epoch = getattr(collator, "epoch", None)
        if epoch is not None:  # same masks at every evaluation, so eval losses are comparable
            collator.set_epoch(EVAL_EPOCH)
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            if epoch is not None:
                collator.set_epoch(epoch)
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None:
            metrics[f"{metric_key_prefix}_perplexity"] = math.exp(min(loss, 700.0))
        return metrics


class HeadWarmupCallback(TrainerCallback):
    """Freeze everything but the LM head for the first ``steps`` optimizer steps.

    A randomly initialised head (all-MiniLM-L6-v2 ships none) predicts at chance, and its gradients
    push the pretrained encoder in random directions; warming the head up first avoids that.
    Parameters without a gradient are skipped by the optimizer, so toggling ``requires_grad``
    between steps is enough (single-process training: DDP fixes its parameter set at wrap time).

    Example:
        >>> trainer.add_callback(HeadWarmupCallback(model, steps=50))  # doctest: +SKIP
    """

    def __init__(self, model, steps: int):
        heads = tuple(f"{name}." for name in head_module_names(model))
        self.body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(heads)]
        self.steps = steps

    def on_step_begin(self, args, state, control, **kwargs):
        for p in self.body:
            p.requires_grad_(state.global_step >= self.steps)


def make_collator(args: SelfSupervisedConfig, tokenizer):
    """The collator for ``args.objective``, seeded with the training seed."""
    common = {"tokenizer": tokenizer, "seed": args.seed}
    replace = {
        k: v
        for k, v in (("mask_replace_prob", args.mask_replace_prob), ("random_replace_prob", args.random_replace_prob))
        if v is not None
    }
    if args.objective == "mlm":
        return MaskedLMCollator(mlm_probability=args.mlm_probability, **replace, **common)
    if args.objective == "whole_word":
        return WholeWordMaskingCollator(mlm_probability=args.mlm_probability, **replace, **common)
    if args.objective == "span":
        return SpanMaskingCollator(
            mlm_probability=args.mlm_probability,
            mean_span_length=args.mean_span_length,
            max_span_length=args.max_span_length,
            **replace,
            **common,
        )
    if args.objective == "fim":
        return FIMCollator(fim_rate=args.fim_rate, **common)
    return CausalLMCollator(**common)
