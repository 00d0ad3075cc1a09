"""Masked-LM training throughput (tokens of real text per second) on the Python 3.11 docs, three ways.

* ``packed``: :func:`hf_finetune.self_supervised.text.tokenize_corpus` with ``packing="concat"``
  (documents joined with [SEP], cut into full blocks, each framed as [CLS] ... [SEP]).
* ``pad_to_max``: one example per paragraph, truncated and padded to the block size.
* ``group_texts``: the recipe of the transformers ``run_mlm.py`` example, re-written here from its
  description: tokenize each text with its special tokens, concatenate 1,000 texts at a time, drop
  the remainder, cut into blocks.

All three train the same model with the same :class:`MaskedLMCollator` and batch size; steps of
the three are interleaved (round-robin) so that load from other processes hits them alike. "Real
text" tokens are the non-padding, non-special tokens of each batch. Tokenization and packing time
is reported separately.

Example:
    OMP_NUM_THREADS=2 python bench/bench_self_supervised_throughput.py --steps 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM  # noqa: E402

from hf_finetune.models import MINILM_ID, resolve_model_path  # noqa: E402
from hf_finetune.self_supervised.collators import MaskedLMCollator  # noqa: E402
from hf_finetune.self_supervised.text import python_docs_files, tokenize_corpus  # noqa: E402


def group_texts_blocks(texts: datasets.Dataset, tokenizer, block_size: int) -> datasets.Dataset:
    """The run_mlm.py approach: per-text special tokens, concatenation per 1,000 texts, fixed blocks."""

    def tokenize(batch):
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group(batch):
        joined = {k: sum(batch[k], []) for k in ("input_ids", "special_tokens_mask")}
        usable = (len(joined["input_ids"]) // block_size) * block_size
        return {k: [v[i : i + block_size] for i in range(0, usable, block_size)] for k, v in joined.items()}

    tokenized = texts.map(tokenize, batched=True, remove_columns=texts.column_names)
    keep = ["input_ids", "special_tokens_mask"]
    tokenized = tokenized.remove_columns([c for c in tokenized.column_names if c not in keep])
    return tokenized.map(group, batched=True, batch_size=1000)


def pad_to_max_examples(texts: datasets.Dataset, tokenizer, block_size: int) -> datasets.Dataset:
    def tokenize(batch):
        return tokenizer(
            batch["text"], truncation=True, max_length=block_size, padding="max_length", return_special_tokens_mask=True
        )

    out = texts.map(tokenize, batched=True, remove_columns=texts.column_names)
    return out.remove_columns([c for c in out.column_names if c not in ("input_ids", "special_tokens_mask")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per method (after 1 warm-up)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--paragraphs", type=int, default=20000, help="paragraphs of the docs to use")
    parser.add_argument("--model", choices=["small", "minilm"], default="small",
                        help="'small': a 4-layer 256-wide BERT with MiniLM's tokenizer; 'minilm': all-MiniLM-L6-v2")
    opts = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_model_path(MINILM_ID)[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    files = python_docs_files()
    texts = datasets.load_dataset("text", data_files={"train": files}, sample_by="paragraph")["train"]
    texts = texts.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    texts = texts.shuffle(seed=0).select(range(min(opts.paragraphs, len(texts))))
    lengths = [len(ids) for ids in tokenizer(list(texts["text"]), add_special_tokens=False)["input_ids"]]
    print(f"corpus: {len(files)} files of the Python 3.11 docs; {len(texts)} paragraphs, "
          f"{sum(lengths)} tokens, mean {sum(lengths) / len(lengths):.1f} tokens/paragraph; block {opts.block_size}")

    builders = {
        "packed": lambda: tokenize_corpus(texts, tokenizer, opts.block_size, packing="concat"),
        "pad_to_max": lambda: pad_to_max_examples(texts, tokenizer, opts.block_size),
        "group_texts": lambda: group_texts_blocks(texts, tokenizer, opts.block_size),
    }
    data, prep = {}, {}
    for name, build in builders.items():
        t0 = time.perf_counter()
        data[name] = build()
        prep[name] = time.perf_counter() - t0

    if opts.model == "minilm":
        model = BertForMaskedLM.from_pretrained(path)
    else:
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4,
                                           num_attention_heads=4, intermediate_size=1024))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collator = MaskedLMCollator(tokenizer, seed=0)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    seconds = dict.fromkeys(data, 0.0)
    real = dict.fromkeys(data, 0)
    model.train()
    for step in range(opts.steps + 1):
        for name, ds in data.items():
            rows = ds[step * opts.batch_size : (step + 1) * opts.batch_size]
            feats = [dict(zip(rows, values)) for values in zip(*rows.values())]
            t0 = time.perf_counter()
            batch = collator(feats)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            elapsed = time.perf_counter() - t0
            if step == 0:
                continue  # warm-up
            ids = torch.tensor([f["input_ids"] for f in feats])  # the unmasked inputs, all block_size long
            real[name] += int((~torch.isin(ids, special)).sum())
            seconds[name] += elapsed
    rate = {name: real[name] / seconds[name] for name in data}
    print(f"\n{'method':>12} | {'blocks':>7} | {'prep s':>7} | {'real tokens/batch':>17} | {'real tokens/s':>13}")
    for name in data:
        print(f"{name:>12} | {len(data[name]):>7} | {prep[name]:>7.1f} | "
              f"{real[name] / opts.steps:>17.0f} | {rate[name]:>13.0f}")
    print(f"\npacked / pad_to_max  = {rate['packed'] / rate['pad_to_max']:.2f}x (target >= 2x)")
    print(f"packed / group_texts = {rate['packed'] / rate['group_texts']:.2f}x (target >= 1x)")
    print(f"model: {opts.model}, batch {opts.batch_size} x {opts.block_size}, {opts.steps} measured steps per method, "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
