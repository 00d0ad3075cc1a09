"""Recipe blocks shared by the ``ppo``, ``grpo`` and ``rloo`` methods: prompt data and rewards.

With the ``model``, ``data``, ``lora`` and ``reward`` blocks identical for the three methods (and a
``training`` block restricted to the settings all three configs share: ``prompt_column``,
``max_completion_length``, ``temperature``, ``kl_coef``, ``num_sample_generations`` and the
``TrainingArguments``), a recipe switches algorithm by changing its ``method`` word only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import REPORT_TO_HELP, DataArguments, default_report_to

MAX_PROMPT_LENGTH_HELP = ("Most tokens a prompt may have: a longer one fails before training, naming its row (or, "
                          "with truncate_prompts, is cut from the left). None: no limit.")
TRUNCATE_PROMPTS_HELP = ("Cut prompts longer than max_prompt_length from the left (keeping their end, next to the "
                         "response) instead of failing.")


def check_reward_weights(weights: Sequence[float] | None, rewards: Sequence[Any] | int,
                         where: str = "reward_weights") -> list[float] | None:
    """One weight per reward (reward functions first, then the reward model), as floats; None stays None.

    The one check the recipe block, PPO and GRPO/RLOO share. ``rewards`` is the list of rewards or their count.
    """
    if weights is None:
        return None
    count = rewards if isinstance(rewards, int) else len(rewards)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"{where} must be a list of numbers, one per reward; got {weights!r}.")
    if len(weights) != count:
        raise ValueError(f"{where} has {len(weights)} values for {count} rewards (reward functions, then the reward "
                         "model): give one weight each.")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
            raise ValueError(f"{where} holds {w!r}: every weight must be a finite number.")
        out.append(float(w))
    return out


@dataclass
class RLDataArguments(DataArguments):
    """Where the prompts come from (``DataArguments``) and how they are turned into model input.

    The prompt column itself is ``training.prompt_column`` (shared with ``PPOConfig``); every other
    column (e.g. ``answer``) reaches the reward functions as a keyword argument.

    Example:
        >>> RLDataArguments(dataset="recipes/rl/data/arithmetic.jsonl").use_chat_template is None
        True
    """

    use_chat_template: bool | None = field(
        default=None,
        metadata={
            "help": "true: wrap each prompt as a user message with the tokenizer's chat template (with the "
            "generation prompt), and fail before training when the tokenizer has none; false: feed the raw prompt "
            "text; null (default): the template when the tokenizer has one, else the raw text."
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
            "format:PATTERN, length:N[:chars], brevity[:chars] (1 / words), or an import path "
            "package.module:function (imports and runs that module: name only your own code)."
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
        default="prob",
        metadata={"help": "'prob' (softmax probability of the label), 'logit', or 'logprob' (log-softmax: graded "
                  "where the probability is near 0, bounded above by 0)."},
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
        self.reward_weights = check_reward_weights(self.reward_weights, self.num_rewards, "reward.reward_weights")
        if self.reward_model_output not in ("prob", "logit", "logprob"):
            raise ValueError(f"reward.reward_model_output={self.reward_model_output!r}: use 'prob', 'logit' or "
                             "'logprob'.")
        if self.reward_model_batch_size < 1:
            raise ValueError("reward.reward_model_batch_size must be >= 1.")


@dataclass
class GroupRLArguments:
    """Fields our GRPO/RLOO configs share with ``PPOConfig`` (same names, same meaning), and their
    CPU-safe defaults: listed before the TRL config in the bases, these fields override TRL's."""

    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompt text."})
    max_prompt_length: int | None = field(default=None, metadata={"help": MAX_PROMPT_LENGTH_HELP})
    truncate_prompts: bool = field(default=False, metadata={"help": TRUNCATE_PROMPTS_HELP})
    kl_coef: float | None = field(
        default=None,
        metadata={"help": "KL penalty coefficient under PPO's name; when set it overrides beta (so recipes switch "
                  "between ppo, grpo and rloo unchanged). GRPO adds beta * k3 KL per token to the loss; RLOO "
                  "subtracts beta * (sum of per-token log-ratios) from each completion's reward."},
    )
    # TRL keeps dropout on (train mode): then even the first step's ratio and KL are noise, not 1 and 0.
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Turn dropout off in the policy (and reference), so the KL at step 0 is exactly 0 and "
                  "the ratio exactly 1, as in PPO (TRL's default: false)."},
    )
    num_sample_generations: int = field(
        default=8, metadata={"help": "Evaluation generations written to the samples table (samples/eval_step*.jsonl and .md)."}
    )
    stop_strings: list[str] | None = field(
        default=None,
        metadata={"help": "Strings that end a completion (besides every EOS id), as PPO's stop_strings: the completion "
                  "keeps the string and nothing after it is scored or trained on."},
    )
    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (off by default: CPUs and older GPUs)."})
    # None (not TRL's True): transformers then resolves it from activation_checkpointing, default off.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (off by default here)."}
    )
    max_completion_length: int = field(default=64, metadata={"help": "Most tokens generated per completion."})
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt (the group)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial learning rate of AdamW."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    report_to: None | str | list[str] = field(default_factory=default_report_to, metadata={"help": REPORT_TO_HELP})
    # In a recipe these come from the `model` block (trust_remote_code) and the `reward` block
    # (reward_weights); Python users pass them here as to TRL's configs.
    recipe_shared_fields: ClassVar[tuple[str, ...]] = ("trust_remote_code", "reward_weights")

    def to_dict(self):
        # TRL derives generation_batch_size from steps_per_generation (or the reverse) and refuses both:
        # the resolved recipe keeps steps_per_generation alone, so recipe.yaml parses again (eval, push).
        data = super().to_dict()
        data.pop("generation_batch_size", None)
        return data

    def __post_init__(self):
        super().__post_init__()
        if self.kl_coef is not None:
            if self.kl_coef < 0:
                raise ValueError(f"training.kl_coef={self.kl_coef}: use a value >= 0.")
            self.beta = self.kl_coef
        if not self.prompt_column:
            raise ValueError("training.prompt_column is empty: name the dataset column that holds the prompts.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError("training.max_prompt_length must be >= 1 (or null).")
        if self.truncate_prompts and self.max_prompt_length is None:
            raise ValueError("training.truncate_prompts needs training.max_prompt_length (the length to cut to).")
        if self.max_completion_length < 1:
            raise ValueError("training.max_completion_length must be >= 1.")
        if self.stop_strings is not None and not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError("training.stop_strings must be a list of non-empty strings.")
        if self.num_generations < 2:
            raise ValueError(
                f"training.num_generations={self.num_generations}: group-relative methods need >= 2 completions per "
                "prompt (the baseline is the mean of the others)."
            )
