"""BabyAI-Text levels: the shipped rl_env recipes vs the zoo's symbolic PPO vs random, at equal steps.

For each level, every agent is scored on the same held-out episodes (eval env seed 1,000,000;
training envs use seeds ``0..n_envs-1``) with greedy actions, every ``--eval-every`` steps (the
learning curve) and at the end:

* ``random``: uniform over the seven actions;
* ``symbolic-ppo``: rl-baselines3-zoo's MiniGrid setting for PPO (``hyperparams/ppo.yml``):
  ``FlatObsWrapper`` (the 7x7 view flattened + the mission as one-hot characters), ``VecNormalize``,
  8 envs, n_steps 128, batch 64, 10 epochs, lr 2.5e-4, ent_coef 0, gae_lambda 0.95;
* ``lm-ppo``, ``lm-a2c``, ``lm-dqn``: ``recipes/rl_env/babyai_text_{ppo,a2c,dqn}.yaml`` exactly as
  shipped, with only the level, the step budget and the evaluation schedule replaced
  (``--recipe PATH`` replaces the PPO one, e.g. ``recipes/rl_env/babyai_text_ppo_levels.yaml``).

``--seed`` is the training seed of every trained agent; ``--plot curves.png`` draws the learning
curves (one panel per level, random as a dashed line). ``--runs DIR ...`` adds finished ``rl_env``
runs (e.g. ``hf-finetune train RECIPE`` of a shipped recipe, run as written) to the table and plot,
read from their ``recipe.yaml``, ``metrics.json`` and ``evaluations.npz``; for a run with
``agent.keep_best`` the row's figure is the chosen weights' held-out success, and its name says
where they were chosen (validation episodes) and what the last weights scored.

With ``--held-out-goals "red ball" "green key" ...`` (compositional generalisation) every agent
trains on episodes whose mission names none of those goals and is scored on episodes that name
only them (``success rate``, curve) and, for comparison, on held-out episodes of training goals
(``seen-goal success``).

Usage:
    python bench/bench_agents_levels.py --levels BabyAI-GoToRedBallGrey-v0 --steps 100000 --agents random symbolic-ppo lm-ppo
    python bench/bench_agents_levels.py --levels BabyAI-GoToObj-v0 --steps 2048 --eval-every 1024 --episodes 5   # smoke
    python bench/bench_agents_levels.py --levels BabyAI-GoToRedBall-v0 --steps 200000 --eval-every 25000 \
        --recipe recipes/rl_env/babyai_text_ppo_levels.yaml --plot curves.png
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
                 held_out: list[str] | None = None, seed: int = 0) -> tuple[dict, list]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(flat_env(level, 8, seed, held_out), gamma=ZOO_PPO["gamma"])
    eval_env = VecNormalize(flat_env(level, 1, EVAL_SEED, held_out, "held_out" if held_out else "train"),
                            training=False, norm_reward=False)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", **ZOO_PPO)
    model.set_logger(Logger(None, []))  # without a logger, learn() leaves a /tmp/SB3-<time> folder per call
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
             held_out: list[str] | None = None, recipe: str | None = None, seed: int = 0) -> tuple[dict, list]:
    import numpy as np
    import yaml

    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, evaluate, run

    path = Path(recipe) if recipe and algorithm == "ppo" else RECIPES / f"babyai_text_{algorithm}.yaml"
    data = yaml.safe_load(path.read_text())
    data["env"]["env_kwargs"] = {**data["env"].get("env_kwargs", {}), "level": level}
    data["agent"]["seed"] = seed
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
    parser.add_argument("--recipe", default=None, help="PPO recipe for lm-ppo (default recipes/rl_env/babyai_text_ppo.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the trained agents")
    parser.add_argument("--plot", default=None, help="write the learning curves to this PNG")
    parser.add_argument("--runs", nargs="*", default=[], help="finished rl_env run dirs to add to the table")
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
                metrics, curve = symbolic_ppo(level, steps, args.episodes, args.eval_every, args.held_out_goals,
                                              args.seed)
            else:
                metrics, curve = lm_agent(name.split("-")[1], level, steps, args.episodes, args.eval_every,
                                          args.held_out_goals, args.recipe, args.seed)
            seconds = time.perf_counter() - start
            rows.append((level, name, steps, metrics["eval_success_rate"], metrics["eval_mean_return"], seconds, curve,
                         metrics.get("seen_goal_success_rate")))
            print(f"{level} {name}: {metrics} in {seconds:.0f}s; curve {curve}", flush=True)

    rows += [finished_run(path) for path in args.runs]
    rows.sort(key=lambda row: (row[0], row[1]))
    goals = f", held-out goals {args.held_out_goals} (success on those only)" if args.held_out_goals else ""
    if args.plot:
        plot(rows, args.plot)
    recipe = f", lm-ppo recipe {args.recipe}" if args.recipe else ""
    trained = f"training seed {args.seed}" + (" (--runs: each its own, named in its row)" if args.runs else "")
    print(f"\nHeld-out eval seed {EVAL_SEED}, {args.episodes} episodes, greedy actions{goals}, {trained}"
          f"{recipe}, torch threads 1, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    seen_col = " seen-goal success |" if args.held_out_goals else ""
    print(f"| level | agent | env steps | success rate | mean return |{seen_col} wall s | curve (steps: success) |")
    print("|---|---|---|---|---|" + ("---|" if args.held_out_goals else "") + "---|---|")
    for level, name, steps, success, ret, seconds, curve, seen in rows:
        points = ", ".join(f"{t // 1000}k: {s:.2f}" for t, s in curve) or "-"
        seen_s = (f" {seen:.2f} |" if seen is not None else " - |") if args.held_out_goals else ""
        print(f"| {level} | {name} | {steps} | {success:.2f} | {ret:.3f} |{seen_s} {seconds:.0f} | {points} |")


def finished_run(path: str) -> tuple:
    """A table row from an rl_env run directory (its own recipe, final metrics and EvalCallback curve)."""
    import json

    import numpy as np
    import yaml

    run = Path(path)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    evaluations = np.load(run / "evaluations.npz")
    curve = [(int(t), float(np.mean(r > 0))) for t, r in zip(evaluations["timesteps"], evaluations["results"])]
    agent = recipe["agent"]
    name = f"lm-{agent['algorithm']} run {run.name} (seed {agent.get('seed', 0)})"
    if "best_step" in metrics:  # agent.keep_best: the weights chosen on validation episodes are the ones scored
        name += (f" [keep_best: chosen at {metrics['best_step'] // 1000}k on validation "
                 f"{metrics.get('best_validation_success_rate', float('nan')):.2f}; last weights "
                 f"{metrics['last_eval_success_rate']:.2f} held-out]")
    return (recipe["env"]["env_kwargs"]["level"], name, int(metrics["num_timesteps"]), metrics["eval_success_rate"],
            metrics["eval_mean_return"], metrics.get("train_runtime_s", float("nan")), curve, None)


def plot(rows: list, path: str) -> None:
    """One panel per level: success rate against env steps for each trained agent, random dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(row[0] for row in rows))
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 3.6), squeeze=False)
    for ax, level in zip(axes[0], levels):
        for _, name, _, success, _, _, curve, _ in (row for row in rows if row[0] == level):
            if name == "random":
                ax.axhline(success, linestyle="--", color="grey", label=f"random ({success:.2f})")
            elif curve:
                # The table row's name carries keep_best's choice in brackets: too long for a legend.
                ax.plot([t for t, _ in curve], [s for _, s in curve], marker="o", label=name.split(" [")[0])
        ax.axhline(0.8, linestyle=":", color="black", linewidth=0.8)
        ax.set(title=level.removeprefix("BabyAI-"), xlabel="env steps", ylabel="greedy success (held-out)", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
