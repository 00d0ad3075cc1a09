"""``sft`` method trainer: a thin subclass of TRL's ``SFTTrainer``.

TRL does the work (chat templates, completion-only / assistant-only loss, packing); this layer adds
the staged schedule and LLRD of :class:`~hf_finetune.supervised.trainer.StagedMixin`, JSON args
instead of pickles and the multi-process loss fix of :class:`~hf_finetune.runs.RunTrainerMixin`.
The recipe entry (blocks, data checks, run) is ``sft_train.py``.
"""

from __future__ import annotations

import trl

from ..trainer_mixin import RunTrainerMixin
from .trainer import StagedMixin


class InstructionSFTTrainer(RunTrainerMixin, StagedMixin, trl.SFTTrainer):
    """TRL's ``SFTTrainer`` with staged schedules / LLRD and safe saving.

    Example:
        >>> args = InstructionSFTConfig("out", max_steps=10, schedule="gradual-unfreezing")  # doctest: +SKIP
        >>> InstructionSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()  # doctest: +SKIP
    """


_MOVED = ("BLOCKS", "blocks", "build_sft", "dataset_format", "run")


def __getattr__(name: str):
    if name in _MOVED:  # the recipe entry lived here before 0.2
        import importlib
        import warnings

        warnings.warn(f"hf_finetune.supervised.sft_trainer.{name} moved to hf_finetune.supervised.sft_train; "
                      "the old path goes away in 0.3.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("hf_finetune.supervised.sft_train"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
