"""The fixed cost of a run: ``hf-finetune``'s quickstart job vs a bare ``Trainer`` script, each in a fresh process.

A user runs one job per process, so imports (``evaluate``, matplotlib) and the run's files (card,
curves, confusion matrix, results files) count. Each repeat starts both jobs as new processes,
alternated (bare, ours, ours, bare, ...) so machine noise hits both alike, and times the whole
process and the job inside it, in wall-clock and in CPU seconds (user + system of the process:
on a shared machine the wall time mostly measures the other jobs; CPU time much less). The jobs are those of ``bench_foundation.py`` (same data, split,
model, 40 steps at batch 16 x 64 tokens, final evaluation, saved model).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_run_overhead.py --repeats 3     # ~6-8 min on 2 cores

Prints each process' wall and CPU time, the medians, and the ratios hf-finetune / bare (issue 15: <= 1.02).
The load average is printed as the confounder it is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def worker(job: str, out: str, steps: int) -> None:
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(BENCH.parent))
    start = time.perf_counter()
    import bench_foundation as jobs  # imports transformers, datasets and hf_finetune
    from transformers import logging

    logging.set_verbosity_error()
    imported = time.perf_counter()
    fn = jobs.bare_job if job == "bare" else jobs.our_job
    accuracy = fn(out, steps, 64, 16, 1e-4, seed=42)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "job_s": done - imported, "accuracy": accuracy}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--worker", choices=["bare", "hf-finetune"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.max_steps)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          "(a load above 0 means other jobs shared the machine: compare the ratio, not absolute times)", flush=True)
    rows: dict[str, list[dict]] = {"bare": [], "hf-finetune": []}
    for r in range(args.repeats):
        order = ["bare", "hf-finetune"] if r % 2 == 0 else ["hf-finetune", "bare"]
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "run")
                start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                result = subprocess.run([sys.executable, __file__, "--worker", name, "--out", out,
                                         "--max_steps", str(args.max_steps)],
                                        capture_output=True, text=True, check=True)
                wall, cpu1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            row = {**json.loads(result.stdout.strip().splitlines()[-1]), "process_s": wall, "cpu_s": cpu}
            rows[name].append(row)
            print(f"repeat {r} {name:12s} process {wall:6.1f}s, CPU {cpu:6.1f}s (imports {row['import_s']:4.1f}s, "
                  f"job {row['job_s']:6.1f}s) "
                  f"accuracy={row['accuracy']:.4f} load={os.getloadavg()[0]:.2f}", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print(f"\nsteps={args.max_steps} repeats={args.repeats} load average after: {os.getloadavg()[0]:.2f}")
    for key, what in (("process_s", "whole process"), ("job_s", "job after imports"), ("cpu_s", "process CPU time")):
        bare, ours = med("bare", key), med("hf-finetune", key)
        print(f"median {what}: bare Trainer {bare:.1f}s, hf-finetune {ours:.1f}s, ratio {ours / bare:.3f} (target <= 1.02)")
    for key in ("process_s", "cpu_s"):
        ratios = [o[key] / b[key] for b, o in zip(rows["bare"], rows["hf-finetune"])]
        print(f"per-repeat {key} ratios: " + ", ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    main()
