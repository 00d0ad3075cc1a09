"""``rloo`` method trainer: TRL's ``RLOOTrainer`` with our PPO's constructor and generation-based evaluation."""

from __future__ import annotations

import trl

from .grpo_trainer import GroupTrainerMixin


class RLOOTrainer(GroupTrainerMixin, trl.RLOOTrainer):
    """TRL's ``RLOOTrainer`` with the constructor of our ``PPOTrainer`` and generation-based evaluation.

    Arguments as for :class:`GRPOTrainer`, with an :class:`RLOOConfig`.

    Example:
        >>> trainer = RLOOTrainer(model, RLOOConfig(output_dir="out", max_steps=20), prompts,
        ...                       processing_class=tok, reward_funcs=["length:10"])  # doctest: +SKIP
    """
