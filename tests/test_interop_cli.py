"""What users of run_glue/pipeline look for: test sets, results files, predict, eval on label names, early stopping."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import make_topic_rows, run_dict, tiny_recipe, write_csv, write_recipe

from hf_finetune.cli import main
from hf_finetune.recipe import evaluate_run, load_recipe, predict_run, run_recipe


@pytest.fixture(scope="module")
def label_folder(tmp_path_factory):
    """A <label>/*.txt folder: its labels load as ClassLabel ids, as bbc_news (the quickstart) does."""
    root = tmp_path_factory.mktemp("folder")
    for i, row in enumerate(make_topic_rows(30, seed=1)):
        (root / row["label"]).mkdir(exist_ok=True)
        (root / row["label"] / f"{i}.txt").write_text(row["text"])
    return str(root)


@pytest.fixture(scope="module")
def named_csv(tmp_path_factory):
    """New data whose label column holds the label *names* (what a user writes by hand)."""
    return write_csv(tmp_path_factory.mktemp("new") / "new.csv", make_topic_rows(6, seed=7))


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, label_folder, named_csv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe(tiny_bert_dir, label_folder, tmp / "out", max_steps=20)
    recipe["data"]["test_dataset"] = named_csv
    metrics = run_dict(recipe, tmp)
    return tmp / "out", metrics


def test_test_set_is_scored_and_results_files_written(trained):
    out, metrics = trained
    assert {"test_accuracy", "test_f1_macro", "eval_accuracy", "train_loss"} <= set(metrics)
    results = {name: json.loads((out / f"{name}_results.json").read_text()) for name in ("train", "eval", "test", "all")}
    assert results["test"]["test_accuracy"] == metrics["test_accuracy"]
    assert results["eval"]["eval_accuracy"] == metrics["eval_accuracy"] and "train_loss" in results["train"]
    assert set(results["all"]) == set(results["train"]) | set(results["eval"]) | set(results["test"])
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and {r["label"] for r in rows} == {"business", "sport", "tech"}
    card = (out / "README.md").read_text()  # a local card, though nothing was pushed
    # output_dir was absolute: the card names the run's folder, not the training machine's path to it.
    assert "## How to use" in card and 'pipeline("text-classification", model="out")' in card
    assert str(out) not in card


def test_local_card_usage_names_a_path_that_survives_a_move():
    from hf_finetune.hub import _usage

    meta = {"model_name": "quickstart", "local_path": "/home/me/work/outputs/quickstart"}
    assert 'model="quickstart"' in "\n".join(_usage(meta, "text-classification"))
    meta["local_path"] = "outputs/quickstart"  # relative, as recipes write it: relative to the checkout
    assert 'model="outputs/quickstart"' in "\n".join(_usage(meta, "text-classification"))
    pushed = "\n".join(_usage({**meta, "repo_id": "me/quickstart"}, "text-classification"))
    assert 'model="me/quickstart"' in pushed and "this run's folder" not in pushed


def test_eval_reads_label_names_in_the_file(trained, named_csv):
    """Train labels are ClassLabel ids (a folder); the new file has names: it used to fail in int('sport')."""
    out, metrics = trained
    again = evaluate_run(str(out), data=named_csv)
    assert again["eval_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_eval_names_an_unknown_label(trained, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [{"text": "the match", "label": "sports"}, {"text": "a bank", "label": "tech"}])
    with pytest.raises(ValueError, match=r"Unknown label\(s\) \['sports'\].*'business', 'sport', 'tech'"):
        evaluate_run(str(trained[0]), data=bad)


def test_predict_writes_jsonl_and_csv(trained, named_csv, tmp_path, capsys):
    out, _ = trained
    assert main(["predict", str(out), "--data", named_csv, "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [e["prediction"] for e in expected]  # same model, same file order
    assert all(0 < r["score"] <= 1 for r in rows) and [r["reference"] for r in rows] == [e["label"] for e in expected]
    predict_run(str(out), named_csv, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == [r["label"] for r in rows]
    capsys.readouterr()
    assert main(["predict", str(out), "--data", named_csv]) == 0  # no --output: JSON lines on stdout
    assert len(capsys.readouterr().out.strip().splitlines()) == len(rows)
    assert main(["predict", str(out), "--data", named_csv, "--output", str(tmp_path / "p.txt")]) == 2


def test_do_predict_without_a_test_set_fails_before_loading(tmp_path, topic_csv):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("/nonexistent/model", topic_csv, tmp_path / "o", do_predict=True))
    with pytest.raises(ValueError, match="data.test_dataset"):
        run_recipe(load_recipe(path))


def test_report_to_a_missing_logger_fails_before_loading(tmp_path, topic_csv):
    pytest.importorskip("transformers")
    from transformers.integrations import get_available_reporting_integrations

    if "wandb" in get_available_reporting_integrations():
        pytest.skip("wandb is installed here")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("/nonexistent/model", topic_csv, tmp_path / "o", report_to="wandb"))
    with pytest.raises(ValueError, match=r"hf-finetune\[wandb\]"):
        run_recipe(load_recipe(path))


def test_early_stopping_patience_stops_the_run(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "es"
    # No evaluation improves by 100: the run stops after 1 + patience evaluations (steps 2 and 4).
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, eval_strategy="steps", eval_steps=2,
                         early_stopping_patience=1, early_stopping_threshold=100.0)
    run_dict(recipe, tmp_path)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 < 30


def test_early_stopping_needs_evaluations(tmp_path, topic_csv):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("/x", topic_csv, tmp_path / "o", early_stopping_patience=2))
    with pytest.raises(ValueError, match="eval_strategy"):
        load_recipe(path)


def test_card_says_when_weights_were_dequantized_from_gguf(tmp_path, tiny_bert_dir, monkeypatch):
    from huggingface_hub import constants

    from hf_finetune.hub import run_metadata
    from hf_finetune.models import place_in_hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    note = {"repo_id": "org/quantized", "source": "a-package==1 (PyPI), m.Q4_1.gguf", "dequantized_from_gguf": "m.Q4_1.gguf"}
    place_in_hub_cache("org/quantized", tiny_bert_dir, note)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(Path(write_recipe(tmp_path / "r.yaml", tiny_recipe("org/quantized", "x.csv", run)))
                                     .read_text())
    (run / "metrics.json").write_text("{}")
    meta = run_metadata(run)
    assert "dequantized to float32 from the 4-bit GGUF `m.Q4_1.gguf`" in meta["weights_note"]
    from hf_finetune.hub import model_card

    assert meta["weights_note"] in str(model_card(meta))


def test_sharded_launches_known_not_to_work_are_refused_before_loading(tmp_path, topic_csv, monkeypatch):
    from types import SimpleNamespace

    from hf_finetune.config import Recipe
    from hf_finetune.runs import check_sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml sets
    staged = write_recipe(tmp_path / "s.yaml", tiny_recipe("/nonexistent/model", topic_csv, tmp_path / "o",
                                                            schedule="lp-ft"))
    with pytest.raises(ValueError, match="staged schedule .* cannot run under FSDP"):
        run_recipe(load_recipe(staged))
    cpu = write_recipe(tmp_path / "c.yaml", tiny_recipe("/nonexistent/model", topic_csv, tmp_path / "o", use_cpu=True))
    with pytest.raises(ValueError, match="accelerate runs FSDP only on GPUs"):
        run_recipe(load_recipe(cpu))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="PPO cannot run under DeepSpeed"):
        check_sharding(Recipe("ppo", {"training": SimpleNamespace(use_cpu=False)}))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_sharding(Recipe("ppo", {"training": SimpleNamespace(use_cpu=False)}))  # plain DDP: fine


def test_predict_token_classification_gives_one_tag_per_word(tiny_bert_dir, tmp_path):
    from test_supervised_tasks import ner_sentences, write_conll

    out = tmp_path / "ner"
    recipe = tiny_recipe(tiny_bert_dir, write_conll(tmp_path / "train.conll", ner_sentences(40)), out,
                         task="token_classification", max_steps=4)
    recipe["data"].update(text_column="tokens", label_column="tags")
    run_dict(recipe, tmp_path)
    sentences = [" ".join(words) for words, _ in ner_sentences(3, seed=5)]
    new = write_csv(tmp_path / "new.csv", [{"tokens": s} for s in sentences], fields=("tokens",))
    rows = predict_run(str(out), new)
    names = set(json.loads((out / "config.json").read_text())["id2label"].values())
    assert [r["tokens"] for r in rows] == [s.split() for s in sentences]
    assert all(len(r["tags"]) == len(r["tokens"]) and set(r["tags"]) <= names for r in rows)


def test_output_piped_into_head_is_not_an_error():
    # `hf-finetune train --help | head` closes the pipe early: that printed a one-line "BrokenPipeError ...
    # check the path, its permissions and free disk space" error before.
    import fcntl
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the ~64 KB of help cannot all sit in the pipe
    child = subprocess.Popen([sys.executable, "-m", "hf_finetune", "train", "--help"], stdout=write_end,
                             stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()  # then close it, as `head -1` does
    code = child.wait(timeout=120)
    stderr = child.stderr.read().decode()
    assert first.startswith(b"usage:") and "error" not in stderr.lower(), stderr
    assert code == 141  # as a process killed by SIGPIPE
