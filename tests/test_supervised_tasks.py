"""Supervised tasks beyond single-label: multi-label, regression, NER, decoder classifiers, and their input errors."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import TOPICS, make_topic_rows, write_recipe
from safetensors.torch import load_file

from hf_finetune.metrics import bio_entities, load_metric
from hf_finetune.recipe import evaluate_run, load_recipe, run_recipe
from hf_finetune.supervised import train as sup
from hf_finetune.supervised.tasks import read_conll, regression_metrics

ENTITY_WORDS = {
    "PER": ["alice smith", "bob jones", "carol"],
    "ORG": ["acme bank", "data firm"],
    "LOC": ["paris", "cup city"],
}


def ner_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Toy sentences mixing common words with multi-word entities, tagged in BIO."""
    rng = random.Random(seed)
    common = "the a of and to in is was for on with said by new year".split()
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 4)):
            tokens += rng.sample(common, 2)
            tags += ["O", "O"]
            kind = rng.choice(sorted(ENTITY_WORDS))
            words = rng.choice(ENTITY_WORDS[kind]).split()
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        out.append((tokens, tags))
    return out


def write_conll(path, sentences) -> str:
    with open(path, "w") as f:
        f.write("-DOCSTART-\tO\n\n")
        for tokens, tags in sentences:
            f.writelines(f"{t}\t{g}\n" for t, g in zip(tokens, tags))
            f.write("\n")
    return str(path)


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def recipe_for(model_dir, data: dict, out, **training) -> dict:
    return {
        "method": "supervised",
        "model": {"model_name_or_path": model_dir},
        "data": {"max_length": 32, "validation_size": 0.25, **data},
        "training": {
            "output_dir": str(out),
            "max_steps": 8,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32,
            "learning_rate": 1e-2,
            "logging_steps": 2,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            **training,
        },
    }


def run(recipe: dict, tmp_path) -> dict:
    return run_recipe(load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe)))


def assert_trained(out, model_dir, metrics, key):
    """Loss logged and a base-model weight changed against the pretrained checkpoint."""
    assert np.isfinite(metrics["train_loss"])
    before, after = load_file(f"{model_dir}/model.safetensors"), load_file(out / "model.safetensors")
    assert not torch.equal(before[key], after[key]), f"{key} did not change"


@pytest.fixture(scope="module")
def multi_label_file(tmp_path_factory):
    rng = random.Random(0)
    rows = []
    for r in make_topic_rows(30):
        labels = [r["label"]] + ([rng.choice(sorted(TOPICS))] if rng.random() < 0.3 else [])
        rows.append({"text": r["text"], "labels": sorted(set(labels))})
    return write_jsonl(tmp_path_factory.mktemp("ml") / "ml.jsonl", rows)


def test_multi_label_trains_and_scores(tiny_bert_dir, multi_label_file, tmp_path):
    out = tmp_path / "ml"
    data = {"dataset": multi_label_file, "label_column": "labels"}
    metrics = run(recipe_for(tiny_bert_dir, data, out, task="multi_label", multi_label_threshold=0.4), tmp_path)
    assert {"eval_f1_micro", "eval_f1_macro", "eval_subset_accuracy", "eval_f1_sport"} <= set(metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 3
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert set(row) == {"text", "labels", "predicted"} and row["labels"]
    assert_trained(out, tiny_bert_dir, metrics, "bert.encoder.layer.0.attention.self.query.weight")
    assert_eval_reproduces(out, metrics, ("eval_f1_micro", "eval_f1_macro", "eval_loss"))


def assert_eval_reproduces(out, metrics, keys):
    """``hf-finetune eval RUN_DIR`` gives the metrics the training run reported."""
    again = evaluate_run(str(out))
    for key in keys:
        assert again[key] == pytest.approx(metrics[key], abs=1e-5), key


def test_regression_trains_and_scores(tiny_bert_dir, tmp_path):
    score = {"sport": 1.0, "tech": 2.0, "business": 3.0}
    rows = [{"text": r["text"], "score": score[r["label"]]} for r in make_topic_rows(30)]
    data = {"dataset": write_jsonl(tmp_path / "reg.jsonl", rows), "label_column": "score"}
    out = tmp_path / "reg"
    metrics = run(recipe_for(tiny_bert_dir, data, out, task="regression", learning_rate=3e-3), tmp_path)
    assert {"eval_mse", "eval_mae", "eval_pearson", "eval_spearman"} <= set(metrics)
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"
    assert_trained(out, tiny_bert_dir, metrics, "bert.encoder.layer.0.attention.self.query.weight")


def test_regression_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 50).astype(float)  # ties on purpose
    p = y + rng.normal(0, 1, 50)
    got = regression_metrics()((p, y))
    assert got["pearson"] == pytest.approx(stats.pearsonr(p, y)[0])
    assert got["spearman"] == pytest.approx(stats.spearmanr(p, y)[0])
    assert got["mse"] == pytest.approx(((p - y) ** 2).mean())


@pytest.mark.parametrize("label_all_tokens", [False, True])
def test_ner_from_conll_trains_and_writes_word_predictions(tiny_bert_dir, tmp_path, label_all_tokens):
    path = write_conll(tmp_path / "train.conll", ner_sentences(48))
    out = tmp_path / "ner"
    recipe = recipe_for(
        tiny_bert_dir,
        {"dataset": path, "text_column": "tokens", "label_column": "tags"},
        out,
        task="token_classification",
        label_all_tokens=label_all_tokens,
    )
    metrics = run(recipe, tmp_path)
    assert {"eval_precision", "eval_recall", "eval_f1", "eval_accuracy", "eval_f1_PER"} <= set(metrics)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(len(r["tokens"]) == len(r["tags"]) == len(r["predicted"]) for r in rows)
    assert json.loads((out / "config.json").read_text())["id2label"]["0"] == "O"
    assert_trained(out, tiny_bert_dir, metrics, "bert.encoder.layer.0.attention.self.query.weight")
    assert_eval_reproduces(out, metrics, ("eval_f1", "eval_accuracy", "eval_loss"))


def test_label_alignment_first_subtoken_and_all(tiny_bert_dir):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from hf_finetune.config import DataArguments
    from hf_finetune.supervised.tasks import prepare_token_classification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words, tags = ["alice", "xyz", "team"], ["B-PER", "B-ORG", "O"]  # "xyz" splits into sub-tokens
    splits = DatasetDict({"train": Dataset.from_dict({"tokens": [words], "tags": [tags]})})
    data = DataArguments(dataset="x", text_column="tokens", label_column="tags")
    first, names, _ = prepare_token_classification(splits, tokenizer, data)
    every, _, _ = prepare_token_classification(splits, tokenizer, data, label_all_tokens=True)
    enc = tokenizer([words], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert word_ids.count(1) > 1
    ids = {n: i for i, n in enumerate(names)}
    expected_first = [
        -100 if w is None else ids[tags[w]] if w != p else -100 for w, p in zip(word_ids, [None, *word_ids])
    ]
    assert first["train"][0]["labels"] == expected_first
    xyz = [lab for w, lab in zip(word_ids, every["train"][0]["labels"]) if w == 1]
    assert xyz == [ids["B-ORG"]] + [ids["I-ORG"]] * (len(xyz) - 1)


def test_ner_with_byte_level_bpe_gets_prefix_space(tiny_gpt2_dir, tmp_path):
    rows = [{"words": t, "ner": g} for t, g in ner_sentences(32)]
    data = {"dataset": write_jsonl(tmp_path / "ner.jsonl", rows), "text_column": "words", "label_column": "ner"}
    out = tmp_path / "gpt2-ner"
    metrics = run(recipe_for(tiny_gpt2_dir, data, out, task="token_classification"), tmp_path)
    assert "eval_f1" in metrics
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    assert saved([["match"]], is_split_into_words=True).tokens(0) == saved(" match").tokens()
    assert_trained(out, tiny_gpt2_dir, metrics, "transformer.h.0.mlp.c_fc.weight")


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_decoder_models_as_classifiers(fixture, topic_csv, tmp_path, request):
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / fixture
    metrics = run(recipe_for(model_dir, {"dataset": topic_csv}, out, learning_rate=3e-3), tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] is not None
    key = "model.layers.0.mlp.up_proj.weight" if "llama" in fixture else "transformer.h.0.mlp.c_fc.weight"
    assert_trained(out, model_dir, metrics, key)
    assert "eval_accuracy" in metrics


def test_seqeval_semantics():
    assert bio_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 1),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
        ("ORG", 5, 5),
    ]
    result = load_metric("seqeval").compute(
        predictions=[["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]],
        references=[["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]],
    )
    assert result["overall_precision"] == pytest.approx(2 / 3)
    assert result["overall_recall"] == pytest.approx(2 / 3)
    assert result["ORG"]["f1"] == 0.0 and result["PER"]["number"] == 1
    assert result["overall_accuracy"] == pytest.approx(5 / 6)


def test_read_conll_columns(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n")
    ds = read_conll(path)
    assert ds["tokens"] == [["EU", "rejects"], ["Peter"]] and ds["tags"] == [["B-ORG", "O"], ["B-PER"]]


def _bad(tmp, model_dirs):
    good = ner_sentences(8)
    bert, llama = model_dirs
    no_pad_or_eos = tmp / "no-eos"
    if not no_pad_or_eos.exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(llama)
        tok.eos_token = None
        tok.bos_token = None
        tok.save_pretrained(no_pad_or_eos)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(f"{llama}/{name}", no_pad_or_eos / name)
    ner = {"text_column": "tokens", "label_column": "tags"}
    return {
        "tags not BIO": (
            bert,
            {"dataset": write_conll(tmp / "iobes.conll", [(["a", "b"], ["S-PER", "O"])] + good), **ner},
            {"task": "token_classification"},
            "not in BIO/IOB2 form",
        ),
        "unknown tag": (
            bert,
            {
                "dataset": write_conll(tmp / "t.conll", good),
                "eval_dataset": write_conll(tmp / "e.conll", [(["a"], ["B-MISC"])]),
                **ner,
            },
            {"task": "token_classification"},
            r"Unknown tag\(s\) \['B-MISC'\]",
        ),
        "length mismatch": (
            bert,
            {"dataset": write_jsonl(tmp / "len.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}] * 4), **ner},
            {"task": "token_classification"},
            "2 tokens but 1 tags",
        ),
        "multi-label row without label": (
            bert,
            {
                "dataset": write_jsonl(
                    tmp / "ml.jsonl",
                    [{"text": "the match", "labels": ["sport"]}, {"text": "the bank", "labels": []}] * 4,
                ),
                "label_column": "labels",
            },
            {"task": "multi_label"},
            "has no label in 'labels'",
        ),
        "regression target not a number": (
            bert,
            {
                "dataset": write_jsonl(
                    tmp / "r.jsonl", [{"text": "a match", "y": 1.0}, {"text": "a bank", "y": "high"}] * 4
                ),
                "label_column": "y",
            },
            {"task": "regression"},
            "regression needs a number",
        ),
        "decoder without pad or eos": (
            str(no_pad_or_eos),
            {
                "dataset": write_jsonl(
                    tmp / "c.jsonl", [{"text": "the match", "label": "a"}, {"text": "the bank", "label": "b"}] * 4
                )
            },
            {},
            "neither a pad token nor an EOS token",
        ),
    }


BAD = [
    "tags not BIO",
    "unknown tag",
    "length mismatch",
    "multi-label row without label",
    "regression target not a number",
    "decoder without pad or eos",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_task_input_fails_before_training(case, tiny_bert_dir, tiny_llama_dir, tmp_path_factory, monkeypatch):
    tmp = tmp_path_factory.getbasetemp() / "bad-task-inputs"
    tmp.mkdir(exist_ok=True)
    model_dir, data, training, message = _bad(tmp, (tiny_bert_dir, tiny_llama_dir))[case]
    monkeypatch.setattr(sup.SupervisedTrainer, "train", lambda *a, **k: pytest.fail("training started"))
    recipe = recipe_for(model_dir, data, tmp / "out", **training)
    with pytest.raises(ValueError, match=message):
        run_recipe(load_recipe(write_recipe(tmp / f"{case}.yaml", recipe)))
