"""``rloo`` method config: ``trl.RLOOConfig`` with CPU-safe defaults and the fields shared with ``PPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from ..config import CheckedRanges
from .config import GroupRLArguments


@dataclass
class RLOOConfig(CheckedRanges, GroupRLArguments, trl.RLOOConfig):
    """``trl.RLOOConfig`` with CPU-safe defaults and the fields shared with ``PPOConfig``.

    ``per_device_train_batch_size`` counts completions (prompts x ``num_generations``), as in TRL.

    Example:
        >>> RLOOConfig(output_dir="out", max_steps=10).num_generations
        4
    """
