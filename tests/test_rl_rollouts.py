"""Rollouts of the LM RL trainers: exact sampling, every EOS id and stop strings, the KL reference at step 0.

The tiny policies here are *skewed*: their output does not depend on the input and puts ~98% of the
probability on one token, so a rollout drawn from the true ``softmax(logits / T)`` is that token
repeated, and any sampling setting that changes the distribution shows at once.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_recipe
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

from hf_finetune.rl.ppo_config import PPOConfig
from hf_finetune.rl.ppo_trainer import PPOTrainer


@pytest.fixture(scope="module")
def tok_and_config(tiny_gpt2_dir):
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir), AutoConfig.from_pretrained(tiny_gpt2_dir)


def favourite_token(tokenizer) -> int:
    return tokenizer(" goal", add_special_tokens=False)["input_ids"][0]


def skewed_policy(config, token: int, margin: float = 10.0) -> GPT2LMHeadModel:
    """Last hidden state constant = ``margin * e`` with ``e`` = the (unit) embedding of ``token``: p(token) ~ 0.98."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        direction = torch.randn(config.n_embd)
        direction /= direction.norm()
        model.transformer.wte.weight[token] = direction  # tied: also the output row of `token`
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(margin * direction)
    return model


def prompts(n=8):
    return Dataset.from_list([{"prompt": p} for p in ["the team", "a match", "the coach said", "in the league"] * (n // 4)])


def ppo(model, tokenizer, tmp_path, **kw):
    values = dict(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8, max_completion_length=6,
                  report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    values.update(kw)
    return PPOTrainer(model, PPOConfig(**values), prompts(), processing_class=tokenizer,
                      reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts))


def rollout(trainer):
    torch.manual_seed(0)
    return trainer._rollout([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


def test_rollouts_sample_the_distribution_their_logprobs_describe(tmp_path, tok_and_config):
    tokenizer, config = tok_and_config
    token = favourite_token(tokenizer)
    model = skewed_policy(config, token)
    # Settings a checkpoint may ship: each one moves generate() away from softmax(logits / T).
    model.generation_config.repetition_penalty = 100.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.min_new_tokens = 6
    model.generation_config.top_k = 1
    model.generation_config.suppress_tokens = [token]
    batch = rollout(ppo(model, tokenizer, tmp_path))
    mask = batch["mask"].bool()
    share = (batch["responses"][mask] == token).float().mean().item()
    assert share > 0.9, f"only {share:.2f} of the sampled tokens are the 98%-likely one"
    # The stored log-probs describe those samples: most are log p(token) ~ log 0.98.
    assert batch["logprobs"][mask].median().item() > -0.1
    assert model.generation_config.repetition_penalty == 100.0  # the user's settings are left as they were
    assert model.generation_config.suppress_tokens == [token]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_group_methods_sample_without_the_models_sampling_settings(method, tmp_path, tok_and_config):
    from hf_finetune.rl.grpo_config import GRPOConfig
    from hf_finetune.rl.grpo_trainer import GRPOTrainer
    from hf_finetune.rl.rloo_config import RLOOConfig
    from hf_finetune.rl.rloo_trainer import RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[method]
    tokenizer, config = tok_and_config
    token = favourite_token(tokenizer)
    model = skewed_policy(config, token)
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = [token]
    seen = []

    def record(prompts, completion_ids, **_):
        seen.extend(completion_ids)
        return [0.0] * len(prompts)

    args = config_class(output_dir=str(tmp_path / method), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=6, kl_coef=0.0, report_to="none", use_cpu=True, save_strategy="no")
    trainer_class(model, args, prompts(), processing_class=tokenizer, reward_funcs=[record]).train()
    share = sum(i == token for ids in seen for i in ids) / sum(len(ids) for ids in seen)
    assert share > 0.9, f"only {share:.2f} of the sampled tokens are the 98%-likely one"
    assert model.generation_config.suppress_tokens == [token]


def test_every_eos_id_of_the_generation_config_ends_a_response(tmp_path, tok_and_config):
    tokenizer, config = tok_and_config
    token = favourite_token(tokenizer)
    model = skewed_policy(config, token)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, token]  # e.g. Llama-3's <|eot_id|>
    trainer = ppo(model, tokenizer, tmp_path)
    stats = rollout(trainer)["stats"]
    assert stats["eos"].mean().item() > 0.9 and stats["length"].mean().item() < 1.5
    metrics = trainer.evaluate(prompts(4))  # greedy evaluation ends there too
    assert metrics["eval_eos_rate"] == 1.0 and metrics["eval_completion_length"] == 1.0


def test_stop_strings_end_a_response(tmp_path, tok_and_config):
    tokenizer, config = tok_and_config
    token = favourite_token(tokenizer)
    seen = []
    trainer = ppo(skewed_policy(config, token), tokenizer, tmp_path, stop_strings=["goal"])
    trainer.reward_funcs = [lambda prompts, completions, **_: seen.extend(completions) or [0.0] * len(completions)]
    stats = rollout(trainer)["stats"]
    assert stats["eos"].mean().item() > 0.9 and stats["length"].mean().item() < 1.5
    assert sum(c.strip() == "goal" for c in seen) >= 6, seen


# ---------------------------------------------------------------------------------------------
# The KL reference is the starting policy, also when a trained adapter is carried in
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def carried_adapter(tmp_path, tiny_gpt2_dir):
    """A saved LoRA adapter whose B matrices are non-zero (as after SFT): it changes the policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "sft-adapter")
    return str(tmp_path / "sft-adapter")


@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_kl_is_zero_at_step_one_with_a_carried_adapter(method, tmp_path, tiny_gpt2_dir, carried_adapter):
    from hf_finetune.cli import load_recipe, run_recipe

    rows = [{"prompt": p} for p in ["the team", "a match", "the coach said", "in the league"] * 3]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "method": method,
        "model": {"model_name_or_path": tiny_gpt2_dir},
        "data": {"dataset": str(tmp_path / "prompts.jsonl"), "validation_size": 0.25},
        "lora": {"lora_adapter_path": carried_adapter},
        "reward": {"reward_funcs": ["length:4:chars"], "evaluate_before_training": False},
        "training": {"output_dir": str(tmp_path / method), "max_steps": 1, "learning_rate": 1e-3,
                     "per_device_train_batch_size": 4, "max_completion_length": 6, "kl_coef": 0.1,
                     "logging_steps": 1, "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 0},
    }
    run_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    history = json.loads((tmp_path / method / "trainer_state.json").read_text())["log_history"]
    key = "objective/kl" if method == "ppo" else "kl"
    first = next(e for e in history if key in e)
    assert first[key] == 0.0, first


def _threads_inside_generate(model, monkeypatch):
    """Patch the thread measurement to answer 3 (a count nothing else sets) and record the count generate() sees."""
    import hf_finetune.threads as threads

    asked, seen = [], []
    monkeypatch.setattr(threads, "fastest_threads", lambda rows, hidden, *a, **k: asked.append((rows, hidden)) or 3)
    generate = model.generate

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording)
    return asked, seen


def test_ppo_decodes_at_the_thread_count_measured_fastest(tmp_path, tok_and_config, monkeypatch):
    from hf_finetune.rl.rewards import evaluate_generations

    tokenizer, config = tok_and_config
    model = skewed_policy(config, favourite_token(tokenizer))
    trainer = ppo(model, tokenizer, tmp_path)
    before = torch.get_num_threads()
    asked, seen = _threads_inside_generate(model, monkeypatch)
    rollout(trainer)
    assert seen == [3] and asked == [(8, config.n_embd)]  # the rollout's rows x hidden
    assert torch.get_num_threads() == before  # training matmuls keep their own count
    evaluate_generations(model, tokenizer, ["the team"] * 4, None, [lambda prompts, completions, **_: [0.0] * 4],
                         max_new_tokens=2, batch_size=4)
    assert seen == [3, 3] and asked[-1] == (4, config.n_embd)
    # A bitwise-reproducible run keeps one count: another would change the logits' last bits, hence samples.
    trainer.args.full_determinism = True
    rollout(trainer)
    assert seen[-1] == before and len(asked) == 2


def test_grpo_decodes_at_the_thread_count_measured_fastest(tmp_path, tok_and_config, monkeypatch):
    from hf_finetune.rl.grpo_config import GRPOConfig
    from hf_finetune.rl.grpo_trainer import GRPOTrainer

    tokenizer, config = tok_and_config
    model = skewed_policy(config, favourite_token(tokenizer))
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=4, kl_coef=0.0, report_to="none", use_cpu=True, save_strategy="no")
    trainer = GRPOTrainer(model, args, prompts(), processing_class=tokenizer,
                          reward_funcs=[lambda prompts, completions, **_: [0.0] * len(prompts)])
    asked, seen = _threads_inside_generate(model, monkeypatch)
    trainer.train()
    assert seen == [3] and asked == [(8, config.n_embd)]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_stop_strings_end_a_group_methods_completion(method, tmp_path, tok_and_config):
    from hf_finetune.rl.grpo_config import GRPOConfig
    from hf_finetune.rl.grpo_trainer import GRPOTrainer
    from hf_finetune.rl.rloo_config import RLOOConfig
    from hf_finetune.rl.rloo_trainer import RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[method]
    tokenizer, config = tok_and_config
    seen, texts = [], []

    def record(prompts, completions, completion_ids, **_):
        seen.extend(completion_ids)
        texts.extend(completions)
        return [0.0] * len(prompts)

    args = config_class(output_dir=str(tmp_path / method), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=6, kl_coef=0.0, report_to="none", use_cpu=True, save_strategy="no",
                        stop_strings=["goal"])
    model = skewed_policy(config, favourite_token(tokenizer))  # " goal" at p ~ 0.98 from the first token on
    trainer_class(model, args, prompts(), processing_class=tokenizer, reward_funcs=[record]).train()
    assert sum(len(ids) == 1 for ids in seen) >= 6, seen  # cut right after the stop string, not 6 tokens long
    assert sum(t.strip() == "goal" for t in texts) >= 6, texts
    with pytest.raises(ValueError, match="stop_strings"):
        config_class(output_dir=str(tmp_path / "x"), stop_strings=[""])
