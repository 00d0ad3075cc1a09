"""The gain from task-adaptive pretraining (TAPT): BBC News accuracy with and without MLM on its text first.

1. TAPT: masked-LM training of all-MiniLM-L6-v2 on the texts of the supervised *train* split of
   BBC News (the evaluation articles are kept out), through the ``self_supervised`` method.
2. The same supervised recipe (recipes/self_supervised/bbc_news_classify.yaml, same fine-tuning
   budget) from the original MiniLM and from the adapted encoder, for each seed and label regime
   (10 and 50 labelled articles per class, all labels).

MiniLM's MLM head is not pretrained (it starts at chance), so a short TAPT spends most of its
steps training that head: the encoder moves little, and a small or no gain is the expected
outcome of a short budget. The script prints every run and a summary; nothing is hard-coded.

With ``--lora`` both phases use LoRA: TAPT trains an adapter
(recipes/self_supervised/tapt_bbc_news_lora.yaml) that fine-tuning carries on
(``finetune_lora: carry``), against fine-tuning a fresh adapter of the same shape.

Example:
    OMP_NUM_THREADS=2 python bench/bench_self_supervised_tapt.py --tapt_steps 60 --ft_steps 30
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_finetune.config import DataArguments  # noqa: E402
from hf_finetune.data import load_splits  # noqa: E402
from hf_finetune.models import MINILM_ID  # noqa: E402
from hf_finetune.recipe import load_recipe, run_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tapt_steps", type=int, default=60)
    parser.add_argument("--tapt_batch", type=int, default=32)
    parser.add_argument("--tapt_lr", type=float, default=2e-4)
    parser.add_argument("--head_warmup", type=int, default=0,
                        help="first TAPT steps that train only the (random) MLM head: training.mlm_head_warmup_steps")
    parser.add_argument("--ft_steps", type=int, default=30)
    parser.add_argument("--ft_batch", type=int, default=16)
    parser.add_argument("--ft_lr", type=float, default=1e-4)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--eval_samples", type=int, default=200, help="held-out articles scored per run")
    parser.add_argument("--tapt_eval_docs", type=int, default=20, help="held-out TAPT articles for the MLM loss")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="+", default=["10", "50", "all"])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--lora", action="store_true",
                        help="LoRA in both phases: the TAPT adapter is carried into fine-tuning; baseline: a fresh one")
    opts = parser.parse_args()
    if opts.lora and opts.head_warmup:
        parser.error("--head_warmup needs full training; with --lora the head trains beside the adapter")
    recipe = "tapt_bbc_news_lora.yaml" if opts.lora else "tapt_bbc_news.yaml"
    logging.disable(logging.WARNING)
    work = Path(opts.out or tempfile.mkdtemp(prefix="bench_tapt_"))
    work.mkdir(parents=True, exist_ok=True)

    # The TAPT corpus: the texts of exactly the supervised train split (eval articles excluded).
    splits = load_splits(DataArguments(dataset="bbc_news", validation_size=0.2, split_seed=42), label_column="label")
    corpus = work / "bbc_train_texts.jsonl"
    with open(corpus, "w") as f:
        for text in splits["train"]["text"]:
            f.write(json.dumps({"text": text}) + "\n")
    print(f"TAPT corpus: {len(splits['train'])} train articles; eval: {len(splits['validation'])} articles", flush=True)

    started = time.time()
    tapt = load_recipe(
        ROOT / "recipes/self_supervised" / recipe,
        [
            "--dataset", str(corpus), "--max_length", str(opts.max_length), "--validation_size", "0.05",
            "--max_steps", str(opts.tapt_steps), "--per_device_train_batch_size", str(opts.tapt_batch),
            "--learning_rate", str(opts.tapt_lr), "--mlm_head_warmup_steps", str(opts.head_warmup),
            "--output_dir", str(work / "tapt"), "--eval_on_start", "true", "--eval_strategy", "no",
            "--max_eval_samples", str(opts.tapt_eval_docs), "--per_device_eval_batch_size", "32",
            "--report_to", "none", "--disable_tqdm", "true",
            "--finetune_overrides", json.dumps({"max_steps": opts.ft_steps, "seed": opts.seeds[0],
                                                "report_to": "none", "disable_tqdm": True,
                                                "predictions_file": False, "per_device_train_batch_size": opts.ft_batch,
                                                "learning_rate": opts.ft_lr, "warmup_steps": 1,
                                                "max_eval_samples": opts.eval_samples}),
        ],
    )
    # Phase 2 of the chained recipe is the first "tapt / all labels / first seed" run.
    tapt_metrics = run_recipe(tapt)
    tapt_cost = time.time() - started
    history = json.loads((work / "tapt" / "metrics.json").read_text())
    mlm_before = history.get("eval_loss_at_start")
    print(
        f"TAPT + first fine-tune: {tapt_cost:.0f}s ({opts.tapt_steps} MLM steps x {opts.tapt_batch} x "
        f"{opts.max_length} tokens, {history.get('train_blocks')} blocks); MLM eval loss before "
        f"{mlm_before if mlm_before is None else round(mlm_before, 3)} -> after {history['eval_loss']:.3f}",
        flush=True,
    )
    # What fine-tuning starts from: the merged encoder, or (LoRA) the base model plus the TAPT adapter.
    inits = {"base": ["--model_name_or_path", MINILM_ID], "tapt": ["--model_name_or_path", str(work / "tapt" / "encoder")]}
    if opts.lora:
        lora = tapt.lora
        shape = ["--use_lora", "true", "--lora_r", str(lora.lora_r), "--lora_alpha", str(lora.lora_alpha),
                 "--lora_target_modules", *lora.lora_target_modules]
        inits = {"base": inits["base"] + shape,
                 "tapt": inits["base"] + shape + ["--lora_adapter_path", str(work / "tapt")]}
    results: dict[tuple[str, str], list[float]] = {}
    # Seeds outermost: if the run is cut short, every regime has been measured for the first seeds.
    for seed in opts.seeds:
        for regime in opts.regimes:
            for init, start in inits.items():
                if regime == "all" and seed == opts.seeds[0] and init == "tapt":
                    acc = tapt_metrics["finetune_eval_accuracy"]
                    f1 = tapt_metrics["finetune_eval_f1_macro"]
                    secs = float("nan")
                else:
                    overrides = [
                        *start, "--seed", str(seed), "--max_steps", str(opts.ft_steps),
                        "--max_length", str(opts.max_length), "--output_dir", str(work / f"ft_{init}_{regime}_{seed}"),
                        "--report_to", "none", "--disable_tqdm", "true", "--predictions_file", "false",
                        "--max_eval_samples", str(opts.eval_samples),
                        "--per_device_train_batch_size", str(opts.ft_batch), "--learning_rate", str(opts.ft_lr),
                        "--warmup_steps", "1",
                    ]
                    if regime != "all":
                        overrides += ["--samples_per_class", regime]
                    t0 = time.time()
                    m = run_recipe(load_recipe(ROOT / "recipes/self_supervised/bbc_news_classify.yaml", overrides))
                    acc, f1, secs = m["eval_accuracy"], m["eval_f1_macro"], time.time() - t0
                results.setdefault((regime, init), []).append(acc)
                print(f"RESULT regime={regime} seed={seed} init={init} accuracy={acc:.4f} f1_macro={f1:.4f} "
                      f"({secs:.0f}s)", flush=True)
        summarize(results, opts, len(splits["validation"]), f"after seed {seed}")
    print(f"total wall time {time.time() - started:.0f}s (TAPT + first fine-tune {tapt_cost:.0f}s)")


def summarize(results, opts, n_eval, when):
    print(f"\nSummary {when} (eval accuracy on {min(opts.eval_samples, n_eval)} held-out articles, mean +- sd "
          f"over seeds; fine-tuning {opts.ft_steps} steps x {opts.ft_batch} at lr {opts.ft_lr} in every run; "
          f"TAPT {opts.tapt_steps} MLM steps x {opts.tapt_batch} at lr {opts.tapt_lr}, "
          f"the first {opts.head_warmup} training the head only{'; LoRA in both phases' if opts.lora else ''}):")
    print(f"{'labels/class':>12} | {'no TAPT':>16} | {'TAPT':>16} | {'gain':>7} | seeds")
    for regime in opts.regimes:
        base, adapted = results.get((regime, "base"), []), results.get((regime, "tapt"), [])
        n = min(len(base), len(adapted))
        if n == 0:
            continue
        base, adapted = base[:n], adapted[:n]

        def fmt(v):
            return f"{statistics.mean(v):.4f} +- {statistics.pstdev(v):.4f}"

        gain = statistics.mean(adapted) - statistics.mean(base)
        print(f"{regime:>12} | {fmt(base):>16} | {fmt(adapted):>16} | {gain:+.4f} | {n}", flush=True)


if __name__ == "__main__":
    main()
