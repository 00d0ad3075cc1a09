"""``SupervisedConfig``: ``TrainingArguments`` plus the supervised task and the staged schedule settings."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..config import REPORT_TO_HELP, CheckedRanges, default_report_to

SUPERVISED_TASKS = ("classification", "multi_label", "regression", "token_classification")
SCHEDULES = ("global-local", "lp-ft", "gradual-unfreezing")
STAGE_KEYS = {
    "name",
    "trainable",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "fraction",
    "lr_scheduler_type",
    "warmup_steps",
    "layer_lr_decay",
}
_TRAINABLE_WORDS = ("all", "head", "embeddings", "lora")


def parse_stages(stages) -> list[dict] | None:
    """Check a ``stages`` value (a list of dicts, or its JSON text) and return it as a list of dicts.

    Each stage names what it trains (``trainable``: ``all``, ``head``, ``top:N``, ``embeddings``,
    ``lora`` or a list of regex patterns over parameter names) and how long it runs (exactly one
    of ``max_steps``, ``num_train_epochs`` or ``fraction`` of the run's total budget).
    """
    if stages is None or stages == "":
        return None
    if isinstance(stages, str):
        try:
            stages = json.loads(stages)
        except json.JSONDecodeError as err:
            raise ValueError(f"training.stages is not valid JSON ({err}): give a list of stage mappings.") from None
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ValueError(
            "training.stages must be a non-empty list of mappings, e.g. "
            "[{name: global, trainable: all, num_train_epochs: 1}, {name: local, trainable: head, max_steps: 50}]."
        )
    out = []
    for i, stage in enumerate(stages):
        stage = dict(stage)
        name = stage.setdefault("name", f"stage{i}")
        unknown = set(stage) - STAGE_KEYS
        if unknown:
            raise ValueError(f"Stage {name!r}: unknown key(s) {sorted(unknown)}; a stage takes {sorted(STAGE_KEYS)}.")
        trainable = stage.setdefault("trainable", "all")
        if isinstance(trainable, str):
            if trainable not in _TRAINABLE_WORDS and not re.fullmatch(r"top:\d+", trainable):
                raise ValueError(
                    f"Stage {name!r}: trainable={trainable!r}; use all, head, top:N, embeddings, lora "
                    "or a list of parameter-name regex patterns."
                )
            if trainable.startswith("top:") and int(trainable[4:]) < 1:
                raise ValueError(f"Stage {name!r}: trainable={trainable!r}; top:N needs N >= 1.")
        elif not (isinstance(trainable, list) and trainable and all(isinstance(p, str) for p in trainable)):
            raise ValueError(f"Stage {name!r}: trainable must be a word (all, head, top:N, ...) or a list of patterns.")
        budget = [k for k in ("max_steps", "num_train_epochs", "fraction") if stage.get(k) is not None]
        if len(budget) != 1:
            raise ValueError(
                f"Stage {name!r}: give exactly one of max_steps, num_train_epochs or fraction (got {budget or 'none'})."
            )
        if float(stage[budget[0]]) <= 0 or (budget[0] == "fraction" and float(stage["fraction"]) > 1):
            raise ValueError(f"Stage {name!r}: {budget[0]}={stage[budget[0]]} must be positive (a fraction <= 1).")
        if stage.get("learning_rate") is not None and float(stage["learning_rate"]) <= 0:
            raise ValueError(f"Stage {name!r}: learning_rate must be positive.")
        decay = stage.get("layer_lr_decay")
        if decay is not None and not 0 < float(decay) <= 1:
            raise ValueError(f"Stage {name!r}: layer_lr_decay={decay} must be in (0, 1].")
        out.append(stage)
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"training.stages: stage names must be unique, got {names}.")
    return out


@dataclass
class StageArguments:
    """Staged schedule settings, shared by :class:`SupervisedConfig` and the SFT config.

    Without ``stages``, ``schedule`` and ``layer_lr_decay`` training is a plain ``Trainer`` run.
    """

    stages: list | str | None = field(
        default=None,
        metadata={
            "help": "Training stages in order, each a mapping: name, trainable (all | head | top:N | embeddings | "
            "lora | list of parameter-name regexes), learning_rate, one of max_steps / num_train_epochs / fraction "
            "(of the total budget), optional lr_scheduler_type, warmup_steps, layer_lr_decay. "
            "Switching stage rebuilds the optimizer and scheduler."
        },
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "help": "A preset staged schedule over the run's budget (num_train_epochs or max_steps): "
            "'global-local' (all weights for 0.8 of the budget, then the head for 0.2), 'lp-ft' (head at head_learning_rate for half, then "
            "all for half), 'gradual-unfreezing' (head, then one more top layer per stage, then all). "
            "Not together with stages."
        },
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the head-only stage of a preset: default 10x learning_rate for lp-ft "
            "(a linear probe wants a larger rate), learning_rate for global-local."
        },
    )
    layer_lr_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay d in (0, 1]: the head keeps the stage rate, the top layer gets "
            "rate*d, the next rate*d^2, ..., the embeddings rate*d^(L+1). Applies to every stage (a stage may "
            "override it)."
        },
    )

    def _check_stage_arguments(self) -> None:
        self.stages = parse_stages(self.stages)
        if self.stages and self.schedule:
            raise ValueError("Give either training.stages or training.schedule (a preset), not both.")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"training.schedule={self.schedule!r}: use one of {list(SCHEDULES)} or list stages.")
        if self.layer_lr_decay is not None and not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"training.layer_lr_decay={self.layer_lr_decay}: use a value in (0, 1], e.g. 0.8.")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ValueError("training.head_learning_rate must be positive.")

    @property
    def is_staged(self) -> bool:
        """Whether the trainer builds its own stage-aware optimizer (else it is exactly a ``Trainer``)."""
        return bool(self.stages or self.schedule or self.layer_lr_decay)


@dataclass
class EarlyStoppingArguments:
    """``early_stopping_patience``: transformers' ``EarlyStoppingCallback`` from a recipe field.

    The run adds the callback (:meth:`hf_finetune.runs.TrainingRun.callbacks`); ``metric_for_best_model``
    defaults to the eval loss. List it just before the ``TrainingArguments`` base.

    Example:
        >>> SupervisedConfig(output_dir="o", eval_strategy="steps", early_stopping_patience=3).metric_for_best_model
        'loss'
    """

    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without improvement of metric_for_best_model (default: eval "
            "loss) by more than early_stopping_threshold. Needs eval_strategy steps or epoch; with "
            "load_best_model_at_end (and matching save steps) the best checkpoint is the one exported."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "How much metric_for_best_model must improve to count as an improvement."}
    )

    def __post_init__(self):
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(f"training.early_stopping_patience={self.early_stopping_patience}: use 1 or more.")
            if str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no":
                raise ValueError(
                    "training.early_stopping_patience needs evaluations during training: set training.eval_strategy "
                    "to steps (with eval_steps) or epoch."
                )
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "loss"
        super().__post_init__()


@dataclass
class SupervisedConfig(CheckedRanges, StageArguments, EarlyStoppingArguments, TrainingArguments):
    """Training arguments of the ``supervised`` method (the recipe's ``training`` block).

    Example:
        >>> SupervisedConfig(output_dir="outputs/bbc", num_train_epochs=1).task
        'classification'
        >>> SupervisedConfig(output_dir="outputs/bbc", schedule="lp-ft").is_staged
        True
    """

    report_to: None | str | list[str] = field(default_factory=default_report_to, metadata={"help": REPORT_TO_HELP})
    task: str = field(
        default="classification",
        metadata={
            "help": "Supervised task: 'classification' (single label), 'multi_label' (label column holds a list "
            "of labels; sigmoid + threshold), 'regression' (float target; MSE) or 'token_classification' "
            "(NER: text_column holds token lists or a CoNLL file is given, label_column the BIO tags)."
        },
    )
    multi_label_threshold: float = field(
        default=0.5, metadata={"help": "multi_label: a label is predicted when its sigmoid probability >= this."}
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={
            "help": "token_classification: label every sub-token of a word (B- becomes I- after the first) "
            "instead of only the first sub-token (the others get -100, ignored by the loss)."
        },
    )
    predictions_file: bool = field(
        default=True, metadata={"help": "Write eval predictions (text, label, prediction) to predictions.jsonl."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.task not in SUPERVISED_TASKS:
            raise ValueError(f"training.task={self.task!r}: use one of {sorted(SUPERVISED_TASKS)}.")
        if not 0 < self.multi_label_threshold < 1:
            raise ValueError(f"training.multi_label_threshold={self.multi_label_threshold}: use a value in (0, 1).")
        self._check_stage_arguments()
