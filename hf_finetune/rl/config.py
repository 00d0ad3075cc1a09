"""Recipe blocks shared by the ``ppo``, ``grpo`` and ``rloo`` methods: prompt data and rewards.

With the ``model``, ``data``, ``lora`` and ``reward`` blocks identical for the three methods (and a
``training`` block restricted to the settings all three configs share: ``prompt_column``,
``max_completion_length``, ``temperature``, ``kl_coef``, ``num_sample_generations`` and the
``TrainingArguments``), a recipe switches algorithm by changing its ``method`` word only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DataArguments


@dataclass
class RLDataArguments(DataArguments):
    """Where the prompts come from (``DataArguments``) and how they are turned into model input.

    The prompt column itself is ``training.prompt_column`` (shared with ``PPOConfig``); every other
    column (e.g. ``answer``) reaches the reward functions as a keyword argument.

    Example:
        >>> RLDataArguments(dataset="recipes/rl/data/arithmetic.jsonl").use_chat_template
        True
    """

    use_chat_template: bool = field(
        default=True,
        metadata={
            "help": "Wrap each prompt as a user message with the tokenizer's chat template (with the generation "
            "prompt) when the tokenizer has one; false: feed the raw prompt text."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message put before every prompt (with use_chat_template)."}
    )


@dataclass
class RewardArguments:
    """What scores a completion: reward functions and/or a classifier reward model, with weights.

    The rewards are, in order, the ``reward_funcs`` and then the ``reward_model``;
    ``reward_weights`` gives one weight to each (default 1.0). ``eval_metrics`` are task metrics
    computed at evaluation only, so that reward hacking (reward up, task metric flat) is visible.

    Example:
        >>> RewardArguments(reward_funcs=["exact_match", "length:8"], reward_weights=[1.0, 0.2]).num_rewards
        2
    """

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: exact_match[:COLUMN], contains_answer[:COLUMN], regex:PATTERN, "
            "format:PATTERN, length:N[:chars], or an import path package.module:function (imports and runs "
            "that module: name only your own code)."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward (reward_funcs first, then reward_model). Default 1.0."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "A sequence classifier used as reward: a run directory (e.g. outputs/quickstart), a local "
            "folder or a Hub id. One-output models give their logit; others the prob/logit of reward_model_label."
        },
    )
    reward_model_label: str | None = field(
        default=None, metadata={"help": "Label (name or id) of the reward model whose probability is the reward."}
    )
    reward_model_output: str = field(
        default="prob", metadata={"help": "'prob' (softmax probability of the label) or 'logit'."}
    )
    reward_model_include_prompt: bool = field(
        default=False, metadata={"help": "Score prompt + completion instead of the completion alone."}
    )
    reward_model_batch_size: int = field(default=16, metadata={"help": "Texts per reward-model forward pass."})
    eval_metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Task metrics reported at evaluation, in the reward_funcs syntax (e.g. exact_match:answer); "
            "they do not enter the reward."
        },
    )
    evaluate_before_training: bool = field(
        default=True,
        metadata={"help": "Also evaluate the untrained policy (metrics before_eval_*), so the run shows the change."},
    )

    @property
    def num_rewards(self) -> int:
        """Number of weighted rewards (functions plus the reward model)."""
        return len(self.reward_funcs or []) + (self.reward_model is not None)

    def __post_init__(self):
        if self.num_rewards == 0:
            raise ValueError(
                "The reward block names no reward: set reward.reward_funcs (e.g. [exact_match]) and/or "
                "reward.reward_model (e.g. outputs/quickstart with reward_model_label: sport)."
            )
        if self.reward_weights is not None and len(self.reward_weights) != self.num_rewards:
            raise ValueError(
                f"reward.reward_weights has {len(self.reward_weights)} values for {self.num_rewards} rewards "
                "(reward_funcs, then reward_model): give one weight each."
            )
        if self.reward_model_output not in ("prob", "logit"):
            raise ValueError(f"reward.reward_model_output={self.reward_model_output!r}: use 'prob' or 'logit'.")
        if self.reward_model_batch_size < 1:
            raise ValueError("reward.reward_model_batch_size must be >= 1.")
