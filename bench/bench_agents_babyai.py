"""Success rate on BabyAI-Text (GoToObj) after a fixed step budget: random, symbolic PPO and LM-encoder agents.

Every agent is evaluated on the same held-out episodes (eval env seed 1,000,000; training envs use
seeds 0..3): success rate and mean return (minigrid's ``1 - 0.9 * steps / max_steps`` on success).

* random policy;
* PPO with SB3's ``MultiInputPolicy`` on the symbolic 7x7 view + direction (no text);
* PPO, DQN and A2C over frozen all-MiniLM-L6-v2 (the ``rl_env`` recipe method, with the cache);
* PPO over all-MiniLM-L6-v2 with LoRA adapters (a smaller budget: every update back-propagates
  through MiniLM, too slow on 2 shared cores for the full budget).

Usage:
    python bench/bench_agents_babyai.py --agents random symbolic-ppo lm-ppo lm-dqn lm-a2c   # BENCHMARKS.md, ~10 min
    python bench/bench_agents_babyai.py --agents lm-ppo-lora                                 # BENCHMARKS.md, ~7 min
    python bench/bench_agents_babyai.py --steps 1024 --lora-steps 0 --episodes 5   # smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LEVEL = "BabyAI-GoToObj-v0"
EVAL_SEED = 1_000_000
ALGO_KWARGS = {
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 4, "learning_rate": 0.0005, "ent_coef": 0.01},
    "a2c": {"n_steps": 8, "learning_rate": 0.0007, "ent_coef": 0.01},
    "dqn": {"learning_starts": 500, "buffer_size": 20000, "learning_rate": 0.0005, "train_freq": 4,
            "target_update_interval": 500, "exploration_fraction": 0.3, "batch_size": 64},
}


def lm_agent(algorithm: str, steps: int, episodes: int, encoder_mode: str = "frozen", deterministic: bool = True) -> dict:
    from hf_finetune.config import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, run

    algo_kwargs = dict(ALGO_KWARGS[algorithm])
    data = {
        "method": "rl_env",
        "model": {"model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
        "env": {"env_id": "hf_finetune/BabyAI-Text-v0", "env_kwargs": {"level": LEVEL}, "max_length": 96,
                "n_envs": 4, "eval_seed": EVAL_SEED},
        "agent": {"output_dir": tempfile.mkdtemp(prefix=f"bench-{algorithm}-"), "algorithm": algorithm,
                  "algo_kwargs": algo_kwargs, "total_timesteps": steps, "eval_freq": 0, "n_eval_episodes": episodes,
                  "encoder_mode": encoder_mode, "features_dim": 128, "net_arch": [64], "seed": 0,
                  "deterministic_eval": deterministic},
    }
    if encoder_mode == "lora":
        data["lora"] = {"lora_r": 8}
        data["agent"]["encoder_learning_rate"] = 0.0002
        algo_kwargs["n_epochs"] = 1
    return run(parse_recipe(data, BLOCKS))


def symbolic_env(n_envs: int, seed: int):
    import gymnasium as gym
    import minigrid  # noqa: F401 - registers BabyAI
    import numpy as np
    from gymnasium import spaces
    from gymnasium.wrappers import TransformObservation
    from stable_baselines3.common.env_util import make_vec_env

    # The view as float32 so SB3's CombinedExtractor flattens it (a uint8 7x7x3 Box would get a NatureCNN).
    space = spaces.Dict({"image": spaces.Box(0, 10, (7, 7, 3), np.float32), "direction": spaces.Discrete(4)})

    def make():
        return TransformObservation(
            gym.make(LEVEL), lambda o: {"image": o["image"].astype(np.float32), "direction": o["direction"]}, space
        )

    return make_vec_env(make, n_envs=n_envs, seed=seed)


def evaluate(predict, env, episodes: int) -> dict:
    """Success rate and mean return over ``episodes`` held-out episodes (env seeded with EVAL_SEED)."""
    import numpy as np

    env.seed(EVAL_SEED)
    obs = env.reset()
    returns, successes, total = [], [], 0.0
    while len(returns) < episodes:
        obs, reward, done, info = env.step(predict(obs))
        total += float(reward[0])
        if done[0]:
            returns.append(total)
            successes.append(float(reward[0] > 0))
            total = 0.0
    return {"eval_success_rate": float(np.mean(successes)), "eval_mean_return": float(np.mean(returns))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8192, help="environment steps per agent")
    parser.add_argument("--lora-steps", type=int, default=1024, help="steps for the LoRA agent (0: skip)")
    parser.add_argument("--episodes", type=int, default=30, help="held-out evaluation episodes")
    parser.add_argument("--stochastic-eval", action="store_true",
                        help="sample actions in evaluation (default: greedy, which loops when undertrained)")
    parser.add_argument("--agents", nargs="*", default=["random", "symbolic-ppo", "lm-ppo", "lm-dqn", "lm-a2c", "lm-ppo-lora"])
    args = parser.parse_args()
    import numpy as np
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    greedy = not args.stochastic_eval
    rows = []
    for name in args.agents:
        start = time.perf_counter()
        steps = args.lora_steps if name == "lm-ppo-lora" else args.steps
        if name == "random":
            rng = np.random.default_rng(0)
            metrics = evaluate(lambda obs, rng=rng: rng.integers(0, 7, size=1), symbolic_env(1, EVAL_SEED), args.episodes)
            steps = 0
        elif name == "symbolic-ppo":
            model = PPO("MultiInputPolicy", symbolic_env(4, 0), seed=0, device="cpu", **ALGO_KWARGS["ppo"])
            model.learn(steps)
            metrics = evaluate(lambda obs, model=model: model.predict(obs, deterministic=greedy)[0], symbolic_env(1, EVAL_SEED),
                               args.episodes)
        elif name == "lm-ppo-lora":
            if not steps:
                continue
            metrics = lm_agent("ppo", steps, args.episodes, encoder_mode="lora", deterministic=greedy)
        else:
            metrics = lm_agent(name.split("-")[1], steps, args.episodes, deterministic=greedy)
        seconds = time.perf_counter() - start
        rows.append((name, steps, metrics["eval_success_rate"], metrics["eval_mean_return"], seconds,
                     metrics.get("cache_hit_rate")))
        print(f"{name}: {metrics} in {seconds:.0f}s", flush=True)

    mode = "sampled" if args.stochastic_eval else "greedy"
    print(f"\n{LEVEL}, held-out eval seed {EVAL_SEED}, {args.episodes} episodes ({mode} actions), 4 training envs, "
          "seed 0\n")
    print("| agent | env steps | success rate | mean return | wall s | cache hit rate |\n|---|---|---|---|---|---|")
    for name, steps, success, ret, seconds, hit in rows:
        hit_s = f"{hit:.3f}" if hit is not None else "-"
        print(f"| {name} | {steps} | {success:.2f} | {ret:.3f} | {seconds:.0f} | {hit_s} |")


if __name__ == "__main__":
    main()
