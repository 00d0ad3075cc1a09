"""LoRA on the encoder vs the frozen encoder, like for like, on goals never asked for in training.

``recipes/rl_env/babyai_text_ppo_lora.yaml`` is run as written (``lora``) and as the same file with
the encoder frozen (``frozen``: the ``lora`` block, ``encoder_mode: lora`` and
``encoder_learning_rate`` removed, nothing else changed), for each ``--seeds`` value. Both arms read
the same views the same way (sentences, mission attention, ``describe_ahead``), train the same steps
and choose their weights the same way (``keep_best`` on validation episodes of the training goals).
Each run is scored with greedy actions on the held-out episodes that ask only for the held-out goals
(the recipe's ``eval_env_kwargs``), and again on held-out episodes of the training goals.

Each run is kept in ``--out/<arm>_s<seed>`` with a ``bench.json``, so arms can run in separate
processes (one core each) and ``--table`` prints every run found there.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_agents_lora.py --arms lora --seeds 0 1 --out /tmp/lora
    OMP_NUM_THREADS=1 python bench/bench_agents_lora.py --arms frozen --seeds 0 1 --out /tmp/lora
    python bench/bench_agents_lora.py --table --out /tmp/lora
    OMP_NUM_THREADS=1 python bench/bench_agents_lora.py --arms lora frozen --steps 2048 --out /tmp/smoke  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "rl_env" / "babyai_text_ppo_lora.yaml"


def arm_recipe(data: dict, arm: str, seed: int, out: Path, steps: int | None) -> dict:
    """The recipe of one arm: as written (lora) or with the encoder frozen; only seed and output dir set."""
    data = json.loads(json.dumps(data))
    if arm == "frozen":
        data.pop("lora", None)
        data["agent"]["encoder_mode"] = "frozen"
        data["agent"].pop("encoder_learning_rate", None)
    data["agent"].update(seed=seed, output_dir=str(out), progress_bar=False)
    if steps:
        data["agent"].update(total_timesteps=steps, eval_freq=max(steps // 2, 1), n_eval_episodes=10)
    return data


def run_arm(data: dict, arm: str, seed: int, out: Path, steps: int | None) -> dict:
    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.rl_env.train import BLOCKS, evaluate, run

    recipe = arm_recipe(data, arm, seed, out, steps)
    wall, cpu = time.time(), time.process_time()
    metrics = run(parse_recipe(recipe, BLOCKS))
    wall, cpu = time.time() - wall, time.process_time() - cpu
    recipe["env"]["eval_env_kwargs"] = {**recipe["env"].get("eval_env_kwargs", {}), "goal_split": "train"}
    seen = evaluate(parse_recipe(recipe, BLOCKS), str(out))
    result = {"arm": arm, "seed": seed, "metrics": metrics, "seen_goal_success_rate": seen["eval_success_rate"],
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_average_end": os.getloadavg()[0]}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/bench.json"))]
    lines = ["| arm | seed | held-out-goal success | seen-goal success | chosen step | last weights (held-out goals) "
             "| train s | env steps/s | trainable params | load avg at end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['arm']} | {r['seed']} | {m['eval_success_rate']:.2f} | {r['seen_goal_success_rate']:.2f} | "
                     f"{m.get('best_step', '-')} | {m.get('last_eval_success_rate', m['eval_success_rate']):.2f} | "
                     f"{m['train_runtime_s']:.0f} | {m['num_timesteps'] / m['train_runtime_s']:.0f} | "
                     f"{m['trainable_parameters']} | {r['load_average_end']:.1f} |")
    for arm in sorted({r["arm"] for r in rows}):
        mine = [r for r in rows if r["arm"] == arm]
        held = sum(r["metrics"]["eval_success_rate"] for r in mine) / len(mine)
        seen = sum(r["seen_goal_success_rate"] for r in mine) / len(mine)
        lines.append(f"| {arm}, mean of {len(mine)} | | {held:.2f} | {seen:.2f} | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--arms", nargs="+", default=["lora", "frozen"], choices=["lora", "frozen"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="replace the recipe's budget (smoke runs only)")
    parser.add_argument("--out", required=True, help="folder that keeps each run (<arm>_s<seed>)")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.table:
        import torch
        import yaml

        torch.set_num_threads(1)
        data = yaml.safe_load(Path(args.recipe).read_text())
        for seed in args.seeds:
            for arm in args.arms:
                result = run_arm(data, arm, seed, out / f"{arm}_s{seed}", args.steps)
                print(f"{arm} seed {seed}: held-out goals {result['metrics']['eval_success_rate']:.2f}, seen goals "
                      f"{result['seen_goal_success_rate']:.2f}, {result['wall_s']} s", flush=True)
    print(f"Recipe {args.recipe}; greedy, held-out episodes (eval seed 1000000); torch threads 1")
    print(table(out))


if __name__ == "__main__":
    main()
