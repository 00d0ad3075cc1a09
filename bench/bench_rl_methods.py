"""PPO vs GRPO vs RLOO at equal wall-clock time on the short-answer task (SmolLM2-135M-Instruct, CPU, offline).

Each (method, seed) runs ``recipes/rl/<method>_short_answers.yaml`` through the recipe API with only the seed and
output folder overridden, and stops when its training time (evaluations excluded) reaches ``--budget-s``, or at
the recipe's ``max_steps``, whichever comes first. Every logged step records reward, KL per token, completion
length and the time since training began; every evaluation (``eval_steps`` of the recipe, and the final one)
records the held-out ``exact_match`` (greedy, not part of the reward). Printed: one line per run and the mean per
method; written: ``<out>/curves.png`` (reward, held-out exact_match, KL, length vs time) and ``<out>/runs.json``.

KL: GRPO and RLOO log it per token; PPO logs it per sequence, divided here by the mean completion length.
The three recipes start from the same SFT warm-start adapter (``recipes/rl/sft_short_answers.yaml``, which must
have run first: ``outputs/rl/sft_short_answers``).

``--task topic`` runs the topic-steering recipe (``recipes/rl/ppo_topic_reward_model.yaml``) under each method
with only the method word switched (the keys only PPO has, e.g. ``adaptive_kl_target``, dropped for GRPO/RLOO); its
held-out metric is the recipe's strict sports word list (``regex_match``). Score the saved runs with a judge that is
not the reward afterwards: ``bench/bench_rl_topic.py --runs <out>/*_seed* --judge-model ... --modes greedy``.
``--recipe PATH`` runs a fixed copy of that recipe instead (the shipped one may change between sessions).

``--budget-clock cpu`` charges the budget in CPU seconds of the training process (``time.process_time``, evaluation
excluded) instead of wall-clock seconds: with ``OMP_NUM_THREADS=1`` that is about what an idle machine's
wall-clock would be, so runs on a shared machine get the same amount of computation whatever else runs beside
them. Each run records both (``train_cpu_s``, ``train_wall_s``); the curves' time axis is the budget's clock.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_rl_methods.py --seeds 42 43 --budget-s 420
    python bench/bench_rl_methods.py --replot --out /tmp/all --runs /tmp/a/runs.json /tmp/b/runs.json  # merge seeds
    OMP_NUM_THREADS=1 python bench/bench_rl_methods.py --task topic --seeds 42 --budget-s 600
    OMP_NUM_THREADS=1 python bench/bench_rl_methods.py --task topic --recipe /tmp/pinned.yaml --budget-clock cpu \
        --seeds 44 --budget-s 600 --out /tmp/s44   # a shared machine: CPU seconds, a fixed recipe copy
    python bench/bench_rl_methods.py --methods grpo rloo --seeds 0 --budget-s 60   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench_rl_step import launch  # the same fresh-process worker protocol (BENCH_RESULT line)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {m: f"recipes/rl/{m}_short_answers.yaml" for m in ("grpo", "rloo")}
RECIPES["ppo"] = "recipes/rl/ppo_lora_short_answers.yaml"
TOPIC_RECIPE = "recipes/rl/ppo_topic_reward_model.yaml"
METRIC = "exact_match"  # the held-out metric of the task: regex_match (strict word list) for --task topic


def load_task_recipe(spec: dict, overrides: list[str]):
    """The method's recipe; for the topic task, the one topic recipe with its method word switched."""
    from hf_finetune.recipe import load_recipe, method_entry
    from hf_finetune.recipe_parsing import parse_recipe, read_recipe_yaml, recipe_fields

    if spec.get("task", "short_answers") != "topic":
        return load_recipe(os.path.join(REPO, RECIPES[spec["method"]]), overrides)
    source = spec.get("recipe") or TOPIC_RECIPE
    data = read_recipe_yaml(os.path.join(REPO, source))
    blocks = method_entry(spec["method"]).blocks()
    known = recipe_fields(blocks["training"])
    data["training"] = {k: v for k, v in data["training"].items() if k in known}
    data["method"] = spec["method"]
    # The budget, not the recipe's 30 steps, ends each run (a GRPO step is cheaper than a PPO step); the recipe's
    # learning rate is constant after warm-up, so max_steps changes nothing else.
    data["training"]["max_steps"] = 10_000
    return parse_recipe(data, blocks, overrides, source=source)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def worker(spec: dict) -> dict:
    from transformers import TrainerCallback

    from hf_finetune.cli import run_recipe

    points: list[dict] = []
    # Both clocks are kept; the budget's ends the run, the other is reported beside it.
    readers = {"wall": time.perf_counter, "cpu": time.process_time}
    marks = {name: {"start": None, "eval_s": 0.0, "eval_start": None, "last_step": 0.0} for name in readers}
    clock, now = marks[spec.get("budget_clock", "wall")], readers[spec.get("budget_clock", "wall")]

    def elapsed() -> float:
        return now() - clock["start"] - clock["eval_s"] if clock["start"] else 0.0

    class Budget(TrainerCallback):
        """Training time only: evaluation (greedy generation on the held-out set) is not charged to the budget."""

        def on_train_begin(self, args, state, control, **kwargs):
            for name, mark in marks.items():
                mark["start"] = readers[name]()

        def on_step_begin(self, args, state, control, **kwargs):
            for name, mark in marks.items():
                if mark["eval_start"] is not None:  # an evaluation ran since the last step ended
                    mark["eval_s"] += readers[name]() - mark["eval_start"]
                    mark["eval_start"] = None

        def on_step_end(self, args, state, control, **kwargs):
            for name, mark in marks.items():
                mark["eval_start"] = readers[name]()
                mark["last_step"] = mark["eval_start"] - mark["start"] - mark["eval_s"]
            if clock["last_step"] >= spec["budget_s"]:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: _number(v) for k, v in (logs or {}).items() if _number(v) is not None}
            if clock["start"] is None:
                return
            at = elapsed() if clock["eval_start"] is None else clock["eval_start"] - clock["start"] - clock["eval_s"]
            points.append({"t": round(at, 1), "step": state.global_step, **logs})

    overrides = ["--seed", str(spec["seed"]), "--output_dir", spec["output_dir"],
                 # Held-out evaluation after the budget only (and of the starting policy once per bench, below):
                 # greedy generation on 60 prompts costs minutes here, and would eat the wall-clock it is compared on.
                 "--eval_strategy", "no", "--evaluate_before_training", str(spec["evaluate_start"]).lower()]
    recipe = load_task_recipe(spec, overrides)
    started, cpu_started = time.perf_counter(), time.process_time()
    metrics = run_recipe(recipe, callbacks=[Budget()])
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {**spec, "wall_s": round(time.perf_counter() - started, 1), "train_s": round(clock["last_step"], 1),
            "train_s_steps": round(clock["last_step"], 1),
            "train_wall_s": round(marks["wall"]["last_step"], 1), "train_cpu_s": round(marks["cpu"]["last_step"], 1),
            "cpu_s": round(time.process_time() - cpu_started, 1),
            "points": points, "metrics": keep}


def train_seconds(run: dict) -> float:
    """Training time up to the end of the last step (runs recorded before that field: their last logged step)."""
    steps = [p["t"] for p in run["points"] if f"eval_{METRIC}" not in p]
    return run.get("train_s_steps") or (max(steps) if steps else run["train_s"])


def series(run: dict, start: float | None = None) -> dict[str, list[tuple[float, float]]]:
    """(time, value) per curve; KL per token for every method."""
    out: dict[str, list] = {"reward": [], "kl": [], "length": [], "exact_match": []}
    for p in run["points"]:
        if f"eval_{METRIC}" in p:
            out["exact_match"].append((p["t"], p[f"eval_{METRIC}"]))
        if run["method"] == "ppo" and "objective/scores" in p:
            length = p.get("completion/length") or 1.0
            out["reward"].append((p["t"], p["objective/scores"]))
            out["kl"].append((p["t"], p["objective/kl"] / max(length, 1.0)))
            out["length"].append((p["t"], length))
        elif run["method"] != "ppo" and "reward" in p and "eval_reward" not in p:
            out["reward"].append((p["t"], p["reward"]))
            out["kl"].append((p["t"], p.get("kl", float("nan"))))
            out["length"].append((p["t"], p.get("completions/mean_length", float("nan"))))
    before = run["metrics"].get(f"before_eval_{METRIC}", start)
    if before is not None:
        out["exact_match"].insert(0, (0.0, before))
    final = run["metrics"].get(f"eval_{METRIC}")
    # Logged values arrive rounded to 4 digits: the final evaluation is usually among the points already.
    if final is not None and (not out["exact_match"] or abs(out["exact_match"][-1][1] - final) > 1e-3):
        out["exact_match"].append((train_seconds(run), final))
    return out


def plot(runs: list[dict], path: str) -> None:
    clocks = frozenset(r.get("budget_clock", "wall") for r in runs)
    xlabel = {frozenset({"wall"}): "training time (s, evaluation excluded)",
              frozenset({"cpu"}): "training CPU time (s, evaluation excluded)"}.get(
        clocks, "training s, eval. excluded (CPU s; wall s: wall-budget runs)")
    equal = {frozenset({"cpu"}): "equal CPU time", frozenset({"wall"}): "equal wall-clock"}.get(
        clocks, "equal training time (CPU or wall s)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ppo": "tab:blue", "grpo": "tab:orange", "rloo": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    titles = {"reward": "training reward (sampled)", "exact_match": "held-out strict sports words (greedy)" if METRIC == "regex_match" else f"held-out {METRIC} (greedy)",
              "kl": "KL to reference, per token", "length": "completion length (tokens)"}
    seen = set()
    start = next((r["metrics"][f"before_eval_{METRIC}"] for r in runs if f"before_eval_{METRIC}" in r["metrics"]), None)
    for run in runs:
        for ax, (key, points) in zip(axes.flat, ((k, series(run, start)[k]) for k in titles)):
            if points:
                label = run["method"] if run["method"] not in seen else None
                ax.plot(*zip(*points), color=colors[run["method"]], alpha=0.8, label=label,
                        marker="o" if key == "exact_match" else None, markersize=3)
        seen.add(run["method"])
    for ax, title in zip(axes.flat, titles.values()):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    axes[0, 0].legend()
    task = "topic steering" if METRIC == "regex_match" else "short answers"
    fig.suptitle(f"PPO vs GRPO vs RLOO, SmolLM2-135M {task}, {equal} (machine shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ppo", "grpo", "rloo"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--budget-s", type=float, default=420.0, help="training seconds per run (evaluation excluded)")
    parser.add_argument("--task", default="short_answers", choices=["short_answers", "topic"])
    parser.add_argument("--budget-clock", default="wall", choices=["wall", "cpu"],
                        help="what --budget-s counts: wall-clock seconds, or CPU seconds of the training process "
                        "(robust to a shared machine when OMP_NUM_THREADS=1)")
    parser.add_argument("--recipe", help=f"--task topic: the recipe to run under each method (default {TOPIC_RECIPE}); "
                        "pass a fixed copy so a comparison does not follow later edits of the shipped one")
    parser.add_argument("--out", default="/tmp/bench_rl_methods")
    parser.add_argument("--replot", action="store_true", help="redraw and reprint from <out>/runs.json only")
    parser.add_argument("--runs", nargs="+", help="with --replot: merge these runs.json files (e.g. a bench of more "
                        "seeds run later) into <out>/runs.json first")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global METRIC
    METRIC = "regex_match" if args.task == "topic" else "exact_match"
    if args.recipe and args.task != "topic":
        parser.error("--recipe applies to --task topic only (the short-answer task has one recipe per method)")
    if args.recipe and not os.path.isfile(args.recipe):
        parser.error(f"--recipe {args.recipe}: no such file")
    if args.worker:
        print("BENCH_RESULT " + json.dumps(worker(json.loads(args.worker))))
        return
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        if args.runs:
            runs = []
            for path in args.runs:
                with open(path) as f:
                    runs += json.load(f)
            with open(os.path.join(args.out, "runs.json"), "w") as f:
                json.dump(runs, f)
        with open(os.path.join(args.out, "runs.json")) as f:
            runs = json.load(f)
        for run in runs:
            summarize(run, runs)
        plot(runs, os.path.join(args.out, "curves.png"))
        means(runs, sorted({r["method"] for r in runs}, key=list(RECIPES).index))
        return
    clock = " CPU" if args.budget_clock == "cpu" else ""
    print(f"bench_rl_methods: budget {args.budget_s:.0f}{clock} s of training per run, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.2f} at start")
    runs = []
    for seed in args.seeds:  # seed-major, so an interrupted bench still has every method at the first seed
        for method in args.methods:
            # The three recipes start from the same adapter and evaluate greedily: one evaluation of the start serves all.
            spec = {"method": method, "task": args.task, "seed": seed, "budget_s": args.budget_s, "evaluate_start": not runs,
                    "output_dir": os.path.join(args.out, f"{method}_seed{seed}")}
            if args.budget_clock != "wall":  # the default's spec (and runs.json) as before
                spec["budget_clock"] = args.budget_clock
            if args.recipe:
                spec["recipe"] = os.path.abspath(args.recipe)
            run = launch(spec, __file__)
            runs.append(run)
            summarize(run, runs)
            with open(os.path.join(args.out, "runs.json"), "w") as f:
                json.dump(runs, f)
            plot(runs, os.path.join(args.out, "curves.png"))
    means(runs, args.methods)
    print(f"curves: {os.path.join(args.out, 'curves.png')}; load average {os.getloadavg()[0]:.2f} at the end "
          "(the machine was shared with other jobs)")


def summarize(run: dict, runs: list[dict]) -> None:
    m, start = run["metrics"], runs[0]["metrics"].get(f"before_eval_{METRIC}", float("nan"))
    s = series(run, start)
    print(f"{run['method']:5s} seed {run['seed']}: steps {max((p['step'] for p in run['points']), default=0):3d} in "
          f"{train_seconds(run):.0f} s | held-out {METRIC} {start:.3f} -> {m.get(f'eval_{METRIC}', float('nan')):.3f}"
          f" | eval reward {m.get('eval_reward', float('nan')):.3f} | eval length "
          f"{m.get('eval_completion_length', float('nan')):.1f}, EOS rate {m.get('eval_eos_rate', float('nan')):.2f} | "
          f"last KL/token {s['kl'][-1][1] if s['kl'] else 0:.4f}" + _both_clocks(run), flush=True)


def _both_clocks(run: dict) -> str:
    """Training wall and CPU seconds, for runs that recorded both (runs from before that print as they did)."""
    if "train_cpu_s" not in run:
        return ""
    return (f" | training {run['train_cpu_s']:.0f} CPU s, {run['train_wall_s']:.0f} wall s "
            f"(budget clock: {run.get('budget_clock', 'wall')}); whole run {run['wall_s']:.0f} wall s")


def means(runs: list[dict], methods) -> None:
    start = runs[0]["metrics"].get(f"before_eval_{METRIC}", float("nan"))
    print(f"mean over seeds (held-out {METRIC} after the budget):")
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        finals = [r["metrics"].get(f"eval_{METRIC}", float("nan")) for r in mine]
        if finals:
            def mean(values):
                return sum(values) / len(values)

            kls = [series(r, start)["kl"] for r in mine]
            print(f"  {method:5s} {start:.3f} -> {mean(finals):.3f}  (seeds: {', '.join(f'{x:.3f}' for x in finals)})"
                  f" | steps {mean([max((p['step'] for p in r['points']), default=0) for r in mine]):.1f} in "
                  f"{mean([train_seconds(r) for r in mine]):.0f} s | eval length "
                  f"{mean([r['metrics'].get('eval_completion_length', float('nan')) for r in mine]):.1f}, EOS rate "
                  f"{mean([r['metrics'].get('eval_eos_rate', float('nan')) for r in mine]):.2f} | last KL/token "
                  f"{mean([k[-1][1] if k else 0.0 for k in kls]):.4f}"
                  + (f" | training {mean([r['train_cpu_s'] for r in mine]):.0f} CPU s, "
                     f"{mean([r['train_wall_s'] for r in mine]):.0f} wall s" if all("train_cpu_s" in r for r in mine)
                     else ""))


if __name__ == "__main__":
    main()
