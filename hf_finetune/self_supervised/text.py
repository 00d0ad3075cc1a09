"""Raw text for self-supervised training: corpus loading, tokenization, packing into blocks.

Sources: ``python_docs`` (the reStructuredText sources of the Python 3.11 documentation from the
Debian package ``python3.11-doc``), a text file, a folder of text files, or any dataset
:func:`hf_finetune.data.load_source` reads (``bbc_news``, Hub ids, csv/json/parquet), of which
only ``data.text_column`` is used - the unlabelled side of a supervised dataset (task-adaptive
pretraining).
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from ..config import DataArguments
from ..data import _is_label_folder, load_source, require_columns, require_rows, sample_rows
from .collators import word_offsets
from .config import TextArguments

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
TEXT_SUFFIXES = (".txt", ".md", ".rst")


def python_docs_files(root: Path = PYTHON_DOCS_DIR) -> list[str]:
    """The ``*.rst.txt`` sources of the Python 3.11 docs, sorted (497 files, ~1.4M words)."""
    files = sorted(str(p) for p in root.rglob("*.rst.txt")) if root.is_dir() else []
    if not files:
        raise ValueError(
            f"data.dataset=python_docs needs the Debian package python3.11-doc ({root} is missing or empty): "
            "apt-get install -y python3.11-doc."
        )
    return files


def _text_files(path: Path) -> list[str] | None:
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        return [str(path)]
    if path.is_dir() and not _is_label_folder(path):
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        return files or None
    return None


def load_corpus(data: DataArguments, text: TextArguments) -> Dataset:
    """All texts of ``data.dataset`` as one dataset with a single ``text`` column (empty texts dropped)."""
    files = python_docs_files() if data.dataset == "python_docs" else _text_files(Path(data.dataset))
    if files is not None:
        ds = datasets.load_dataset("text", data_files={"train": files}, sample_by=text.sample_by)["train"]
    else:
        raw = load_source(data.dataset, data.dataset_config)
        if data.train_split not in raw:
            raise ValueError(f"data.train_split={data.train_split!r} not in {data.dataset} (splits: {list(raw)}).")
        ds = raw[data.train_split]
        require_columns(ds, [data.text_column], f"{data.dataset}")
        ds = ds.select_columns([data.text_column])
        if data.text_column != "text":
            ds = ds.rename_column(data.text_column, "text")
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True, desc="Dropping empty texts")
    if len(ds) == 0:
        raise ValueError(f"The corpus {data.dataset!r} is empty (no non-blank text): check data.dataset / text_column.")
    return ds


def split_corpus(data: DataArguments, text: TextArguments) -> DatasetDict:
    """``train`` and ``validation`` texts, split by document before packing (no leakage between them)."""
    corpus = load_corpus(data, text)
    if data.eval_dataset is not None:
        evaluation = load_corpus(DataArguments(dataset=data.eval_dataset, text_column=data.text_column), text)
        train = corpus
    elif len(corpus) < 2:
        raise ValueError(f"The corpus {data.dataset!r} has a single text: add more text to hold out an evaluation split.")
    else:
        parts = corpus.train_test_split(test_size=data.validation_size, seed=data.split_seed)
        train, evaluation = parts["train"], parts["test"]
    train = sample_rows(train, data.max_train_samples, data.split_seed)
    evaluation = sample_rows(evaluation, data.max_eval_samples, data.split_seed)
    require_rows(evaluation, f"The evaluation split of {data.dataset}")
    return DatasetDict({"train": train, "validation": evaluation})


def _separator_id(tokenizer) -> int:
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise ValueError("Packing needs a SEP or EOS token between documents: this tokenizer has neither.")
    return sep


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a single text (``[CLS]``, ``[SEP]``)."""
    framed = tokenizer("hello world")["input_ids"]
    plain = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    for i in range(len(framed) - len(plain) + 1):
        if framed[i : i + len(plain)] == plain:
            return framed[:i], framed[i + len(plain) :]
    raise ValueError(f"Cannot tell which special tokens {type(tokenizer).__name__} adds around a text.")


def tokenize_corpus(
    texts: Dataset,
    tokenizer,
    block_size: int,
    packing: str = "concat",
    with_offsets: bool = False,
    num_proc: int | None = None,
    split: str = "train",
) -> Dataset:
    """Tokenize texts into examples of at most ``block_size`` tokens.

    Args:
        texts: a dataset with a ``text`` column.
        tokenizer: the model's tokenizer; its special tokens (CLS/SEP, or none for decoders) frame
            each block, and SEP (else EOS) separates documents.
        block_size: tokens per example, special tokens included.
        packing: ``concat`` (full blocks across documents, the last partial block dropped),
            ``per_document`` (blocks never cross a document boundary) or ``none`` (one truncated
            example per text).
        with_offsets: also return word-start-correct ``offset_mapping`` (whole-word masking).
        num_proc: processes for tokenization.
        split: name used in error messages.

    Returns:
        A dataset of ``input_ids``, ``special_tokens_mask`` (and ``offset_mapping``).
    """
    n_special = sum(map(len, special_frame(tokenizer)))
    content = block_size - n_special
    if content < 1:
        raise ValueError(f"data.max_length={block_size} leaves no room for text after {n_special} special tokens.")
    special_ids = set(tokenizer.all_special_ids)
    sep = _separator_id(tokenizer) if packing != "none" or n_special == 0 else None
    # Decoders add no special tokens: end each document with EOS so the model learns where texts end.
    end_doc = [sep] if sep is not None and (packing == "concat" or n_special == 0) else []

    def encode(batch):
        # Whole documents, cut into blocks below: the "longer than the maximum length" warning
        # would be about sequences that never reach the model.
        enc = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=with_offsets, verbose=False)
        out = {"ids": [ids + end_doc for ids in enc["input_ids"]]}
        if with_offsets:
            out["offs"] = [word_offsets(t, o) + [(0, 0)] * len(end_doc) for t, o in zip(batch["text"], enc["offset_mapping"])]
        return out

    prefix, suffix = special_frame(tokenizer)
    head = len(prefix)

    def frame(chunks, offs):
        out = {"input_ids": [], "special_tokens_mask": []}
        if with_offsets:
            out["offset_mapping"] = []
        for i, chunk in enumerate(chunks):
            ids = prefix + chunk + suffix
            out["input_ids"].append(ids)
            out["special_tokens_mask"].append([int(t in special_ids) for t in ids])
            if with_offsets:
                pairs = [(0, 0)] * head + list(offs[i]) + [(0, 0)] * (len(ids) - head - len(chunk))
                out["offset_mapping"].append(pairs)
        return out

    def blocks(batch):
        ids_list, offs_list = batch["ids"], batch.get("offs") or [None] * len(batch["ids"])
        chunks, offs = [], []
        if packing == "concat":
            flat = [t for ids in ids_list for t in ids]
            flat_offs = [o for os_ in offs_list for o in os_] if with_offsets else None
            for start in range(0, len(flat) - content + 1, content):
                chunks.append(flat[start : start + content])
                offs.append(flat_offs[start : start + content] if with_offsets else None)
        else:
            step = content if packing == "per_document" else None
            for ids, o in zip(ids_list, offs_list):
                if packing == "none":
                    ids, o = ids[:content], (o[:content] if with_offsets else None)
                    chunks.append(ids)
                    offs.append(o)
                    continue
                for start in range(0, len(ids), step):
                    chunks.append(ids[start : start + step])
                    offs.append(o[start : start + step] if with_offsets else None)
        return frame(chunks, offs)

    encoded = texts.map(encode, batched=True, remove_columns=texts.column_names, num_proc=num_proc, desc=f"Tokenizing {split}")
    total = sum(len(ids) for ids in encoded["ids"])
    if total == 0:
        raise ValueError(f"The {split} split has no tokens after tokenization: check data.dataset and data.text_column.")
    # The whole split in one map batch: a single remainder is dropped (group_texts drops one per 1,000 texts).
    result = encoded.map(blocks, batched=True, batch_size=None, remove_columns=encoded.column_names, desc=f"Packing {split}")
    if len(result) == 0:
        raise ValueError(
            f"The {split} split ({total} tokens) yields no full block of data.max_length={block_size} tokens: "
            "lower data.max_length, add text, or use text.packing: per_document / none."
        )
    return result
