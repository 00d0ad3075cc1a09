"""``SupervisedConfig``: ``TrainingArguments`` plus the supervised task settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class SupervisedConfig(TrainingArguments):
    """Training arguments of the ``supervised`` method (the recipe's ``training`` block).

    Example:
        >>> SupervisedConfig(output_dir="outputs/bbc", num_train_epochs=1).task
        'classification'
    """

    task: str = field(
        default="classification",
        metadata={"help": "Supervised task: 'classification' (single-label sequence classification)."},
    )
    predictions_file: bool = field(
        default=True, metadata={"help": "Write eval predictions (text, label, prediction) to predictions.jsonl."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.task not in SUPERVISED_TASKS:
            raise ValueError(f"training.task={self.task!r}: use one of {sorted(SUPERVISED_TASKS)}.")


SUPERVISED_TASKS = ("classification",)
