"""BBC News titles: accuracy of a bandit agent (reward only) against the supervised classifier (labels).

Both read the same seeded 80/20 split of BBC News (``split_seed`` 42) and only the title (line 1),
and both score the whole held-out split:

* ``rl_env`` bandit: PPO over a frozen all-MiniLM-L6-v2 (cached embeddings + trained projection and
  head); it only ever sees reward 1/0 for the topic it answered (recipes/rl_env/bbc_titles_bandit.yaml);
* ``supervised``: all-MiniLM-L6-v2 fine-tuned with the labels, as the quickstart does but on titles.

Usage:
    python bench/bench_agents_bbc.py                     # the numbers in BENCHMARKS.md (~10 min on 2 busy cores)
    python bench/bench_agents_bbc.py --bandit-steps 2048 --supervised-steps 5   # smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bandit(steps: int) -> dict:
    from hf_finetune.recipe import load_recipe, run_recipe

    out = tempfile.mkdtemp(prefix="bench-bbc-bandit-")
    recipe = load_recipe("recipes/rl_env/bbc_titles_bandit.yaml",
                         ["--output_dir", out, "--total_timesteps", str(steps)])
    return run_recipe(recipe)


def supervised(max_steps: int) -> tuple[dict, str]:
    from hf_finetune.recipe import load_recipe, run_recipe

    out = tempfile.mkdtemp(prefix="bench-bbc-supervised-")
    overrides = ["--output_dir", out, "--text_column", "title", "--max_length", "32", "--report_to", "none"]
    if max_steps:
        overrides += ["--max_steps", str(max_steps)]
    recipe = load_recipe("recipes/quickstart.yaml", overrides)
    metrics = run_recipe(recipe)
    t = recipe.training
    done = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.num_train_epochs:g} epoch(s)"
    return metrics, f"{done} x batch {t.per_device_train_batch_size}, all weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bandit-steps", type=int, default=30000, help="bandit environment steps (= titles answered)")
    parser.add_argument("--supervised-steps", type=int, default=112,
                        help="supervised optimizer steps (112 = one epoch of the 1,780 training titles at batch 16; "
                        "0: the quickstart's own epochs)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    rl = bandit(args.bandit_steps)
    rl_s = time.perf_counter() - start
    torch.set_num_threads(2)  # MiniLM fine-tuning is matrix-heavy: give it both cores
    start = time.perf_counter()
    sup, trained = supervised(args.supervised_steps)
    sup_s = time.perf_counter() - start
    print("\nBBC News titles, held-out 20% (445 titles), all-MiniLM-L6-v2\n")
    print("| method | signal | trained | accuracy | wall s |\n|---|---|---|---|---|")
    print(f"| rl_env PPO bandit, frozen encoder | reward 1/0 | {args.bandit_steps} answers, projection + heads "
          f"({rl['trainable_parameters']} params) | {rl['eval_success_rate']:.3f} | {rl_s:.0f} |")
    print(f"| supervised fine-tuning (quickstart on titles) | labels | {trained} | "
          f"{sup['eval_accuracy']:.3f} | {sup_s:.0f} |")


if __name__ == "__main__":
    main()
