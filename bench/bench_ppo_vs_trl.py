"""Our PPOTrainer side by side with trl==1.12.0's ``trl.experimental.ppo.PPOTrainer`` (removed in trl 1.13).

Both run the same GPT-2 policy and critic built from config, the same prompts, seeds and PPO
hyperparameters, and face the same problem:

- pad != EOS (a separate ``<pad>`` token), so both sides train the EOS token of a finished response
  (with pad == EOS TRL masks the EOS out of its loss while ours trains it: not the same problem);
- a reward that does not pay for length: the number of response tokens (before EOS) from a fixed
  target set (~10% of the vocabulary at random) divided by the *fixed* ``response_length``, so ending
  early is never rewarded for itself (a per-token *fraction* pays for 1-token answers);
- several seeds (``--seeds``), the same seed on both sides of a pair.

TRL's PPO only takes a reward *model*, so the reward is given to it as a module with the
``base_model_prefix``/``score`` interface TRL calls; ours gets the same function through the shared
reward signature (``completion_ids``). All prompts have the same token length, so both see identical
inputs. Per side: reward, response length, EOS rate, KL per sequence (k1), approx-KL, clip fraction and
CPU time per step, for TRL with and without its two ``gc.collect()`` calls per step.

trl 1.12 lives in its own virtual environment (default ``/tmp/trl112-venv``), created on first
use with ``pip install --no-deps trl==1.12.0 requests``; a ``.pth`` file makes the *same*
torch/transformers/accelerate installation visible to it, so only the PPO code differs. Runs
alternate (ours, theirs, theirs without gc) in fresh subprocesses; the time per PPO step is the
median over steps after the first (warm-up) step.

Usage:
    python bench/bench_ppo_vs_trl.py                 # tiny (2x32) and small (4x128) GPT-2, 24 steps, seeds 0 1 2
    python bench/bench_ppo_vs_trl.py --steps 20 --seeds 0 --sizes tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

SIZES = {"tiny": dict(n_embd=32, n_layer=2, n_head=2), "small": dict(n_embd=128, n_layer=4, n_head=4)}
HYPER = dict(
    batch=16, response_length=16, prompt_tokens=4, num_ppo_epochs=4, lr=1e-2, kl_coef=0.05, cliprange=0.2,
    cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, temperature=1.0, seed=0,
)
WORDS = (
    "match goal team player coach league score win season cup football tennis computer software phone internet "
    "chip data code network digital online device app market bank shares profit company economy price growth "
    "sales firm trade deal the a of and to in is was for on with it said by new year this that from at"
).split()


# ---------------------------------------------------------------------------------------------
# Shared assets (built once by the parent, read by both workers)
# ---------------------------------------------------------------------------------------------


def build_assets(directory: Path, size: str) -> None:
    import random

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(400)) for _ in range(3)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.add_special_tokens(["<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<pad>", padding_side="left")
    assert tok.pad_token_id != tok.eos_token_id
    tok.save_pretrained(directory / "policy")
    torch.manual_seed(HYPER["seed"])
    config = GPT2Config(vocab_size=len(tok), n_positions=128, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SIZES[size])
    policy = GPT2LMHeadModel(config)
    policy.save_pretrained(directory / "policy")
    value = GPT2ForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": 1}))
    value.transformer.load_state_dict(policy.transformer.state_dict())
    torch.nn.init.zeros_(value.score.weight)
    value.save_pretrained(directory / "value")
    # Prompts of exactly `prompt_tokens` tokens that survive a decode/encode round trip.
    prompts, n = [], HYPER["prompt_tokens"]
    while len(prompts) < 256:
        ids = tok(" ".join(rng.choice(WORDS) for _ in range(n)), add_special_tokens=False)["input_ids"][:n]
        text = tok.decode(ids)
        if len(ids) == n and tok(text, add_special_tokens=False)["input_ids"] == ids:
            prompts.append({"prompt": text, "input_ids": ids})
    (directory / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    target = sorted(i for t, i in tok.get_vocab().items() if "a" in t and i not in tok.all_special_ids)
    (directory / "target_ids.json").write_text(json.dumps(target))


def target_count(ids: list[int], target: set[int]) -> float:
    """Target tokens over the fixed response length: more target tokens pay, a shorter answer does not."""
    return sum(i in target for i in ids) / HYPER["response_length"]


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU (process) time at the end of every PPO step."""

        def __init__(self):
            self.start()

        def start(self):
            self.times, self.cpu = [time.perf_counter()], [time.process_time()]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def result(self, log_history, keys: dict[str, str], extra: dict | None = None):
            out = {
                "step_times": [b - a for a, b in zip(self.times, self.times[1:])],
                "step_cpu": [b - a for a, b in zip(self.cpu, self.cpu[1:])],
            }
            for name, key in keys.items():
                out[name] = [e[key] for e in log_history if key in e]
            out.update(extra or {})
            return out

    return StepTimer()


OURS_KEYS = {"scores": "objective/scores", "kl": "objective/kl", "approxkl": "policy/approxkl",
             "clipfrac": "policy/clipfrac", "length": "completion/length", "eos_rate": "completion/eos_rate"}
TRL_KEYS = {"scores": "objective/scores", "kl": "objective/kl", "approxkl": "policy/approxkl_avg",
            "clipfrac": "policy/clipfrac_avg"}


def run_ours(assets: Path, steps: int, out_dir: Path, seed: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.rl.ppo_config import PPOConfig
    from hf_finetune.rl.ppo_trainer import PPOTrainer

    h = HYPER
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    target = set(json.loads((assets / "target_ids.json").read_text()))

    def target_tokens(prompts, completions, completion_ids, **_):
        return [target_count(ids, target) for ids in completion_ids]

    rows = [json.loads(line) for line in (assets / "prompts.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    args = PPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=h["batch"], learning_rate=h["lr"],
        lr_scheduler_type="constant", max_completion_length=h["response_length"], num_ppo_epochs=h["num_ppo_epochs"],
        kl_coef=h["kl_coef"], cliprange=h["cliprange"], cliprange_value=h["cliprange_value"], vf_coef=h["vf_coef"],
        gamma=h["gamma"], lam=h["lam"], temperature=h["temperature"], seed=seed, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        max_grad_norm=0.0,  # TRL's PPO does not clip gradients: same update rule on both sides
    )
    timer = step_timer()
    trainer = PPOTrainer(
        AutoModelForCausalLM.from_pretrained(assets / "policy"), args, data, processing_class=tok,
        reward_funcs=target_tokens, value_model=AutoModelForSequenceClassification.from_pretrained(assets / "value"),
        callbacks=[timer],
    )
    timer.start()
    trainer.train()
    return timer.result(trainer.state.log_history, OURS_KEYS)


def trl_reward_model(target_ids: list[int], vocab_size: int, context_length: int, eos_id: int):
    """The target-count reward with the interface TRL's ``get_reward`` calls (backbone + ``score``); it also
    records each scored batch's response lengths and EOS rate, which TRL does not log."""
    import torch
    from torch import nn

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            mask = torch.zeros(vocab_size)
            mask[target_ids] = 1.0
            self.register_buffer("is_target", mask)
            self.lengths, self.eos_rates = [], []

        def forward(self, input_ids, attention_mask, **_):
            response = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= context_length
            valid = attention_mask.float() * response
            hits = (self.is_target[input_ids] * valid).cumsum(1)
            self.lengths.append(valid.sum(1).mean().item())
            # TRL feeds pad positions as id 0 (masked): count an EOS only where the mask is on.
            self.eos_rates.append(((input_ids == eos_id) & (valid > 0)).any(1).float().mean().item())
            return type("Out", (), {"hidden_states": ((hits / HYPER["response_length"]).unsqueeze(-1),)})()

    class TargetFractionRewardModel(nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = Counter()
            self.score = nn.Identity()

    return TargetFractionRewardModel()


def run_trl(assets: Path, steps: int, out_dir: Path, seed: int, collect_garbage: bool = True) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == "1.12.0", trl.__version__
    if not collect_garbage:
        # TRL's PPO calls gc.collect() twice per step; this variant measures its PPO code without that cost.
        import trl.experimental.ppo.ppo_trainer as trl_ppo

        trl_ppo.gc = type("NoGC", (), {"collect": staticmethod(lambda *a: 0)})
    h = HYPER
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    rows = [json.loads(line) for line in (assets / "prompts.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows])
    args = PPOConfig(
        output_dir=str(out_dir), total_episodes=steps * h["batch"], per_device_train_batch_size=h["batch"],
        gradient_accumulation_steps=1, num_mini_batches=1, learning_rate=h["lr"], lr_scheduler_type="constant",
        response_length=h["response_length"], num_ppo_epochs=h["num_ppo_epochs"], kl_coef=h["kl_coef"],
        cliprange=h["cliprange"], cliprange_value=h["cliprange_value"], vf_coef=h["vf_coef"], gamma=h["gamma"],
        lam=h["lam"], temperature=h["temperature"], seed=seed, stop_token="eos", missing_eos_penalty=None,
        local_rollout_forward_batch_size=h["batch"], num_sample_generations=0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    timer = step_timer()
    reward = trl_reward_model(json.loads((assets / "target_ids.json").read_text()), len(tok), h["prompt_tokens"],
                              tok.eos_token_id)
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(assets / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(assets / "policy"), reward_model=reward, train_dataset=data,
        value_model=AutoModelForSequenceClassification.from_pretrained(assets / "value"), eval_dataset=data,
        callbacks=[timer],
    )
    timer.start()
    trainer.train()
    counter = reward.backbone  # one scoring call per PPO step (sample generations are off)
    return timer.result(trainer.state.log_history, TRL_KEYS,
                        {"length": counter.lengths[-steps:], "eos_rate": counter.eos_rates[-steps:]})


# ---------------------------------------------------------------------------------------------
# Parent: environment, alternation, report
# ---------------------------------------------------------------------------------------------


def ensure_trl_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import trl; assert trl.__version__ == '1.12.0'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # trl 1.12 needs `requests` without declaring it; everything else is shared with this environment.
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0", "requests",
                          "charset_normalizer", "idna", "urllib3", "certifi"], capture_output=True, text=True)
    if pip.returncode != 0:
        raise SystemExit(f"Installing trl==1.12.0 failed:\n{pip.stderr[-2000:]}")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Appended after the venv's own site-packages: its trl 1.12 shadows ours, torch & co are shared.
    Path(site, "zz_shared_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(check, check=True)
    return python


def worker(python: str, which: str, assets: Path, steps: int, threads: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = Path(out) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [python, __file__, "--worker", which, "--assets", str(assets), "--steps", str(steps), "--result",
               str(result), "--seeds", str(seed), "--lr", str(HYPER["lr"])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{which} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def last(values: list[float], n: int = 5) -> float:
    return sum(values[-n:]) / len(values[-n:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one ours/trl pair per seed")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per worker")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default {HYPER['lr']})")
    parser.add_argument("--venv", default="/tmp/trl112-venv")
    parser.add_argument("--worker", choices=["ours", "trl", "trl_nogc"], help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lr is not None:
        HYPER["lr"] = args.lr

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        with tempfile.TemporaryDirectory() as out:
            if args.worker == "ours":
                result = run_ours(Path(args.assets), args.steps, Path(out), args.seeds[0])
            else:
                result = run_trl(Path(args.assets), args.steps, Path(out), args.seeds[0],
                                 collect_garbage=args.worker == "trl")
            Path(args.result).write_text(json.dumps(result))
        return

    trl_python = ensure_trl_venv(Path(args.venv))
    print(f"hyperparameters: {HYPER}, steps={args.steps}, seeds={args.seeds}, OMP threads={args.threads}; pad != EOS; "
          "reward = target tokens / response_length (does not pay for ending early)")
    print("time per PPO step: median over steps 2..N of the worker's CPU time (wall time in brackets; the machine "
          "may be shared). Learning figures: first step -> mean of the last 5 steps.")
    workers = ("ours", "trl", "trl_nogc")
    metrics = ("scores", "length", "eos_rate", "kl", "approxkl", "clipfrac")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            assets = Path(tmp)
            build_assets(assets, size)
            table = {w: [] for w in workers}
            for seed in args.seeds:
                for w in workers:
                    run = worker(sys.executable if w == "ours" else str(trl_python), w, assets, args.steps,
                                 args.threads, seed)
                    run["cpu"] = statistics.median(run["step_cpu"][1:])
                    run["wall"] = statistics.median(run["step_times"][1:])
                    table[w].append(run)
                    print(f"{size:5} seed {seed} {w:8} CPU {run['cpu']:.3f} s/step [wall {run['wall']:.3f}] | " +
                          " ".join(f"{m} {run[m][0]:.3f}->{last(run[m]):.3f}" for m in metrics), flush=True)
            print(f"\n{size}: mean over seeds {args.seeds} (first step -> last 5 steps); ratio = ours / trl")
            for m in metrics + ("cpu",):
                cells = []
                for w in workers:
                    runs = table[w]
                    if m == "cpu":
                        cells.append(f"{w} {statistics.mean(r['cpu'] for r in runs):.3f}")
                    else:
                        first = statistics.mean(r[m][0] for r in runs)
                        end = [last(r[m]) for r in runs]
                        spread = f" (seeds {min(end):.3f}..{max(end):.3f})" if len(end) > 1 else ""
                        cells.append(f"{w} {first:.3f}->{statistics.mean(end):.3f}{spread}")
                print(f"  {m:9} " + " | ".join(cells))
            cpu = {w: statistics.mean(r["cpu"] for r in table[w]) for w in workers}
            print(f"  CPU s/step ratio ours/trl {cpu['ours'] / cpu['trl']:.2f}, ours/trl-without-gc "
                  f"{cpu['ours'] / cpu['trl_nogc']:.2f}\n", flush=True)


if __name__ == "__main__":
    main()
