"""Configuration of :class:`~hf_finetune.rl.ppo_trainer.PPOTrainer`: ``TrainingArguments`` plus PPO's knobs."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..config import REPORT_TO_HELP, CheckedRanges, default_report_to
from .config import MAX_PROMPT_LENGTH_HELP, TRUNCATE_PROMPTS_HELP


@dataclass
class PPOConfig(CheckedRanges, TrainingArguments):
    """``TrainingArguments`` for PPO on a causal LM.

    One PPO *step* (``global_step``, what ``max_steps``, ``logging_steps``, ``eval_steps`` and
    ``save_steps`` count) is one rollout of ``rollout_batch_size`` prompts followed by
    ``num_ppo_epochs`` passes over ``num_mini_batches`` minibatches. A minibatch is
    ``per_device_train_batch_size * gradient_accumulation_steps`` sequences per device, so

    ``rollout_batch_size = per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches``

    and every PPO step makes ``num_ppo_epochs * num_mini_batches`` optimizer updates (the learning
    rate schedule is laid out over ``max_steps`` times that many updates, and ``warmup_steps``
    counts updates too).

    Example:
        >>> args = PPOConfig(output_dir="out", max_steps=20, per_device_train_batch_size=8,
        ...                  max_completion_length=16, kl_coef=0.05)  # doctest: +SKIP
    """

    report_to: None | str | list[str] = field(default_factory=default_report_to, metadata={"help": REPORT_TO_HELP})

    # --- rollout ---------------------------------------------------------------------------------
    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompt (text or chat messages)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": MAX_PROMPT_LENGTH_HELP})
    truncate_prompts: bool = field(default=False, metadata={"help": TRUNCATE_PROMPTS_HELP})
    max_completion_length: int = field(default=64, metadata={"help": "Most tokens generated per response."})
    stop_strings: list[str] | None = field(
        default=None,
        metadata={"help": "Strings that end a response (besides every EOS id of the tokenizer and of the model's "
                  "generation config); the response keeps the token that completes the string."},
    )
    rollout_micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per forward pass when a rollout computes log-probs, values and the reference "
                  "(generation runs on the whole rollout). None: per_device_train_batch_size."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts (and of the trained policy)."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Responses that hit max_completion_length without EOS are truncated there; with this set, "
            "their score is also lowered by this amount (a push towards finishing)."
        },
    )
    # --- PPO update ------------------------------------------------------------------------------
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches (optimizer updates) per PPO epoch."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range epsilon of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value prediction around the old value."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of an entropy bonus (0: entropy is only logged)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards before GAE."})
    # --- KL penalty ------------------------------------------------------------------------------
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "KL penalty coefficient beta: r_t = -beta * KL_t per response token, plus the score at the "
                  "last token (initial value when adaptive_kl_target is set)."},
    )
    kl_estimator: str = field(
        default="k1", metadata={"help": "Per-token KL estimator in the reward: k1 (log-ratio) or k3 (unbiased, >= 0)."}
    )
    adaptive_kl_target: float | None = field(
        default=None,
        metadata={"help": "Set to adapt kl_coef (controller of Ziegler et al., 2019) so that the KL per sequence "
                  "approaches this value. Not an early stop of the update on approx-KL."},
    )
    target_kl: float | None = field(
        default=None,
        metadata={"help": "Deprecated name of adaptive_kl_target (in SB3/cleanrl target_kl means approx-KL early "
                  "stopping, which this is not)."},
    )
    kl_horizon: int = field(
        default=10000,
        metadata={"help": "Horizon (in sequences) of the adaptive KL controller: each PPO step of B sequences moves "
                  "kl_coef by at most a factor 1 +- 0.2 B / kl_horizon. The default (TRL's, for runs of ~10^5 "
                  "sequences) makes adaptive_kl_target a no-op in a short run: 30 steps of 8 move kl_coef by under "
                  "0.5%. For a short run use about a tenth of the run's sequences or less (a warning says so)."},
    )
    kl_coef_min: float = field(
        default=0.0,
        metadata={"help": "Floor of the adaptive kl_coef. In a short run the KL of the first steps is near 0 whatever "
                  "kl_coef is, so the controller cuts kl_coef at its full rate there and the policy can then run "
                  "past the target before kl_coef climbs back; kl_coef_min = kl_coef makes the controller only raise "
                  "kl_coef (a KL ceiling)."},
    )
    # --- models ----------------------------------------------------------------------------------
    value_model: str = field(
        default="auto",
        metadata={
            "help": "separate: a critic AutoModelForSequenceClassification (num_labels=1) used per token (a second "
            "full copy of the backbone, all trainable); shared: a linear value head on the policy's last hidden "
            "state; auto: shared when the policy trains LoRA adapters (one frozen copy of the base), else separate. "
            "A shared head reads the policy's hidden states, so the value loss (times vf_coef) also trains the "
            "policy's weights (its LoRA adapters), unless detach_value_head is set."
        },
    )
    detach_value_head: bool = field(
        default=False,
        metadata={
            "help": "With a shared value head: stop the value loss's gradient at the head's input, so only the "
            "policy loss moves the policy (its LoRA adapters) and the critic is a linear probe of the policy's "
            "features. Off (default): the value loss also shapes the shared adapters, as in TRL's former "
            "value-head models; with large or unscaled rewards it can then dominate the policy's update."
        },
    )
    # --- evaluation ------------------------------------------------------------------------------
    num_sample_generations: int = field(
        default=8, metadata={"help": "Evaluation generations written to the samples table (jsonl, markdown, tensorboard)."}
    )

    def __post_init__(self):
        if self.deepspeed or self.fsdp or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true") \
                or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            # Rollouts call generate() on the unwrapped policy and the reference shares its weights: both need
            # full (unsharded) parameters, which ZeRO-3/FSDP do not keep. Not supported yet, so refuse early.
            raise ValueError("PPO does not support DeepSpeed or FSDP yet: launch it with DDP (recipes/accelerate/"
                             "ddp.yaml) or a single process, or use method: grpo / rloo (TRL supports both).")
        super().__post_init__()
        if self.remove_unused_columns:
            # Reward functions receive the dataset's other columns, so they must reach the trainer.
            self.remove_unused_columns = False
        if self.value_model not in ("auto", "separate", "shared"):
            raise ValueError(f"value_model={self.value_model!r}: use 'auto', 'separate' or 'shared'.")
        if self.target_kl is not None:
            warnings.warn("PPOConfig.target_kl is renamed adaptive_kl_target (it sets the adaptive KL controller's "
                          "target, not approx-KL early stopping); the old name goes away in 0.3.",
                          DeprecationWarning, stacklevel=3)
            if self.adaptive_kl_target not in (None, self.target_kl):
                raise ValueError("target_kl and adaptive_kl_target disagree: set adaptive_kl_target only.")
            self.adaptive_kl_target, self.target_kl = self.target_kl, None
        if self.rollout_micro_batch_size is not None and self.rollout_micro_batch_size < 1:
            raise ValueError("rollout_micro_batch_size must be >= 1 (or None).")
        if self.stop_strings is not None and not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError("stop_strings must be non-empty strings.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError("max_prompt_length must be >= 1 (or None).")
        if self.truncate_prompts and self.max_prompt_length is None:
            raise ValueError("truncate_prompts needs max_prompt_length (the length to cut to).")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r}: use 'k1' or 'k3'.")
        if self.max_completion_length < 1:
            raise ValueError("max_completion_length must be >= 1.")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (PPO needs sampled rollouts; evaluation is greedy anyway).")
        if self.num_ppo_epochs < 1 or self.num_mini_batches < 1:
            raise ValueError("num_ppo_epochs and num_mini_batches must both be >= 1.")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma and lam must lie in [0, 1].")
        if self.load_best_model_at_end:
            raise ValueError("load_best_model_at_end is not supported by PPO: evaluate the saved checkpoints instead.")
        if self.adaptive_kl_target is not None and self.adaptive_kl_target <= 0:
            raise ValueError("adaptive_kl_target must be > 0, or None for a fixed kl_coef.")
        if not 0 <= self.kl_coef_min <= self.kl_coef:
            raise ValueError(f"kl_coef_min={self.kl_coef_min} must lie in [0, kl_coef={self.kl_coef}]: it is the floor "
                             "of the adaptive coefficient, which starts at kl_coef.")
        if self.adaptive_kl_target is not None and self.max_steps > 0:
            # The controller's reach over the whole run, per process (more processes only add sequences).
            reach = (1 + 0.2 * self.rollout_batch_size / self.kl_horizon) ** self.max_steps
            if reach < 1.5:
                warnings.warn(
                    f"adaptive_kl_target is set, but with kl_horizon={self.kl_horizon} the controller can change "
                    f"kl_coef by at most a factor {reach:.3f} in max_steps={self.max_steps} steps of "
                    f"{self.rollout_batch_size} sequences, so the KL is not held near the target: set kl_horizon to "
                    f"about {max(1, self.max_steps * self.rollout_batch_size // 10)} (a tenth of the run's sequences).",
                    UserWarning, stacklevel=3)

    @property
    def rollout_forward_batch_size(self) -> int:
        """Sequences per forward pass of the rollout (log-probs, values, reference)."""
        return self.rollout_micro_batch_size or self.per_device_train_batch_size

    @property
    def rollout_batch_size(self) -> int:
        """Prompts per PPO step on one device."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
