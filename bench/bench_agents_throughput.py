"""Environment steps per second on BabyAI-Text: LM-encoder PPO vs symbolic PPO, side by side in one run.

Every agent runs SB3 PPO with the recipe's settings (n_steps 128, batch 64, 4 epochs, net_arch
[64]) on ``BabyAI-GoToObj-v0`` for the same number of ``learn()`` steps, one after the other in
this process (same machine state, torch threads set once):

* ``symbolic``: SB3's ``MultiInputPolicy`` on the 7x7 symbolic view + direction, no text at all;
* ``lm-rows``: frozen all-MiniLM-L6-v2, embeddings cached per tokenised view (an id row);
* ``lm-sentences``: the same encoder with ``sentence_separator='.'``: each sentence of a view is
  encoded once and cached, new views made of seen sentences cost no encoder pass;
* ``lm-sentences-subproc``: as ``lm-sentences`` with the envs in subprocesses (``SubprocVecEnv``);
* ``lm-nocache`` (only with ``--uncached-steps``): every rollout step and minibatch runs MiniLM.

A trained encoder (LoRA rank 8 on every linear layer it adapts, named with ``--agents``; not in the
default set):

* ``lm-lora-rows``: LoRA on all six layers, each view read whole (the only LoRA path before
  issue #12's sentence mode): every rollout step and minibatch runs MiniLM with gradients;
* ``lm-lora-sentences``: LoRA on all six layers, reading sentences (:class:`TrainedSentenceEncoder`:
  each distinct sentence of a batch once, embeddings reused while the weights stand still);
* ``lm-lora-top``: as ``lm-lora-sentences`` with LoRA on the top layer only, the five below cached
  (``babyai_text_ppo_lora.yaml``'s setting).

The rate is reported over all steps and over the second half (warm caches: what most of a
50,000-step run looks like). Ratios to the symbolic agent are measured in the same run.

Usage:
    python bench/bench_agents_throughput.py --steps 16384           # BENCHMARKS.md
    python bench/bench_agents_throughput.py --steps 1024 --agents symbolic lm-sentences   # smoke run
    python bench/bench_agents_throughput.py --steps 8192 --agents symbolic lm-sentences lm-lora-top \
        lm-lora-sentences lm-lora-rows --lora-rows-steps 1024                             # LoRA paths
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LEVEL = "BabyAI-GoToObj-v0"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
PPO_KWARGS = {"n_steps": 128, "batch_size": 64, "n_epochs": 4, "seed": 0, "device": "cpu"}
AGENTS = ("symbolic", "lm-rows", "lm-sentences", "lm-sentences-subproc")
LORA_AGENTS = ("lm-lora-rows", "lm-lora-sentences", "lm-lora-top")
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_modules": ["query", "key", "value", "dense"]}


def text_envs(n_envs: int, subprocess: bool = False):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from hf_finetune.rl_env.envs import make_env

    kwargs = {"env_id": "hf_finetune/BabyAI-Text-v0", "level": LEVEL, "max_length": 96, "tokenizer": ENCODER}
    return make_vec_env(make_env, n_envs=n_envs, seed=0, env_kwargs=kwargs,
                        vec_env_cls=SubprocVecEnv if subprocess else DummyVecEnv)


def symbolic_envs(n_envs: int):
    import gymnasium as gym
    import minigrid  # noqa: F401 - registers BabyAI
    import numpy as np
    from gymnasium import spaces
    from gymnasium.wrappers import TransformObservation
    from stable_baselines3.common.env_util import make_vec_env

    # The view as float32 (not uint8): SB3 would take a uint8 7x7x3 Box for an image and build a
    # NatureCNN too large for it; as floats CombinedExtractor flattens it (an MLP, as intended).
    space = spaces.Dict({"image": spaces.Box(0, 10, (7, 7, 3), np.float32), "direction": spaces.Discrete(4)})

    def make():
        return TransformObservation(
            gym.make(LEVEL), lambda o: {"image": o["image"].astype(np.float32), "direction": o["direction"]}, space
        )

    return make_vec_env(make, n_envs=n_envs, seed=0)


def lm_ppo(env, cache_size: int = 100_000, sentences: bool = False, lora: dict | None = None):
    from stable_baselines3 import PPO

    from hf_finetune.rl_env.extractor import LMFeaturesExtractor, frozen_encoders

    extractor = {"encoder": ENCODER, "encoder_mode": "lora" if lora else "frozen", "cache_size": cache_size,
                 "features_dim": 128, "sentence_separator": "." if sentences else None, "lora": lora}
    model = PPO("MlpPolicy", env, policy_kwargs={"features_extractor_class": LMFeaturesExtractor,
                                                 "features_extractor_kwargs": extractor, "net_arch": [64]},
                **PPO_KWARGS)
    for shared in frozen_encoders(model.policy):  # shared process-wide: every agent starts cold
        shared.clear()
        shared.reset_stats()
    return model


def timed_learn(model, steps: int) -> tuple[float, float]:
    """(steps/s over all ``steps``, steps/s over the second half)."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(None, []))  # without a logger, learn() leaves a /tmp/SB3-<time> folder per call
    half = max(steps // 2, 512)
    start = time.perf_counter()
    model.learn(half)
    middle = time.perf_counter()
    model.learn(steps - half, reset_num_timesteps=False)
    end = time.perf_counter()
    second = model.num_timesteps - half
    return model.num_timesteps / (end - start), second / (end - middle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=16384, help="learn() steps per agent")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--uncached-steps", type=int, default=0, help="also time lm-nocache for this many steps")
    parser.add_argument("--lora-rows-steps", type=int, default=1024,
                        help="learn() steps for lm-lora-rows (about 1 step/s on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fairest on a shared machine)")
    parser.add_argument("--agents", nargs="*", default=list(AGENTS), choices=AGENTS + LORA_AGENTS)
    args = parser.parse_args()
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    from hf_finetune.rl_env.extractor import frozen_encoders

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.agents:
        if name == "symbolic":
            model = PPO("MultiInputPolicy", symbolic_envs(args.n_envs), policy_kwargs={"net_arch": [64]}, **PPO_KWARGS)
        else:
            env = text_envs(args.n_envs, subprocess=name.endswith("subproc"))
            lora = None if "lora" not in name else {**LORA, **({"lora_layers_to_transform": [5]} if "top" in name else {})}
            model = lm_ppo(env, sentences="sentences" in name or name == "lm-lora-top", lora=lora)
        steps = args.lora_rows_steps if name == "lm-lora-rows" else args.steps
        overall, warm = timed_learn(model, steps)
        shared = frozen_encoders(model.policy)
        note = ""
        if shared:
            s = shared[0]
            note = f"view hit rate {s.hit_rate:.3f}, {len(s.cache)} views" + (
                f", {s.sentences_encoded} sentences encoded" if s.sentence_ids else "")
        elif "lora" in name:
            from hf_finetune.rl_env.extractor import lm_extractors

            trained = lm_extractors(model.policy)[0].sentences
            note = f"{trained.sentences_encoded} sentence encodings" if trained else "every view encoded"
        rows.append((name, steps, overall, warm, note))
        print(f"{name}: {overall:.0f} steps/s overall, {warm:.0f} second half ({note})", flush=True)
        model.get_env().close()
    if args.uncached_steps:
        model = lm_ppo(text_envs(args.n_envs), cache_size=0)
        model.set_logger(Logger(None, []))
        start = time.perf_counter()
        model.learn(args.uncached_steps)
        rate = model.num_timesteps / (time.perf_counter() - start)
        rows.append(("lm-nocache", args.uncached_steps, rate, None, "no cache"))

    print(f"\nPPO on {LEVEL}, {args.n_envs} envs, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| agent | learn() steps | steps/s overall | steps/s second half | symbolic / this (second half) | notes |")
    print("|---|---|---|---|---|---|")
    sym = next((r for r in rows if r[0] == "symbolic"), None)
    for name, steps, overall, warm, note in rows:
        ratio = f"{sym[3] / warm:.1f}x" if sym and warm else "-"
        warm_s = f"{warm:.0f}" if warm else "-"
        print(f"| {name} | {steps} | {overall:.0f} | {warm_s} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
