"""``grpo`` method config: ``trl.GRPOConfig`` with CPU-safe defaults and the fields shared with ``PPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from ..config import CheckedRanges
from .config import GroupRLArguments


@dataclass
class GRPOConfig(CheckedRanges, GroupRLArguments, trl.GRPOConfig):
    """``trl.GRPOConfig`` with CPU-safe defaults and the fields shared with ``PPOConfig``.

    ``per_device_train_batch_size`` counts completions (prompts x ``num_generations``), as in TRL.

    Example:
        >>> args = GRPOConfig(output_dir="out", max_steps=10, num_generations=4, kl_coef=0.02)
        >>> args.bf16, args.gradient_checkpointing, args.beta
        (False, False, 0.02)
    """
