"""Fine-tuning schedules side by side: BBC News with all-MiniLM-L6-v2, same budget and seed for each.

Methods: full fine-tuning, LoRA, global-then-local (``schedule: global-local``), LP-FT
(``schedule: lp-ft``) and layer-wise LR decay (``layer_lr_decay``). Settings: a slice of the full
training set, and 10 / 50 labelled examples per class (averaged over seeds). Each (method, setting)
runs in a fresh process so its peak resident memory (``ru_maxrss``) is its own.

Usage:
    python bench/bench_supervised_schedules.py            # the numbers in BENCHMARKS.md (~40 min on 2 idle cores)
    python bench/bench_supervised_schedules.py --quick    # a smoke run (tiny budgets, one seed)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = 16
# Same batch, epochs, seed, warmup for every method; only what each trains and its rates differ.
# Rates: the quickstart's 1e-4 for full fine-tuning, 10x for LoRA (few, freshly initialised
# parameters), the presets' own head rates, and LLRD starting higher at the top since the lower
# layers get 0.8 ** depth of it.
METHODS = {
    "full": {"training": {"learning_rate": 1e-4}},
    "lora": {"training": {"learning_rate": 1e-3}, "lora": {"lora_r": 8, "lora_alpha": 16}},
    "global-local": {"training": {"learning_rate": 1e-4, "schedule": "global-local"}},
    "lp-ft": {"training": {"learning_rate": 1e-4, "schedule": "lp-ft"}},
    "llrd": {"training": {"learning_rate": 2e-4, "layer_lr_decay": 0.8}},
}


def run_one(method: str, setting: dict, seed: int) -> dict:
    """Train one method (in a child process) and return its held-out metrics."""
    import datasets
    import torch
    import transformers
    from transformers import DataCollatorWithPadding

    from hf_finetune.models import trainable_parameters
    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.supervised import train as sup

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(setting["threads"])
    spec = METHODS[method]
    with tempfile.TemporaryDirectory() as out:
        recipe = {
            "method": "supervised",
            "model": {"model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
            "data": {
                "dataset": "bbc_news",
                "max_length": 64,
                "split_seed": 42,
                "samples_per_class": setting.get("samples_per_class"),
            },
            "training": {
                "output_dir": out,
                "num_train_epochs": setting["epochs"],
                "per_device_train_batch_size": BATCH,
                "per_device_eval_batch_size": 64,
                "warmup_steps": 0.1,
                "weight_decay": 0.01,
                "seed": seed,
                "data_seed": seed,
                "eval_strategy": "no",
                "save_strategy": "no",
                "logging_steps": 1000,
                "report_to": [],
                "disable_tqdm": True,
                **spec["training"],
            },
        }
        if "lora" in spec:
            recipe["lora"] = spec["lora"]
        parsed = parse_recipe(recipe, sup.BLOCKS)
        transformers.set_seed(seed)
        tokenizer, _, tokenized, names, model = sup.build_classifier(parsed)
        trainable, _ = trainable_parameters(model)
        trainer = sup.SupervisedTrainer(
            model=model,
            args=parsed.training,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=sup.classification_metrics(names),
        )
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
        metrics = trainer.evaluate()
        if trainer.stages:  # staged runs: the widest stage is the trainable count that costs memory
            trainable = max(h["trainable_parameters"] for h in trainer.stage_history)
    return {
        "accuracy": metrics["eval_accuracy"],
        "f1_macro": metrics["eval_f1_macro"],
        "train_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": trainable,
        "n_train": len(tokenized["train"]),
    }


def run_seeds(method: str, setting: dict, seeds: list[int]) -> list[dict]:
    return [run_one(method, setting, seed) for seed in seeds]


def run_isolated(method: str, setting: dict, seeds: list[int]) -> list[dict]:
    """All seeds of one (method, setting) in a fresh process: its ru_maxrss is that method's peak."""
    with ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1) as pool:
        return pool.submit(run_seeds, method, setting, seeds).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one seed (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--settings", nargs="*", default=["all", "10", "50"], help="label regimes to run")
    cli = parser.parse_args()
    seeds = [0] if cli.quick else [0, 1, 2]
    # Budgets: 2 epochs over the full split (as the quickstart), and enough epochs on the small
    # sets for every method to converge (60 and 128 optimizer steps). All score on the whole
    # 445-article held-out split.
    settings = [
        ("all", "full training set (1,780 articles)", {"epochs": 0.1 if cli.quick else 2}, seeds[:1]),
        ("10", "10 per class", {"samples_per_class": 10, "epochs": 1 if cli.quick else 15}, seeds),
        ("50", "50 per class", {"samples_per_class": 50, "epochs": 1 if cli.quick else 8}, seeds),
    ]
    settings = [s[1:] for s in settings if s[0] in cli.settings]
    began = time.time()
    print(
        f"BBC News (5 topics), all-MiniLM-L6-v2, max_length 64, batch {BATCH}, same epochs and seed(s) per method"
    )
    for title, setting, setting_seeds in settings:
        setting = {**setting, "threads": cli.threads}
        print(
            f"\n## {title}: {setting['epochs']} epochs, seeds {setting_seeds}, "
            "scored on the 445 held-out articles"
        )
        print("| method | accuracy | macro-F1 | train s | peak RSS MiB | trainable params |")
        print("|---|---|---|---|---|---|")
        for method in cli.methods:
            runs = run_isolated(method, setting, setting_seeds)
            mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            spread = max(r["accuracy"] for r in runs) - min(r["accuracy"] for r in runs)
            acc = f"{mean['accuracy']:.3f}" + (f" (±{spread / 2:.3f})" if len(runs) > 1 else "")
            print(
                f"| {method} | {acc} | {mean['f1_macro']:.3f} | {mean['train_s']:.1f} | "
                f"{mean['peak_rss_mib']:.0f} | {int(mean['trainable']):,} |",
                flush=True,
            )
    print(f"\ntotal wall time: {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
