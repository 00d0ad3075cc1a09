"""``SupervisedTrainer``: ``transformers.Trainer`` with the run-directory conventions of hf-finetune."""

from __future__ import annotations

from transformers import Trainer

from ..runs import SafeSaveMixin


class SupervisedTrainer(SafeSaveMixin, Trainer):
    """A ``Trainer`` that saves its arguments as JSON (no pickle) in every checkpoint and export.

    Example:
        >>> trainer = SupervisedTrainer(model=model, args=SupervisedConfig("out"), train_dataset=ds)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """
