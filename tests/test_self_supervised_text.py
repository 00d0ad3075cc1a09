"""Corpus sources of the self-supervised method: Python docs, text folders, a supervised dataset's text column."""

from __future__ import annotations

import pytest
from conftest import make_topic_rows

from hf_finetune.config import DataArguments
from hf_finetune.self_supervised.config import TextArguments
from hf_finetune.self_supervised.text import PYTHON_DOCS_DIR, load_corpus, python_docs_files, split_corpus


@pytest.mark.skipif(not PYTHON_DOCS_DIR.is_dir(), reason="python3.11-doc is not installed")
def test_python_docs_corpus():
    files = python_docs_files()
    assert len(files) > 400 and all(f.endswith(".rst.txt") for f in files)
    docs = load_corpus(DataArguments(dataset="python_docs"), TextArguments(sample_by="document"))
    assert len(docs) == len(files)
    assert any("list comprehension" in t.lower() for t in docs["text"][:200] if t)


def test_python_docs_missing_says_how_to_install(tmp_path):
    with pytest.raises(ValueError, match="apt-get install -y python3.11-doc"):
        python_docs_files(tmp_path / "nowhere")


@pytest.mark.parametrize("sample_by, expected", [("document", 2), ("paragraph", 10), ("line", 10)])
def test_text_folder_sample_by(tmp_path, sample_by, expected):
    rows = [r["text"] for r in make_topic_rows(2, length=5)][:5]
    for name in ("a.txt", "b.md"):
        (tmp_path / name).write_text("\n\n".join(rows) + "\n")
    corpus = load_corpus(DataArguments(dataset=str(tmp_path)), TextArguments(sample_by=sample_by))
    assert len(corpus) == expected


def test_text_column_of_a_labelled_dataset(topic_csv):
    # Task-adaptive pretraining: only the text column of a supervised dataset is used.
    splits = split_corpus(DataArguments(dataset=topic_csv, validation_size=0.25), TextArguments())
    assert splits["train"].column_names == ["text"]
    assert len(splits["train"]) + len(splits["validation"]) == 120
    with pytest.raises(ValueError, match="Column 'body' not found"):
        load_corpus(DataArguments(dataset=topic_csv, text_column="body"), TextArguments())
