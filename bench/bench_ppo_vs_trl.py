"""Our PPOTrainer side by side with trl==1.12.0's ``trl.experimental.ppo.PPOTrainer`` (removed in trl 1.13).

Both run the same GPT-2 policy and critic built from config, the same prompts, seeds and PPO
hyperparameters, and optimize the same reward: the fraction of response tokens (before EOS) that
belong to a fixed target set (~10% of the vocabulary at random). TRL's PPO only takes a reward
*model*, so the reward is given to it as a module with the ``base_model_prefix``/``score``
interface TRL calls; ours gets the same function through the shared reward signature
(``completion_ids``). All prompts have the same token length, so both see identical inputs.

trl 1.12 lives in its own virtual environment (default ``/tmp/trl112-venv``), created on first
use with ``pip install --no-deps trl==1.12.0 requests``; a ``.pth`` file makes the *same*
torch/transformers/accelerate installation visible to it, so only the PPO code differs. Runs
alternate (ours, theirs, ours, theirs, ...) in fresh subprocesses; the time per PPO step is the
median over steps after the first (warm-up) step.

Usage:
    python bench/bench_ppo_vs_trl.py                 # tiny (2x32) and small (4x128) GPT-2, 16 steps, 2 rounds
    python bench/bench_ppo_vs_trl.py --steps 20 --rounds 1 --sizes tiny
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
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", padding_side="left")
    tok.save_pretrained(directory / "policy")
    torch.manual_seed(HYPER["seed"])
    config = GPT2Config(vocab_size=len(tok), n_positions=128, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, **SIZES[size])
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
    target = sorted(i for t, i in tok.get_vocab().items() if "a" in t and i != tok.eos_token_id)
    (directory / "target_ids.json").write_text(json.dumps(target))


def target_fraction(ids: list[int], target: set[int]) -> float:
    return sum(i in target for i in ids) / len(ids) if ids else 0.0


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

        def result(self, log_history):
            return {
                "step_times": [b - a for a, b in zip(self.times, self.times[1:])],
                "step_cpu": [b - a for a, b in zip(self.cpu, self.cpu[1:])],
                "scores": [e["objective/scores"] for e in log_history if "objective/scores" in e],
            }

    return StepTimer()


def run_ours(assets: Path, steps: int, out_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.rl.ppo_config import PPOConfig
    from hf_finetune.rl.ppo_trainer import PPOTrainer

    h = HYPER
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    target = set(json.loads((assets / "target_ids.json").read_text()))

    def target_tokens(prompts, completions, completion_ids, **_):
        return [target_fraction(ids, target) for ids in completion_ids]

    rows = [json.loads(line) for line in (assets / "prompts.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    args = PPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=h["batch"], learning_rate=h["lr"],
        lr_scheduler_type="constant", max_completion_length=h["response_length"], num_ppo_epochs=h["num_ppo_epochs"],
        kl_coef=h["kl_coef"], cliprange=h["cliprange"], cliprange_value=h["cliprange_value"], vf_coef=h["vf_coef"],
        gamma=h["gamma"], lam=h["lam"], temperature=h["temperature"], seed=h["seed"], logging_steps=1,
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
    return timer.result(trainer.state.log_history)


def trl_reward_model(target_ids: list[int], vocab_size: int, context_length: int):
    """The target-fraction reward with the interface TRL's ``get_reward`` calls (backbone + ``score``)."""
    import torch
    from torch import nn

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            mask = torch.zeros(vocab_size)
            mask[target_ids] = 1.0
            self.register_buffer("is_target", mask)

        def forward(self, input_ids, attention_mask, **_):
            response = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= context_length
            valid = attention_mask.float() * response
            hits = (self.is_target[input_ids] * valid).cumsum(1)
            fraction = hits / valid.cumsum(1).clamp(min=1.0)
            return type("Out", (), {"hidden_states": (fraction.unsqueeze(-1),)})()

    class TargetFractionRewardModel(nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = Counter()
            self.score = nn.Identity()

    return TargetFractionRewardModel()


def run_trl(assets: Path, steps: int, out_dir: Path, collect_garbage: bool = True) -> dict:
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
        lam=h["lam"], temperature=h["temperature"], seed=h["seed"], stop_token="eos", missing_eos_penalty=None,
        local_rollout_forward_batch_size=h["batch"], num_sample_generations=0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    timer = step_timer()
    reward = trl_reward_model(json.loads((assets / "target_ids.json").read_text()), len(tok), h["prompt_tokens"])
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(assets / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(assets / "policy"), reward_model=reward, train_dataset=data,
        value_model=AutoModelForSequenceClassification.from_pretrained(assets / "value"), eval_dataset=data,
        callbacks=[timer],
    )
    timer.start()
    trainer.train()
    return timer.result(trainer.state.log_history)


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


def worker(python: str, which: str, assets: Path, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = Path(out) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [python, __file__, "--worker", which, "--assets", str(assets), "--steps", str(steps), "--result", str(result)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{which} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="ours/theirs alternations per size")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per worker")
    parser.add_argument("--venv", default="/tmp/trl112-venv")
    parser.add_argument("--worker", choices=["ours", "trl", "trl_nogc"], help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        with tempfile.TemporaryDirectory() as out:
            if args.worker == "ours":
                result = run_ours(Path(args.assets), args.steps, Path(out))
            else:
                result = run_trl(Path(args.assets), args.steps, Path(out), collect_garbage=args.worker == "trl")
            Path(args.result).write_text(json.dumps(result))
        return

    trl_python = ensure_trl_venv(Path(args.venv))
    print(f"hyperparameters: {HYPER}, steps={args.steps}, rounds={args.rounds}, OMP threads={args.threads}")
    print("time per PPO step: median over steps 2..N of the CPU time of the (single-threaded) worker process, "
          "which a busy machine disturbs less than wall time (shown in brackets)")
    print(f"{'size':6} {'round':5} {'ours s/step':>18} {'trl s/step':>18} {'trl-no-gc s/step':>18} {'ratio':>6} "
          f"{'ratio-no-gc':>11} | score first -> mean of last 5: ours, trl, trl-no-gc")
    workers = ("ours", "trl", "trl_nogc")
    summary = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            assets = Path(tmp)
            build_assets(assets, size)
            rows = []
            for r in range(args.rounds):
                runs = {w: worker(sys.executable if w == "ours" else str(trl_python), w, assets, args.steps, args.threads)
                        for w in workers}
                cpu = {w: statistics.median(v["step_cpu"][1:]) for w, v in runs.items()}
                wall = {w: statistics.median(v["step_times"][1:]) for w, v in runs.items()}
                last = {w: sum(v["scores"][-5:]) / 5 for w, v in runs.items()}
                rows.append((cpu, wall, last))
                cells = " ".join(f"{cpu[w]:8.3f} [{wall[w]:6.3f}]" for w in workers)
                scores = ", ".join(f"{runs[w]['scores'][0]:.3f} -> {last[w]:.3f}" for w in workers)
                print(f"{size:6} {r:5d} {cells} {cpu['ours'] / cpu['trl']:6.2f} {cpu['ours'] / cpu['trl_nogc']:11.2f} "
                      f"| {scores}", flush=True)
            med = {w: statistics.median(x[0][w] for x in rows) for w in workers}
            med_wall = {w: statistics.median(x[1][w] for x in rows) for w in workers}
            summary.append((size, med, med_wall, {w: statistics.mean(x[2][w] for x in rows) for w in workers}))
    print(f"\nsummary (medians over {args.rounds} rounds; target: ours / trl <= 0.8; reward after {args.steps} steps = "
          "mean score of the last 5 steps, mean over rounds):")
    for size, cpu, wall, last in summary:
        print(f"  {size:6} CPU s/step ours {cpu['ours']:.3f}, trl {cpu['trl']:.3f}, trl-no-gc {cpu['trl_nogc']:.3f} "
              f"-> ratio {cpu['ours'] / cpu['trl']:.2f} (vs trl without its per-step gc.collect: "
              f"{cpu['ours'] / cpu['trl_nogc']:.2f}); wall ratio {wall['ours'] / wall['trl']:.2f} "
              f"({wall['ours'] / wall['trl_nogc']:.2f}) | reward: ours {last['ours']:.3f}, trl {last['trl']:.3f}, "
              f"trl-no-gc {last['trl_nogc']:.3f}")

if __name__ == "__main__":
    main()
