"""Where one RL step's time goes: GRPO (TRL) and our PPO on SmolLM2-135M-Instruct, CPU, offline.

Each method trains a few steps on the short-answer prompts (LoRA r=16 on q/v, 8 completions of at most
16 tokens per step) and every step's wall time is split into

- rollout:   ``generate()`` (sampling the completions; KV cache),
- reference: the frozen reference's log-probs (adapter disabled) — and for PPO the rollout's own
             log-probs and values, which PPO recomputes with a full forward,
- reward:    the reward functions,
- update:    forward + backward + optimizer (PPO: ``num_ppo_epochs`` passes),
- other:     the rest (optimizer step, tokenizing, padding, logging).

The first step is a warm-up (thread pools, allocator) and is reported apart. By default every method runs in
its own subprocess, one after the other, so the two never share cores.

Usage (the whole script takes ~3-4 min on an idle 2-core machine):
    OMP_NUM_THREADS=1 python bench/bench_rl_step.py                   # one thread (what tests and shared runs use)
    python bench/bench_rl_step.py                                     # the thread policy (all usable cores)
    python bench/bench_rl_step.py --methods grpo --steps 4 --completions 8 --tokens 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "recipes", "rl", "data", "short_answers_train.jsonl")
PHASES = ("rollout", "reference", "reward", "update", "other")


class Clock:
    """Seconds per phase within the current step; phases may nest (the inner one is subtracted)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []
        self.step_start = 0.0

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        self.stack.append([name, 0.0])
        try:
            yield
        finally:
            _, inner = self.stack.pop()
            spent = time.perf_counter() - start
            self.current[name] += spent - inner
            if self.stack:
                self.stack[-1][1] += spent

    def begin(self) -> None:
        self.current = defaultdict(float)
        self.step_start = time.perf_counter()

    def end(self) -> None:
        total = time.perf_counter() - self.step_start
        step = {p: self.current.get(p, 0.0) for p in PHASES if p != "other"}
        step["other"] = max(0.0, total - sum(step.values()))
        step["total"] = total
        self.steps.append(step)


def wrap(obj, name: str, clock: Clock, phase, when=None) -> None:
    """Time ``obj.name`` as ``phase`` (a name, or a function of the call's grad mode)."""
    original = getattr(obj, name)

    def timed(*args, **kwargs):
        import torch

        label = phase(torch.is_grad_enabled()) if callable(phase) else phase
        if label is None:
            return original(*args, **kwargs)
        with clock.phase(label):
            return original(*args, **kwargs)

    setattr(obj, name, timed)


def prompts_dataset(tokenizer, rows: int):
    from datasets import Dataset

    lines = [json.loads(line) for line in open(DATA)][:rows]
    for line in lines:
        line["prompt"] = tokenizer.apply_chat_template([{"role": "user", "content": line["prompt"]}], tokenize=False,
                                                       add_generation_prompt=True)
    return Dataset.from_list(lines)


def worker(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from hf_finetune.config import LoraArguments
    from hf_finetune.models import apply_lora, resolve_model_path
    from hf_finetune.threads import apply_thread_policy, thread_policy_callback

    threads = apply_thread_policy()
    torch.manual_seed(0)
    path, _ = resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_lora(model, LoraArguments(use_lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.0),
                       task_type="CAUSAL_LM")
    clock = Clock()
    # --thread-policy-callback: the update under the training-phase thread policy, as `hf-finetune train` runs it.
    extra = [thread_policy_callback()] if spec.get("thread_policy_callback") else []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    n, tokens, out = spec["completions"], spec["tokens"], tempfile.mkdtemp(prefix="bench_rl_step_")
    common = dict(output_dir=out, max_steps=spec["steps"], learning_rate=1e-4, max_completion_length=tokens,
                  temperature=1.0, kl_coef=0.02, logging_steps=1, save_strategy="no", report_to="none", seed=0)
    from hf_finetune.rl.rewards import resolve_reward_funcs

    reward_funcs = resolve_reward_funcs(["contains_answer", "brevity"])
    if spec["method"] == "grpo":
        from hf_finetune.rl.grpo_config import GRPOConfig
        from hf_finetune.rl.grpo_trainer import GRPOTrainer

        args = GRPOConfig(per_device_train_batch_size=n, num_generations=spec["group"], **common)
        trainer = GRPOTrainer(model, args, prompts_dataset(tokenizer, 64), processing_class=tokenizer,
                              reward_funcs=reward_funcs, callbacks=[StepClock(), *extra])
        wrap(trainer, "_generate_single_turn", clock, "rollout")
        # No-grad log-prob passes are the reference's (and the old policy's when reused); with grad: the update.
        wrap(trainer, "_get_per_token_logps_and_entropies", clock, lambda grad: None if grad else "reference")
        wrap(trainer, "_calculate_rewards", clock, "reward")
        wrap(trainer, "compute_loss", clock, "update")
        wrap(trainer.accelerator, "backward", clock, "update")
    else:
        from hf_finetune.rl.ppo_config import PPOConfig
        from hf_finetune.rl.ppo_trainer import PPOTrainer

        args = PPOConfig(per_device_train_batch_size=n, num_ppo_epochs=spec["ppo_epochs"], **common)
        trainer = PPOTrainer(model, args, prompts_dataset(tokenizer, 64), processing_class=tokenizer,
                             reward_funcs=reward_funcs, callbacks=[StepClock(), *extra])
        wrap(trainer.policy, "generate", clock, "rollout")
        wrap(trainer, "_ref_logprobs", clock, "reference")
        wrap(trainer.model_wrapped, "forward", clock, lambda grad: None if grad else "reference")
        # Rewards: the reward functions through compute_rewards in the trainer's module.
        import hf_finetune.rl.ppo_trainer as ppo_module

        wrap(ppo_module, "compute_rewards", clock, "reward")
        wrap(trainer, "_ppo_update", clock, "update")
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    lengths += [e["completion/length"] for e in trainer.state.log_history if "completion/length" in e]
    return {**spec, "threads": threads, "threads_at_end": torch.get_num_threads(), "steps_timed": clock.steps, "train_s": round(wall, 1),
            "mean_completion_tokens": round(sum(lengths) / max(len(lengths), 1), 1)}


def launch(spec: dict, script: str = __file__) -> dict:
    """Run ``script --worker SPEC`` in a fresh process (imports and threads as a user's run) and read its result."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker failed: {spec}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


def report(result: dict) -> None:
    steps = result["steps_timed"]
    warm, rest = steps[0], steps[1:] or steps[:1]
    mean = {k: sum(s[k] for s in rest) / len(rest) for k in (*PHASES, "total")}
    what = f"{result['method']}: {result['completions']} completions x <= {result['tokens']} tokens"
    if result["method"] == "ppo":
        what += f", {result['ppo_epochs']} PPO epochs"
    print(f"{what}; {result['threads']} thread(s); mean completion {result['mean_completion_tokens']} tokens")
    print("  " + "  ".join(f"{k:>9}" for k in (*PHASES, "total")))
    print("  " + "  ".join(f"{mean[k]:9.2f}" for k in (*PHASES, "total"))
          + f"   s/step, mean of steps 2-{len(steps)}")
    print("  " + "  ".join(f"{warm[k]:9.2f}" for k in (*PHASES, "total")) + "   s, step 1 (warm-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["grpo", "ppo"], choices=["grpo", "ppo"])
    parser.add_argument("--steps", type=int, default=4, help="steps per method (the first is a warm-up)")
    parser.add_argument("--completions", type=int, default=8, help="completions per step")
    parser.add_argument("--group", type=int, default=4, help="GRPO completions per prompt")
    parser.add_argument("--tokens", type=int, default=16, help="most tokens per completion")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--thread-policy-callback", action="store_true",
                        help="add hf_finetune.threads.thread_policy_callback (what `hf-finetune train` adds)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("BENCH_RESULT " + json.dumps(worker(json.loads(args.worker))))
        return
    print(f"bench_rl_step: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{len(os.sched_getaffinity(0))} usable core(s), load average {os.getloadavg()[0]:.2f} at start "
          "(other jobs on the machine slow every phase)")
    for method in args.methods:
        spec = {"method": method, "steps": args.steps, "completions": args.completions, "group": args.group,
                "tokens": args.tokens, "ppo_epochs": args.ppo_epochs,
                "thread_policy_callback": args.thread_policy_callback}
        report(launch(spec))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
