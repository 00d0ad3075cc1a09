"""Shared test fixtures: tiny models built from config objects, tokenizers built in-process, toy data.

Nothing here touches the network: the tokenizers are made from word lists, the models from
``*Config`` objects with random weights, and saved to temporary directories so recipes can name
them as ``model_name_or_path``.
"""

from __future__ import annotations

import csv
import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are all small matmuls: one thread is the fastest count for them, and the only one that
# does not slow down 10-40x when another process is busy (OpenMP threads spin-wait for a core; measured:
# the SB3 bandit tests took 3 s at one thread and 28-54 s at two beside one busy job). The runs' thread
# policy (hf_finetune/threads.py) reads this override; test_threads.py clears it to test the policy.
os.environ.setdefault("HF_FINETUNE_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["HF_FINETUNE_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def sb3_log_dir(tmp_path_factory):
    """SB3 models that learn without a logger of ours (``configure(None)``, ``learn()`` in a test) log
    to ``$SB3_LOGDIR``, else to a new ``/tmp/SB3-<date>`` folder each time: keep them in pytest's tmp."""
    if "SB3_LOGDIR" not in os.environ:
        os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield os.environ["SB3_LOGDIR"]

TOPICS = {
    "sport": "match goal team player coach league score win season cup football tennis",
    "tech": "computer software phone internet chip data code network digital online device app",
    "business": "market bank shares profit company economy price growth sales firm trade deal",
}
COMMON = "the a of and to in is was for on with it said by new year this that from at"
WORDS = sorted(set(" ".join(TOPICS.values()).split() + COMMON.split() + ["hello", "world", "python", "docs"]))


def make_topic_rows(n_per_class: int = 40, seed: int = 0, length: int = 8) -> list[dict]:
    """Sentences mixing topic words with common words; the topic is the label."""
    rng = random.Random(seed)
    rows = []
    for label, words in TOPICS.items():
        topic_words = words.split()
        for _ in range(n_per_class):
            tokens = [rng.choice(topic_words) if rng.random() < 0.5 else rng.choice(COMMON.split()) for _ in range(length)]
            rows.append({"text": " ".join(tokens), "label": label})
    rng.shuffle(rows)
    return rows


def build_bert_tokenizer(directory):
    """A WordPiece tokenizer whose vocabulary is the toy words plus characters."""
    from transformers import BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars], *WORDS]
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast(vocab=path, do_lower_case=True)  # transformers 5: `vocab`, not `vocab_file`


def build_bpe_tokenizer(with_pad: bool = False):
    """A byte-level BPE tokenizer (GPT-2 style) trained in-process on the toy words; EOS, no pad."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(r["text"] for r in make_topic_rows(20, seed=s)) for s in range(3)] + [" ".join(WORDS)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    if with_pad:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT (``BertForMaskedLM`` weights) with its tokenizer, saved to a folder."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = build_bert_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer, 32-wide GPT-2 with a byte-level BPE tokenizer (EOS, no pad token), saved to a folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = build_bpe_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 32-wide Llama with the byte-level BPE tokenizer, saved to a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def topic_csv(tmp_path_factory):
    """A CSV of 120 toy sentences (text, label) over three topics."""
    path = tmp_path_factory.mktemp("data") / "topics.csv"
    rows = make_topic_rows(40)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_recipe(path, recipe: dict) -> str:
    """Dump a recipe dict as YAML and return its path (for tests that go through the CLI loader)."""
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return str(path)


def tiny_recipe(model_dir, data, out, **training):
    """A supervised recipe over a tiny model and toy data: 30 steps, no checkpoints, no logging backends."""
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": model_dir},
        "data": {"dataset": data, "max_length": 32, "validation_size": 0.25},
        "training": {
            "output_dir": str(out),
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32,
            "learning_rate": 1e-2,
            "logging_steps": 5,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            **training,
        },
    }
    return recipe




def run_dict(recipe: dict, tmp_path, overrides=None, callbacks=None):
    """Write ``recipe`` to ``tmp_path/recipe.yaml`` and run it through the recipe loader, as the CLI does."""
    from hf_finetune.recipe import load_recipe, run_recipe

    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    return run_recipe(load_recipe(path, overrides or []), callbacks=callbacks)


def write_csv(path, rows, fields=("text", "label")) -> str:
    """Write rows as a CSV file and return its path."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)
