"""``InstructionSFTConfig``: TRL's ``SFTConfig`` with CPU-safe defaults and the staged-schedule fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import trl

from ..config import REPORT_TO_HELP, CheckedRanges, default_report_to
from .config import EarlyStoppingArguments, StageArguments


@dataclass
class InstructionSFTConfig(CheckedRanges, StageArguments, EarlyStoppingArguments, trl.SFTConfig):
    """The ``training`` block of the ``sft`` method: ``trl.SFTConfig`` plus stages / LLRD.

    Differences from ``trl.SFTConfig``: ``bf16`` and ``gradient_checkpointing`` default to False (TRL
    turns both on, which fails or slows down on CPU); ``max_length`` comes from ``data.max_length``
    and ``trust_remote_code`` from the ``model`` block, so a recipe states each once.
    Everything else is TRL's: ``packing``, ``completion_only_loss`` (default: loss on completions
    for prompt/completion data), ``assistant_only_loss`` (chat data; TRL patches known chat
    templates that lack generation markers), ``chat_template_path``, ``dataset_text_field``.

    Example:
        >>> InstructionSFTConfig(output_dir="outputs/sft").bf16
        False
    """

    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (off by default: CPU-safe)."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory (off by default)."}
    )
    report_to: None | str | list[str] = field(default_factory=default_report_to, metadata={"help": REPORT_TO_HELP})
    # In a recipe these come from the model and data blocks (each setting stated once); Python users
    # pass them here as to trl.SFTConfig.
    recipe_shared_fields: ClassVar[tuple[str, ...]] = ("max_length", "trust_remote_code")

    def __post_init__(self):
        super().__post_init__()
        self._check_stage_arguments()
