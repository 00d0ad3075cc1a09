"""Task-specific data preparation and metrics for supervised fine-tuning.

Each ``prepare_*`` function validates the raw splits (columns, labels, empty examples) and
returns tokenized splits plus the label names, raising ``ValueError`` before training starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from ..config import DataArguments
from ..data import encode_labels, load_splits, require_columns, sample_rows, source_row
from ..metrics import classification_scores, seqeval_scores


def _check_not_empty(ids: list[list[int]], special: set[int], split: str) -> None:
    for i, row in enumerate(ids):
        if not any(t not in special for t in row):
            raise ValueError(
                f"Example {i} of the {split} split is empty after tokenization: drop empty texts or "
                "check data.text_column."
            )


def prepare_classification(splits: DatasetDict, tokenizer, data: DataArguments) -> tuple[DatasetDict, list[str]]:
    """Validate and tokenize single-label classification data (dynamic padding is left to the collator)."""
    columns = [data.text_column, data.text_pair_column, data.label_column]
    for split, ds in splits.items():
        require_columns(ds, columns, f"the {split} split")
    splits = _label_names_to_ids(splits, data.label_column)
    splits, names = encode_labels(splits, data.label_column, data.class_names)
    return _tokenize_sequences(splits, tokenizer, data), names


def _label_names_to_ids(splits: DatasetDict, column: str) -> DatasetDict:
    """Give other splits the train split's class ids when they carry label *names* and train ids.

    A seeded split of a csv (or a label folder) has ``ClassLabel`` ids; an evaluation or test file
    given beside it (``hf-finetune eval RUN --data new.csv``) holds the names themselves.
    """
    feature = splits["train"].features[column]
    if not isinstance(feature, ClassLabel):
        return splits
    out = DatasetDict()
    for split, ds in splits.items():
        values = ds[column] if split != "train" and column in ds.column_names else []
        if values and all(isinstance(v, str) for v in values):
            unknown = sorted(set(values) - set(feature.names))
            if unknown:
                raise ValueError(
                    f"Unknown label(s) {unknown[:5]} in the {split} split: the model knows {feature.names}. "
                    "Fix the labels in that file (names or ids, as in training)."
                )
            ds = ds.map(lambda batch: {column: [feature.str2int(v) for v in batch[column]]}, batched=True)
            ds = ds.cast_column(column, feature)
        out[split] = ds
    return out


def classification_metrics(label_names: list[str]) -> Callable:
    """A ``compute_metrics`` function for ``Trainer``: accuracy, macro P/R/F1 and per-class F1."""
    def compute(eval_pred):  # the numbers of load_metric("classification"), without importing evaluate (~1 s)
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        return classification_scores(predictions, labels, num_labels=len(label_names), label_names=label_names)

    return compute


# ----- multi-label ----------------------------------------------------------------------------------


def _label_list(value, row: int, split: str, column: str) -> list:
    if isinstance(value, str):  # CSV cells: "sport, politics"
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not value:
        raise ValueError(
            f"Row {row} of the {split} split has no label in '{column}': multi-label rows need at least one "
            "label; drop the row or add an explicit class such as 'none'."
        )
    return list(value)


def prepare_multi_label(splits: DatasetDict, tokenizer, data: DataArguments) -> tuple[DatasetDict, list[str]]:
    """Validate and tokenize multi-label data: the label column holds a list of labels (or "a, b" text).

    Labels become multi-hot float vectors (``BCEWithLogitsLoss`` in ``problem_type=multi_label_classification``).
    """
    for split, ds in splits.items():
        require_columns(ds, [data.text_column, data.text_pair_column, data.label_column], f"the {split} split")
    feature = splits["train"].features[data.label_column]
    inner = getattr(feature, "feature", None)
    names = list(inner.names) if isinstance(inner, ClassLabel) else data.class_names
    rows = {
        split: [_label_list(v, i, split, data.label_column) for i, v in enumerate(ds[data.label_column])]
        for split, ds in splits.items()
    }
    if isinstance(rows["train"][0][0], str):
        names = names or sorted({v for labels in rows["train"] for v in labels})
        lookup = {n: i for i, n in enumerate(names)}
        for split, labels in rows.items():
            unknown = sorted({v for row in labels for v in row} - set(lookup))
            if unknown:
                raise ValueError(
                    f"Unknown label(s) {unknown[:5]} in the {split} split: known labels are {names}. "
                    "Add them to data.class_names or fix the data."
                )
        rows = {split: [[lookup[v] for v in row] for row in labels] for split, labels in rows.items()}
    else:
        names = names or [str(i) for i in range(max(max(r) for r in rows["train"]) + 1)]
        for split, labels in rows.items():
            bad = sorted({int(v) for row in labels for v in row if not 0 <= int(v) < len(names)})
            if bad:
                raise ValueError(
                    f"Label id(s) {bad[:5]} in the {split} split are out of range for {len(names)} labels."
                )
    if len(names) < 2:
        raise ValueError(f"Multi-label classification needs at least two labels; found {names}.")
    out = DatasetDict()
    for split, ds in splits.items():
        hot = np.zeros((len(ds), len(names)), dtype=np.float32)
        for i, row in enumerate(rows[split]):
            hot[i, row] = 1.0
        ds = ds.remove_columns(data.label_column).add_column(data.label_column, hot.tolist())
        out[split] = ds
    return _tokenize_sequences(out, tokenizer, data), names


# ----- regression -----------------------------------------------------------------------------------


def prepare_regression(splits: DatasetDict, tokenizer, data: DataArguments) -> tuple[DatasetDict, list[str]]:
    """Validate and tokenize regression data: one float target per row (``MSELoss``, ``num_labels=1``)."""
    out = DatasetDict()
    for split, ds in splits.items():
        require_columns(ds, [data.text_column, data.text_pair_column, data.label_column], f"the {split} split")
        values = []
        for i, v in enumerate(ds[data.label_column]):
            try:
                values.append(float(v))
            except (TypeError, ValueError):
                raise ValueError(
                    f"Row {i} of the {split} split has target {v!r} in '{data.label_column}': regression needs a "
                    "number in every row."
                ) from None
            if not np.isfinite(values[-1]):
                raise ValueError(f"Row {i} of the {split} split has a non-finite target {v!r}.")
        out[split] = ds.remove_columns(data.label_column).add_column(data.label_column, values)
    return _tokenize_sequences(out, tokenizer, data), [data.label_column]


def _tokenize_sequences(splits: DatasetDict, tokenizer, data: DataArguments) -> DatasetDict:
    special = set(tokenizer.all_special_ids)

    def tokenize(batch):
        texts = [t or "" for t in batch[data.text_column]]
        pairs = [t or "" for t in batch[data.text_pair_column]] if data.text_pair_column else None
        out = tokenizer(texts, pairs, truncation=True, max_length=data.max_length)
        out["labels"] = batch[data.label_column]
        return out

    tokenized = DatasetDict()
    for split, ds in splits.items():
        tokenized[split] = ds.map(
            tokenize,
            batched=True,
            remove_columns=ds.column_names,
            num_proc=data.preprocessing_num_workers,
            desc=f"Tokenizing {split}",
        )
        _check_not_empty(tokenized[split]["input_ids"], special, split)
    return tokenized


def multi_label_metrics(label_names: list[str], threshold: float) -> Callable:
    """``compute_metrics`` for multi-label: micro/macro F1 and exact-match (subset) accuracy at ``threshold``."""

    def compute(eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        predicted = (1 / (1 + np.exp(-logits)) >= threshold).astype(int)
        labels = labels.astype(int)
        tp = (predicted & labels).sum(axis=0)
        fp = (predicted & (1 - labels)).sum(axis=0)
        fn = ((1 - predicted) & labels).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
        result = {
            "f1_micro": float(micro),
            "f1_macro": float(per_class.mean()),
            "subset_accuracy": float((predicted == labels).all(axis=1).mean()),
        }
        result.update({f"f1_{n}": float(v) for n, v in zip(label_names, per_class)})
        return result

    return compute


# Pearson/Spearman in numpy: scipy is not a runtime dependency of hf-finetune for two correlations.
def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # ties share their mean rank (Spearman's definition)
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics() -> Callable:
    """``compute_metrics`` for regression: MSE, MAE, Pearson and Spearman correlation."""

    def compute(eval_pred):
        predictions, labels = eval_pred
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        p, y = np.asarray(predictions, dtype=float).reshape(-1), np.asarray(labels, dtype=float).reshape(-1)
        return {
            "mse": float(((p - y) ** 2).mean()),
            "mae": float(np.abs(p - y).mean()),
            "pearson": _pearson(p, y),
            "spearman": _pearson(_ranks(p), _ranks(y)),
        }

    return compute


# ----- token classification (NER) -------------------------------------------------------------------

CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio")
_BIO = re.compile(r"^(O|[BI]-.+)$")


def enable_prefix_space(tokenizer) -> bool:
    """Make a byte-level BPE tokenizer (GPT-2, RoBERTa, SmolLM2 style) encode pre-split words as in running text.

    Without a prefix space each word is encoded as if it began the text ("m", "atch" instead of
    "Ġmatch"); ``from_pretrained(..., add_prefix_space=True)`` only reaches some tokenizer classes, so
    the ``ByteLevel`` pre-tokenizer is switched directly. Returns whether anything changed.
    """
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    parts = [pre]
    if isinstance(pre, pre_tokenizers.Sequence):
        # a Sequence has indexing but no len(): count its members from its JSON state
        parts = [pre[i] for i in range(len(json.loads(pre.__getstate__())["pretokenizers"]))]
    changed = False
    for part in parts:
        if isinstance(part, pre_tokenizers.ByteLevel) and not part.add_prefix_space:
            part.add_prefix_space = True
            changed = True
    if changed and hasattr(tokenizer, "add_prefix_space"):
        tokenizer.add_prefix_space = True
    return changed


def read_conll(path: str | Path) -> Dataset:
    """A CoNLL-style file (``token<TAB>tag`` or ``token tag`` per line, blank line between sentences).

    Extra middle columns (POS, chunk) are ignored: the first column is the token, the last the tag.
    ``-DOCSTART-`` lines are skipped.
    """
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}, line {number}: expected 'token<TAB>tag', got {line!r}.")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise ValueError(f"{path} holds no sentences: expected token<TAB>tag lines, a blank line between sentences.")
    return Dataset.from_dict({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})


def load_token_splits(data: DataArguments) -> DatasetDict:
    """Train/validation splits for token classification: CoNLL files, or anything ``load_splits`` reads."""
    if not str(data.dataset).lower().endswith(CONLL_SUFFIXES):
        return load_splits(data)
    train = read_conll(data.dataset)
    if data.eval_dataset is not None:
        evaluation = read_conll(data.eval_dataset)
    else:
        parts = train.train_test_split(test_size=data.validation_size, seed=data.split_seed)
        train, evaluation = parts["train"], parts["test"]
    train = sample_rows(train, data.max_train_samples, data.split_seed)
    evaluation = sample_rows(evaluation, data.max_eval_samples, data.split_seed)
    return DatasetDict({"train": train, "validation": evaluation})


def tag_names(splits: DatasetDict, column: str, names: list[str] | None) -> tuple[DatasetDict, list[str]]:
    """Check the tag lists (BIO/IOB2 strings, or ``ClassLabel`` ids) and return string tags plus the label list."""
    feature = splits["train"].features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):  # Hub datasets such as conll2003 store tag ids
        names = list(inner.names)
        splits = DatasetDict(
            {
                s: ds.map(lambda b: {column: [[names[i] for i in row] for row in b[column]]}, batched=True)
                for s, ds in splits.items()
            }
        )
    seen = set()
    for split, ds in splits.items():
        for i, row in enumerate(ds[column]):
            bad = [t for t in row if not isinstance(t, str) or not _BIO.match(t)]
            if bad:
                raise ValueError(
                    f"Sentence {source_row(ds, i) + 1} (in file order) has tag(s) {bad[:3]} not in BIO/IOB2 form: use 'O', "
                    "'B-TYPE' and 'I-TYPE' (convert IOBES or IOB1 first)."
                )
            if split == "train":
                seen.update(row)
    if not names:  # every entity type gets both B- and I- (a type seen only as B- in train still continues)
        types = {t[2:] for t in seen if t != "O"}
        names = ["O"] + [f"{p}-{t}" for t in sorted(types) for p in "BI"]
    for split, ds in splits.items():
        unknown = sorted({t for row in ds[column] for t in row} - set(names))
        if unknown:
            raise ValueError(
                f"Unknown tag(s) {unknown[:5]} in the {split} split: the tags are {names}. "
                "Add them to data.class_names or fix the data."
            )
    return splits, names


def prepare_token_classification(
    splits: DatasetDict, tokenizer, data: DataArguments, label_all_tokens: bool = False
) -> tuple[DatasetDict, list[str], DatasetDict]:
    """Validate word/tag lists and align tags to sub-tokens (first sub-token; ``-100`` elsewhere).

    Returns the tokenized splits, the tag names, and the raw splits with string tags.

    ``data.text_column`` holds the word lists and ``data.label_column`` the tag lists (``tokens`` and
    ``tags`` for CoNLL files). With ``label_all_tokens`` every sub-token is labelled, ``B-X`` becoming
    ``I-X`` after the first, as in the ``transformers`` token-classification example.
    """
    words_col, tags_col = data.text_column, data.label_column
    for split, ds in splits.items():
        require_columns(ds, [words_col, tags_col], f"the {split} split (token_classification)")
        for i, (words, tags) in enumerate(zip(ds[words_col], ds[tags_col])):
            if not isinstance(words, list):
                raise ValueError(
                    f"Row {i} of the {split} split: '{words_col}' must be a list of words for token_classification "
                    f"(got {type(words).__name__}); point data.text_column at the token lists."
                )
            if len(words) != len(tags):
                raise ValueError(
                    f"Row {i} of the {split} split has {len(words)} tokens but {len(tags)} tags: every token "
                    "needs exactly one tag."
                )
            if not words:
                raise ValueError(f"Row {i} of the {split} split has no tokens: drop empty sentences.")
    splits, names = tag_names(splits, tags_col, data.class_names)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token_classification needs a fast tokenizer (word_ids() maps sub-tokens to words).")
    lookup = {n: i for i, n in enumerate(names)}
    inside = {i: lookup.get("I-" + n[2:], i) for n, i in lookup.items() if n.startswith("B-")}

    def align(batch):
        out = tokenizer(batch[words_col], is_split_into_words=True, truncation=True, max_length=data.max_length)
        labels = []
        for row, tags in enumerate(batch[tags_col]):
            previous, row_labels = None, []
            for word in out.word_ids(row):
                if word is None:
                    row_labels.append(-100)
                elif word != previous:
                    row_labels.append(lookup[tags[word]])
                else:
                    tag = lookup[tags[word]]
                    row_labels.append(inside.get(tag, tag) if label_all_tokens else -100)
                previous = word
            labels.append(row_labels)
        out["labels"] = labels
        return out

    tokenized = DatasetDict()
    for split, ds in splits.items():
        tokenized[split] = ds.map(align, batched=True, remove_columns=ds.column_names, desc=f"Aligning {split}")
    return tokenized, names, splits


def word_predictions(logits: np.ndarray, words: list[list[str]], tokenizer, max_length, names: list[str]) -> list:
    """One predicted tag per word: the prediction at the word's first sub-token (``O`` for truncated words)."""
    predicted = np.argmax(logits, axis=-1)
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    out = []
    for row, row_words in enumerate(words):
        tags = ["O"] * len(row_words)
        previous = None
        for position, word in enumerate(encoded.word_ids(row)):
            if word is not None and word != previous:
                tags[word] = names[int(predicted[row][position])]
            previous = word
        out.append(tags)
    return out


def token_classification_metrics(label_names: list[str]) -> Callable:
    """``compute_metrics`` for NER: entity-level precision/recall/F1 (seqeval semantics) and token accuracy."""
    def compute(eval_pred):  # the numbers of load_metric("seqeval"), without importing evaluate
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        predicted = np.argmax(logits, axis=-1)
        preds, refs = [], []
        for p_row, l_row in zip(predicted, labels):
            keep = l_row != -100
            preds.append([label_names[i] for i in p_row[keep]])
            refs.append([label_names[i] for i in l_row[keep]])
        result = seqeval_scores(preds, refs)
        flat = {k.replace("overall_", ""): v for k, v in result.items() if k.startswith("overall_")}
        flat.update({f"f1_{k}": v["f1"] for k, v in result.items() if isinstance(v, dict)})
        return flat

    return compute
