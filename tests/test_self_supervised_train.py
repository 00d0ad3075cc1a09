"""Training tests of the ``self_supervised`` method on tiny models: effects, LoRA, chaining, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_topic_rows, write_recipe
from safetensors.torch import load_file

from hf_finetune.recipe import evaluate_run, load_recipe, run_recipe
from hf_finetune.self_supervised.text import tokenize_corpus
from hf_finetune.self_supervised.train import SelfSupervisedTrainer, build, supports_padding_free


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Two text files of topic sentences, one paragraph per sentence."""
    folder = tmp_path_factory.mktemp("corpus")
    rows = make_topic_rows(40, seed=1, length=10)
    (folder / "a.txt").write_text("\n\n".join(r["text"] for r in rows[:60]))
    (folder / "b.txt").write_text("\n\n".join(r["text"] for r in rows[60:]))
    return str(folder)


def _recipe(tmp_path, model_dir, corpus, name="r", lora=None, **training):
    spec = {
        "method": "self_supervised",
        "model": {"model_name_or_path": model_dir},
        "data": {"dataset": corpus, "max_length": 32, "validation_size": 0.2},
        "training": {
            "output_dir": str(tmp_path / name),
            "max_steps": 16,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "learning_rate": 5e-3,
            "logging_steps": 4,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "eval_on_start": True,
            "seed": 0,
            **training,
        },
    }
    if lora is not None:
        spec["lora"] = lora
    return write_recipe(tmp_path / f"{name}.yaml", spec)


def _weights(directory):
    return load_file(str(Path(directory) / "model.safetensors"))


@pytest.mark.parametrize("objective", ["mlm", "whole_word", "span"])
def test_masked_objectives_learn(tmp_path, tiny_bert_dir, corpus_dir, objective):
    metrics = run_recipe(load_recipe(_recipe(tmp_path, tiny_bert_dir, corpus_dir, objective=objective)))
    assert metrics["eval_loss"] < metrics["eval_loss_at_start"] - 0.3
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-3)
    before, after = _weights(tiny_bert_dir), _weights(tmp_path / "r")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[key], after[key])
    assert (tmp_path / "r" / "curves.png").is_file()
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["eval_loss"] == pytest.approx(metrics["eval_loss"])
    if objective == "span":  # `hf-finetune eval` scores the saved model with the same fixed masks
        again = evaluate_run(str(tmp_path / "r"))
        assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-5)
        assert again["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-4)


@pytest.mark.parametrize("objective", ["clm", "fim"])
def test_causal_objectives_learn(tmp_path, tiny_llama_dir, corpus_dir, objective):
    metrics = run_recipe(load_recipe(_recipe(tmp_path, tiny_llama_dir, corpus_dir, objective=objective)))
    assert metrics["eval_loss"] < metrics["eval_loss_at_start"] - 0.3
    if objective == "fim":  # sentinels added, embedding resized, tokenizer saved with them
        saved = json.loads((tmp_path / "r" / "tokenizer.json").read_text())
        assert {t["content"] for t in saved["added_tokens"]} >= {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"}


def test_padding_free_clm_on_llama(tmp_path, tiny_llama_dir, tiny_gpt2_dir, corpus_dir):
    from transformers import AutoModelForCausalLM

    assert supports_padding_free(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    recipe = load_recipe(
        _recipe(tmp_path, tiny_llama_dir, corpus_dir, objective="clm", padding_free=True),
        ["--packing", "none", "--sample_by", "line"],
    )
    metrics = run_recipe(recipe)
    assert metrics["eval_loss"] < metrics["eval_loss_at_start"] - 0.3


def test_lora_causal_lm_keeps_base_bitwise(tmp_path, tiny_llama_dir, corpus_dir):
    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir, corpus_dir, objective="clm", lora={"lora_r": 4}))
    tokenizer, model, collator, data = build(recipe)
    assert model.peft_config["default"].task_type == "CAUSAL_LM"
    base = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora_b = {k: v.clone() for k, v in model.named_parameters() if "lora_B" in k}
    trainer = SelfSupervisedTrainer(
        model=model, args=recipe.training, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, data_collator=collator,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and losses[-1] < losses[0]
    for k, v in model.named_parameters():
        if k in base:
            assert torch.equal(v, base[k]), f"base weight {k} changed"
    assert any(not torch.equal(v, lora_b[k]) for k, v in model.named_parameters() if k in lora_b)


def test_mlm_then_classify_chain(tmp_path, tiny_bert_dir, corpus_dir, topic_csv):
    supervised = write_recipe(
        tmp_path / "cls.yaml",
        {
            "method": "supervised",
            "model": {"model_name_or_path": "placeholder"},
            "data": {"dataset": topic_csv, "max_length": 32},
            "training": {"output_dir": str(tmp_path / "unused"), "max_steps": 10, "learning_rate": 5e-3,
                         "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
                         "per_device_train_batch_size": 16},
        },
    )
    path = _recipe(tmp_path, tiny_bert_dir, corpus_dir, lora={"lora_r": 4, "lora_target_modules": ["query", "value"]},
                   finetune=supervised, finetune_overrides={"max_steps": 12})
    metrics = run_recipe(load_recipe(path))
    assert "finetune_eval_accuracy" in metrics
    run = tmp_path / "r"
    encoder, mlm = _weights(run / "encoder"), _weights(run)
    # LoRA merged into the encoder; the classifier starts from it with a fresh head.
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(encoder[key], mlm["bert." + key])
    assert not torch.equal(encoder[key], _weights(tiny_bert_dir)["bert." + key])
    finetuned = _weights(run / "finetune")
    assert "classifier.weight" in finetuned
    assert (run / "finetune" / "metrics.json").is_file()


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_bert_dir, corpus_dir):
    common = {"objective": "span", "max_steps": 6, "eval_on_start": False, "save_strategy": "steps", "save_steps": 3,
              "eval_strategy": "no"}
    path = _recipe(tmp_path, tiny_bert_dir, corpus_dir, name="full", **common)
    run_recipe(load_recipe(path))
    full = _weights(tmp_path / "full")
    # Resume from step 3 with a fresh collator and model, after disturbing the global RNG.
    torch.manual_seed(1234)
    run_recipe(load_recipe(path, ["--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-3")]))
    again = _weights(tmp_path / "full")
    for key in full:
        assert torch.allclose(full[key], again[key], atol=1e-6), key


def test_packing_modes(tiny_bert_dir, tiny_llama_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = Dataset.from_dict({"text": ["the market was new " * 6, "goal team win", "data code chip " * 5]})
    concat = tokenize_corpus(texts, bert, 16, packing="concat")
    assert all(len(ids) == 16 for ids in concat["input_ids"])
    assert all(ids[0] == bert.cls_token_id and ids[-1] == bert.sep_token_id for ids in concat["input_ids"])
    per_doc = tokenize_corpus(texts, bert, 16, packing="per_document")
    # Never crossing a document: each block's text comes from one document, so no inner [SEP].
    assert all(bert.sep_token_id not in ids[1:-1] for ids in per_doc["input_ids"])
    assert sum(len(ids) - 2 for ids in per_doc["input_ids"]) == sum(
        len(bert(t, add_special_tokens=False)["input_ids"]) for t in texts["text"]
    )
    llama = AutoTokenizer.from_pretrained(tiny_llama_dir)
    lines = tokenize_corpus(texts, llama, 64, packing="none")
    assert [ids[-1] for ids in lines["input_ids"]] == [llama.eos_token_id] * 3


def _bad(tmp_path, model, corpus, **kw):
    overrides = kw.pop("overrides", [])
    return lambda: run_recipe(load_recipe(_recipe(tmp_path, model, corpus, **kw), overrides))


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_mask_token", "no mask token.*'clm'.*'fim'"),
        ("probability_zero", r"in \(0, 1\)"),
        ("probability_one", r"in \(0, 1\)"),
        ("short_spans", "mean_span_length"),
        ("block_too_long", "max_position_embeddings=128"),
        ("empty_corpus", "empty"),
        ("no_full_block", "no full block"),
        ("causal_for_mlm", "causal.*no masked-LM head"),
        ("bad_finetune", "method: supervised"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, tiny_bert_dir, tiny_llama_dir, corpus_dir, case, match):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("goal team win\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    cases = {
        "no_mask_token": _bad(tmp_path, tiny_bert_dir, corpus_dir, overrides=["--tokenizer_name_or_path", tiny_llama_dir]),
        "probability_zero": _bad(tmp_path, tiny_bert_dir, corpus_dir, mlm_probability=0.0),
        "probability_one": _bad(tmp_path, tiny_bert_dir, corpus_dir, mlm_probability=1.0),
        "short_spans": _bad(tmp_path, tiny_bert_dir, corpus_dir, objective="span", mean_span_length=0.5),
        "block_too_long": _bad(tmp_path, tiny_bert_dir, corpus_dir, overrides=["--max_length", "256"]),
        "empty_corpus": _bad(tmp_path, tiny_bert_dir, str(blank)),
        "no_full_block": _bad(tmp_path, tiny_bert_dir, str(tiny), overrides=["--eval_dataset", str(tiny)]),
        "causal_for_mlm": _bad(tmp_path, tiny_llama_dir, corpus_dir, objective="mlm"),
        "bad_finetune": _bad(tmp_path, tiny_bert_dir, corpus_dir, finetune=_recipe(tmp_path, tiny_bert_dir, corpus_dir, "x")),
    }
    with pytest.raises(ValueError, match=match):
        cases[case]()
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_mlm_head_warmup_freezes_the_encoder(tmp_path, tiny_bert_dir, corpus_dir):
    path = _recipe(tmp_path, tiny_bert_dir, corpus_dir, max_steps=4, mlm_head_warmup_steps=4, eval_on_start=False)
    metrics = run_recipe(load_recipe(path))
    assert metrics["train_blocks"] > 0
    before, after = _weights(tiny_bert_dir), _weights(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("bert."))
    assert not torch.equal(before["cls.predictions.transform.dense.weight"], after["cls.predictions.transform.dense.weight"])


def test_mlm_then_classify_chain_carries_the_lora_adapter(tmp_path, tiny_bert_dir, corpus_dir, topic_csv):
    supervised = write_recipe(
        tmp_path / "cls.yaml",
        {
            "method": "supervised",
            "model": {"model_name_or_path": "placeholder"},
            "data": {"dataset": topic_csv, "max_length": 32, "validation_size": 0.25},
            "training": {"output_dir": str(tmp_path / "unused"), "max_steps": 30, "learning_rate": 1e-2,
                         "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 0,
                         "per_device_train_batch_size": 8},
        },
    )
    path = _recipe(tmp_path, tiny_bert_dir, corpus_dir, lora={"lora_r": 4, "lora_target_modules": ["query", "value"]},
                   finetune=supervised, finetune_lora="carry", finetune_overrides={"learning_rate": 1e-3, "max_steps": 10})
    metrics = run_recipe(load_recipe(path))
    run = tmp_path / "r"
    assert metrics["finetune_train_loss"] > 0
    assert not (run / "encoder").exists()  # the base stays as it was: nothing to hand over but the adapter
    pretrained = load_file(str(run / "adapter_model.safetensors"))
    finetuned = load_file(str(run / "finetune" / "adapter_model.safetensors"))
    config = json.loads((run / "finetune" / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"query", "value"}
    assert config["base_model_name_or_path"] == tiny_bert_dir
    lora_keys = sorted(k for k in pretrained if "lora_" in k)
    assert lora_keys and lora_keys == sorted(k for k in finetuned if "lora_" in k)
    # Trained further from the carried values: moved, but close to them (a fresh lora_A would be a
    # new random matrix, a fresh lora_B would start from zero).
    moved = {k: ((finetuned[k] - pretrained[k]).norm() / pretrained[k].norm()).item() for k in lora_keys}
    assert all(0 < m < 0.5 for m in moved.values()), moved
    assert any(k.startswith("base_model.model.classifier") for k in finetuned)
    again = evaluate_run(str(run / "finetune"))  # base model + carried-and-trained adapter
    assert again["eval_accuracy"] == pytest.approx(metrics["finetune_eval_accuracy"], abs=1e-5)


def test_lora_adapter_path_starts_from_the_saved_matrices(tmp_path, tiny_bert_dir, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from hf_finetune.config import LoraArguments
    from hf_finetune.models import apply_lora

    torch.manual_seed(0)
    # "dense" also matches the classifier's pooler, which BertForMaskedLM lacks: that one starts fresh.
    mlm = get_peft_model(AutoModelForMaskedLM.from_pretrained(tiny_bert_dir),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"]))
    for name, p in mlm.named_parameters():
        if "lora_B" in name:
            p.data.normal_()
    mlm.save_pretrained(tmp_path / "adapter")
    saved = {k.replace(".default", ""): v for k, v in mlm.state_dict().items() if "lora_" in k}
    lora = LoraArguments(use_lora=True, lora_r=16, lora_adapter_path=str(tmp_path / "adapter"))
    classifier = apply_lora(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3), lora,
                            "SEQ_CLS")
    assert classifier.peft_config["default"].r == 4
    loaded = {k.replace(".default", ""): v for k, v in classifier.state_dict().items() if "lora_" in k}
    # The MLM head's own matrices stay behind; every encoder matrix is carried over.
    head = {k for k in saved if ".cls." in k}
    assert head and all(torch.equal(loaded[k], saved[k]) for k in saved if k not in head)
    fresh = sorted(set(loaded) - set(saved))
    assert [k.split(".lora_")[0] for k in fresh] == ["base_model.model.bert.pooler.dense"] * 2
    assert not loaded["base_model.model.bert.pooler.dense.lora_B.weight"].any()  # PEFT's fresh init
    assert all(p.requires_grad for n, p in classifier.named_parameters() if "lora_" in n or "modules_to_save" in n)
    with pytest.raises(ValueError, match="does not fit"):
        apply_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora, "CAUSAL_LM")
    with pytest.raises(ValueError, match="holds no safetensors LoRA adapter"):
        apply_lora(AutoModelForMaskedLM.from_pretrained(tiny_bert_dir),
                   LoraArguments(use_lora=True, lora_adapter_path=str(tmp_path)), None)


def test_fim_with_lora_trains_only_the_sentinel_rows_of_the_embedding(tmp_path, tiny_llama_dir, corpus_dir):
    from transformers import AutoModelForCausalLM

    from hf_finetune.models import load_trained

    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir, corpus_dir, objective="fim", lora={"lora_r": 4}))
    tokenizer, model, collator, data = build(recipe)
    sentinels = tokenizer.convert_tokens_to_ids(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])
    ids = torch.arange(len(tokenizer))
    before = model.get_input_embeddings()(ids).detach().clone()
    trainer = SelfSupervisedTrainer(
        model=model, args=recipe.training, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, data_collator=collator,
    )
    trainer.train()
    after = model.get_input_embeddings()(ids).detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(sentinels)
    trainer.save_model(tmp_path / "saved")
    model.get_base_model().config.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    model.eval()
    batch = tokenizer(["<fim_prefix>the team won<fim_suffix> match<fim_middle>"], return_tensors="pt")
    reloaded = load_trained(tmp_path / "saved", AutoModelForCausalLM).eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_lora_trains_the_masked_lm_head_a_checkpoint_lacks(tmp_path, tiny_bert_dir, corpus_dir):
    from transformers import AutoModel, AutoTokenizer

    # Like all-MiniLM-L6-v2: an encoder saved without its masked-LM head.
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "encoder")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "encoder")
    recipe = load_recipe(_recipe(tmp_path, str(tmp_path / "encoder"), corpus_dir, lora={"lora_r": 4}))
    _, model, _, _ = build(recipe)
    assert set(model.peft_config["default"].modules_to_save) == {
        "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("transform.dense.modules_to_save" in n for n in trainable)
    assert not any("decoder" in n or "word_embeddings" in n for n in trainable)
    head = model.get_base_model().cls.predictions.decoder
    assert head.weight is model.get_input_embeddings().weight  # still tied: no vocabulary-sized copy
