"""SupervisedTrainer (staged schedules): stage plans, trainable sets, optimizer state, LLRD groups, presets, exact resume, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import build_bert_tokenizer, build_bpe_tokenizer, make_topic_rows
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    LlamaConfig,
    LlamaForSequenceClassification,
    TrainerCallback,
)

from hf_finetune.supervised.config import SupervisedConfig
from hf_finetune.supervised.trainer import ModelLayout, SupervisedTrainer

NAMES = ["business", "sport", "tech"]


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    tokenizer = build_bert_tokenizer(tmp_path_factory.mktemp("tok"))
    rows = make_topic_rows(8)
    ds = Dataset.from_list([{**tokenizer(r["text"]), "labels": NAMES.index(r["label"])} for r in rows])
    return tokenizer, ds


def bert_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    return BertForSequenceClassification(config)


def make_trainer(bert_data, out, model=None, **kw):
    tokenizer, ds = bert_data
    defaults = dict(per_device_train_batch_size=8, logging_steps=1, report_to=[], save_strategy="no", seed=0)
    args = SupervisedConfig(str(out), **{**defaults, **kw})
    return SupervisedTrainer(
        model=model or bert_model(), args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer)
    )


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_each_stage_changes_exactly_its_parameters(bert_data, tmp_path):
    stages = [
        {"name": "head", "trainable": "head", "max_steps": 2, "learning_rate": 1e-2},
        {"name": "top", "trainable": "top:1", "max_steps": 2},
        {"name": "emb", "trainable": "embeddings", "max_steps": 1},
        {"name": "pat", "trainable": [r"encoder\.layer\.0\.attention"], "max_steps": 1},
        {"name": "all", "trainable": "all", "max_steps": 1},
    ]
    trainer = make_trainer(bert_data, tmp_path, stages=stages, learning_rate=1e-2, weight_decay=0.0)
    by_stage = {s.name: set(s.params) for s in trainer.stages}
    per_step, seen = [], []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            seen.append(snapshot(model))

        def on_step_end(self, args, state, control, model=None, **kw):
            per_step.append(changed(seen[-1], model))

    trainer.add_callback(Watch())
    trainer.train()
    expected = ["head"] * 2 + ["top"] * 2 + ["emb", "pat", "all"]
    assert len(per_step) == 7
    for step, (stage, moved) in enumerate(zip(expected, per_step)):
        assert moved, f"step {step + 1} changed nothing"
        assert moved <= by_stage[stage], f"step {step + 1} ({stage}) changed {sorted(moved - by_stage[stage])[:3]}"
    assert by_stage["head"] == {"classifier.weight", "classifier.bias"}
    assert all(n.startswith(("bert.encoder.layer.1.", "bert.pooler", "classifier")) for n in by_stage["top"])
    assert all(n.startswith("bert.embeddings.") for n in by_stage["emb"])
    assert len(per_step[-1]) > len(by_stage["top"])
    assert [h["stage"] for h in trainer.stage_history] == ["head", "top", "emb", "pat", "all"]
    assert trainer.stage_history[0]["trainable_parameters"] == 32 * 3 + 3
    assert any("loss" in e for e in trainer.state.log_history)


def test_frozen_parameters_have_no_optimizer_state(bert_data, tmp_path):
    stages = [
        {"name": "global", "trainable": "all", "max_steps": 2},
        {"name": "local", "trainable": "head", "max_steps": 2},
    ]
    trainer = make_trainer(bert_data, tmp_path, stages=stages)
    trainer.train()
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    params = [p for g in optimizer.param_groups for p in g["params"]]
    head = dict(trainer.model.named_parameters())
    assert {id(p) for p in params} == {id(head["classifier.weight"]), id(head["classifier.bias"])}
    assert len(optimizer.state) == 2
    assert not trainer.model.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    assert trainer.accelerator._optimizers == [trainer.optimizer]


def test_layer_lr_decay_groups(bert_data, tmp_path):
    trainer = make_trainer(bert_data, tmp_path, layer_lr_decay=0.5, learning_rate=1e-3, max_steps=1, weight_decay=0.01)
    trainer.create_optimizer()
    lrs = {g["group"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({"top": 1e-3, "layer.1": 5e-4, "layer.0": 2.5e-4, "embeddings": 1.25e-4})
    group_of = {id(p): g["group"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert group_of[id(named["bert.embeddings.word_embeddings.weight"])] == "embeddings"
    assert group_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == "layer.1"
    assert group_of[id(named["classifier.weight"])] == "top"
    no_decay = [g for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.dim() == 1 for g in no_decay for p in g["params"])


def test_llama_layers_found_generically():
    torch.manual_seed(0)
    tok = build_bpe_tokenizer(with_pad=True)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
    )
    layout = ModelLayout(LlamaForSequenceClassification(config))
    assert (layout.layers_prefix, layout.depth) == ("model.layers.", 3)
    assert layout.head_params == {"score.weight"}
    assert layout.level["model.embed_tokens.weight"] == 0
    assert layout.level["model.layers.2.mlp.up_proj.weight"] == 3
    assert layout.level["model.norm.weight"] == 4


@pytest.mark.parametrize(
    ("schedule", "plan"),
    [
        ("global-local", [("global", 8, "all", 1e-3), ("local", 2, "head", 1e-3)]),
        ("lp-ft", [("linear-probe", 5, "head", 1e-2), ("fine-tune", 5, "all", 1e-3)]),
        ("gradual-unfreezing", [("head", 3, "head", 1e-3), ("top1", 4, "top:1", 1e-3), ("all", 3, "all", 1e-3)]),
    ],
)
def test_presets(bert_data, tmp_path, schedule, plan):
    trainer = make_trainer(bert_data, tmp_path, schedule=schedule, max_steps=10, learning_rate=1e-3)
    trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())
    got = [(s.name, s.steps, s.trainable, s.learning_rate) for s in trainer.stages]
    assert got == plan


def _final_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("resume_step", [1, 3])  # mid-stage, and exactly at the stage boundary
def test_resume_is_bitwise_identical(bert_data, tmp_path, resume_step):
    stages = [
        {"name": "global", "trainable": "all", "max_steps": 3},
        {"name": "local", "trainable": "head", "max_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "cosine"},
    ]
    kw = dict(stages=stages, save_strategy="steps", save_steps=1, layer_lr_decay=0.8, weight_decay=0.01)
    full = make_trainer(bert_data, tmp_path / "full", **kw)
    full.train()
    reference = _final_weights(full)
    checkpoint = tmp_path / "full" / f"checkpoint-{resume_step}"
    assert (checkpoint / "stage.json").is_file()
    resumed = make_trainer(bert_data, tmp_path / "resumed", model=bert_model(seed=1), **kw)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    weights = _final_weights(resumed)
    assert resumed.stage_history[0]["stage"] == ("global" if resume_step < 3 else "local")
    assert all(torch.equal(reference[k], weights[k]) for k in reference)
    assert not torch.equal(reference["classifier.weight"], bert_model(seed=0).classifier.weight)


def test_resume_with_other_stages_fails(bert_data, tmp_path):
    stages = [{"name": "a", "trainable": "all", "max_steps": 1}, {"name": "b", "trainable": "head", "max_steps": 1}]
    make_trainer(bert_data, tmp_path / "r", stages=stages, save_strategy="steps", save_steps=1).train()
    other = [{**stages[0], "max_steps": 2}, stages[1]]
    trainer = make_trainer(bert_data, tmp_path / "r2", stages=other)
    with pytest.raises(ValueError, match="resume with the same stages"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "r" / "checkpoint-1"))


def test_no_stages_is_a_plain_trainer(bert_data, tmp_path):
    trainer = make_trainer(bert_data, tmp_path, max_steps=2)
    assert trainer.stages is None
    trainer.train()
    assert len(trainer.optimizer.param_groups) == 2  # Trainer's own decay / no-decay groups


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stages": [{"trainable": "top:5", "max_steps": 1}]}, "has 2 layers"),
        ({"stages": [{"trainable": ["nope\\.weight"], "max_steps": 1}]}, "matches no trainable parameter"),
        ({"stages": [{"trainable": "lora", "max_steps": 1}]}, "leaves nothing trainable"),
        ({"stages": [{"trainable": "all"}]}, "exactly one of max_steps"),
        ({"stages": [{"trainable": "middle", "max_steps": 1}]}, "use all, head, top:N"),
        ({"stages": [{"trainable": "all", "max_steps": 1, "lr": 1}]}, "unknown key"),
        ({"stages": [{"max_steps": 1}], "schedule": "lp-ft"}, "not both"),
        ({"schedule": "ulmfit"}, "use one of"),
        ({"layer_lr_decay": 1.5}, "layer_lr_decay=1.5"),
        ({"stages": [{"name": "x", "max_steps": 1}, {"name": "x", "max_steps": 1}]}, "unique"),
    ],
)
def test_bad_stages_fail_before_training(bert_data, tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(bert_data, tmp_path, **kw)


def test_lora_then_head_stages_on_a_peft_model(bert_data, tmp_path):
    from hf_finetune.config import LoraArguments
    from hf_finetune.models import apply_lora

    model = apply_lora(bert_model(), LoraArguments(use_lora=True, lora_r=2), task_type="SEQ_CLS")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stages = [
        {"name": "adapters", "trainable": "lora", "max_steps": 2},
        {"name": "head", "trainable": "head", "max_steps": 2},
    ]
    trainer = make_trainer(bert_data, tmp_path, model=model, stages=stages, learning_rate=1e-2)
    lora_names, head_names = (set(s.params) for s in trainer.stages)
    assert lora_names and all("lora_" in n for n in lora_names)
    assert head_names and all("modules_to_save" in n and "classifier" in n for n in head_names)
    before = snapshot(model)
    trainer.train()
    moved = changed(before, model)
    assert moved & lora_names and moved & head_names and moved <= lora_names | head_names
    params = dict(model.named_parameters())
    assert all(torch.equal(base[n], params[n]) for n in base)
