"""Threads per process: 1 thread vs PyTorch's default vs hf_finetune.threads, alone and beside a busy process.

Each setting runs in a fresh process (OpenMP reads its environment once, at load), timing three kinds
of work: the small matmul of decoding and SB3 policies (8x576 @ 576x1536, SmolLM2's MLP on one token
per sequence of a batch of 8), a training-sized matmul (2048x384 @ 384x1536, MiniLM's MLP at batch
16 x 128 tokens) and one MiniLM-sized transformer layer's forward + backward at that batch (what a
training step is made of: many short parallel regions). The policy rows choose as a run does: the
small matmul by ``fastest_threads``, the training rows by ``fastest_training_threads`` (the Trainer
callback's probe). "busy" starts one process spinning on a core beside it (a second job, a notebook
kernel, the other rank of a 2-process run).

    .venv/bin/python bench/bench_threads.py --rounds 3      # the goal rows, alone and busy (30 fresh processes each round)
    .venv/bin/python bench/bench_threads.py --rl-update --rl-conditions alone busy   # PPO step per setting (~25 min)
    .venv/bin/python bench/bench_threads.py --sb3 --rl-conditions alone busy         # SB3 PPO steps/s per setting

Prints seconds per 1,000 calls (median over rounds, settings interleaved within each round), each
setting's ratio to 1 thread and a goal check; the load average is printed as the confounder it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {  # name -> (kind, sizes, calls timed)
    "small 8x576@576x1536": ("matmul", (8, 576, 1536), 300),
    "train 2048x384@384x1536": ("matmul", (2048, 384, 1536), 20),
    "train layer fwd+bwd 16x128x384": ("layer", (16, 128, 384, 12), 10),
}
SETTINGS = {
    "1 thread": {"threads": "1"},
    "torch default (all cores)": {},
    "hf_finetune.threads policy": {"policy": "1"},
    "all cores, OMP_WAIT_POLICY=PASSIVE": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "policy + OMP_WAIT_POLICY=PASSIVE": {"policy": "1", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


def worker(shape: str, threads: str | None, policy: bool) -> None:
    import torch

    kind, sizes, reps = SHAPES[shape]
    start = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    if policy:  # what a run does: the policy's count, then the faster of it and 1 for this phase's probe
        from hf_finetune.threads import apply_thread_policy, fastest_threads, fastest_training_threads

        apply_thread_policy()
        if shape.startswith("small"):
            torch.set_num_threads(fastest_threads(*sizes))
        else:  # the Trainer callback's probe at the quickstart's micro-batch (16 x 128 tokens, MiniLM)
            torch.set_num_threads(fastest_training_threads(16, 128, 384, 12))
    if kind == "matmul":
        rows, hidden, out = sizes
        a, b = torch.randn(rows, hidden), torch.randn(hidden, out)

        def work():
            a @ b
    else:
        batch, seq, hidden, heads = sizes
        layer = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, batch_first=True)
        x = torch.randn(batch, seq, hidden)

        def work():
            layer.zero_grad(set_to_none=True)
            layer(x).pow(2).mean().backward()
    for _ in range(3):
        work()
    t0 = time.perf_counter()
    for _ in range(reps):
        work()
    elapsed = time.perf_counter() - t0
    total = time.perf_counter() - start  # includes the policy's own measurement
    print(json.dumps({"per_1000": elapsed / reps * 1000, "with_choice_per_1000": total / reps * 1000,
                      "threads": torch.get_num_threads()}))


def run_setting(shape: str, setting: dict, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(setting.get("env", {}))
    cmd = [sys.executable, __file__, "--worker", shape]
    if setting.get("threads"):
        cmd += ["--threads", setting["threads"]]
    if setting.get("policy"):
        cmd += ["--policy"]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(out.strip().splitlines()[-1])


def spinner_process() -> subprocess.Popen:
    """One process spinning on a core: the "second busy process" (another job, a notebook kernel)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)
    return spinner


RL_SETTINGS = {  # name -> (environment, add the training-phase thread_policy_callback)
    "1 thread (OMP_NUM_THREADS=1)": ({"OMP_NUM_THREADS": "1"}, False),
    "policy count, update not chosen": ({}, False),
    "policy (hf-finetune train)": ({}, True),
}


def rl_update(rounds: int, steps: int, conditions: list[str], settings: list[str]) -> None:
    """A PPO step (bench_rl_step.py: SmolLM2 + LoRA, 8 completions x 16 tokens, 4 PPO epochs) per setting.

    Like for like: the same step under 1 thread, under the policy's count with no training-phase choice
    (what bench_rl_step.py measured alone), and under the policy as a run applies it (the training-phase
    choice, thread_policy_callback, which bench_rl_step.py adds with --thread-policy-callback).
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_rl_step

    results: dict = {}
    for round_index in range(rounds):
        for condition in conditions:
            names = settings[::-1 if round_index % 2 else 1]
            for name in names:
                env, callback = RL_SETTINGS[name]
                spec = {"method": "ppo", "steps": steps, "completions": 8, "group": 4, "tokens": 16, "ppo_epochs": 4,
                        "thread_policy_callback": callback}
                saved = dict(os.environ)
                for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_FINETUNE_NUM_THREADS"):
                    os.environ.pop(key, None)
                os.environ.update(env)
                spinner = spinner_process() if condition == "busy" else None
                try:
                    result = bench_rl_step.launch(spec)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                timed = result["steps_timed"][1:] or result["steps_timed"]
                row = {k: sum(s[k] for s in timed) / len(timed) for k in ("rollout", "reference", "update", "total")}
                row["threads"] = f"{result['threads']}->{result.get('threads_at_end', '?')}"
                results.setdefault((condition, name), []).append(row)
                print(f"round {round_index + 1} {condition:<5} {name:<34} " + "  ".join(
                    f"{k} {row[k]:.2f}" for k in ("rollout", "reference", "update", "total"))
                    + f"  threads {row['threads']}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nPPO step, s (mean of steps 2-{steps}, median over {rounds} round(s)); "
          "busy = one spinning process beside it; threads = policy count -> count at the end of training")
    print(f"{'condition':<10}{'setting':<36}{'rollout':>9}{'reference':>11}{'update':>9}{'total':>9}  threads")
    for condition in conditions:
        for name in settings:
            rows = results[(condition, name)]
            med = {k: statistics.median(r[k] for r in rows) for k in ("rollout", "reference", "update", "total")}
            print(f"{condition:<10}{name:<36}{med['rollout']:>9.2f}{med['reference']:>11.2f}{med['update']:>9.2f}"
                  f"{med['total']:>9.2f}  {'/'.join(r['threads'] for r in rows)}")


SB3_SETTINGS = ("1 thread", "policy count, not chosen", "policy (rl_env without torch_threads)")


def sb3_worker(setting: str, steps: int) -> None:
    """SB3 PPO env steps/s on BabyAI-Text (bench_agents_throughput.py's lm-sentences agent) under one setting."""
    import torch
    from stable_baselines3.common.logger import Logger

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_agents_throughput as agents

    from hf_finetune import threads

    count = threads.apply_thread_policy()
    if setting == "1 thread":
        torch.set_num_threads(1)
    callback = threads.sb3_thread_policy_callback() if setting.startswith("policy (") else None
    model = agents.lm_ppo(agents.text_envs(4), sentences=True)
    model.set_logger(Logger(None, []))
    half = steps // 2
    start = time.perf_counter()
    model.learn(half, callback=callback)
    middle = time.perf_counter()
    model.learn(steps - half, callback=callback, reset_num_timesteps=False)
    end = time.perf_counter()
    chosen = {key[1]: value[0] for key, value in threads._choice.items() if key[0] == "matmul"}  # rows -> threads
    print(json.dumps({"overall": model.num_timesteps / (end - start), "warm": (model.num_timesteps - half) / (end - middle),
                      "threads": "/".join(f"{n} for {rows} rows" for rows, n in sorted(chosen.items()))
                      or str(torch.get_num_threads() if setting == "1 thread" else count)}))


def sb3_bench(rounds: int, steps: int, conditions: list[str]) -> None:
    """Each setting in a fresh process, interleaved, alone and/or beside one spinning process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                               "HF_FINETUNE_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results: dict = {}
    for round_index in range(rounds):
        for condition in conditions:
            for name in SB3_SETTINGS[::-1 if round_index % 2 else 1]:
                spinner = spinner_process() if condition == "busy" else None
                try:
                    out = subprocess.run([sys.executable, __file__, "--sb3-worker", name, "--sb3-steps", str(steps)],
                                         env=env, capture_output=True, text=True)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                if out.returncode != 0:
                    sys.stderr.write(out.stderr[-3000:])
                    raise SystemExit(f"sb3 worker failed: {name}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((condition, name), []).append(row)
                print(f"round {round_index + 1} {condition:<5} {name:<40} {row['warm']:7.0f} steps/s warm "
                      f"({row['overall']:.0f} overall), threads {row['threads']}, load {os.getloadavg()[0]:.2f}",
                      flush=True)
    print(f"\nSB3 PPO on BabyAI-Text GoToObj (frozen MiniLM, sentence cache, 4 envs, n_steps 128, batch 64): "
          f"env steps/s over the second half of {steps} (caches warmer than in the first), median of {rounds} round(s)")
    print(f"{'condition':<10}{'setting':<42}{'steps/s':>9}{'vs 1 thr':>10}  threads")
    for condition in conditions:
        base = statistics.median(r["warm"] for r in results[(condition, "1 thread")])
        for name in SB3_SETTINGS:
            rows = results[(condition, name)]
            med = statistics.median(r["warm"] for r in rows)
            print(f"{condition:<10}{name:<42}{med:>9.0f}{med / base:>10.2f}  {' | '.join(r['threads'] for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=list(SHAPES))
    parser.add_argument("--threads")
    parser.add_argument("--policy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rl-update", action="store_true",
                        help="instead: a PPO step per thread setting (bench_rl_step.py; ~2 min per run)")
    parser.add_argument("--rl-steps", type=int, default=3)
    parser.add_argument("--rl-settings", nargs="+", default=list(RL_SETTINGS), choices=list(RL_SETTINGS))
    parser.add_argument("--rl-conditions", nargs="+", default=["busy"], choices=["alone", "busy"],
                        help="conditions of --rl-update and --sb3")
    parser.add_argument("--sb3", action="store_true",
                        help="instead: SB3 PPO env steps/s per thread setting (~1 min per run)")
    parser.add_argument("--sb3-steps", type=int, default=4096)
    parser.add_argument("--sb3-worker", choices=SB3_SETTINGS)
    args = parser.parse_args()
    if args.sb3_worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        sb3_worker(args.sb3_worker, args.sb3_steps)
        return
    if args.sb3:
        print(f"usable cores: {len(os.sched_getaffinity(0))}; load average before: {os.getloadavg()[0]:.2f}")
        sb3_bench(args.rounds, args.sb3_steps, args.rl_conditions)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    if args.rl_update:
        print(f"usable cores: {len(os.sched_getaffinity(0))}; load average before: {os.getloadavg()[0]:.2f}")
        rl_update(args.rounds, args.rl_steps, args.rl_conditions, args.rl_settings)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    if args.worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        worker(args.worker, args.threads, args.policy)
        return

    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    print(f"usable cores: {cores}; load average before: {os.getloadavg()[0]:.2f} "
          "(a load above 0 means other jobs shared the machine: absolute times are not clean, compare ratios)")
    results: dict = {}
    for round_index in range(args.rounds):
        for busy in (False, True):
            for shape in SHAPES:
                names = list(SETTINGS)
                if round_index % 2:
                    names.reverse()
                for name in names:
                    r = run_setting(shape, SETTINGS[name], busy)
                    results.setdefault((busy, shape, name), []).append(r)
    print(f"rounds: {args.rounds}; load average after: {os.getloadavg()[0]:.2f}; "
          f"took {time.perf_counter() - started:.0f} s")
    print(f"{'condition':<22}{'work':<32}{'setting':<36}{'s/1000':>9}{'incl. choice':>14}{'threads':>9}{'vs 1 thr':>10}")
    for busy in (False, True):
        for shape in SHAPES:
            base = statistics.median(r["per_1000"] for r in results[(busy, shape, "1 thread")])
            for name in SETTINGS:
                rs = results[(busy, shape, name)]
                med = statistics.median(r["per_1000"] for r in rs)
                incl = statistics.median(r["with_choice_per_1000"] for r in rs)
                threads = "/".join(str(r["threads"]) for r in rs)
                cond = "beside a busy process" if busy else "alone"
                print(f"{cond:<22}{shape:<32}{name:<36}{med:>9.3f}{incl:>14.3f}{threads:>9}{med / base:>10.2f}")
    # The goal: beside a busy process never slower than 1 thread; alone not slower than torch's default.
    print("\ngoal check (policy row, median s/1000; > 1.00 = slower, within this run's noise of ~5-10%):")
    for busy in (False, True):
        ref = "1 thread" if busy else "torch default (all cores)"
        for shape in SHAPES:
            policy = statistics.median(r["per_1000"] for r in results[(busy, shape, "hf_finetune.threads policy")])
            other = statistics.median(r["per_1000"] for r in results[(busy, shape, ref)])
            cond = "beside a busy process" if busy else "alone"
            print(f"  {cond:<22}{shape:<32}policy / {ref}: {policy / other:.2f}")


if __name__ == "__main__":
    main()
