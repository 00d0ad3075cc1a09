"""LoRA versus full fine-tuning of SmolLM2-135M-Instruct with the ``sft`` method: peak memory and trainable parameters.

Each mode runs a few SFT steps (AdamW, fp32, CPU) in a fresh process, so its peak resident memory
(``ru_maxrss``) is its own; the script prints both and their ratios.

Usage:
    python bench/bench_supervised_sft_memory.py [--steps 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def run_mode(lora: bool, steps: int, batch: int) -> dict:
    import datasets
    import transformers

    from hf_finetune.models import trainable_parameters
    from hf_finetune.recipe_parsing import parse_recipe
    from hf_finetune.supervised import sft_train, sft_trainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as out:
        recipe = {
            "method": "sft",
            "model": {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "data": {"dataset": str(REPO / "recipes/supervised/data/instructions_sample.jsonl"), "max_length": 128},
            "training": {
                "output_dir": out,
                "max_steps": steps,
                "per_device_train_batch_size": batch,
                "learning_rate": 2e-4 if lora else 2e-5,
                "save_strategy": "no",
                "logging_steps": 1,
                "report_to": [],
                "disable_tqdm": True,
                "seed": 0,
            },
        }
        if lora:
            recipe["lora"] = {
                "lora_r": 16,
                "lora_alpha": 32,
                "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            }
        parsed = parse_recipe(recipe, sft_train.BLOCKS)
        tokenizer, splits, _, model = sft_train.build_sft(parsed)
        trainable, total = trainable_parameters(model)
        loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trainer = sft_trainer.InstructionSFTTrainer(
            model=model, args=parsed.training, train_dataset=splits["train"], processing_class=tokenizer
        )
        started = time.perf_counter()
        trainer.train()
        seconds = (time.perf_counter() - started) / steps
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "trainable": trainable,
        "total": total,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": loaded_rss,
        "s_per_step": seconds,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    cli = parser.parse_args()
    results = {}
    for name, lora in (("full", False), ("lora", True)):
        with ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1) as pool:
            results[name] = pool.submit(run_mode, lora, cli.steps, cli.batch).result()
    print(f"SmolLM2-135M-Instruct SFT, fp32 AdamW on CPU, batch {cli.batch} x <=128 tokens, {cli.steps} steps per mode")
    print("| mode | trainable params | peak RSS MiB | RSS after load MiB | s/step | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['trainable']:,} of {r['total']:,} | {r['peak_rss_mib']:.0f} | {r['rss_after_load_mib']:.0f} "
            f"| {r['s_per_step']:.1f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    full, lora = results["full"], results["lora"]
    print(
        f"LoRA / full: peak RSS {lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}, "
        f"training memory above load {(lora['peak_rss_mib'] - lora['rss_after_load_mib']) / max(full['peak_rss_mib'] - full['rss_after_load_mib'], 1):.2f}, "
        f"trainable parameters {lora['trainable'] / full['trainable']:.4f}"
    )


if __name__ == "__main__":
    main()
