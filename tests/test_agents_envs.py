"""Text environments: SB3's check_env, the token-id wrapper, BabyAI-Text descriptions, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from hf_finetune.rl_env.envs import (
    BabyAITextEnv,
    TextBanditEnv,
    TextObservationWrapper,
    describe_view,
    make_env,
    registered_env_ids,
)

TEXTS = ["goal match team", "chip code data", "bank shares profit"]


def _kwargs(env_id, tokenizer):
    if env_id == "hf_finetune/TextBandit-v0":
        return {"tokenizer": tokenizer, "texts": TEXTS, "labels": [0, 1, 2], "max_length": 8}
    return {"tokenizer": tokenizer, "level": "BabyAI-GoToObj-v0", "max_length": 128}


@pytest.mark.parametrize("env_id", registered_env_ids())
def test_check_env_on_every_registered_env(env_id, tiny_bert_dir):
    env = make_env(env_id, **_kwargs(env_id, tiny_bert_dir))
    check_env(env, warn=False)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.int64 and obs.shape == env.observation_space.shape
    assert {"text_tokens", "text_truncated"} <= set(info)


def test_check_env_babyai_text_with_symbolic_parts(tiny_bert_dir):
    env = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128, symbolic=True)
    check_env(env, warn=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"text", "image", "direction"} and obs["image"].shape == (7, 7, 3)


def test_wrapper_ids_decode_back_to_the_text(tiny_bert_dir):
    env = TextObservationWrapper(TextBanditEnv(TEXTS, [0, 1, 2]), tiny_bert_dir, max_length=8)
    seen = set()
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        text = TEXTS[env.unwrapped.index]
        assert env.decode(obs) == text
        assert info["text_truncated"] is False
        seen.add(text)
    assert len(seen) == 3


def test_babyai_text_ids_decode_to_the_description(tiny_bert_dir):
    env = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128)
    obs, _ = env.reset(seed=3)
    raw = BabyAITextEnv("BabyAI-GoToObj-v0")
    text, _ = raw.reset(seed=3)
    wrapper = env
    while not isinstance(wrapper, TextObservationWrapper):
        wrapper = wrapper.env
    # The toy WordPiece vocabulary spells unknown words letter by letter: compare without spaces.
    assert wrapper.decode(obs).replace(" ", "") == text.lower().replace(" ", "")
    assert text.startswith("Mission: go to the")


def test_truncation_is_reported_and_can_be_an_error(tiny_bert_dir):
    long = ["goal match team cup score win season league player coach"]
    env = TextObservationWrapper(TextBanditEnv(long, [0]), tiny_bert_dir, max_length=6)
    obs, info = env.reset(seed=0)
    assert info["text_truncated"] is True and info["text_tokens"] == 12
    assert env.decode(obs) == "goal match team cup"
    strict = TextObservationWrapper(TextBanditEnv(long, [0]), tiny_bert_dir, max_length=6, truncation=False)
    with pytest.raises(ValueError, match="more than max_length=6, and truncation is off"):
        strict.reset(seed=0)


def test_bandit_rewards_the_right_label():
    env = TextBanditEnv(TEXTS, [0, 1, 2], ["sport", "tech", "business"])
    env.reset(seed=0)
    right = env.labels[env.index]
    assert env.step(right)[1] == 1.0
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step((right + 1) % 3)
    assert reward == 0.0 and terminated and info["is_success"] is False


def test_describe_view_positions_and_walls():
    image = np.zeros((7, 7, 3), dtype=np.uint8)
    image[:, :, 0] = 1  # empty floor
    image[2, 4] = (6, 0, 0)  # red ball: 1 left, 2 forward
    image[3, 1] = (4, 2, 2)  # locked blue door: 5 forward
    image[3, 0] = (2, 5, 0)  # wall 6 forward
    image[6, 6] = (2, 5, 0)  # wall 3 right
    sentences = describe_view(image, carrying="green key")
    assert sentences == [
        "You carry a green key.",
        "You see a red ball 1 step left and 2 steps forward.",
        "You see a locked blue door 5 steps forward.",
        "You see a wall 6 steps forward.",
        "You see a wall 3 steps right.",
    ]


def test_describe_ahead_says_what_blocks_the_way_first_and_only_when_asked():
    image = np.zeros((7, 7, 3), dtype=np.uint8)
    image[:, :, 0] = 1  # empty floor
    image[2, 4] = (6, 0, 0)  # red ball: 1 left, 2 forward (sets the offset the old code leaked)
    plain = describe_view(image)
    assert plain == ["You see a red ball 1 step left and 2 steps forward."]
    assert describe_view(image, ahead=True) == ["In front of you is nothing.", *plain]
    for cell, name in (((2, 5, 0), "a wall"), ((7, 5, 0), "a grey box"), ((4, 0, 1), "a closed red door")):
        image[3, 5] = cell
        assert describe_view(image, carrying="green key", ahead=True)[:2] == [f"In front of you is {name}.",
                                                                              "You carry a green key."]
    env = BabyAITextEnv("BabyAI-GoToRedBallGrey-v0", describe_ahead=True)
    obs, _ = env.reset(seed=5)
    assert obs.split(". ")[1].startswith("In front of you is")
    assert "In front of you" not in BabyAITextEnv("BabyAI-GoToRedBallGrey-v0").reset(seed=5)[0]


def test_babyai_success_is_reported_at_episode_end():
    env = BabyAITextEnv("BabyAI-GoToObj-v0")
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(6)  # "done" never completes GoTo: runs to the time limit
    assert info["is_success"] is False


def test_unregistered_env_id_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"not registered.*hf_finetune/BabyAI-Text-v0.*hf_finetune/TextBandit-v0"):
        make_env("hf_finetune/NoSuchEnv-v0")


def test_unknown_babyai_level():
    with pytest.raises(ValueError, match="Unknown BabyAI level"):
        BabyAITextEnv("BabyAI-NoSuchLevel-v0")


def test_goal_split_holds_out_exactly_the_named_goals():
    from hf_finetune.rl_env.envs import mission_goal

    held_out = ["red ball", "green key", "blue box"]
    seen = {}
    for split in ("train", "held_out"):
        env = BabyAITextEnv("BabyAI-GoToLocalS6N2-v0", held_out_goals=held_out, goal_split=split)
        goals = set()
        env.reset(seed=0)
        for _ in range(60):
            goals.add(mission_goal(env.env))
            env.reset()
        seen[split] = goals
    assert seen["held_out"] <= set(held_out) and len(seen["held_out"]) >= 2
    assert not seen["train"] & set(held_out) and len(seen["train"]) >= 6
    # every colour and type of a held-out goal still occurs in training, in other combinations
    assert {"red", "green", "blue"} <= {g.split()[0] for g in seen["train"]}
    with pytest.raises(ValueError, match="No episode with a held-out goal.*'colour type'"):
        BabyAITextEnv("BabyAI-GoToLocalS6N2-v0", held_out_goals=["red dragon"], goal_split="held_out").reset(seed=0)
    with pytest.raises(ValueError, match="goal_split='test': use 'train' or 'held_out'"):
        BabyAITextEnv("BabyAI-GoToLocalS6N2-v0", held_out_goals=["red ball"], goal_split="test")


def test_a_list_of_levels_draws_each_episode_from_one_of_them():
    levels = ["BabyAI-GoToObj-v0", "BabyAI-GoToRedBallGrey-v0"]

    def sequence(seed):
        env = BabyAITextEnv(levels)
        drawn = [env.reset(seed=seed)[1]["level"]]
        drawn += [env.reset()[1]["level"] for _ in range(19)]
        return drawn, env.reset()[0]

    first, text = sequence(0)
    assert set(first) == set(levels)
    assert sequence(0) == (first, text)  # a seed fixes the levels and their episodes
    with pytest.raises(ValueError, match="Did you mean BabyAI-GoToObj-v0"):
        BabyAITextEnv(["BabyAI-GoToObj-v0", "BabyAI-GoToObject-v0"])


def _walk_into_the_wall(env):
    """Go forward until the agent stops moving, then face the same wall again: last action 'turn right'."""
    env.reset(seed=0)
    grid = env.unwrapped.env.unwrapped
    while True:
        before = tuple(grid.agent_pos)
        env.step(2)
        if tuple(grid.agent_pos) == before:
            break
    env.step(0)
    return env.step(1)[0]  # facing the blocked cell again


def test_last_action_tells_apart_views_a_memoryless_policy_cannot(tiny_bert_dir):
    # Walking into a wall leaves the view unchanged: without last_action the observation before and after
    # is the same, so a greedy policy that chose 'go forward' there chooses it forever.
    plain = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128, describe_ahead=True)
    facing = _walk_into_the_wall(plain)
    assert np.array_equal(plain.step(2)[0], facing)
    env = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128, describe_ahead=True,
                   last_action=True)
    check_env(env, warn=False)
    assert env.observation_space["last_action"].n == 8
    assert env.reset(seed=0)[0]["last_action"] == 7  # "none" after a reset
    facing = _walk_into_the_wall(env)
    bumped = env.step(2)[0]
    assert np.array_equal(bumped["text"], facing["text"])
    assert (facing["last_action"], bumped["last_action"]) == (1, 2)
    assert env.reset(seed=1)[0]["last_action"] == 7
    both = BabyAITextEnv("BabyAI-GoToObj-v0", symbolic=True, last_action=True)
    assert set(both.reset(seed=0)[0]) == {"text", "image", "direction", "last_action"}


def test_last_action_reaches_the_policy_features(tiny_bert_dir):
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    from hf_finetune.rl_env.extractor import LMFeaturesExtractor

    env = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128, last_action=True)
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, device="cpu", policy_kwargs={
        "features_extractor_class": LMFeaturesExtractor,
        "features_extractor_kwargs": {"encoder": tiny_bert_dir, "features_dim": 16}})
    obs, _ = env.reset(seed=0)
    rows = [{**obs, "last_action": np.array([a])} for a in (7, 0)]
    rows = [{k: np.asarray(v)[None] if k == "text" else v for k, v in row.items()} for row in rows]
    with torch.no_grad():
        first, second = (model.policy.extract_features(obs_as_tensor(r, "cpu"), model.policy.pi_features_extractor)
                         for r in rows)
    assert not torch.equal(first, second)


def test_steps_here_counts_turns_on_the_spot_that_last_action_cannot(tiny_bert_dir):
    # Four left turns bring back the same view with the same last action: the turning-on-the-spot loop.
    env = make_env("hf_finetune/BabyAI-Text-v0", tokenizer=tiny_bert_dir, max_length=128, describe_ahead=True,
                   last_action=True, steps_here=True)
    check_env(env, warn=False)
    start = env.reset(seed=0)[0]
    assert start["steps_here"] == 0
    turns = [env.step(0)[0] for _ in range(9)]
    assert np.array_equal(turns[3]["text"], start["text"]) and np.array_equal(turns[7]["text"], turns[3]["text"])
    assert turns[3]["last_action"] == turns[7]["last_action"] == 0
    assert [t["steps_here"] for t in turns] == [1, 2, 3, 4, 5, 6, 7, 7, 7]
    grid = env.unwrapped.env.unwrapped
    for _ in range(4):  # face a free cell and step into it: the count starts again
        if grid.grid.get(*grid.front_pos) is None:
            break
        env.step(0)
    assert env.step(2)[0]["steps_here"] == 0


def test_permute_colors_renames_every_colour_of_an_episode_the_same_way():
    import re

    plain = BabyAITextEnv("BabyAI-GoToRedBlueBall-v0", describe_ahead=True)
    permuted = BabyAITextEnv("BabyAI-GoToRedBlueBall-v0", describe_ahead=True, permute_colors=True)
    colours = r"\b(red|green|blue|purple|yellow|grey)\b"
    missions = set()
    for seed in range(8):
        texts = [plain.reset(seed=seed)[0]]
        renamed = [permuted.reset(seed=seed)[0]]  # the same episode (the level's own seed), other words
        for action in (2, 0, 2):
            texts.append(plain.step(action)[0])
            renamed.append(permuted.step(action)[0])
        pairs = set()
        for text, other in zip(texts, renamed):
            assert re.sub(colours, "C", text) == re.sub(colours, "C", other)  # only colour words change
            pairs |= set(zip(re.findall(colours, text), re.findall(colours, other)))
        # one-to-one, and the same renaming at every step of the episode
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}), pairs
        missions.add(renamed[0].split(".")[0])
    assert len(missions) > 2  # the red/blue missions come out in other colours
