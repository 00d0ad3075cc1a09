"""Greedy vs sampled actions of a trained rl_env agent on its held-out episodes, and how greedy episodes fail.

A policy that succeeds when it samples its actions but not when it acts greedily is often stuck in a
loop: the same view, the same argmax action, forever (walking into an object, turning on the spot).
For each run directory this prints the success rate with greedy and with sampled actions on the
same held-out episodes, and for each failed greedy episode the view seen most often, how often, and
the action taken there.

Usage:
    python bench/bench_agents_greedy_gap.py RUN_DIR [RUN_DIR ...] --episodes 50
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def play(agent, env, episodes: int, seed: int, deterministic: bool) -> tuple[float, list[tuple[int, str, str]]]:
    """Success rate over ``episodes``, and (repeats, action, view) of the most repeated view of each failure."""
    import numpy as np

    from hf_finetune.rl_env.envs import ACTION_NAMES

    decode = env.envs[0].get_wrapper_attr("decode")
    env.seed(seed)
    obs = env.reset()
    successes, failures = [], []
    seen: collections.Counter = collections.Counter()
    acted: dict[bytes, tuple[str, str]] = {}
    while len(successes) < episodes:
        action, _ = agent.predict(obs, deterministic=deterministic)
        key = obs.tobytes()
        seen[key] += 1
        acted[key] = (ACTION_NAMES[int(action[0])], decode(obs[0]))
        obs, _, done, info = env.step(action)
        if done[0]:
            successes.append(float(info[0].get("is_success", False)))
            if not successes[-1]:
                key, count = seen.most_common(1)[0]
                failures.append((count, *acted[key]))
            seen.clear()
            acted.clear()
    return float(np.mean(successes)), failures


def load_recipe_eval_seed(run: str) -> int:
    """The held-out seed of the run's own recipe (``env.eval_seed``)."""
    from pathlib import Path

    import yaml

    return int((yaml.safe_load((Path(run) / "recipe.yaml").read_text())["env"] or {}).get("eval_seed", 1_000_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="rl_env run directories (recipe.yaml + policy.safetensors)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--show", type=int, default=5, help="failed greedy episodes to print")
    args = parser.parse_args()
    import torch

    from hf_finetune.rl_env.train import load_agent

    torch.set_num_threads(1)
    for run in args.runs:
        agent = load_agent(run)
        env = agent.get_env()
        seed = load_recipe_eval_seed(run)
        greedy, failures = play(agent, env, args.episodes, seed, True)
        sampled, _ = play(agent, env, args.episodes, seed, False)
        repeats = sorted((f[0] for f in failures), reverse=True)
        print(f"{run}: greedy {greedy:.2f}, sampled {sampled:.2f} on {args.episodes} held-out episodes (eval seed {seed}); "
              f"most repeated view per failed greedy episode: {repeats}")
        for count, action, view in failures[: args.show]:
            print(f"  {count}x '{action}' at: {view}")


if __name__ == "__main__":
    main()
