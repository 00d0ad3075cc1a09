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
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_agents_loops import play

    torch.set_num_threads(1)
    for run in args.runs:
        agent = load_agent(run)
        env = agent.get_env()
        seed = load_recipe_eval_seed(run)
        greedy, failures = play(agent, env, args.episodes, seed, True)
        sampled, _ = play(agent, env, args.episodes, seed, False)
        print(f"{run}: greedy {greedy / args.episodes:.2f}, sampled {sampled / args.episodes:.2f} on {args.episodes} "
              f"held-out episodes (eval seed {seed}); loops of the failed greedy episodes: "
              f"{[f['kind'] for f in failures]}")
        for f in failures[: args.show]:
            print(f"  {f['kind']} ({' / '.join(f['cycle']) or '-'}) from step {f['loop_from']}, at: {f['view']}")


if __name__ == "__main__":
    main()
