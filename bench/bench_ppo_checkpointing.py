"""PPO with and without gradient checkpointing on SmolLM2-135M-Instruct (LoRA, CPU, offline): memory, time, loss.

Runs ``recipes/rl/ppo_lora_short_answers.yaml`` (which starts from the SFT adapter of
``recipes/rl/sft_short_answers.yaml``: run that first) for ``--steps`` PPO steps with ``max_completion_length``
``--tokens``, no evaluation, once with ``gradient_checkpointing`` off and once on, each in a fresh process. Printed per
setting: the peak growth of the process's resident memory during training (sampled every 20 ms from the start of
training, so model loading is excluded; optimizer state and rollouts are included), seconds per step, and the
logged loss of every step (checkpointing recomputes the same function, so the losses should agree).

Usage:
    OMP_NUM_THREADS=1 python bench/bench_ppo_checkpointing.py            # ~7 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/rl/ppo_lora_short_answers.yaml")


def worker(checkpointing: bool, steps: int, tokens: int, out: str) -> dict:
    import psutil
    from transformers import TrainerCallback

    from hf_finetune.cli import load_recipe, run_recipe

    proc, seen = psutil.Process(), {"base": 0, "peak": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], proc.memory_info().rss)
            time.sleep(0.02)

    class Memory(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["base"] = seen["peak"] = proc.memory_info().rss
            threading.Thread(target=sample, daemon=True).start()

        def on_train_end(self, args, state, control, **kwargs):
            stop.set()

    recipe = load_recipe(RECIPE, ["--max_steps", str(steps), "--eval_strategy", "no", "--evaluate_before_training",
                                  "false", "--output_dir", out, "--max_completion_length", str(tokens),
                                  "--gradient_checkpointing", str(checkpointing).lower()])
    run_recipe(recipe, callbacks=[Memory()])
    with open(os.path.join(out, "trainer_state.json")) as f:
        logs = [e for e in json.load(f)["log_history"] if "loss/value" in e]
    return {"checkpointing": checkpointing, "peak_growth_mb": (seen["peak"] - seen["base"]) / 2**20,
            "step_s": [e["time/step_s"] for e in logs], "loss": [e["loss"] for e in logs],
            "length": [e["completion/length"] for e in logs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="max_completion_length")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print("BENCH_RESULT " + json.dumps(worker(spec["checkpointing"], args.steps, args.tokens, spec["out"])))
        return
    print(f"bench_ppo_checkpointing: {args.steps} PPO steps, max_completion_length {args.tokens}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.2f} at start")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_ppo_checkpointing_") as tmp:
        for checkpointing in (False, True):
            spec = json.dumps({"checkpointing": checkpointing, "out": os.path.join(tmp, str(checkpointing))})
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--tokens", str(args.tokens),
                                   "--worker", spec], capture_output=True, text=True, cwd=REPO)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
            if line is None:
                sys.exit(f"worker failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(line[len("BENCH_RESULT "):]))
    for r in results:
        print(f"gradient_checkpointing={str(r['checkpointing']).lower():5s}: peak RSS growth in training "
              f"{r['peak_growth_mb']:,.0f} MB | s/step {', '.join(f'{s:.1f}' for s in r['step_s'])} | loss "
              f"{', '.join(f'{x:.6f}' for x in r['loss'])} | response length {', '.join(f'{x:.1f}' for x in r['length'])}")
    off, on = results
    print(f"checkpointing / none: memory {on['peak_growth_mb'] / off['peak_growth_mb']:.2f}, time per step "
          f"{sum(on['step_s']) / sum(off['step_s']):.2f}; load average {os.getloadavg()[0]:.2f} at the end "
          "(the machine may be shared)")


if __name__ == "__main__":
    main()
