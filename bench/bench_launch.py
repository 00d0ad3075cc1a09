"""Wall time of the same short supervised job with 1 and 2 CPU processes (gloo DDP), side by side.

Both runs train all-MiniLM-L6-v2 on BBC News for the same number of optimizer steps on the same
global batch (1 x B versus 2 x B/2), from the same recipe, each launched as a user would:

    1 process:   OMP_NUM_THREADS=<cores>   hf-finetune train RECIPE --use_cpu true ...
    2 processes: OMP_NUM_THREADS=<cores/2> accelerate launch --config_file recipes/accelerate/multi_cpu.yaml \
                     -m hf_finetune train RECIPE --use_cpu true ...

plus 1 process with 1 thread (to tell threading effects from the second process).
Printed per run: the wall time of the whole command (interpreter and library start-up, data
preparation, model load, training, evaluation, saving) and the run's own ``train_runtime_s``
(from ``start_run`` to the end, in metrics.json), so start-up cost is visible separately.

Usage:
    python bench/bench_launch.py                 # MiniLM + BBC News (needs the offline assets)
    python bench/bench_launch.py --steps 20 --batch 16 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps (same in both runs)")
    parser.add_argument("--batch", type=int, default=16, help="global batch size (split over the processes)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads in all")
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout, interleaved; the best is shown")
    args = parser.parse_args()
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    out = Path(tempfile.mkdtemp(prefix="bench_launch_"))
    common = ["--use_cpu", "true", "--max_steps", str(args.steps), "--max_length", str(args.max_length),
              "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "4"]
    one = [sys.executable, "-m", "hf_finetune", "train", args.recipe, "--per_device_train_batch_size", str(args.batch)]
    two = [accelerate, "launch", "--config_file", "recipes/accelerate/multi_cpu.yaml", "--main_process_port",
           str(free_port()), "-m", "hf_finetune", "train", args.recipe, "--per_device_train_batch_size",
           str(args.batch // 2)]
    # (label, processes, OMP threads per process, command). The 1-process x 1-thread layout separates
    # the effect of threading (OpenMP under contention) from the effect of a second process.
    layouts = [
        (f"1 process x {args.threads} threads", 1, args.threads, one),
        ("1 process x 1 thread", 1, 1, one),
        (f"2 processes x {max(1, args.threads // 2)} thread(s)", 2, max(1, args.threads // 2), two),
    ]
    print(f"{args.recipe}: {args.steps} steps, global batch {args.batch}, max_length {args.max_length}, "
          f"{os.cpu_count()} cores; logs in {out}")
    print("load average before: {:.1f} {:.1f} {:.1f} (other jobs on the machine skew every layout)".format(
        *os.getloadavg()))
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in layouts}
    for attempt in range(args.repeat):
        for i, (label, processes, threads, cmd) in enumerate(layouts):
            run_dir = out / f"layout{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            wall = run([*cmd, "--output_dir", str(run_dir), *common], threads, out / f"layout{i}_{attempt}.log")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert metrics["world_size"] == processes, metrics
            results[label].append((wall, metrics["train_runtime_s"]))
            print(f"  try {attempt + 1}, {label}: wall {wall:.1f} s, run {metrics['train_runtime_s']:.1f} s, "
                  f"train_loss {metrics.get('train_loss')}", flush=True)
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    for label, _, threads, cmd in layouts:
        wall, runtime = min(results[label])
        shown = " ".join([*cmd, "--output_dir", "OUT", *common]).replace(sys.executable, "python")
        print(f"\n{label}: OMP_NUM_THREADS={threads} {shown}")
        print(f"  best wall {wall:.1f} s | run (start_run -> end) {runtime:.1f} s | start-up and launch {wall - runtime:.1f} s")
    (w1, r1), (w2, r2) = min(results[layouts[0][0]]), min(results[layouts[2][0]])
    (w11, r11) = min(results[layouts[1][0]])
    print(f"\n2 processes / 1 process x {args.threads} threads: wall x{w2 / w1:.2f}, run x{r2 / r1:.2f}")
    print(f"2 processes / 1 process x 1 thread: wall x{w2 / w11:.2f}, run x{r2 / r11:.2f} (below 1 = faster with 2)")

if __name__ == "__main__":
    main()
