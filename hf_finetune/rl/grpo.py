"""Deprecated: GRPO and RLOO moved to ``grpo_config``/``grpo_trainer`` and ``rloo_config``/``rloo_trainer``."""

import warnings

from .grpo_config import GRPOConfig
from .grpo_trainer import GRPOTrainer
from .rloo_config import RLOOConfig
from .rloo_trainer import RLOOTrainer

warnings.warn(
    "hf_finetune.rl.grpo is split into hf_finetune.rl.grpo_config/grpo_trainer and rloo_config/rloo_trainer; "
    "the old path goes away in 0.3.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["GRPOConfig", "GRPOTrainer", "RLOOConfig", "RLOOTrainer"]
