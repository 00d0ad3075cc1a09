"""Models and LoRA: frozen base and trained adapters, heads saved with the adapter, merged export, size checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_dict, tiny_recipe
from safetensors.torch import load_file


def test_lora_base_frozen_head_saved_and_reload_matches(tiny_bert_dir, topic_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.models import load_trained

    out = tmp_path / "lora"
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, learning_rate=1e-2)
    recipe["lora"] = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["query", "value"]}
    run_dict(recipe, tmp_path)

    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    model = load_trained(out, AutoModelForSequenceClassification)
    base = load_file(Path(tiny_bert_dir) / "model.safetensors")
    merged_names = dict(model.base_model.model.named_parameters())
    # Base weights bitwise unchanged: the LoRA-wrapped layer keeps the original weight tensor.
    q = "bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(merged_names[q], base["bert.encoder.layer.0.attention.self.query.weight"])
    lora_b = [p for n, p in merged_names.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "adapters did not train (lora_B starts at zero)"

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the match goal team", "market bank shares"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    again = load_trained(out, AutoModelForSequenceClassification).eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, logits)


def test_lora_merge_on_export_writes_full_model(tiny_bert_dir, topic_csv, tmp_path):
    out = tmp_path / "merged"
    recipe = tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=3)
    recipe["lora"] = {"lora_r": 4, "lora_merge_on_export": True}
    run_dict(recipe, tmp_path)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))


def test_vocab_larger_than_embedding_is_an_error(tiny_bert_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_finetune.models import check_model_fits

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.add_tokens(["brandnewtoken"])
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        check_model_fits(model, tokenizer, 32)
