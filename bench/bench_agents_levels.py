"""BabyAI-Text levels: the shipped rl_env recipes vs the zoo's symbolic PPO vs random, at equal steps.

For each level, every agent is scored on the same held-out episodes (eval env seed 1,000,000;
training envs use seeds ``0..n_envs-1``) with greedy actions, every ``--eval-every`` steps (the
learning curve) and at the end:

* ``random``: uniform over the seven actions;
* ``symbolic-ppo``: rl-baselines3-zoo's MiniGrid setting for PPO (``hyperparams/ppo.yml``):
  ``FlatObsWrapper`` (the 7x7 view flattened + the mission as one-hot characters), ``VecNormalize``,
  8 envs, n_steps 128, batch 64, 10 epochs, lr 2.5e-4, ent_coef 0, gae_lambda 0.95;
* ``lm-ppo``, ``lm-a2c``, ``lm-dqn``: ``recipes/rl_env/babyai_text_{ppo,a2c,dqn}.yaml`` exactly as
  shipped, with only the level, the step budget and the evaluation schedule replaced.

With ``--held-out-goals "red ball" "green key" ...`` (compositional generalisation) every agent
trains on episodes whose mission names none of those goals and is scored on episodes that name
only them (``success rate``, curve) and, for comparison, on held-out episodes of training goals
(``seen-goal success``).

Usage:
    python bench/bench_agents_levels.py --levels BabyAI-GoToRedBallGrey-v0 --steps 100000 --agents random symbolic-ppo lm-ppo
    python bench/bench_agents_levels.py --levels BabyAI-GoToObj-v0 --steps 2048 --eval-every 1024 --episodes 5   # smoke
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EVAL_SEED = 1_000_000
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "rl_env"
ZOO_PPO = {"n_steps": 128, "batch_size": 64, "gae_lambda": 0.95, "gamma": 0.99, "n_epochs": 10, "ent_coef": 0.0,
           "learning_rate": 2.5e-4, "clip_range": 0.2}


def score(predict, env, episodes: int) -> tuple[float, float]:
    """(success rate, mean return) of ``predict`` over ``episodes`` held-out episodes of a 1-env VecEnv."""
    import numpy as np

    env.seed(EVAL_SEED)
    obs = env.reset()
    returns, successes, total = [], [], 0.0
    while len(returns) < episodes:
        obs, reward, done, _ = env.step(predict(obs))
        total += float(reward[0])
        if done[0]:
            returns.append(total)
            successes.append(float(reward[0] > 0))
            total = 0.0
    return float(np.mean(successes)), float(np.mean(returns))


def flat_env(level: str, n_envs: int, seed: int, held_out: list[str] | None = None, split: str = "train"):
    import gymnasium as gym
    import minigrid  # noqa: F401 - registers BabyAI
    from minigrid.wrappers import FlatObsWrapper
    from stable_baselines3.common.env_util import make_vec_env

    from hf_finetune.rl_env.envs import GoalSplitWrapper

    def make():
        env = gym.make(level)
        return FlatObsWrapper(GoalSplitWrapper(env, held_out, split) if held_out else env)

    return make_vec_env(make, n_envs=n_envs, seed=seed)


def symbolic_ppo(level: str, steps: int, episodes: int, eval_every: int,
                 held_out: list[str] | None = None) -> tuple[dict, list]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(flat_env(level, 8, 0, held_out), gamma=ZOO_PPO["gamma"])
    eval_env = VecNormalize(flat_env(level, 1, EVAL_SEED, held_out, "held_out" if held_out else "train"),
                            training=False, norm_reward=False)
    model = PPO("MlpPolicy", env, seed=0, device="cpu", **ZOO_PPO)
    curve = []
    greedy = lambda o: model.predict(o, deterministic=True)[0]  # noqa: E731
    while model.num_timesteps < steps:
        model.learn(min(eval_every, steps - model.num_timesteps), reset_num_timesteps=False)
        eval_env.obs_rms = env.obs_rms
        curve.append((model.num_timesteps, score(greedy, eval_env, episodes)[0]))
    success, ret = score(greedy, eval_env, episodes)
    metrics = {"eval_success_rate": success, "eval_mean_return": ret}
    if held_out:
        seen = VecNormalize(flat_env(level, 1, EVAL_SEED, held_out), training=False, norm_reward=False)
        seen.obs_rms = env.obs_rms
        metrics["seen_goal_success_rate"] = score(greedy, seen, episodes)[0]
    return metrics, curve


def lm_agent(algorithm: str, level: str, steps: int, episodes: int, eval_every: int,
             held_out: list[str] | None = None) -> tuple[dict, list]:
    import numpy as np
    import yaml

    from hf_finetune.config import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, evaluate, run

    data = yaml.safe_load((RECIPES / f"babyai_text_{algorithm}.yaml").read_text())
    data["env"]["env_kwargs"] = {**data["env"].get("env_kwargs", {}), "level": level}
    if held_out:
        data["env"]["env_kwargs"]["held_out_goals"] = list(held_out)
        data["env"]["eval_env_kwargs"] = {"goal_split": "held_out"}
    data["env"]["max_length"] = max(int(data["env"].get("max_length", 96)), 128)  # distractor views run to ~130 tokens
    data["env"]["eval_seed"] = EVAL_SEED
    out = tempfile.mkdtemp(prefix=f"bench-{algorithm}-")
    data["agent"].update(output_dir=out, total_timesteps=steps, eval_freq=eval_every, n_eval_episodes=episodes,
                         checkpoint_freq=0, progress_bar=False)
    metrics = run(parse_recipe(data, BLOCKS))
    if held_out:
        data["env"]["eval_env_kwargs"] = {"goal_split": "train"}
        metrics["seen_goal_success_rate"] = evaluate(parse_recipe(data, BLOCKS), out)["eval_success_rate"]
    evaluations = np.load(Path(out) / "evaluations.npz")
    curve = [(int(t), float(np.mean(r > 0))) for t, r in zip(evaluations["timesteps"], evaluations["results"])]
    return metrics, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", nargs="+", default=["BabyAI-GoToRedBallGrey-v0"])
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per agent")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--eval-every", type=int, default=20_000, help="steps between curve points")
    parser.add_argument("--agents", nargs="+", default=["random", "symbolic-ppo", "lm-ppo"],
                        choices=["random", "symbolic-ppo", "lm-ppo", "lm-a2c", "lm-dqn"])
    parser.add_argument("--held-out-goals", nargs="*", default=None,
                        help='goals never asked for in training, e.g. "red ball" "green key" (scored on exactly those)')
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    rows = []
    for level in args.levels:
        for name in args.agents:
            start = time.perf_counter()
            curve: list = []
            steps = args.steps
            if name == "random":
                rng = np.random.default_rng(0)
                split = "held_out" if args.held_out_goals else "train"
                success, ret = score(lambda o, rng=rng: rng.integers(0, 7, size=1),
                                     flat_env(level, 1, EVAL_SEED, args.held_out_goals, split), args.episodes)
                metrics, steps = {"eval_success_rate": success, "eval_mean_return": ret}, 0
            elif name == "symbolic-ppo":
                metrics, curve = symbolic_ppo(level, steps, args.episodes, args.eval_every, args.held_out_goals)
            else:
                metrics, curve = lm_agent(name.split("-")[1], level, steps, args.episodes, args.eval_every,
                                          args.held_out_goals)
            seconds = time.perf_counter() - start
            rows.append((level, name, steps, metrics["eval_success_rate"], metrics["eval_mean_return"], seconds, curve,
                         metrics.get("seen_goal_success_rate")))
            print(f"{level} {name}: {metrics} in {seconds:.0f}s; curve {curve}", flush=True)

    goals = f", held-out goals {args.held_out_goals} (success on those only)" if args.held_out_goals else ""
    print(f"\nHeld-out eval seed {EVAL_SEED}, {args.episodes} episodes, greedy actions{goals}, torch threads 1, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    seen_col = " seen-goal success |" if args.held_out_goals else ""
    print(f"| level | agent | env steps | success rate | mean return |{seen_col} wall s | curve (steps: success) |")
    print("|---|---|---|---|---|" + ("---|" if args.held_out_goals else "") + "---|---|")
    for level, name, steps, success, ret, seconds, curve, seen in rows:
        points = ", ".join(f"{t // 1000}k: {s:.2f}" for t, s in curve) or "-"
        seen_s = (f" {seen:.2f} |" if seen is not None else " - |") if args.held_out_goals else ""
        print(f"| {level} | {name} | {steps} | {success:.2f} | {ret:.3f} |{seen_s} {seconds:.0f} | {points} |")


if __name__ == "__main__":
    main()
