"""``hf-finetune eval RUN_DIR`` for the methods whose runs had no eval test: sft, ppo, grpo, rl_env.

Each trains a tiny run, then re-scores the saved run through the CLI; the figures must equal the
run's own final evaluation (same held-out split, same greedy decoding, same env seed).
(supervised and self_supervised runs are re-scored in test_hub.py and test_self_supervised_train.py.)
"""

from __future__ import annotations

import json

import pytest
from conftest import run_dict

from hf_finetune.cli import main

PROMPTS = [("the team", "goal"), ("a match", "win"), ("the coach said", "team"), ("in the league", "cup")] * 3


def _eval_cli(run_dir, capsys) -> dict:
    capsys.readouterr()
    code = main(["eval", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_sft_eval_reproduces_the_run(tmp_path, tiny_gpt2_dir, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": " " + a}) + "\n" for p, a in PROMPTS))
    out = tmp_path / "sft"
    recipe = {
        "method": "sft",
        "model": {"model_name_or_path": tiny_gpt2_dir},
        "data": {"dataset": str(data), "max_length": 32, "validation_size": 0.25},
        "training": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4,
                     "learning_rate": 1e-2, "save_strategy": "no", "report_to": "none", "seed": 0},
    }
    metrics = run_dict(recipe, tmp_path)
    again = _eval_cli(out, capsys)
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert again["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-5)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_rl_eval_reproduces_the_run(method, tmp_path, tiny_gpt2_dir, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PROMPTS))
    out = tmp_path / method
    recipe = {
        "method": method,
        "model": {"model_name_or_path": tiny_gpt2_dir},
        "data": {"dataset": str(data), "validation_size": 0.25},
        "reward": {"reward_funcs": ["length:4:chars"], "eval_metrics": ["exact_match:answer"],
                   "evaluate_before_training": False},
        "training": {"output_dir": str(out), "max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 4, "max_completion_length": 6, "kl_coef": 0.0,
                     "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 0},
    }
    metrics = run_dict(recipe, tmp_path)
    again = _eval_cli(out, capsys)
    for key in ("eval_reward", "eval_exact_match", "eval_completion_length"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_rl_env_eval_reproduces_the_run(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "agent"
    recipe = {
        "method": "rl_env",
        "model": {"model_name_or_path": tiny_bert_dir},
        "env": {"env_id": "hf_finetune/TextBandit-v0",
                "env_kwargs": {"texts": ["goal match", "chip code", "bank shares"], "labels": [0, 1, 2]},
                "max_length": 8, "n_envs": 2},
        "agent": {"output_dir": str(out), "algorithm": "a2c", "algo_kwargs": {"n_steps": 8},
                  "total_timesteps": 64, "features_dim": 16, "net_arch": [16], "eval_freq": 0, "n_eval_episodes": 12},
    }
    metrics = run_dict(recipe, tmp_path)
    again = _eval_cli(out, capsys)
    for key in ("eval_success_rate", "eval_mean_return"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    card = (out / "README.md").read_text()
    assert "library_name: stable-baselines3" in card and "hf_finetune/TextBandit-v0" in card
    assert "mean_reward" in card and "load_agent" in card
    assert (out / "versions.json").is_file()


def test_supervised_eval_reproduces_the_run_and_takes_other_data(tmp_path, tiny_bert_dir, topic_csv, capsys):
    from conftest import tiny_recipe

    from hf_finetune.data import load_splits
    from hf_finetune.recipe import evaluate_run, load_recipe

    out = tmp_path / "sup"
    metrics = run_dict(tiny_recipe(tiny_bert_dir, topic_csv, out, max_steps=6), tmp_path)
    again = _eval_cli(out, capsys)
    for key in ("eval_accuracy", "eval_f1_macro", "eval_loss"):
        assert again[key] == pytest.approx(metrics[key], abs=2e-6), key
    # --data: the same validation rows from a file, with the labels as names, give the same metrics.
    recipe = load_recipe(str(out / "recipe.yaml"), ["--output_dir", str(tmp_path / "scratch")])
    validation = load_splits(recipe.data, label_column="label")["validation"]
    feature = validation.features["label"]
    labels = [feature.int2str(y) if hasattr(feature, "int2str") else y for y in validation["label"]]
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(validation["text"], labels)))
    with_data = evaluate_run(str(out), data=str(held_out))
    assert with_data["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=2e-6)
