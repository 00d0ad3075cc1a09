"""RL on a real task: SmolLM2-135M-Instruct answers short questions, offline, on CPU.

Part 1 (task): a few RL steps of ``recipes/rl/<recipe>.yaml`` through the recipe API, with greedy
evaluation on held-out prompts before and after: mean reward, the reward-independent task metric
(``exact_match``), KL to the reference at the last step, wall time.

Part 2 (memory): peak resident memory of PPO with full fine-tuning versus PPO with LoRA on the same
model, data, batch and step count (each in its own process, so the peaks do not mix).

Every configuration runs in a fresh subprocess (``--worker``) and reports JSON; the parent prints the
figures side by side.

Usage:
    python bench/bench_rl_real_task.py                      # defaults: PPO+LoRA task run, memory PPO full vs LoRA
    python bench/bench_rl_real_task.py --task-methods ppo grpo --steps 4 --eval-prompts 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

RECIPES = {
    "ppo": "recipes/rl/ppo_lora_short_answers.yaml",
    "grpo": "recipes/rl/grpo_short_answers.yaml",
    "rloo": "recipes/rl/rloo_short_answers.yaml",
}


def worker(spec: dict) -> dict:
    """Run one configuration in this process; return its figures."""
    from hf_finetune.cli import load_recipe, run_recipe

    overrides = [
        "--max_steps", str(spec["steps"]),
        "--max_completion_length", str(spec["max_completion_length"]),
        # Memory runs measure training: their final evaluation is cut to one prompt.
        "--max_eval_samples", str(spec["eval_prompts"] if spec["evaluate"] else 1),
        "--output_dir", spec["output_dir"],
        "--eval_strategy", "no",
        "--evaluate_before_training", str(spec["evaluate"]).lower(),
        "--logging_steps", "1",
        "--per_device_train_batch_size", str(spec["batch_size"]),
        *(["--learning_rate", str(spec["learning_rate"])] if spec.get("learning_rate") else []),
        "--per_device_eval_batch_size", str(max(spec["eval_prompts"], 1)),
    ]
    if spec["method"] == "ppo":
        overrides += ["--num_ppo_epochs", str(spec["ppo_epochs"])]
    recipe = load_recipe(spec["recipe"], overrides)
    if not spec["evaluate"]:
        # Memory runs compare fresh LoRA with full fine-tuning: no warm-start adapter (the task recipes carry one).
        recipe.lora.lora_adapter_path = None
        recipe.lora.use_lora = spec["lora"]
    started = time.time()
    metrics = run_recipe(recipe)
    wall = time.time() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {**spec, "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb), "metrics": keep}


def launch(spec: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker failed: {spec}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-methods", nargs="*", default=["ppo"], choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=4, help="RL steps of the task run")
    parser.add_argument("--eval-prompts", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=12)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="per_device_train_batch_size (PPO: prompts per rollout; GRPO/RLOO: completions)")
    parser.add_argument("--learning-rate", type=float, default=None, help="override the recipe's learning rate")
    parser.add_argument("--memory-steps", type=int, default=1, help="PPO steps of each memory run (0: skip part 2)")
    parser.add_argument("--out", default="outputs/bench_rl_real_task")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("BENCH_RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    common = dict(eval_prompts=args.eval_prompts, max_completion_length=args.max_completion_length,
                  ppo_epochs=args.ppo_epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate)
    print(f"threads={os.environ.get('OMP_NUM_THREADS', 'default')} cpus={os.cpu_count()}", flush=True)
    for method in args.task_methods:
        spec = dict(common, method=method, recipe=RECIPES[method], steps=args.steps, evaluate=True,
                    lora=True, output_dir=f"{args.out}/task_{method}")  # the recipes carry the SFT adapter
        r = launch(spec)
        m = r["metrics"]
        kl = {k: v for k, v in m.items() if "kl" in k and "coef" not in k}
        print(f"\n[task] {method}{' + LoRA' if r['lora'] else ''} on SmolLM2-135M-Instruct, {args.steps} steps, "
              f"{args.eval_prompts} held-out prompts (greedy), max_completion_length={args.max_completion_length}, "
              f"batch {args.batch_size}, learning rate {args.learning_rate or 'from the recipe'}")
        print(f"  reward       before {m.get('before_eval_reward', float('nan')):.3f} -> after {m['eval_reward']:.3f}")
        print(f"  exact_match  before {m.get('before_eval_exact_match', float('nan')):.3f} -> after "
              f"{m.get('eval_exact_match', float('nan')):.3f}")
        print(f"  contains_answer before {m.get('before_eval_reward/contains_answer', float('nan')):.3f} -> after "
              f"{m.get('eval_reward/contains_answer', float('nan')):.3f}")
        print(f"  completion length (tokens) before {m.get('before_eval_completion_length', float('nan')):.1f} -> "
              f"after {m.get('eval_completion_length', float('nan')):.1f}")
        print(f"  KL at the last step: {json.dumps({k: round(v, 4) for k, v in kl.items()})}")
        print(f"  wall time {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']} MB", flush=True)

    if args.memory_steps > 0:
        peaks = {}
        for lora in (False, True):
            spec = dict(common, method="ppo", recipe=RECIPES["ppo"], steps=args.memory_steps, evaluate=False,
                        lora=lora, output_dir=f"{args.out}/memory_{'lora' if lora else 'full'}")
            r = launch(spec)
            peaks[lora] = r
            print(f"\n[memory] PPO {'LoRA' if lora else 'full'}: peak RSS {r['peak_rss_mb']} MB, "
                  f"trainable parameters {r['metrics'].get('trainable_parameters')}, "
                  f"{args.memory_steps} step(s) in {r['wall_s']:.0f} s", flush=True)
        ratio = peaks[True]["peak_rss_mb"] / peaks[False]["peak_rss_mb"]
        print(f"\n[memory] PPO peak RSS LoRA / full = {ratio:.2f} "
              f"({peaks[True]['peak_rss_mb']} MB vs {peaks[False]['peak_rss_mb']} MB)")


if __name__ == "__main__":
    main()
