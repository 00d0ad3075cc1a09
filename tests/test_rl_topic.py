"""Topic steering with a classifier reward (recipes/rl/ppo_topic_reward_model.yaml): the log-prob reward,
the recipe's word-list judge and its fixed held-out prompts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from hf_finetune.recipe_parsing import parse_recipe, read_recipe_yaml
from hf_finetune.rl.config import RewardArguments
from hf_finetune.rl.train import blocks

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/rl/ppo_topic_reward_model.yaml"


def test_logprob_output_is_the_log_of_the_label_probability(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_finetune.rl.rewards import RewardModelScorer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, id2label={0: "sport", 1: "tech", 2: "business"},
        label2id={"sport": 0, "tech": 1, "business": 2})
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["the team won the cup", "shares fell", "a new phone"]
    probs = RewardModelScorer(model, tok, label="sport", output="prob")([""] * 3, texts)
    logprobs = RewardModelScorer(model, tok, label="sport", output="logprob")([""] * 3, texts)
    logits = RewardModelScorer(model, tok, label="sport", output="logit")([""] * 3, texts)
    assert logprobs == pytest.approx([math.log(p) for p in probs], abs=1e-5)
    assert all(lp < 0 for lp in logprobs) and logprobs != pytest.approx(logits, abs=1e-3)
    with pytest.raises(ValueError, match="'logprob'"):
        RewardModelScorer(model, tok, label="sport", output="log")


def test_reward_block_accepts_logprob_and_names_it_when_wrong():
    assert RewardArguments(reward_model="m", reward_model_label="sports",
                           reward_model_output="logprob").reward_model_output == "logprob"
    with pytest.raises(ValueError, match="'logprob'"):
        RewardArguments(reward_model="m", reward_model_label="sports", reward_model_output="probability")


def test_topic_recipe_judge_and_held_out_prompts():
    recipe = parse_recipe(read_recipe_yaml(RECIPE), blocks("ppo"))
    assert recipe.reward.reward_model_output == "logprob"
    judge = re.compile(recipe.reward.eval_metrics[0][len("regex:"):])
    for text in ("Arsenal beat Chelsea in the Premier League", "The World Cup final", "Federer wins at Wimbledon"):
        assert judge.search(text), text
    # Words that also fill business, TV and science stories must not count as sport.
    for text in ("A team of scientists set new goals", "The new season of The Crown", "key players in the market"):
        assert not judge.search(text), text

    def subjects(path):
        rows = [json.loads(line)["prompt"] for line in (ROOT / path).read_text().splitlines()]
        return {re.sub(r"^.* about (.*)\.$", r"\1", p) for p in rows}, len(rows)

    train, n_train = subjects(recipe.data.dataset)
    held_out, n_held = subjects(recipe.data.eval_dataset)
    assert n_train >= 60 and n_held >= 24
    assert not train & held_out  # held-out prompts ask about subjects no training prompt names
