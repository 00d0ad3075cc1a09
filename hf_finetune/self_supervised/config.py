"""``SelfSupervisedConfig`` (the ``training`` block) and ``TextArguments`` (the ``text`` block)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..config import REPORT_TO_HELP, CheckedRanges, default_report_to
from ..supervised.config import EarlyStoppingArguments

OBJECTIVES = ("mlm", "whole_word", "span", "clm", "fim")
MASKED_OBJECTIVES = ("mlm", "whole_word", "span")
PACKING = ("concat", "per_document", "none")
SAMPLE_BY = ("line", "paragraph", "document")


@dataclass
class TextArguments:
    """How raw text becomes training examples (the recipe's ``text`` block).

    ``data.max_length`` is the block size. ``data.dataset`` may also be ``python_docs`` (the
    Python 3.11 documentation sources from the Debian package ``python3.11-doc``), a plain text file
    or a folder of ``.txt``/``.md``/``.rst`` files, or any dataset with a text column
    (``bbc_news``: task-adaptive pretraining on a classification corpus).

    Example:
        >>> TextArguments(packing="per_document", sample_by="document").packing
        'per_document'
    """

    packing: str = field(
        default="concat",
        metadata={
            "help": "'concat': join documents (separated by SEP/EOS) and cut into full blocks of data.max_length; "
            "'per_document': cut each document into blocks, never crossing a document boundary (last block of a "
            "document shorter, padded); 'none': one example per text, truncated (line-by-line)."
        },
    )
    sample_by: str = field(
        default="paragraph",
        metadata={"help": "For text files and python_docs: one document per 'line', 'paragraph' or 'document' (file)."},
    )

    def __post_init__(self):
        if self.packing not in PACKING:
            raise ValueError(f"text.packing={self.packing!r}: use one of {list(PACKING)}.")
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"text.sample_by={self.sample_by!r}: use one of {list(SAMPLE_BY)}.")


@dataclass
class SelfSupervisedConfig(CheckedRanges, EarlyStoppingArguments, TrainingArguments):
    """Training arguments of the ``self_supervised`` method: the objective and its masking settings.

    Example:
        >>> SelfSupervisedConfig(output_dir="outputs/mlm", objective="span", mean_span_length=3.0).objective
        'span'
    """

    report_to: None | str | list[str] = field(
        default_factory=default_report_to, metadata={"help": REPORT_TO_HELP}
    )
    objective: str = field(
        default="mlm",
        metadata={
            "help": "'mlm' (masked LM, 80/10/10), 'whole_word' (whole-word masking), 'span' (SpanBERT span "
            "masking), 'clm' (causal LM) or 'fim' (fill-in-the-middle, causal LM)."
        },
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Fraction of non-special tokens to predict (mlm, whole_word, span)."}
    )
    mask_replace_prob: float | None = field(
        default=None,
        metadata={"help": "Share of targets replaced by the mask token (default: 0.8 for mlm, 1.0 for whole_word/span)."},
    )
    random_replace_prob: float | None = field(
        default=None,
        metadata={"help": "Share of targets replaced by a random token (default: 0.1 for mlm, 0 for whole_word/span)."},
    )
    mean_span_length: float = field(
        default=3.0, metadata={"help": "Mean of the geometric span-length distribution (span objective), >= 1."}
    )
    max_span_length: int = field(default=10, metadata={"help": "Longest span (span objective)."})
    mlm_head_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Train only the LM head for the first N steps, the rest of the model frozen. For models whose "
            "masked-LM head is not pretrained (all-MiniLM-L6-v2): its random predictions would otherwise send noise "
            "gradients into the encoder. Full training only (no LoRA)."
        },
    )
    fim_rate: float = field(default=0.5, metadata={"help": "Share of examples rearranged for fill-in-the-middle."})
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "clm only: flatten each batch into one row with position_ids (DataCollatorWithFlattening), "
            "no padding. Checked against the model before training; best with text.packing none/per_document."
        },
    )
    finetune: str | None = field(
        default=None,
        metadata={
            "help": "A supervised recipe YAML to run after this one, starting from the adapted encoder with a "
            "fresh task head. Its output goes to <output_dir>/finetune. With LoRA see finetune_lora."
        },
    )
    finetune_lora: str = field(
        default="merge",
        metadata={
            "help": "With LoRA and finetune: 'merge' folds the adapter into the encoder the supervised recipe starts "
            "from (it may train in full or with a new adapter); 'carry' keeps the base frozen and trains this "
            "adapter further in the supervised phase (lora.lora_adapter_path), with a fresh task head.",
            "choices": ["merge", "carry"],
        },
    )
    finetune_overrides: str | None = field(
        default=None,
        metadata={"help": "Overrides for the finetune recipe as a mapping, e.g. {max_steps: 50, samples_per_class: 10}."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"training.objective={self.objective!r}: use one of {list(OBJECTIVES)}.")
        if self.objective in MASKED_OBJECTIVES and not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(
                f"training.mlm_probability={self.mlm_probability}: the masking probability must be in (0, 1), e.g. 0.15."
            )
        if self.objective == "span" and self.mean_span_length < 1:
            raise ValueError(
                f"training.mean_span_length={self.mean_span_length}: spans are at least one token, use >= 1 (e.g. 3)."
            )
        if self.max_span_length < 1:
            raise ValueError(f"training.max_span_length={self.max_span_length}: use at least 1.")
        if not 0.0 <= self.fim_rate <= 1.0:
            raise ValueError(f"training.fim_rate={self.fim_rate}: use a probability in [0, 1].")
        if self.mlm_head_warmup_steps < 0:
            raise ValueError(f"training.mlm_head_warmup_steps={self.mlm_head_warmup_steps}: use 0 or more steps.")
        if self.padding_free and self.objective != "clm":
            raise ValueError("training.padding_free works with objective 'clm' only: set it to false.")
        for name in ("mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"training.{name}={value}: use a probability in [0, 1].")
        if isinstance(self.finetune_overrides, str):
            try:
                self.finetune_overrides = json.loads(self.finetune_overrides)
            except json.JSONDecodeError:
                raise ValueError(
                    "training.finetune_overrides must be a mapping such as {max_steps: 50}."
                ) from None
        if self.finetune_overrides is not None and not isinstance(self.finetune_overrides, dict):
            raise ValueError("training.finetune_overrides must be a mapping such as {max_steps: 50}.")
        if self.finetune_lora not in ("merge", "carry"):
            raise ValueError(f"training.finetune_lora={self.finetune_lora!r}: use 'merge' or 'carry'.")
        if self.finetune_overrides and not self.finetune:
            raise ValueError("training.finetune_overrides is set but training.finetune names no recipe.")
