"""Data that is wrong in the ways real files are: each gets one line naming the file (and the line)."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from datasets import ClassLabel

from hf_finetune.config import DataArguments
from hf_finetune.data import load_source, load_splits


def _csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_csv_string_labels_are_stratified(tmp_path):
    # datasets reads csv strings as large_string; the split used to skip stratification for them.
    rows = [{"text": f"w{i}", "label": lab} for lab, n in (("a", 40), ("b", 40), ("rare", 4)) for i in range(n)]
    splits = load_splits(DataArguments(dataset=_csv(tmp_path / "d.csv", rows), validation_size=0.25), "label")
    assert Counter(splits["validation"]["label"]) == {"a": 10, "b": 10, "rare": 1}
    assert Counter(splits["train"]["label"]) == {"a": 30, "b": 30, "rare": 3}
    assert not isinstance(splits["validation"].features["label"], ClassLabel)  # the file's values, as before


def test_jsonl_and_parquet_string_labels_are_stratified(tmp_path):
    import pandas as pd

    rows = [{"text": f"w{i}", "label": lab} for lab, n in (("x", 30), ("y", 10)) for i in range(n)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    for path in (jsonl, parquet):
        splits = load_splits(DataArguments(dataset=str(path), validation_size=0.2), "label")
        assert sorted(Counter(splits["validation"]["label"]).values()) == [2, 6]


def test_single_example_class_says_so(tmp_path):
    rows = [{"text": f"w{i}", "label": "a" if i else "lonely"} for i in range(20)]
    with pytest.raises(ValueError, match=r"Class 'lonely' has a single example"):
        load_splits(DataArguments(dataset=_csv(tmp_path / "d.csv", rows)), "label")


def test_whole_float_labels_become_class_ids(tmp_path):
    rows = [{"text": f"w{i}", "label": float(i % 3)} for i in range(30)]
    splits = load_splits(DataArguments(dataset=_csv(tmp_path / "f.csv", rows)), "label")
    assert splits["train"].features["label"].dtype == "int64"
    fractional = [{"text": f"w{i}", "label": i / 7} for i in range(30)]  # regression targets stay floats
    splits = load_splits(DataArguments(dataset=_csv(tmp_path / "r.csv", fractional)), "label")
    assert splits["train"].features["label"].dtype.startswith("float")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", r"empty.csv is empty \(0 bytes\)"),
        ("empty.txt", b"", r"empty.txt is empty \(0 bytes\)"),
        ("empty.jsonl", b"", r"empty.jsonl is empty \(0 bytes\)"),
        ("header.csv", b"text,label\n", r"header.csv is empty: it has no rows"),
        ("blank.txt", b"\n  \n\n", r"blank.txt holds only blank lines"),
        ("garbage.csv", bytes(range(128, 256)) * 3, r"garbage.csv is not UTF-8 text \(byte 0\)"),
        ("garbage.txt", b"ok\n\xff\xfe\x00junk", r"garbage.txt is not UTF-8 text \(byte 3\)"),
        ("nul.txt", b"a\x00b\n", r"nul.txt holds NUL bytes"),
        ("ragged.csv", b"text,label\na,b\nc,d,e,f\n", r"ragged.csv could not be read as csv \(line 3: 4 fields"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": \n{"text": "d"}\n', r"bad.jsonl .*\(line 3: Expecting value"),
        ("bad.json", b'{"text": "a"', r"bad.json could not be read as json"),
        ("bad.parquet", b"PAR1 not really", r"bad.parquet could not be read as parquet"),
        ("data.xlsx", b"x", r"unsupported extension"),
    ],
)
def test_bad_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_source(str(path))
    assert "\n" not in str(info.value)


def test_missing_local_folder_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("data/mydata", "data/train.csv", "./mydata", "a/b/c", str(tmp_path / "nope")):
        with pytest.raises(ValueError, match="no such file or folder"):
            load_source(source)


def test_unknown_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"data.dataset='someorg/somedata' is no local file or folder.*offline"):
        load_source("someorg/somedata")


def test_label_folder_with_an_empty_class(tmp_path):
    for label in ("sport", "tech"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.txt").write_text(f"{label} text")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['empty_class'\] hold no .txt files"):
        load_source(str(tmp_path))


def test_empty_data_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="data folder .* is empty"):
        load_source(str(tmp_path / "d"))


def test_ner_errors_name_the_row_in_file_order(tmp_path):
    from hf_finetune.supervised.tasks import load_token_splits, tag_names

    rows = [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]} for _ in range(20)]
    rows[12]["tags"] = ["S-ORG", "O"]  # IOBES, not BIO
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for validation_size in (0.2, 0.5):  # wherever the seeded split puts it, the file's row is named
        splits = load_token_splits(DataArguments(dataset=str(path), text_column="tokens", label_column="tags",
                                                 validation_size=validation_size, stratify=False))
        with pytest.raises(ValueError, match=r"Sentence 13 \(in file order\) has tag\(s\) \['S-ORG'\]"):
            tag_names(splits, "tags", None)


def test_fractional_labels_are_not_truncated_into_classes(tmp_path):
    from hf_finetune.data import encode_labels

    rows = [{"text": f"w{i}", "label": [0.0, 1.0, 0.5][i % 3]} for i in range(30)]
    splits = load_splits(DataArguments(dataset=_csv(tmp_path / "f.csv", rows)), "label")
    with pytest.raises(ValueError, match=r"non-integer numbers \(0.5\).*training.task: regression"):
        encode_labels(splits, "label", None)
