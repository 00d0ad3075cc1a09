"""Token lengths of BabyAI-Text views under a random policy: which ``env.max_length`` cuts nothing.

Usage:
    python bench/bench_agents_view_lengths.py --levels BabyAI-GoToRedBallGrey-v0 BabyAI-GoToLocal-v0 --steps 4000
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", nargs="+", default=["BabyAI-GoToRedBallGrey-v0"])
    parser.add_argument("--steps", type=int, default=4000, help="random-policy steps (views) per level")
    parser.add_argument("--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2")
    args = parser.parse_args()
    import numpy as np
    from transformers import AutoTokenizer

    from hf_finetune.rl_env.envs import BabyAITextEnv

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print("| level | views | mean | p50 | p90 | p99 | max | > 96 | > 128 | > 160 |\n|---|---|---|---|---|---|---|---|---|---|")
    for level in args.levels:
        env, rng, lengths = BabyAITextEnv(level), np.random.default_rng(0), []
        obs, _ = env.reset(seed=0)
        for _ in range(args.steps):
            lengths.append(len(tokenizer(obs)["input_ids"]))  # special tokens included, as the wrapper counts
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 7)))
            if terminated or truncated:
                obs, _ = env.reset()
        a = np.array(lengths)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        print(f"| {level} | {len(a)} | {a.mean():.1f} | {p50:.0f} | {p90:.0f} | {p99:.0f} | {a.max()} | "
              f"{(a > 96).mean():.1%} | {(a > 128).mean():.1%} | {(a > 160).mean():.1%} |")


if __name__ == "__main__":
    main()
