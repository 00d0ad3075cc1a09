"""Task-specific data preparation and metrics for supervised fine-tuning.

Each ``prepare_*`` function validates the raw splits (columns, labels, empty examples) and
returns tokenized splits plus the label names, raising ``ValueError`` before training starts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from datasets import ClassLabel, DatasetDict

from ..config import DataArguments
from ..data import require_columns
from ..metrics import load_metric


def encode_labels(splits: DatasetDict, column: str, names: list[str] | None) -> tuple[DatasetDict, list[str]]:
    """Turn the label column into class ids and return the names in id order.

    ``ClassLabel`` features keep their names; string labels are sorted; integer labels take
    ``names`` (or ``"0".."n-1"``). Labels unseen in train or outside the range are errors.
    """
    feature = splits["train"].features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    values = {split: ds[column] for split, ds in splits.items()}
    if any(v is None for vals in values.values() for v in vals):
        raise ValueError(f"Some rows have no value in label column '{column}': fill or drop them.")
    if isinstance(values["train"][0], str):
        names = names or sorted(set(values["train"]))
        lookup = {name: i for i, name in enumerate(names)}
        for split, vals in values.items():
            unknown = sorted(set(vals) - set(lookup))
            if unknown:
                raise ValueError(
                    f"Unknown label(s) {unknown[:5]} in the {split} split: known labels are {names}. "
                    "Add them to data.class_names or fix the data."
                )
        splits = DatasetDict(
            {s: ds.map(lambda b: {column: [lookup[v] for v in b[column]]}, batched=True) for s, ds in splits.items()}
        )
        values = {split: [lookup[v] for v in vals] for split, vals in values.items()}
    else:
        names = names or [str(i) for i in range(int(max(values["train"])) + 1)]
        for split, vals in values.items():
            bad = sorted({int(v) for v in vals if not 0 <= int(v) < len(names)})
            if bad:
                raise ValueError(
                    f"Label id(s) {bad[:5]} in the {split} split are out of range for {len(names)} labels "
                    f"({names}): fix the data or data.class_names."
                )
    if len(set(values["train"])) < 2:
        raise ValueError(
            f"The train split has a single class ({names[int(values['train'][0])]!r}): classification needs at least two."
        )
    return splits, names


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
    splits, names = encode_labels(splits, data.label_column, data.class_names)
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
    return tokenized, names


def classification_metrics(label_names: list[str]) -> Callable:
    """A ``compute_metrics`` function for ``Trainer``: accuracy, macro P/R/F1 and per-class F1."""
    metric = load_metric("classification")

    def compute(eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        return metric.compute(
            predictions=predictions, references=labels, num_labels=len(label_names), label_names=label_names
        )

    return compute
