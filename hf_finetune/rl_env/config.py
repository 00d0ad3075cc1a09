"""Recipe blocks of the ``rl_env`` method: the environment (``env``) and the agent (``agent``).

A recipe also takes the shared ``model`` block (the encoder) and an optional ``lora`` block
(``encoder_mode: lora``). Mappings (``env_kwargs``, ``algo_kwargs``, ...) are written as YAML
mappings; on the command line they are JSON strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = ("dqn", "a2c", "ppo", "recurrent_ppo")


def _mapping(value: Any, name: str) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: not a mapping ({err}); write it as a YAML mapping or a JSON object.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of key: value, got {type(value).__name__}.")
    return value


@dataclass
class EnvArguments:
    """Which environment the agent acts in, how its text is tokenized, and how many copies run.

    Example:
        >>> EnvArguments(env_id="hf_finetune/BabyAI-Text-v0", env_kwargs={"level": "BabyAI-GoToObj-v0"}).n_envs
        4
    """

    env_id: str = field(
        default="hf_finetune/BabyAI-Text-v0",
        metadata={"help": "A gymnasium id: hf_finetune/BabyAI-Text-v0, hf_finetune/TextBandit-v0, or any registered "
                  "env whose observation is token ids."},
    )
    env_kwargs: str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the env (a mapping), e.g. {level: BabyAI-GoToLocal-v0} or "
                  "{dataset: bbc_news, text_column: title}. The tokenizer is the encoder's unless given."},
    )
    eval_env_kwargs: str | None = field(
        default=None,
        metadata={"help": "Overrides of env_kwargs for the held-out evaluation env (default for a dataset bandit: "
                  "{split: validation})."},
    )
    validation_env_kwargs: str | None = field(
        default=None,
        metadata={"help": "Overrides of env_kwargs for the validation env of agent.keep_best (default: those of the "
                  "evaluation env). With held-out goals, {goal_split: train} makes the choice on goals seen in "
                  "training, so the held-out goals play no part in it."},
    )
    max_length: int = field(default=96, metadata={"help": "Token ids per text observation (padded)."})
    truncation: bool = field(
        default=True, metadata={"help": "Cut texts longer than max_length (reported in info); off: raise instead."}
    )
    n_envs: int = field(default=4, metadata={"help": "Parallel training envs (a VecEnv)."})
    subprocess_envs: bool = field(
        default=False, metadata={"help": "Run the training envs in subprocesses (SubprocVecEnv) instead of in-process."}
    )
    eval_seed: int = field(
        default=1_000_000,
        metadata={"help": "Seed of the evaluation env: its episodes are held out from training's (seed + rank)."},
    )
    validation_seed: int = field(
        default=2_000_000,
        metadata={"help": "Seed of the validation env that agent.keep_best chooses the weights on: other episodes "
                  "than the held-out ones (eval_seed), so the reported figure is not the one the choice was made on."},
    )

    def __post_init__(self):
        self.env_kwargs = _mapping(self.env_kwargs, "env.env_kwargs")
        self.eval_env_kwargs = _mapping(self.eval_env_kwargs, "env.eval_env_kwargs")
        self.validation_env_kwargs = _mapping(self.validation_env_kwargs, "env.validation_env_kwargs")
        if self.n_envs < 1:
            raise ValueError(f"env.n_envs={self.n_envs}: use at least 1.")
        if self.max_length < 2:
            raise ValueError(f"env.max_length={self.max_length}: use at least 2 tokens.")
        if self.validation_seed == self.eval_seed:
            raise ValueError(f"env.validation_seed={self.validation_seed} equals env.eval_seed: the validation episodes "
                             "would be the held-out ones. Use another seed (default 2000000).")
        from .envs import register_envs, registered_env_ids

        register_envs()
        import gymnasium as gym

        if self.env_id not in gym.registry:
            raise ValueError(
                f"env.env_id={self.env_id!r} is not registered. This package registers {registered_env_ids()}; "
                "other ids need their package imported first."
            )
        if self.env_id == "hf_finetune/BabyAI-Text-v0" and "level" in self.env_kwargs:
            from .envs import check_level

            level = self.env_kwargs["level"]
            try:  # before any model or env is built
                for name in [level] if isinstance(level, str) else level:
                    check_level(name)
            except ValueError as err:
                raise ValueError(f"env.env_kwargs.level: {err}") from None


@dataclass
class AgentConfig:
    """The SB3 algorithm, the LM encoder's use, evaluation, checkpoints and the run directory.

    Example:
        >>> AgentConfig(output_dir="outputs/agent", algorithm="ppo", algo_kwargs={"n_steps": 128}).encoder_mode
        'frozen'
    """

    output_dir: str = field(metadata={"help": "Run directory (agent, policy.safetensors, curves, checkpoints)."})
    algorithm: str = field(
        default="ppo",
        metadata={"help": "dqn, a2c or ppo (Stable-Baselines3), or recurrent_ppo (sb3-contrib's RecurrentPPO: PPO with "
                  "an LSTM memory after the extractor, for partially observed envs; pip install sb3-contrib). A2C "
                  "is the synchronous form of A3C; SB3 has no asynchronous A3C."},
    )
    algo_kwargs: str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the SB3 algorithm (a mapping), e.g. {n_steps: 128, batch_size: 64, "
                  "learning_rate: 0.0003, ent_coef: 0.01}."},
    )
    net_arch: list[int] | None = field(
        default=None, metadata={"help": "Hidden sizes of the policy/value (or Q) heads after the extractor."}
    )
    lstm_hidden_size: int | None = field(
        default=None,
        metadata={"help": "recurrent_ppo only: units of the LSTM (policy_kwargs lstm_hidden_size; default: "
                  "sb3-contrib's 256). Smaller is faster."},
    )
    total_timesteps: int = field(default=10_000, metadata={"help": "Environment steps to train for."})
    learning_rate_schedule: str = field(
        default="constant",
        metadata={"help": "constant, or linear: algo_kwargs.learning_rate decays linearly to 0 over total_timesteps "
                  "(the zoo's lin_ prefix, CleanRL's anneal_lr), so late updates cannot undo a learned policy."},
    )
    ent_coef_schedule: str = field(
        default="constant",
        metadata={"help": "constant, or linear: algo_kwargs.ent_coef (required, > 0) decays linearly to 0 over "
                  "total_timesteps, for ppo, a2c and recurrent_ppo (DQN has no entropy bonus). The bonus keeps early "
                  "exploration from locking in; annealing it lets the final policy commit to its best action."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the algorithm and of the training envs (seed + rank)."})
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda or auto."})
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "torch CPU threads (torch.set_num_threads). 1 is often fastest for SB3's small policies "
                  "on CPU, and much faster on a busy machine; unset: the thread policy (hf_finetune.threads: "
                  "rollouts and updates each get the faster of all usable cores and 1, measured every minute)."},
    )
    encoder_mode: str = field(
        default="frozen",
        metadata={"help": "frozen (shared, cached, not trained), lora (PEFT adapters; needs/uses the lora block) or "
                  "full (all encoder weights trained)."},
    )
    pooling: str = field(default="mean", metadata={"help": "mean (over the attention mask) or cls."})
    features_dim: int = field(default=256, metadata={"help": "Output size of the extractor's projection."})
    encoder_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of a trained encoder (lora/full); default: the algorithm's learning_rate."},
    )
    cache_size: int = field(
        default=100_000, metadata={"help": "LRU embedding cache entries for a frozen encoder (0: no cache)."}
    )
    standardize_embeddings: bool = field(
        default=False,
        metadata={"help": "Standardize each dimension of the pooled embedding (mean/std fitted before step 1 on "
                  "views a random policy meets; the LM counterpart of the zoo's VecNormalize on MiniGrid)."},
    )
    standardize_steps: int = field(
        default=2048, metadata={"help": "Random-policy env steps whose views fit standardize_embeddings."}
    )
    sentence_separator: str | None = field(
        default=None,
        metadata={"help": "Encode each sentence of a text on its own, ending at this token (e.g. '.'), and cache "
                  "sentence embeddings: the first sentence (a BabyAI mission) + the mean of the others. Far fewer "
                  "encoder passes on BabyAI-Text, where views reuse a small set of sentences; a trained (lora) "
                  "encoder encodes each distinct sentence of a batch once and, with "
                  "lora.lora_layers_to_transform, caches the frozen layers below the adapted ones."},
    )
    sentence_pooling: str = field(
        default="mean",
        metadata={"help": "With sentence_separator: mean (first sentence + mean of the others) or attention (the "
                  "others pooled by a small learned attention queried by the first, the mission; frozen sentence "
                  "embeddings stay cached). Attention keeps which object is where apart in views with distractors."},
    )
    sentence_slots: int = field(
        default=1,
        metadata={"help": "With sentence_separator: leading sentences that keep their own place in the features "
                  "instead of going into the mean/attention (1: the mission). 2 with env_kwargs describe_ahead: true "
                  "also keeps what is straight ahead apart."},
    )
    attention_dim: int = field(
        default=128, metadata={"help": "Output size of the attention pooling (sentence_pooling: attention)."}
    )
    attention_shared_projection: bool = field(
        default=False,
        metadata={"help": "sentence_pooling: attention only: the mission's query and the sentences' keys share one "
                  "projection, so attention starts as mission-sentence similarity instead of being learned per goal."},
    )
    attention_similarity_bias: float = field(
        default=0.0,
        metadata={"help": "sentence_pooling: attention only: add a learned scale, starting at this value, times the "
                  "cosine between the mission's and each sentence's embedding to the first attention head's scores; "
                  "0: off (babyai_text_ppo_levels.yaml: 20)."},
    )
    progress_bar: bool = field(default=True, metadata={"help": "Show SB3's progress bar (steps, speed, ETA)."})
    eval_freq: int = field(
        default=2_000, metadata={"help": "Evaluate every this many environment steps (all envs together); 0: only at the end."}
    )
    n_eval_episodes: int = field(default=20, metadata={"help": "Held-out episodes per evaluation."})
    deterministic_eval: bool = field(default=True, metadata={"help": "Greedy actions in evaluation."})
    keep_best: bool = field(
        default=False,
        metadata={"help": "Early stopping on validation episodes: every eval_freq steps also play n_eval_episodes "
                  "validation episodes (env.validation_seed), keep the weights with the best validation mean return "
                  "(SB3 EvalCallback's best_model_save_path, in output_dir/validation), and save and report those. "
                  "The held-out episodes (env.eval_seed) play no part in the choice; metrics also give the last "
                  "weights' held-out figures (last_eval_*)."},
    )
    checkpoint_freq: int = field(
        default=0, metadata={"help": "Save an SB3 checkpoint every this many environment steps (0: none)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "An SB3 checkpoint .zip of this recipe, or 'latest' (newest in output_dir/checkpoints), "
                  "to continue from. Loaded through SB3's set_parameters (tensors only, no pickle)."},
    )
    verbose: int = field(default=0, metadata={"help": "SB3 verbosity (1 prints the training tables)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the run with a model card to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id to push to (user/name)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir once the new run has finished."}
    )

    def __post_init__(self):
        from ..config import check_ranges

        check_ranges(self, "agent")  # as the recipe parser does, so Python users get the same checks
        self.algo_kwargs = _mapping(self.algo_kwargs, "agent.algo_kwargs")
        if self.algorithm not in ALGORITHMS:
            hint = " (SB3 has no asynchronous A3C: use a2c, its synchronous form)" if self.algorithm == "a3c" else ""
            raise ValueError(f"agent.algorithm={self.algorithm!r}: use one of {ALGORITHMS}{hint}.")
        if self.lstm_hidden_size is not None and (self.algorithm != "recurrent_ppo" or self.lstm_hidden_size < 1):
            raise ValueError(f"agent.lstm_hidden_size={self.lstm_hidden_size}: a positive size, for "
                             "agent.algorithm: recurrent_ppo only (the other algorithms have no LSTM); or leave it out.")
        if self.encoder_mode not in ("frozen", "lora", "full"):
            raise ValueError(f"agent.encoder_mode={self.encoder_mode!r}: use frozen, lora or full.")
        if self.learning_rate_schedule not in ("constant", "linear"):
            raise ValueError(f"agent.learning_rate_schedule={self.learning_rate_schedule!r}: use constant or linear.")
        if self.ent_coef_schedule not in ("constant", "linear"):
            raise ValueError(f"agent.ent_coef_schedule={self.ent_coef_schedule!r}: use constant or linear.")
        if self.ent_coef_schedule == "linear":
            ent_coef = self.algo_kwargs.get("ent_coef")
            if self.algorithm == "dqn":
                raise ValueError("agent.ent_coef_schedule: linear anneals the entropy bonus of ppo, a2c or "
                                 "recurrent_ppo; dqn has none (it explores with epsilon): use constant.")
            if isinstance(ent_coef, bool) or not isinstance(ent_coef, (int, float)) or ent_coef <= 0:
                raise ValueError(f"agent.ent_coef_schedule: linear decays agent.algo_kwargs.ent_coef to 0, but it is "
                                 f"{ent_coef!r} (SB3's default is 0.0, nothing to anneal): set it, e.g. ent_coef: 0.01.")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"agent.pooling={self.pooling!r}: use mean or cls.")
        if self.total_timesteps < 1:
            raise ValueError(f"agent.total_timesteps={self.total_timesteps}: use a positive number of steps.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"agent.torch_threads={self.torch_threads}: use a positive number (or leave it out).")
        if self.standardize_embeddings and self.standardize_steps < 2:
            raise ValueError(f"agent.standardize_steps={self.standardize_steps}: use at least 2 (e.g. 2048).")
        if self.sentence_pooling not in ("mean", "attention"):
            raise ValueError(f"agent.sentence_pooling={self.sentence_pooling!r}: use mean or attention.")
        if self.sentence_pooling == "attention" and not self.sentence_separator:
            raise ValueError("agent.sentence_pooling: attention pools sentence embeddings: set "
                             "agent.sentence_separator: '.' too.")
        if self.attention_shared_projection and self.sentence_pooling != "attention":
            raise ValueError("agent.attention_shared_projection shapes the attention pooling: set "
                             "agent.sentence_pooling: attention too, or drop it.")
        if self.attention_similarity_bias < 0:
            raise ValueError(f"agent.attention_similarity_bias={self.attention_similarity_bias}: use 0 (off) or a "
                             "positive scale, e.g. 20.")
        if self.attention_similarity_bias and self.sentence_pooling != "attention":
            raise ValueError("agent.attention_similarity_bias shapes the attention pooling: set "
                             "agent.sentence_pooling: attention too, or drop it.")
        if self.sentence_slots != 1 and not self.sentence_separator:
            raise ValueError("agent.sentence_slots needs agent.sentence_separator: '.' (slots are sentences).")
        if self.keep_best and self.eval_freq <= 0:
            raise ValueError("agent.keep_best chooses among the evaluations every agent.eval_freq steps: set "
                             "agent.eval_freq > 0 (e.g. 10000), or keep_best: false.")
        if self.n_eval_episodes < 1:
            raise ValueError(f"agent.n_eval_episodes={self.n_eval_episodes}: use at least 1.")
        for name in ("policy", "env", "seed", "device", "verbose", "policy_kwargs", "tensorboard_log"):
            if name in self.algo_kwargs:
                raise ValueError(f"agent.algo_kwargs sets {name!r}, which the recipe sets itself: remove it "
                                 "(use agent.seed / agent.device / agent.net_arch).")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("agent.push_to_hub needs agent.hub_model_id (user/name).")
