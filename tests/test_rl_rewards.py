"""The shared reward interface: validation, weights, None handling, built-ins, the reward-model scorer."""

from __future__ import annotations

import math

import pytest
import torch

from hf_finetune.rl.config import RewardArguments
from hf_finetune.rl.rewards import (
    RewardModelScorer,
    compute_rewards,
    evaluate_generations,
    exact_match,
    format_reward,
    length_reward,
    regex_match,
    resolve_reward_funcs,
    score_per_function,
)

PROMPTS = ["q1", "q2", "q3"]
COMPLETIONS = ["Paris", "The answer is 4.", "no idea"]


def constant(value):
    def reward(prompts, completions, **_):
        return [value] * len(completions)

    reward.__name__ = f"constant_{value}"
    return reward


def test_wrong_length_names_the_function():
    def short_reward(prompts, completions, **_):
        return [1.0]

    with pytest.raises(ValueError, match="short_reward.*returned 1 rewards for 3"):
        compute_rewards([short_reward], None, PROMPTS, COMPLETIONS)


@pytest.mark.parametrize("bad", ["1.0", [1.0], True, float("inf")])
def test_non_number_names_the_function(bad):
    def odd_reward(prompts, completions, **_):
        return [1.0, bad, 0.0]

    with pytest.raises(ValueError, match="odd_reward"):
        compute_rewards([odd_reward], None, PROMPTS, COMPLETIONS)


def test_non_list_output_is_rejected():
    def scalar_reward(prompts, completions, **_):
        return 1.0

    with pytest.raises(ValueError, match="scalar_reward.*list"):
        compute_rewards([scalar_reward], None, PROMPTS, COMPLETIONS)


def test_weighted_sum_and_tensor_outputs():
    def tensor_reward(prompts, completions, **_):
        return torch.tensor([1.0, 2.0, 3.0])

    total = compute_rewards([tensor_reward, constant(1.0)], [2.0, -0.5], PROMPTS, COMPLETIONS)
    assert total.dtype == torch.float32
    assert total.tolist() == [1.5, 3.5, 5.5]
    with pytest.raises(ValueError, match="has 2 values for 1 rewards"):
        compute_rewards([tensor_reward], [1.0, 2.0], PROMPTS, COMPLETIONS)


def test_none_is_skipped_and_all_none_follows_the_rule():
    def partial(prompts, completions, **_):
        return [None, 1.0, None]

    total = compute_rewards([partial, constant(0.5)], [1.0, 1.0], PROMPTS, COMPLETIONS)
    assert total.tolist() == [0.5, 1.5, 0.5]
    with pytest.raises(ValueError, match="Every reward function.*completion 0"):
        compute_rewards([partial], None, PROMPTS, COMPLETIONS)
    assert compute_rewards([partial], None, PROMPTS, COMPLETIONS, all_none="zero").tolist() == [0.0, 1.0, 0.0]
    nan = compute_rewards([partial], None, PROMPTS, COMPLETIONS, all_none="nan")
    assert math.isnan(nan[0]) and nan[1] == 1.0


def test_columns_reach_the_functions_and_are_checked():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(columns)
        return [0.0] * len(completions)

    score_per_function([spy], PROMPTS, COMPLETIONS, {"answer": ["a", "b", "c"]}, completion_ids=[[1], [2], [3]])
    assert seen["answer"] == ["a", "b", "c"] and seen["completion_ids"] == [[1], [2], [3]]
    with pytest.raises(ValueError, match="Column 'answer' has 2 values"):
        score_per_function([spy], PROMPTS, COMPLETIONS, {"answer": ["a", "b"]})


def test_builtins():
    answers = {"answer": [["Paris"], "4", None]}
    assert exact_match()(PROMPTS, COMPLETIONS, **answers) == [1.0, 1.0, None]
    assert exact_match(mode="contains")(PROMPTS, ["I think Paris.", "4 apples", "x"], **answers) == [1.0, 1.0, None]
    assert exact_match(mode="contains")(["q"], ["14"], answer=["4"]) == [0.0]  # whole words only
    with pytest.raises(ValueError, match="needs the dataset column 'gold'"):
        exact_match("gold")(PROMPTS, COMPLETIONS, **answers)
    assert regex_match(r"\d")(PROMPTS, COMPLETIONS) == [0.0, 1.0, 0.0]
    assert format_reward(r"[A-Z]\w+")(PROMPTS, COMPLETIONS) == [1.0, 0.0, 0.0]
    assert length_reward(2)(PROMPTS, COMPLETIONS) == [0.5, 0.0, 1.0]
    assert length_reward(5, unit="chars")(PROMPTS, ["Paris"]) == [1.0]


def test_resolve_reward_funcs():
    funcs = resolve_reward_funcs(["exact_match:gold", "contains_answer", "regex:^A", "format:\\d+", "length:3:chars",
                                  "hf_finetune.rl.rewards:normalize_answer", constant(1.0)])
    assert [f.__name__ for f in funcs] == ["exact_match", "contains_answer", "regex_match", "format_reward",
                                           "length_reward", "normalize_answer", "constant_1.0"]
    for bad in ["nope", "length:x", "", "os.path:does_not_exist"]:
        with pytest.raises(ValueError):
            resolve_reward_funcs([bad])


def test_reward_arguments_validation():
    with pytest.raises(ValueError, match="names no reward"):
        RewardArguments()
    with pytest.raises(ValueError, match="2 values for 1 rewards"):
        RewardArguments(reward_funcs=["exact_match"], reward_weights=[1.0, 2.0])
    assert RewardArguments(reward_funcs=["exact_match"], reward_model="x", reward_weights=[1, 2]).num_rewards == 2


@pytest.fixture(scope="module")
def tiny_classifier(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, id2label={0: "sport", 1: "tech", 2: "business"},
        label2id={"sport": 0, "tech": 1, "business": 2},
    )
    return model, AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_reward_model_scorer_prob_and_logit(tiny_classifier):
    model, tokenizer = tiny_classifier
    texts = ["the team won the match", "new phone software", "bank shares fell"]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    prob = RewardModelScorer(model, tokenizer, label="tech")
    assert prob.__name__ == "reward_model_tech"
    assert torch.allclose(torch.tensor(prob(PROMPTS, texts)), logits.softmax(-1)[:, 1], atol=1e-5)
    logit = RewardModelScorer(model, tokenizer, label=2, output="logit", batch_size=2)
    assert torch.allclose(torch.tensor(logit(PROMPTS, texts)), logits[:, 2], atol=1e-5)
    # It is a reward function like any other: validated and weighted by compute_rewards.
    total = compute_rewards([prob, constant(1.0)], [2.0, 1.0], PROMPTS, texts)
    assert torch.allclose(total, 2 * logits.softmax(-1)[:, 1] + 1, atol=1e-5)
    with pytest.raises(ValueError, match="choose one with label"):
        RewardModelScorer(model, tokenizer)
    with pytest.raises(ValueError, match="not one of the model's labels"):
        RewardModelScorer(model, tokenizer, label="weather")
    with pytest.raises(ValueError, match="out of range"):
        RewardModelScorer(model, tokenizer, label=7)


def test_reward_model_scorer_single_output_uses_logit(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    scorer = RewardModelScorer(model, tokenizer)
    with torch.no_grad():
        expected = model(**tokenizer(["q1 hello"], return_tensors="pt")).logits[:, 0]
    with torch.no_grad():
        alone = model(**tokenizer(["hello"], return_tensors="pt")).logits[:, 0]
    assert scorer.__name__ == "reward_model"
    assert torch.allclose(torch.tensor(scorer(["q1 "], ["hello"], answer=["x"])), alone, atol=1e-5)
    with_prompt = RewardModelScorer(model, tokenizer, include_prompt=True)
    assert torch.allclose(torch.tensor(with_prompt(["q1 "], ["hello"])), expected, atol=1e-5)


def test_evaluate_generations_greedy_and_task_metric(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.pad_token = tokenizer.eos_token
    prompts = ["the team", "a match said", "the coach"]
    metrics, table = evaluate_generations(
        model, tokenizer, prompts, {"answer": ["x", "y", "z"]}, [length_reward(4, unit="chars")], [2.0],
        [exact_match()], max_new_tokens=5, batch_size=2, num_logged=2,
    )
    again, _ = evaluate_generations(
        model, tokenizer, prompts, {"answer": ["x", "y", "z"]}, [length_reward(4, unit="chars")], [2.0],
        [exact_match()], max_new_tokens=5, batch_size=3,
    )
    assert metrics["reward"] == again["reward"]  # greedy: deterministic, batch-size independent
    assert 0 <= metrics["reward"] <= 2.0 and metrics["exact_match"] == 0.0
    assert 1 <= metrics["completion_length"] <= 5
    assert set(table[0]) == {"prompt", "completion", "reward", "exact_match"} and len(table) == 2
    assert tokenizer.padding_side == "right" and model.training  # both restored


def test_a_reward_that_raises_is_named_with_its_row():
    def picky(prompts, completions, **_):
        return [1.0 / len(c) for c in completions]  # ZeroDivisionError on an empty completion

    with pytest.raises(ValueError, match=r"'picky' raised ZeroDivisionError.*on row 1 \(prompt 'b'"):
        score_per_function([picky], ["a", "b", "c"], ["x", "", "z"])


def test_reward_model_reads_the_prompt_in_its_own_chat_format(tiny_classifier):
    model, tokenizer = tiny_classifier
    scorer = RewardModelScorer(model, tokenizer, label="sport", include_prompt=True)
    policy_text = "<|im_start|>user\nWrite about football<|im_end|>\n<|im_start|>assistant\n"
    # Without a chat template: the dataset's own prompt + completion, never the policy's template text.
    assert scorer.texts([policy_text], [" the team won"], raw_prompt=["Write about football"]) == [
        "Write about football the team won"]
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
    assert scorer.texts([policy_text], ["the team won"], raw_prompt=["Write about football"]) == [
        "[user] Write about football [assistant] the team won "]
    assert scorer([policy_text], ["the team won"], raw_prompt=["Write about football"])[0] > 0
    assert RewardModelScorer(model, tokenizer, label="sport").texts([policy_text], ["x"]) == ["x"]


def test_brevity_pays_for_every_word_dropped():
    from hf_finetune.rl.rewards import resolve_reward_funcs

    (brevity,) = resolve_reward_funcs(["brevity"])
    assert brevity(["q"] * 4, ["Madrid", "It is Madrid", "The capital of Spain is Madrid.", ""]) == [
        1.0, 1 / 3, 1 / 6, 0.0]


def test_reward_model_scorer_keeps_its_public_import_paths():
    """RewardModelScorer moved to rl/reward_model.py; the old paths name the very same class (isinstance checks)."""
    import hf_finetune
    from hf_finetune.rl import reward_model, rewards

    assert hf_finetune.RewardModelScorer is rewards.RewardModelScorer is reward_model.RewardModelScorer
    assert rewards.load_reward_model is reward_model.load_reward_model
