"""Environment steps per second on BabyAI-Text with a frozen all-MiniLM-L6-v2 encoder, side by side.

Three agents run PPO with the same settings (4 envs, n_steps 128, batch 64, 4 epochs) on
``BabyAI-GoToObj-v0`` for the same number of steps:

* LM encoder, frozen, with the embedding cache (``cache_size`` 100k);
* LM encoder, frozen, without the cache (``cache_size`` 0): every rollout step and every PPO
  minibatch runs MiniLM;
* SB3's own ``MultiInputPolicy`` (CombinedExtractor: a flatten of the 7x7x3 view + one-hot direction)
  on the symbolic observation, no text at all.

It also times the rollout alone (``predict`` + ``env.step``), where only the encoder's forward pass
differs. Figures are steps/s; ratios are measured in the same run.

Usage:
    python bench/bench_agents_throughput.py             # the numbers in BENCHMARKS.md (~10 min on 2 busy shared cores)
    python bench/bench_agents_throughput.py --steps 512 --rollout-steps 128 --uncached-steps 0   # smoke run
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LEVEL = "BabyAI-GoToObj-v0"
PPO_KWARGS = {"n_steps": 128, "batch_size": 64, "n_epochs": 4, "seed": 0, "device": "cpu"}


def text_envs(n_envs: int):
    from stable_baselines3.common.env_util import make_vec_env

    from hf_finetune.rl_env.envs import make_env

    kwargs = {"env_id": "hf_finetune/BabyAI-Text-v0", "level": LEVEL, "max_length": 96,
              "tokenizer": "sentence-transformers/all-MiniLM-L6-v2"}
    return make_vec_env(make_env, n_envs=n_envs, seed=0, env_kwargs=kwargs)


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


def lm_ppo(env, cache_size: int):
    from stable_baselines3 import PPO

    from hf_finetune.rl_env.extractor import LMFeaturesExtractor

    kwargs = {"features_extractor_class": LMFeaturesExtractor,
              "features_extractor_kwargs": {"encoder": "sentence-transformers/all-MiniLM-L6-v2",
                                            "encoder_mode": "frozen", "cache_size": cache_size, "features_dim": 256}}
    return PPO("MlpPolicy", env, policy_kwargs=kwargs, **PPO_KWARGS)


def rollout_rate(model, env, steps: int) -> float:
    obs = env.reset()
    start = time.perf_counter()
    for _ in range(steps // env.num_envs):
        action, _ = model.predict(obs)
        obs, *_ = env.step(action)
    return steps / (time.perf_counter() - start)


def learn_rate(model, steps: int) -> float:
    start = time.perf_counter()
    model.learn(steps)
    return model.num_timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2048, help="PPO steps per agent (multiple of 512)")
    parser.add_argument("--rollout-steps", type=int, default=1024, help="steps of the rollout-only timing")
    parser.add_argument("--uncached-steps", type=int, default=512, help="learn() steps without the cache (slow)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fairest on a shared machine)")
    args = parser.parse_args()
    import torch
    from stable_baselines3 import PPO

    from hf_finetune.rl_env.extractor import frozen_encoders

    torch.set_num_threads(args.threads)
    rows = []
    env = symbolic_envs(4)
    sym = PPO("MultiInputPolicy", env, **PPO_KWARGS)
    rows.append(("SB3 MultiInputPolicy, symbolic view", rollout_rate(sym, env, args.rollout_steps),
                 learn_rate(sym, args.steps), None))

    env = text_envs(4)
    cached = lm_ppo(env, cache_size=100_000)
    shared = frozen_encoders(cached.policy)[0]
    roll = rollout_rate(cached, env, args.rollout_steps)
    hit_rollout = shared.hit_rate
    shared.clear()
    shared.reset_stats()
    rows.append(("MiniLM frozen + cache", roll, learn_rate(cached, args.steps), shared.hit_rate))
    print(f"(cache hit rate in the rollout-only timing: {hit_rollout:.3f}; entries after learn: {len(shared.cache)})")
    del cached, shared

    uncached = lm_ppo(text_envs(4), cache_size=0)
    roll = rollout_rate(uncached, uncached.get_env(), args.rollout_steps)
    learn = learn_rate(uncached, args.uncached_steps) if args.uncached_steps else None
    rows.append(("MiniLM frozen, no cache", roll, learn, None))

    print(f"\nPPO on {LEVEL}, 4 envs, {args.steps} learn() steps ({args.uncached_steps} without cache), "
          f"{args.rollout_steps} rollout-only steps, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| agent | rollout-only steps/s | learn() steps/s | cache hit rate |\n|---|---|---|---|")
    for name, roll, learn, hit in rows:
        learn_s = f"{learn:.0f}" if learn else "-"
        hit_s = f"{hit:.3f}" if hit is not None else "-"
        print(f"| {name} | {roll:.0f} | {learn_s} | {hit_s} |")
    by = {name: (roll, learn) for name, roll, learn, _ in rows}
    c, n, s = by["MiniLM frozen + cache"], by["MiniLM frozen, no cache"], by["SB3 MultiInputPolicy, symbolic view"]
    print(f"\ncache speed-up: rollout-only {c[0] / n[0]:.1f}x" + (f", learn() {c[1] / n[1]:.1f}x" if n[1] else ""))
    print(f"symbolic MLP vs cached MiniLM: rollout-only {s[0] / c[0]:.1f}x, learn() {s[1] / c[1]:.1f}x faster")


if __name__ == "__main__":
    main()
