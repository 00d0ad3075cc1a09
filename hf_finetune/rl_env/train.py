"""Entry point of the ``rl_env`` recipe method: SB3 DQN, A2C, PPO (or sb3-contrib RecurrentPPO) over an LM encoder.

The algorithms, vectorized envs, logger, ``EvalCallback`` and ``CheckpointCallback`` are SB3's.
Written here: the held-out re-seeding of evaluation, cache and non-finite checks, the safetensors
export and the safe resume/load paths.

SB3's ``agent.zip`` holds JSON ``data`` with cloudpickled values inside (spaces, schedules, policy
class), which ``PPO.load`` unpickles, plus tensor files. This package never needs the pickled part:
:func:`load_agent` rebuilds the agent from ``recipe.yaml`` and ``policy.safetensors``; resuming reads
only a checkpoint's tensors (SB3's ``set_parameters``) and its plain-JSON step counter.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import LinearSchedule, set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from ..callbacks import NonFiniteLossError
from ..config import LoraArguments, MethodEntry, ModelArguments, Recipe
from ..recipe_parsing import parse_recipe
from ..runs import TrainingRun
from ..threads import sb3_thread_policy_callback
from .config import AgentConfig, EnvArguments
from .envs import make_env
from .extractor import EncoderLRAdam, LMFeaturesExtractor, frozen_encoders, lm_extractors

logger = logging.getLogger(__name__)

BLOCKS = {"model": ModelArguments, "lora": LoraArguments, "env": EnvArguments, "agent": AgentConfig}
ALGORITHM_CLASSES = {"dqn": DQN, "a2c": A2C, "ppo": PPO}  # + recurrent_ppo, imported on demand (algorithm_class)
_LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_layers_to_transform")


# ------------------------------------------------------------------ envs


def env_kwargs(recipe: Recipe, evaluation: bool = False, validation: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``gym.make`` for the training (or held-out evaluation, or validation) env."""
    env: EnvArguments = recipe.env
    kwargs = dict(env.env_kwargs)
    kwargs.setdefault("tokenizer", recipe.model.tokenizer_name_or_path or recipe.model.model_name_or_path)
    kwargs.setdefault("max_length", env.max_length)
    kwargs.setdefault("truncation", env.truncation)
    if evaluation:
        if env.env_id == "hf_finetune/TextBandit-v0" and "dataset" in kwargs:
            kwargs["split"] = "validation"
        kwargs.update(env.eval_env_kwargs)
        if validation:
            kwargs.update(env.validation_env_kwargs)
    return kwargs


def build_envs(recipe: Recipe, evaluation: bool = False, seed: int | None = None, validation: bool = False):
    """The training VecEnv (seeds ``seed + rank``) or a one-env evaluation VecEnv (held-out: ``env.eval_seed``;
    ``seed``: others, e.g. ``env.validation_seed``, with ``env.validation_env_kwargs`` if ``validation``)."""
    env: EnvArguments = recipe.env
    kwargs = {"env_id": env.env_id, **env_kwargs(recipe, evaluation, validation)}
    if evaluation:
        seed = env.eval_seed if seed is None else seed
        return make_vec_env(make_env, n_envs=1, seed=seed, env_kwargs=kwargs, vec_env_cls=DummyVecEnv)
    vec_cls = SubprocVecEnv if env.subprocess_envs and env.n_envs > 1 else DummyVecEnv
    return make_vec_env(make_env, n_envs=env.n_envs, seed=recipe.agent.seed, env_kwargs=kwargs, vec_env_cls=vec_cls)


# ------------------------------------------------------------------ agent


def _lora_settings(recipe: Recipe) -> dict[str, Any] | None:
    agent: AgentConfig = recipe.agent
    if recipe.lora.use_lora and agent.encoder_mode == "frozen":
        raise ValueError(
            "A lora block was given but agent.encoder_mode is 'frozen': a frozen encoder takes no LoRA. "
            "Set agent.encoder_mode: lora, or remove the lora block."
        )
    if agent.encoder_mode != "lora":
        return None
    return {k: getattr(recipe.lora, k) for k in _LORA_KEYS if getattr(recipe.lora, k) is not None}


def policy_kwargs(recipe: Recipe, learning_rate: float) -> dict[str, Any]:
    """SB3 ``policy_kwargs``: the LM extractor, the heads, and the encoder's own learning rate."""
    agent: AgentConfig = recipe.agent
    extractor = {
        "encoder": recipe.model.model_name_or_path,
        "encoder_mode": agent.encoder_mode,
        "pooling": agent.pooling,
        "features_dim": agent.features_dim,
        "cache_size": agent.cache_size,
        "revision": recipe.model.revision,
        "standardize": agent.standardize_embeddings,
        "sentence_separator": agent.sentence_separator,
        "sentence_pooling": agent.sentence_pooling,
        "attention_dim": agent.attention_dim,
        "attention_shared_projection": agent.attention_shared_projection,
        "attention_similarity_bias": agent.attention_similarity_bias,
        "sentence_slots": agent.sentence_slots,
    }
    lora = _lora_settings(recipe)
    if lora is not None:
        extractor["lora"] = lora
    kwargs: dict[str, Any] = {"features_extractor_class": LMFeaturesExtractor, "features_extractor_kwargs": extractor}
    if agent.net_arch is not None:
        kwargs["net_arch"] = list(agent.net_arch)
    if agent.lstm_hidden_size is not None:
        kwargs["lstm_hidden_size"] = agent.lstm_hidden_size
    if agent.encoder_mode != "frozen":
        scale = (agent.encoder_learning_rate or learning_rate) / learning_rate
        kwargs["optimizer_class"] = EncoderLRAdam
        kwargs["optimizer_kwargs"] = {"encoder_lr_scale": scale}
    return kwargs


def algorithm_class(algorithm: str):
    """The SB3 class of ``agent.algorithm``; sb3-contrib (an optional extra) is imported only for recurrent_ppo."""
    if algorithm != "recurrent_ppo":
        return ALGORITHM_CLASSES[algorithm]
    try:
        from .recurrent import RecurrentPPO
    except ModuleNotFoundError:
        raise ValueError("agent.algorithm=recurrent_ppo needs sb3-contrib: pip install sb3-contrib==2.9.2 (or "
                         "pip install 'hf-finetune[envs]').") from None
    return RecurrentPPO


def build_agent(recipe: Recipe, env):
    """The SB3 algorithm object for a recipe and a VecEnv."""
    agent: AgentConfig = recipe.agent
    cls = algorithm_class(agent.algorithm)
    algo_kwargs = dict(agent.algo_kwargs)
    learning_rate = algo_kwargs.get("learning_rate", _default(cls, "learning_rate"))
    if not isinstance(learning_rate, (int, float)):
        raise ValueError("agent.algo_kwargs.learning_rate must be a number in a recipe.")
    check_algo_kwargs(agent.algorithm, algo_kwargs)
    check_action_space(agent.algorithm, env.action_space)
    if agent.algorithm == "dqn":
        check_replay_buffer(env.observation_space, env.action_space, algo_kwargs)
    if agent.learning_rate_schedule == "linear":  # SB3 calls it with the fraction of training left (1 -> 0)
        algo_kwargs["learning_rate"] = LinearSchedule(float(learning_rate), 0.0, 1.0)
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    if agent.algorithm == "recurrent_ppo":  # an LSTM between the extractor and the heads
        from .recurrent import lstm_policy

        policy = lstm_policy(env.observation_space)
    try:
        return cls(policy, env, seed=agent.seed, device=agent.device, verbose=agent.verbose,
                   policy_kwargs=policy_kwargs(recipe, float(learning_rate)), **algo_kwargs)
    except TypeError as err:
        raise ValueError(f"agent.algo_kwargs: {err}. See the {cls.__name__} arguments in the SB3 docs.") from None


# ------------------------------------------------------------------ checks before step 1
# SB3 reports these late (a TypeError from __init__, an AssertionError on the action space, a
# warning once the replay buffer is allocated): say what is wrong and how to fix it up front.


def check_algo_kwargs(algorithm: str, algo_kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` for an ``algo_kwargs`` key the SB3 algorithm's constructor does not take."""
    cls = algorithm_class(algorithm)
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "policy", "env")]
    for key in algo_kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"agent.algo_kwargs: {cls.__name__} (agent.algorithm={algorithm}) takes no argument {key!r}.{hint} "
                f"It takes: {', '.join(sorted(accepted))}."
            )


def check_action_space(algorithm: str, action_space: spaces.Space) -> None:
    """Raise ``ValueError`` when the algorithm cannot act in ``action_space`` (DQN: discrete actions only)."""
    if algorithm == "dqn" and not isinstance(action_space, spaces.Discrete):
        raise ValueError(
            f"agent.algorithm=dqn picks one of n discrete actions, but the env's action space is {action_space}. "
            "Use agent.algorithm: ppo or a2c (they take Box, MultiDiscrete and MultiBinary actions), or an env "
            "with a Discrete action space."
        )


def replay_buffer_bytes(observation_space: spaces.Space, action_space: spaces.Space, buffer_size: int,
                        optimize_memory_usage: bool = False) -> int:
    """Bytes SB3's replay buffer allocates: observations (and next observations), actions, rewards, flags."""
    def nbytes(space: spaces.Space) -> int:
        if isinstance(space, spaces.Dict):
            return sum(nbytes(sub) for sub in space.spaces.values())
        shape = space.shape or (1,)
        return int(np.prod(shape)) * np.dtype(space.dtype or np.float32).itemsize

    observations = nbytes(observation_space) * (1 if optimize_memory_usage else 2)
    return buffer_size * (observations + nbytes(action_space) + 12)  # + reward, done, timeout (float32 each)


def check_replay_buffer(observation_space: spaces.Space, action_space: spaces.Space, algo_kwargs: dict[str, Any],
                        available: int | None = None) -> None:
    """Raise ``ValueError`` when the replay buffer would not fit in the memory available now."""
    import psutil

    size = int(algo_kwargs.get("buffer_size", _default(DQN, "buffer_size")))
    optimize = bool(algo_kwargs.get("optimize_memory_usage", False))
    need = replay_buffer_bytes(observation_space, action_space, size, optimize)
    available = psutil.virtual_memory().available if available is None else available
    if need > 0.8 * available:
        per = need / size
        raise ValueError(
            f"agent.algo_kwargs.buffer_size={size}: the replay buffer would take {need / 2**30:.1f} GiB "
            f"({per:.0f} bytes per transition at this observation size), but {available / 2**30:.1f} GiB of memory "
            f"is available now. Use buffer_size <= {int(0.5 * available / per)} (half of that), or a shorter "
            "env.max_length."
        )


def _default(cls, name: str):
    return inspect.signature(cls.__init__).parameters[name].default


# ------------------------------------------------------------------ callbacks


class HeldOutEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` re-seeding the eval env before every evaluation: the same held-out episodes
    each time, so the curve compares like with like. ``key_prefix`` renames SB3's ``eval/`` log keys, so a
    second (validation) evaluation does not overwrite the first's."""

    def __init__(self, eval_env, eval_seed: int, key_prefix: str = "eval", **kwargs: Any):
        super().__init__(eval_env, **kwargs)
        self.eval_seed = eval_seed
        self.key_prefix = key_prefix

    @property
    def logger(self):
        logger_ = self.model.logger
        return logger_ if self.key_prefix == "eval" else _RenamedKeys(logger_, "eval/", f"{self.key_prefix}/")

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.seed(self.eval_seed)
        return super()._on_step()


class _RenamedKeys:
    """An SB3 ``Logger`` seen through a key prefix swap (EvalCallback writes fixed ``eval/`` keys)."""

    def __init__(self, logger_, old: str, new: str):
        self._logger, self._old, self._new = logger_, old, new

    def record(self, key: str, value: Any, exclude=None) -> None:
        if key.startswith(self._old):
            key = self._new + key[len(self._old):]
        self._logger.record(key, value, exclude)

    def __getattr__(self, name: str):
        return getattr(self._logger, name)


class EncoderStatsCallback(BaseCallback):
    """Logs the frozen encoder's cache hit rate and stops on non-finite policy weights, naming the step."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for i, shared in enumerate(frozen_encoders(self.model.policy)):
            suffix = f"_{i}" if i else ""
            self.logger.record(f"encoder/cache_hit_rate{suffix}", shared.hit_rate)
            self.logger.record(f"encoder/cache_entries{suffix}", len(shared.cache))
            if shared.sentence_ids:
                self.logger.record(f"encoder/sentences_encoded{suffix}", shared.sentences_encoded)
        for name, param in self.model.policy.named_parameters():
            if not torch.isfinite(param).all():
                raise NonFiniteLossError(
                    f"Non-finite weights in {name} at step {self.model.num_timesteps}: training stopped. Lower the "
                    "learning rate or set max_grad_norm."
                )


class EntCoefScheduleCallback(BaseCallback):
    """``agent.ent_coef_schedule: linear``: SB3 has no entropy schedule; PPO/A2C/RecurrentPPO read the float
    ``model.ent_coef`` in ``train()``, after each rollout, so it is set (and logged) at the rollout's end."""

    def __init__(self, initial: float):
        super().__init__()
        self.initial = initial

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # learn() updates _current_progress_remaining after this hook: the same fraction, computed as SB3 does.
        left = max(1.0 - self.model.num_timesteps / self.model._total_timesteps, 0.0)
        self.model.ent_coef = self.initial * left
        self.logger.record("train/ent_coef", self.model.ent_coef)


def evaluate_agent(model, eval_env, recipe: Recipe) -> dict[str, float]:
    """Success rate and mean return over the held-out episodes (same episodes every call)."""
    successes: list[float] = []

    def record(locals_: dict, _globals: dict) -> None:
        if locals_["done"]:
            successes.append(float(locals_["info"].get("is_success", False)))

    eval_env.seed(recipe.env.eval_seed)
    returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=recipe.agent.n_eval_episodes,
                                       deterministic=recipe.agent.deterministic_eval, return_episode_rewards=True,
                                       callback=record)
    return {
        "eval_mean_return": float(np.mean(returns)),
        "eval_std_return": float(np.std(returns)),
        "eval_success_rate": float(np.mean(successes)) if successes else 0.0,
        "eval_mean_length": float(np.mean(lengths)),
    }


def fit_standardization(model, recipe: Recipe) -> int:
    """Fit the extractors' embedding standardization on views a random policy meets; returns how many. The
    envs are seeded apart from training (``seed + rank``) and evaluation: no held-out episode is looked at."""
    extractors = [e for e in lm_extractors(model.policy) if e.standardize]
    if not extractors:
        return 0
    agent: AgentConfig = recipe.agent
    kwargs = {"env_id": recipe.env.env_id, **env_kwargs(recipe)}
    n_envs = min(recipe.env.n_envs, 4)
    env = make_vec_env(make_env, n_envs=n_envs, seed=agent.seed + 100_000, env_kwargs=kwargs, vec_env_cls=DummyVecEnv)
    env.action_space.seed(agent.seed)
    text_key = extractors[0].text_key
    rows = []
    obs = env.reset()
    for _ in range(max(agent.standardize_steps // n_envs, 1)):
        rows.append(obs[text_key] if text_key else obs)
        obs, _, _, _ = env.step(np.array([env.action_space.sample() for _ in range(n_envs)]))
    env.close()
    observations = torch.as_tensor(np.concatenate(rows)).float().to(model.device)
    for extractor in extractors:
        extractor.fit_standardization(observations)
    return len(torch.unique(observations, dim=0))


def keep_best_weights(model, validation: EvalCallback, last: dict[str, float], eval_env, recipe: Recipe) -> dict:
    """Load the weights SB3's validation ``EvalCallback`` saved as best; returns their held-out metrics, the
    last weights' (``last_*``) and the validation figures chosen on (``best_*``); no saved best: ``last``."""
    path = Path(validation.best_model_save_path) / "best_model.zip"
    if not path.is_file() or not validation.evaluations_timesteps:
        return last
    model.set_parameters(str(path), exact_match=True, device=model.device)  # tensors only, no unpickling
    metrics: dict[str, Any] = evaluate_agent(model, eval_env, recipe)
    # EvalCallback replaces its best only on a strictly higher mean reward: the first maximum, as argmax gives.
    index = int(np.argmax([np.mean(r) for r in validation.evaluations_results]))
    metrics["best_step"] = int(validation.evaluations_timesteps[index])
    metrics["best_validation_mean_return"] = float(np.mean(validation.evaluations_results[index]))
    if validation.evaluations_successes:
        metrics["best_validation_success_rate"] = float(np.mean(validation.evaluations_successes[index]))
    metrics.update({f"last_{key}": value for key, value in last.items()})
    return metrics


# ------------------------------------------------------------------ save / load


def save_agent(model, run_dir: Path) -> None:
    """Write ``agent.zip`` (SB3's format) and ``policy.safetensors`` (the policy's tensors, no pickle)."""
    from safetensors.torch import save_model

    model.save(run_dir / "agent.zip")
    save_model(model.policy, str(run_dir / "policy.safetensors"))


def load_agent(run_dir: str | Path, env=None):
    """Rebuild a trained agent from its run directory without unpickling anything.

    The algorithm and policy come from ``recipe.yaml``, the weights from ``policy.safetensors``
    (a frozen encoder is reloaded from its Hub id or folder).

    Example:
        >>> agent = load_agent("outputs/babyai-ppo")  # doctest: +SKIP
        >>> action, _ = agent.predict(obs, deterministic=True)  # doctest: +SKIP
    """
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    if not (run_dir / "policy.safetensors").is_file() or not (run_dir / "recipe.yaml").is_file():
        raise ValueError(f"{run_dir} is not an rl_env run: expected recipe.yaml and policy.safetensors there.")
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe = parse_recipe(data, BLOCKS, source=str(run_dir / "recipe.yaml"))
    env = env if env is not None else build_envs(recipe, evaluation=True)
    model = build_agent(recipe, env)
    load_model(model.policy, str(run_dir / "policy.safetensors"))
    return model


def _checkpoint_path(agent: AgentConfig) -> Path:
    if agent.resume_from_checkpoint != "latest":
        path = Path(agent.resume_from_checkpoint)
        if not path.is_file():
            raise ValueError(f"agent.resume_from_checkpoint={path}: no such checkpoint .zip.")
        return path
    found = sorted(Path(agent.output_dir, "checkpoints").glob("agent_*_steps.zip"),
                   key=lambda p: int(p.stem.split("_")[-2]))
    if not found:
        raise ValueError(f"agent.resume_from_checkpoint=latest but {agent.output_dir}/checkpoints holds no checkpoint.")
    return found[-1]


def resume(model, path: Path) -> int:
    """Load a checkpoint's tensors (policy and optimizer) and its step counter; returns the step."""
    model.set_parameters(str(path), exact_match=True, device=model.device)
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    model.num_timesteps = int(data.get("num_timesteps", 0))
    if "_n_updates" in data:
        model._n_updates = int(data["_n_updates"])
    return model.num_timesteps


# ------------------------------------------------------------------ curves and card


CURVE_KEYS = ("rollout/ep_rew_mean", "rollout/success_rate", "eval/mean_reward", "eval/success_rate",
              "validation/success_rate", "encoder/cache_hit_rate")


def progress_history(run_dir: Path) -> list[dict]:
    """SB3's ``progress.csv`` as a log history (one dict per row with its ``step``), for ``curves.png``."""
    path = run_dir / "progress.csv"
    if not path.is_file():
        return []
    history = []
    with open(path) as f:
        for row in csv.DictReader(f):
            step = row.get("time/total_timesteps")
            if not step:
                continue
            entry = {"step": int(float(step))}
            for key, value in row.items():
                if value not in (None, "") and key != "time/total_timesteps":
                    try:
                        entry[key] = float(value)
                    except ValueError:
                        pass
            history.append(entry)
    return history


def card_details(recipe: dict, metrics: dict[str, Any]) -> dict[str, Any]:
    """Model-card fields of an agent run as ``huggingface_sb3`` writes them: ``library_name: stable-baselines3``,
    the env id as a tag (not a dataset), ``model-index`` ``mean_reward`` "mean +/- std" + success rate, a snippet."""
    agent, env, model = recipe.get("agent") or {}, recipe.get("env") or {}, recipe.get("model") or {}
    env_id, algo = env.get("env_id", "env"), str(agent.get("algorithm", "ppo"))
    kwargs = {k: v for k, v in (env.get("env_kwargs") or {}).items() if k not in ("texts", "labels")}
    mean, std = metrics.get("eval_mean_return"), metrics.get("eval_std_return")
    results = []
    if isinstance(mean, (int, float)):
        results.append({"metric_type": "mean_reward", "metric_value": f"{mean:.2f} +/- {(std or 0.0):.2f}"})
    if isinstance(metrics.get("eval_success_rate"), (int, float)):
        results.append({"metric_type": "success_rate", "metric_value": metrics["eval_success_rate"]})
    a2c = " (the synchronous form of A3C)" if algo == "a2c" else ""
    library, name, act = "Stable-Baselines3", algo.upper(), "action, _ = agent.predict(obs, deterministic=True)"
    if algo == "recurrent_ppo":  # the LSTM state goes from step to step; episode_start resets it
        library, name = "sb3-contrib", "RecurrentPPO"
        act = ("import numpy as np\n\nstate, episode_start = None, np.ones((1,), dtype=bool)\n"
               "action, state = agent.predict(obs, state=state, episode_start=episode_start, deterministic=True)\n"
               "obs, reward, episode_start, info = env.step(action)")
    description = f"""- **Algorithm:** {library} `{name}`{a2c} \
with `{json.dumps(agent.get("algo_kwargs") or {})}`
- **Encoder:** `{model.get("model_name_or_path")}` ({agent.get("encoder_mode")}, {agent.get("pooling")} pooling, \
projection to {agent.get("features_dim")})
- **Environment:** `{env_id}` with `{json.dumps(kwargs, default=str)}`, {env.get("max_length")} tokens per observation
- **Training:** {agent.get("total_timesteps")} environment steps, {env.get("n_envs")} envs, seed {agent.get("seed")}
- **Evaluation:** held-out env seed {env.get("eval_seed")}, {agent.get("n_eval_episodes")} episodes, \
{"greedy" if agent.get("deterministic_eval", True) else "sampled"} actions

## Usage

```python
from hf_finetune.rl_env.train import load_agent  # rebuilds the agent from recipe.yaml + policy.safetensors

agent = load_agent("path/to/this/repo")
{act}
```

`policy.safetensors` holds the policy weights (a frozen encoder is not included: it is reloaded
from its id). `agent.zip` is SB3's own format (`{name}.load`); its `data` entry contains
cloudpickled objects: only load it from a source you trust.
"""
    return {
        "task_type": "reinforcement-learning",
        "library_name": "stable-baselines3",
        "dataset": None,
        "task": algo,
        "tags": ["reinforcement-learning", "stable-baselines3", algo, env_id, "text-environment"],
        "eval_results": results,
        "eval_dataset": env_id,
        "hyperparameters": {},
        "title": f"{name} agent with an LM encoder on {env_id}",
        "description": description,
    }


# ------------------------------------------------------------------ run


def run(recipe: Recipe, callbacks: list | None = None) -> dict:
    """Train the agent the recipe describes; returns the final held-out evaluation metrics.

    ``callbacks`` are extra SB3 ``BaseCallback`` instances, added after the run's own.
    """
    agent: AgentConfig = recipe.agent
    _lora_settings(recipe)  # fail on frozen + LoRA before loading anything
    with TrainingRun(recipe, callbacks) as run_:
        set_random_seed(agent.seed)
        # A fixed count, or else the thread policy: the faster count for rollouts and for updates, re-measured.
        threads = [] if agent.torch_threads else [sb3_thread_policy_callback()]
        if agent.torch_threads:
            torch.set_num_threads(agent.torch_threads)
        run_dir = run_.run_dir
        train_env = build_envs(recipe)
        eval_env = build_envs(recipe, evaluation=True)
        model = build_agent(recipe, train_env)
        for shared in frozen_encoders(model.policy):
            # The frozen encoder is shared process-wide: start each run cold, so runs are reproducible.
            shared.clear()
            shared.reset_stats()
        model.set_logger(configure(str(run_dir), ["stdout", "csv", "tensorboard"] if agent.verbose else ["csv", "tensorboard"]))
        fit_standardization(model, recipe)  # before resuming: a checkpoint then restores its own statistics
        done = resume(model, _checkpoint_path(agent)) if agent.resume_from_checkpoint else 0

        n_envs = recipe.env.n_envs
        own: list[BaseCallback] = [EncoderStatsCallback(), *threads]
        if agent.ent_coef_schedule == "linear":
            own.append(EntCoefScheduleCallback(float(agent.algo_kwargs["ent_coef"])))
        every = {"n_eval_episodes": agent.n_eval_episodes, "eval_freq": max(agent.eval_freq // n_envs, 1),
                 "deterministic": agent.deterministic_eval, "verbose": 0}
        if agent.eval_freq > 0:
            own.append(HeldOutEvalCallback(eval_env, recipe.env.eval_seed, log_path=str(run_dir), **every))
        validation = None
        if agent.keep_best:  # early stopping: SB3 saves the best weights on validation episodes, not held-out ones
            validation = HeldOutEvalCallback(
                build_envs(recipe, evaluation=True, seed=recipe.env.validation_seed, validation=True),
                recipe.env.validation_seed, key_prefix="validation", log_path=str(run_dir / "validation"),
                best_model_save_path=str(run_dir / "validation"), **every,
            )
            own.append(validation)
        if agent.checkpoint_freq > 0:
            own.append(CheckpointCallback(max(agent.checkpoint_freq // n_envs, 1), str(run_dir / "checkpoints"),
                                          name_prefix="agent"))
        remaining = max(agent.total_timesteps - done, 0)
        if remaining:
            with warnings.catch_warnings():  # SB3's bar is tqdm.rich, which warns that it is experimental
                warnings.filterwarnings("ignore", message="rich is experimental")
                model.learn(remaining, callback=CallbackList(run_.callbacks(*own, guard=False)),
                            reset_num_timesteps=not done, log_interval=1, progress_bar=agent.progress_bar)

        metrics: dict[str, Any] = evaluate_agent(model, eval_env, recipe)
        if validation is not None:
            metrics = keep_best_weights(model, validation, metrics, eval_env, recipe)
            validation.eval_env.close()
        for i, shared in enumerate(frozen_encoders(model.policy)):
            metrics[f"cache_hit_rate{'_' + str(i) if i else ''}"] = float(shared.hit_rate)
            if shared.sentence_ids:
                metrics[f"sentences_encoded{'_' + str(i) if i else ''}"] = int(shared.sentences_encoded)
        metrics["trainable_parameters"] = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
        metrics["num_timesteps"] = int(model.num_timesteps)
        save_agent(model, run_dir)
        train_env.close()
        eval_env.close()
        return run_.finish(metrics, ("eval_success_rate", "eval_mean_return"), log_history=progress_history(run_dir),
                           curve_keys=CURVE_KEYS)


def evaluate(recipe: Recipe, run_dir: str) -> dict[str, float]:
    """Score the agent saved in ``run_dir`` on the held-out episodes of its recipe (the training run's metrics)."""
    eval_env = build_envs(recipe, evaluation=True)
    try:
        return evaluate_agent(load_agent(run_dir, env=eval_env), eval_env, recipe)
    finally:
        eval_env.close()


ENTRY = MethodEntry("rl_env", blocks=lambda: BLOCKS, run=run, evaluate=evaluate, card_details=card_details,
                    args_block="agent")
