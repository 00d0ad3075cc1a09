"""Instruction SFT over TRL's SFTTrainer: prompt/completion with LoRA, chat + packing + stages, input errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_topic_rows, write_recipe
from safetensors.torch import load_file

from hf_finetune.recipe import load_recipe, run_recipe
from hf_finetune.supervised import sft_train, sft_trainer
from hf_finetune.supervised.sft_config import InstructionSFTConfig

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with a chat template on its tokenizer."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("chat-llama")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_llama_dir}/{name}", directory / name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return str(directory)


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def sft_recipe(model_dir, dataset, out, lora=None, **training) -> dict:
    recipe = {
        "method": "sft",
        "model": {"model_name_or_path": model_dir},
        "data": {"dataset": dataset, "max_length": 64, "validation_size": 0.2},
        "training": {
            "output_dir": str(out),
            "max_steps": 6,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            **training,
        },
    }
    if lora is not None:
        recipe["lora"] = lora
    return recipe


def load(recipe: dict, tmp_path):
    return load_recipe(write_recipe(tmp_path / "sft.yaml", recipe))


def prompt_rows():
    return [{"prompt": f"topic of: {r['text']} ->", "completion": f" {r['label']}"} for r in make_topic_rows(10)]


def test_config_is_cpu_safe():
    args = InstructionSFTConfig(output_dir="x")
    assert args.bf16 is False and args.gradient_checkpointing is False


def test_prompt_completion_lora_trains_adapters_on_completions_only(chat_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "pc.jsonl", prompt_rows())
    recipe = load(sft_recipe(chat_llama_dir, data, tmp_path / "run", lora={"lora_r": 4}), tmp_path)
    tokenizer, splits, kind, model = sft_train.build_sft(recipe)
    assert kind == "prompt_completion"
    trainer = sft_trainer.InstructionSFTTrainer(
        model=model, args=recipe.training, train_dataset=splits["train"], processing_class=tokenizer
    )
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    n_prompt = len(tokenizer(splits["train"][0]["prompt"])["input_ids"])
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert (batch["labels"][0, n_prompt:] != -100).any()

    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any("loss" in e for e in trainer.state.log_history)
    params = dict(model.named_parameters())
    assert all(torch.equal(base[n], params[n]) for n in base)
    assert any(not torch.equal(adapters[n], params[n]) for n in adapters)


def test_chat_messages_packing_and_stages_through_the_cli(chat_llama_dir, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}]}
        for r in make_topic_rows(10)
    ]
    out = tmp_path / "chat"
    recipe = sft_recipe(
        chat_llama_dir, write_jsonl(tmp_path / "chat.jsonl", rows), out, packing=True, schedule="gradual-unfreezing"
    )
    metrics = run_recipe(load(recipe, tmp_path))
    assert metrics["train_loss"] > 0 and "eval_perplexity" in metrics
    before, after = load_file(f"{chat_llama_dir}/model.safetensors"), load_file(out / "model.safetensors")
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert (out / "training_args.json").is_file() and not list(out.rglob("*.bin"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"messages": [{"content": "hi"}, {"content": "hello"}]}] * 5, "chat dataset without roles"),
        ([{"messages": ["hi", "hello"]}] * 5, "need a 'role'"),
        ([{"prompt": "a", "completion": ""}] * 5, "empty 'completion'"),
        ([{"question": "a", "answer": "b"}] * 5, "needs 'prompt' \\+ 'completion' columns"),
    ],
)
def test_bad_sft_data_fails_before_training(chat_llama_dir, tmp_path, rows, message):
    recipe = load(sft_recipe(chat_llama_dir, write_jsonl(tmp_path / "bad.jsonl", rows), tmp_path / "o"), tmp_path)
    with pytest.raises(ValueError, match=message):
        sft_train.build_sft(recipe)


def test_chat_data_without_template_fails(tiny_llama_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 5
    recipe = load(sft_recipe(tiny_llama_dir, write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "o"), tmp_path)
    with pytest.raises(ValueError, match="needs a chat template"):
        sft_train.build_sft(recipe)
