"""hf-finetune: supervised, self-supervised and RL fine-tuning on transformers, TRL, PEFT and SB3.

Public names are imported lazily so that ``import hf_finetune`` (and the CLI's ``--help``) stay fast.

Example:
    >>> from hf_finetune import load_recipe, run_recipe  # doctest: +SKIP
    >>> metrics = run_recipe(load_recipe("recipes/quickstart.yaml", ["--max_steps", "10"]))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> defining module (a literal table; `__getattr__` imports on first use).
_LAZY = {
    "MaskedLMCollator": "hf_finetune.self_supervised.collators",
    "WholeWordMaskingCollator": "hf_finetune.self_supervised.collators",
    "SpanMaskingCollator": "hf_finetune.self_supervised.collators",
    "CausalLMCollator": "hf_finetune.self_supervised.collators",
    "FIMCollator": "hf_finetune.self_supervised.collators",
    "MaskingEpochCallback": "hf_finetune.self_supervised.collators",
    "SelfSupervisedConfig": "hf_finetune.self_supervised.config",
    "TextArguments": "hf_finetune.self_supervised.config",
    "ModelArguments": "hf_finetune.config",
    "DataArguments": "hf_finetune.config",
    "LoraArguments": "hf_finetune.config",
    "Recipe": "hf_finetune.config",
    "parse_recipe": "hf_finetune.recipe_parsing",
    "load_recipe": "hf_finetune.recipe",
    "run_recipe": "hf_finetune.recipe",
    "evaluate_run": "hf_finetune.recipe",
    "TrainingRun": "hf_finetune.runs",
    "NonFiniteGuardCallback": "hf_finetune.callbacks",
    "push_run": "hf_finetune.hub",
    "model_card": "hf_finetune.hub",
    "load_metric": "hf_finetune.metrics",
    "SupervisedConfig": "hf_finetune.supervised.config",
    "SupervisedTrainer": "hf_finetune.supervised.trainer",
    "StagedTrainer": "hf_finetune.supervised.trainer",  # deprecated name of SupervisedTrainer
    "SelfSupervisedTrainer": "hf_finetune.self_supervised.trainer",
    "InstructionSFTConfig": "hf_finetune.supervised.sft_config",
    "InstructionSFTTrainer": "hf_finetune.supervised.sft_trainer",
    "LMFeaturesExtractor": "hf_finetune.rl_env.extractor",
    "TextObservationWrapper": "hf_finetune.rl_env.envs",
    "BabyAITextEnv": "hf_finetune.rl_env.envs",
    "TextBanditEnv": "hf_finetune.rl_env.envs",
    "load_agent": "hf_finetune.rl_env.train",
    "AgentConfig": "hf_finetune.rl_env.config",
    "PPOConfig": "hf_finetune.rl.ppo_config",
    "PPOTrainer": "hf_finetune.rl.ppo_trainer",
    "GRPOConfig": "hf_finetune.rl.grpo_config",
    "GRPOTrainer": "hf_finetune.rl.grpo_trainer",
    "RLOOConfig": "hf_finetune.rl.rloo_config",
    "RLOOTrainer": "hf_finetune.rl.rloo_trainer",
    "RewardArguments": "hf_finetune.rl.config",
    "RewardModelScorer": "hf_finetune.rl.reward_model",
    "compute_rewards": "hf_finetune.rl.rewards",
}

__all__ = sorted(_LAZY)

# Gymnasium ids of this package, registered on import as `import minigrid` registers its own, so
# `gym.make("hf_finetune/BabyAI-Text-v0")` works after `import hf_finetune` alone. String entry
# points: the env modules (and torch) load only when an env is made.
GYM_ENVS = {
    "hf_finetune/BabyAI-Text-v0": "hf_finetune.rl_env.envs:make_babyai_text",
    "hf_finetune/TextBandit-v0": "hf_finetune.rl_env.envs:make_text_bandit",
}


def _register_gym_envs() -> None:
    try:
        import gymnasium
    except ImportError:  # the rl_env method needs it; everything else works without
        return
    for env_id, entry_point in GYM_ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry_point, disable_env_checker=True)


_register_gym_envs()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_finetune' has no attribute {name!r}")
