"""data.py directly: file formats, label folders, seeded stratified splits, sampling, label encoding."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import write_csv
from datasets import ClassLabel, Dataset, DatasetDict

from hf_finetune.config import DataArguments
from hf_finetune.data import encode_labels, load_label_folder, load_splits


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} text number {i}", "label": label} for label, n in counts.items() for i in range(n)]


def _counts(ds, names=None) -> Counter:
    feature = ds.features["label"]
    values = ds["label"]
    if isinstance(feature, ClassLabel):
        values = [feature.names[v] for v in values]
    return Counter(values)


def test_csv_string_labels_are_split_stratified_and_seeded(tmp_path):
    # 45/45/5: an unstratified 20% split of these 95 rows often holds 0 or 3 of the rare class.
    path = write_csv(tmp_path / "d.csv", _rows({"a": 45, "b": 45, "rare": 5}))
    args = DataArguments(dataset=path, validation_size=0.2, split_seed=7)
    splits = load_splits(args, label_column="label")
    assert _counts(splits["validation"]) == {"a": 9, "b": 9, "rare": 1}
    assert _counts(splits["train"]) == {"a": 36, "b": 36, "rare": 4}
    again = load_splits(args, label_column="label")
    assert again["validation"]["text"] == splits["validation"]["text"]
    other = load_splits(DataArguments(dataset=path, validation_size=0.2, split_seed=8), label_column="label")
    assert other["validation"]["text"] != splits["validation"]["text"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".tsv"])
def test_other_file_formats_load_and_stratify(tmp_path, suffix):
    rows = _rows({"x": 20, "y": 20})
    path = tmp_path / f"d{suffix}"
    if suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif suffix == ".tsv":
        path.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(DataArguments(dataset=str(path), validation_size=0.25), label_column="label")
    assert _counts(splits["validation"]) == {"x": 5, "y": 5}
    assert set(splits["train"].column_names) >= {"text", "label"}


def test_samples_per_class_and_max_samples(tmp_path):
    path = write_csv(tmp_path / "d.csv", _rows({"a": 30, "b": 30, "c": 30}))
    args = DataArguments(dataset=path, validation_size=0.2, samples_per_class=4, max_eval_samples=5)
    splits = load_splits(args, label_column="label")
    assert _counts(splits["train"]) == {"a": 4, "b": 4, "c": 4}
    assert len(splits["validation"]) == 5


def test_eval_dataset_replaces_the_held_out_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", _rows({"a": 10, "b": 10}))
    evaluation = write_csv(tmp_path / "eval.csv", _rows({"a": 2, "b": 3}))
    splits = load_splits(DataArguments(dataset=train, eval_dataset=evaluation), label_column="label")
    assert len(splits["train"]) == 20 and _counts(splits["validation"]) == {"a": 2, "b": 3}


def test_label_folder_gives_sorted_class_names(tmp_path):
    for label, n in (("tech", 3), ("business", 2)):
        (tmp_path / "corpus" / label).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "corpus" / label / f"{i}.txt").write_text(f"Title {label} {i}\nbody of {label} {i}\n")
    ds = load_label_folder(tmp_path / "corpus", title_column=True)
    assert ds.features["label"].names == ["business", "tech"]
    assert Counter(ds["label"]) == {0: 2, 1: 3}
    assert ds["title"][0] == "Title business 0"
    splits = load_splits(DataArguments(dataset=str(tmp_path / "corpus"), validation_size=0.4), label_column="label")
    assert len(splits["train"]) + len(splits["validation"]) == 5


def test_encode_labels_strings_ints_and_names():
    splits = DatasetDict({
        "train": Dataset.from_dict({"label": ["b", "a", "b"]}),
        "validation": Dataset.from_dict({"label": ["a"]}),
    })
    encoded, names = encode_labels(splits, "label", None)
    assert names == ["a", "b"] and encoded["train"]["label"] == [1, 0, 1]
    ints = DatasetDict({"train": Dataset.from_dict({"label": [0, 2, 1]}), "validation": Dataset.from_dict({"label": [2]})})
    assert encode_labels(ints, "label", ["neg", "neu", "pos"])[1] == ["neg", "neu", "pos"]
    with pytest.raises(ValueError, match="out of range for 2 labels"):
        encode_labels(ints, "label", ["neg", "pos"])
    with pytest.raises(ValueError, match="single class"):
        encode_labels(DatasetDict({"train": Dataset.from_dict({"label": ["a", "a"]})}), "label", None)


def test_eval_labels_given_as_names_or_ids_both_work():
    # A run trained on a label folder (ids with names) evaluated on a file of names, and the reverse.
    folder_like = DatasetDict({
        "train": Dataset.from_dict({"label": [0, 1, 1]}).cast_column("label", ClassLabel(names=["business", "sports"])),
        "validation": Dataset.from_dict({"label": ["sports", "business"]}),
    })
    encoded, names = encode_labels(folder_like, "label", None)
    assert names == ["business", "sports"] and encoded["validation"]["label"] == [1, 0]
    strings = DatasetDict({"train": Dataset.from_dict({"label": ["b", "a"]}), "validation": Dataset.from_dict({"label": [1, 0]})})
    encoded, names = encode_labels(strings, "label", None)
    assert encoded["validation"]["label"] == [1, 0] and encoded["validation"].features["label"].names == ["a", "b"]
