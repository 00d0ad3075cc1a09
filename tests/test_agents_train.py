"""rl_env recipes: DQN, A2C and PPO learn a text bandit; seeds, save/load, resume, LoRA, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hf_finetune.recipe_parsing import parse_recipe
from hf_finetune.rl_env.train import BLOCKS, load_agent, run

# Six two-word texts over three labels. The tiny BERT is random, not pretrained, so a frozen
# encoder cannot *understand* them; but it is a fixed function, and distinct token sequences get
# distinct pooled embeddings. A trainable projection and head on top can then tell six fixed
# points apart, which makes the bandit learnable with the frozen encoder: the test checks the RL
# machinery (extractor, cache, algorithm) end to end, not language understanding.
TEXTS = ["goal match", "team cup", "chip code", "data phone", "bank shares", "profit market"]
LABELS = [0, 0, 1, 1, 2, 2]

ALGO_KWARGS = {
    "ppo": {"n_steps": 64, "batch_size": 64, "learning_rate": 0.003, "n_epochs": 4},
    "a2c": {"n_steps": 8, "learning_rate": 0.003},
    "dqn": {"learning_starts": 100, "buffer_size": 2000, "learning_rate": 0.003, "train_freq": 1,
            "target_update_interval": 100, "exploration_fraction": 0.3, "batch_size": 32},
}
STEPS = {"ppo": 4000, "a2c": 2000, "dqn": 2000}


def bandit_recipe(encoder, output_dir, algorithm="ppo", **agent):
    data = {
        "method": "rl_env",
        "model": {"model_name_or_path": encoder},
        "env": {"env_id": "hf_finetune/TextBandit-v0", "env_kwargs": {"texts": TEXTS, "labels": LABELS},
                "max_length": 8, "n_envs": 4},
        "agent": {"output_dir": str(output_dir), "algorithm": algorithm, "algo_kwargs": ALGO_KWARGS[algorithm],
                  "total_timesteps": STEPS[algorithm], "features_dim": 32, "net_arch": [32], "eval_freq": 0,
                  "n_eval_episodes": 30, **agent},
    }
    lora = agent.pop("lora", None)
    if lora is not None:
        data["lora"] = lora
        data["agent"].pop("lora")
    return data


@pytest.mark.parametrize("algorithm", ["dqn", "a2c", "ppo"])
def test_each_algorithm_learns_the_bandit(algorithm, tiny_bert_dir, tmp_path):
    metrics = run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, algorithm), BLOCKS))
    # Random guessing scores 1/3.
    assert metrics["eval_success_rate"] >= 0.9, metrics
    assert metrics["cache_hit_rate"] > 0.9  # six distinct views: nearly every embedding came from the cache
    progress = (tmp_path / "progress.csv").read_text()
    assert "train/" in progress and "encoder/cache_hit_rate" in progress
    for name in ("agent.zip", "policy.safetensors", "recipe.yaml", "metrics.json", "README.md", "curves.png"):
        assert (tmp_path / name).is_file(), name


def test_same_seed_twice_gives_identical_results(tiny_bert_dir, tmp_path):
    results = []
    for run_id in ("a", "b"):
        data = bandit_recipe(tiny_bert_dir, tmp_path / run_id, "ppo", total_timesteps=512)
        metrics = run(parse_recipe(data, BLOCKS))
        with safe_open(tmp_path / run_id / "policy.safetensors", "pt") as f:
            weights = {k: f.get_tensor(k) for k in f.keys()}
        results.append((metrics, weights))
    (m1, w1), (m2, w2) = results
    assert {k: v for k, v in m1.items() if k != "train_runtime_s"} == {k: v for k, v in m2.items() if k != "train_runtime_s"}
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    other = run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path / "c", "ppo", total_timesteps=512, seed=1), BLOCKS))
    assert other["num_timesteps"] == m1["num_timesteps"]  # a different seed may score the same; weights differ:
    with safe_open(tmp_path / "c" / "policy.safetensors", "pt") as f:
        assert not all(torch.equal(f.get_tensor(k), w1[k]) for k in w1)


def test_save_load_without_pickle_and_card(tiny_bert_dir, tmp_path, capsys):
    metrics = run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "a2c"), BLOCKS))
    out = capsys.readouterr().out  # the final metrics on stdout too, as Trainer methods print them
    assert "***** eval metrics *****" in out
    assert ["eval_success_rate", "=", str(round(metrics["eval_success_rate"], 4))] in [line.split() for line in out.splitlines()]
    with safe_open(tmp_path / "policy.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("embeddings" in k for k in keys)  # the frozen encoder is not duplicated into the file
    agent = load_agent(tmp_path)
    env = agent.get_env()
    env.seed(123)
    obs = env.reset()
    correct = 0
    for _ in range(30):
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, _, _ = env.step(action)
        correct += int(reward[0])
    assert correct >= 27
    card = (tmp_path / "README.md").read_text()
    for text in ("A2C", "synchronous form of A3C", tiny_bert_dir, "hf_finetune/TextBandit-v0", "eval_success_rate"):
        assert text in card
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_success_rate"] == metrics["eval_success_rate"]


def test_checkpoint_and_resume(tiny_bert_dir, tmp_path):
    first = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", total_timesteps=512, checkpoint_freq=256)
    run(parse_recipe(first, BLOCKS))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.zip"))
    assert checkpoints == ["agent_256_steps.zip", "agent_512_steps.zip"]
    resumed = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", total_timesteps=1024, resume_from_checkpoint="latest")
    metrics = run(parse_recipe(resumed, BLOCKS))
    assert metrics["num_timesteps"] == 1024
    with pytest.raises(ValueError, match="no such checkpoint"):
        run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", resume_from_checkpoint="nope.zip"), BLOCKS))


def test_lora_encoder_learns_and_keeps_base_weights(tiny_bert_dir, tmp_path):
    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", total_timesteps=2048, encoder_mode="lora",
                         encoder_learning_rate=0.001, lora={"lora_r": 4})
    metrics = run(parse_recipe(data, BLOCKS))
    assert metrics["eval_success_rate"] >= 0.9, metrics
    _check_adapters_trained_and_base_unchanged(tmp_path, tiny_bert_dir)


def _check_adapters_trained_and_base_unchanged(run_dir, encoder_dir) -> list[str]:
    """The saved policy's LoRA B matrices moved off zero and every pretrained encoder weight is bitwise the same."""
    from transformers import AutoModel

    with safe_open(run_dir / "policy.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and any(saved[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: adapters were trained
    base = AutoModel.from_pretrained(encoder_dir).state_dict()
    checked = 0
    for key in saved:
        name = key.split("base_model.model.")[-1].replace(".base_layer", "")
        if "base_model.model." in key and "lora_" not in key and not name.startswith("pooler."):  # pooler: random
            assert torch.equal(saved[key], base[name]), key
            checked += 1
    assert checked > 20
    return lora_b


def test_validation_env_kwargs_let_keep_best_choose_on_training_goals(tiny_bert_dir, tmp_path):
    """With held-out goals the held-out env plays only those; validation must not, or the choice sees them."""
    from hf_finetune.rl_env.train import env_kwargs

    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", keep_best=True, eval_freq=1000)
    data["env"].update(env_kwargs={"level": "BabyAI-GoToLocalS6N2-v0", "held_out_goals": ["red ball"]},
                       env_id="hf_finetune/BabyAI-Text-v0", eval_env_kwargs={"goal_split": "held_out"},
                       validation_env_kwargs={"goal_split": "train"})
    recipe = parse_recipe(data, BLOCKS)
    assert "goal_split" not in env_kwargs(recipe)
    assert env_kwargs(recipe, evaluation=True)["goal_split"] == "held_out"
    assert env_kwargs(recipe, evaluation=True, validation=True)["goal_split"] == "train"
    del data["env"]["validation_env_kwargs"]  # default: validation plays what evaluation plays
    assert env_kwargs(parse_recipe(data, BLOCKS), evaluation=True, validation=True)["goal_split"] == "held_out"


def test_lora_on_the_top_layer_reading_sentences_learns_and_leaves_the_rest(tiny_bert_dir, tmp_path):
    """Sentence mode with a trained encoder: adapters only in layer 1, layer 0's output cached; it learns."""
    texts = [f"{t}. the end." for t in TEXTS]  # every view shares its second sentence
    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", total_timesteps=2048, encoder_mode="lora",
                         encoder_learning_rate=0.001, sentence_separator=".", sentence_pooling="attention",
                         attention_dim=16, lora={"lora_r": 4, "lora_dropout": 0.0, "lora_layers_to_transform": [1]})
    data["env"]["env_kwargs"]["texts"] = texts
    data["env"]["max_length"] = 12
    metrics = run(parse_recipe(data, BLOCKS))
    assert metrics["eval_success_rate"] >= 0.9, metrics
    lora_b = _check_adapters_trained_and_base_unchanged(tmp_path, tiny_bert_dir)
    assert all(".layer.1." in k for k in lora_b)  # only the top layer is adapted


def test_frozen_encoder_with_lora_block_fails_before_loading(tiny_bert_dir, tmp_path):
    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", lora={"lora_r": 4})
    with pytest.raises(ValueError, match="frozen encoder takes no LoRA"):
        run(parse_recipe(data, BLOCKS))


def test_bad_recipe_values(tiny_bert_dir, tmp_path):
    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["agent"]["algorithm"] = "a3c"
    with pytest.raises(ValueError, match="SB3 has no asynchronous A3C"):
        parse_recipe(data, BLOCKS)
    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["env"]["env_id"] = "hf_finetune/Nope-v0"
    with pytest.raises(ValueError, match="not registered.*hf_finetune/TextBandit-v0"):
        parse_recipe(data, BLOCKS)
    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["agent"]["algo_kwargs"] = {"no_such_argument": 1}
    with pytest.raises(ValueError, match="agent.algo_kwargs"):
        run(parse_recipe(data, BLOCKS))


def test_errors_before_step_one_name_the_fix(tiny_bert_dir, tmp_path):
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import DummyVecEnv

    from hf_finetune.rl_env.train import build_agent

    data = bandit_recipe(tiny_bert_dir, tmp_path, "a2c")
    data["agent"]["algo_kwargs"] = {"n_step": 8}  # typo of n_steps: names the key, the algorithm and the fix
    with pytest.raises(ValueError, match=r"A2C \(agent.algorithm=a2c\) takes no argument 'n_step'. Did you mean n_steps"):
        run(parse_recipe(data, BLOCKS))
    assert not (tmp_path / "progress.csv").exists()  # nothing trained

    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["env"]["n_envs"] = 0
    with pytest.raises(ValueError, match="env.n_envs=0: use at least 1"):
        parse_recipe(data, BLOCKS)

    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["env"] = {"env_id": "hf_finetune/BabyAI-Text-v0", "env_kwargs": {"level": "BabyAI-GoToObject-v0"}}
    with pytest.raises(ValueError, match="env.env_kwargs.level: Unknown BabyAI level 'BabyAI-GoToObject-v0'. "
                                         "Did you mean BabyAI-GoToObj-v0"):
        parse_recipe(data, BLOCKS)

    data = bandit_recipe(tiny_bert_dir, tmp_path, "dqn")
    data["agent"]["algo_kwargs"] = {**data["agent"]["algo_kwargs"], "buffer_size": 10**12}
    with pytest.raises(ValueError, match=r"buffer_size=1000000000000: the replay buffer would take [\d.]+ GiB "
                                         r"\(148 bytes per transition.*Use buffer_size <= \d+"):
        run(parse_recipe(data, BLOCKS))

    class Continuous(gym.Env):  # token-id observations, a continuous action
        observation_space = spaces.Box(0, 10, (8,), dtype=np.int64)
        action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(8, dtype=np.int64), {}

        def step(self, action):
            return np.zeros(8, dtype=np.int64), 0.0, True, False, {}

    recipe = parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "dqn"), BLOCKS)
    with pytest.raises(ValueError, match=r"agent.algorithm=dqn picks one of n discrete actions.*Box\(-1.0, 1.0.*ppo or a2c"):
        build_agent(recipe, DummyVecEnv([Continuous]))


def test_standardized_embeddings_are_fitted_saved_and_reloaded(tiny_bert_dir, tmp_path):
    from hf_finetune.rl_env.extractor import lm_extractors
    from hf_finetune.rl_env.train import evaluate

    data = bandit_recipe(tiny_bert_dir, tmp_path, "a2c", standardize_embeddings=True, standardize_steps=64)
    metrics = run(parse_recipe(data, BLOCKS))
    assert metrics["eval_success_rate"] >= 0.9, metrics
    again = evaluate(parse_recipe(data, BLOCKS), str(tmp_path))  # `hf-finetune eval`: the saved statistics are used
    assert again["eval_success_rate"] == metrics["eval_success_rate"]
    with safe_open(tmp_path / "policy.safetensors", "pt") as f:
        mean, std = f.get_tensor("features_extractor.embedding_mean"), f.get_tensor("features_extractor.embedding_std")
    # fitted on the six bandit texts: not the initial zeros/ones
    assert mean.abs().sum() > 0 and not torch.allclose(std, torch.ones_like(std))
    agent = load_agent(tmp_path)
    (extractor,) = lm_extractors(agent.policy)
    assert torch.equal(extractor.embedding_mean, mean) and torch.equal(extractor.embedding_std, std)
    encode = agent.get_env().envs[0].get_wrapper_attr("encode")
    ids = torch.as_tensor(np.stack([encode(text) for text in TEXTS]))
    vectors = (extractor.encode(extractor.token_ids(ids.float())) - mean) / std
    assert torch.allclose(vectors.mean(0), torch.zeros_like(mean), atol=1e-4)  # the six texts, standardized


@pytest.mark.slow
def test_subprocess_envs_and_babyai_text(tiny_bert_dir, tmp_path):
    data = {
        "method": "rl_env",
        "model": {"model_name_or_path": tiny_bert_dir},
        "env": {"env_id": "hf_finetune/BabyAI-Text-v0", "env_kwargs": {"level": "BabyAI-GoToObj-v0"},
                "max_length": 128, "n_envs": 2, "subprocess_envs": True},
        "agent": {"output_dir": str(tmp_path), "algorithm": "ppo", "algo_kwargs": {"n_steps": 64, "batch_size": 64},
                  "total_timesteps": 256, "eval_freq": 128, "n_eval_episodes": 2, "features_dim": 16},
    }
    metrics = run(parse_recipe(data, BLOCKS))
    assert metrics["num_timesteps"] == 256 and 0.0 <= metrics["eval_success_rate"] <= 1.0
    assert (Path(tmp_path) / "evaluations.npz").is_file()


def test_non_finite_weights_stop_training_naming_the_step(tiny_bert_dir, tmp_path):
    from hf_finetune.callbacks import NonFiniteLossError
    from hf_finetune.rl_env.train import EncoderStatsCallback, build_agent, build_envs

    recipe = parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "a2c"), BLOCKS)
    model = build_agent(recipe, build_envs(recipe))
    from stable_baselines3.common.logger import configure

    model.set_logger(configure(None, []))
    callback = EncoderStatsCallback()
    callback.init_callback(model)
    callback.on_rollout_end()  # finite: no error
    with torch.no_grad():
        next(model.policy.parameters())[0] = float("nan")
    model.num_timesteps = 96
    with pytest.raises(NonFiniteLossError, match="at step 96"):
        callback.on_rollout_end()


@pytest.mark.slow  # a subprocess (imports torch, SB3, transformers): ~15 s idle, more on a busy machine
def test_push_to_hub_with_model_card(tiny_bert_dir, tmp_path):
    """Train and push through the CLI against the local fake Hub (real HTTP, no internet)."""
    import os
    import subprocess
    import sys

    from conftest import write_recipe
    from fake_hub import FakeHub

    root = Path(__file__).resolve().parents[1]
    data = bandit_recipe(tiny_bert_dir, tmp_path / "run", "a2c", push_to_hub=True, hub_model_id="me/bandit-a2c")
    path = write_recipe(tmp_path / "recipe.yaml", data)
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") or k == "HF_DATASETS_OFFLINE"}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN="hf_test_token_123",
                   HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", PYTHONPATH=str(root))
        proc = subprocess.run([sys.executable, "-m", "hf_finetune", "train", path], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        pushed = hub.files("me/bandit-a2c")
    for name in ("agent.zip", "policy.safetensors", "recipe.yaml", "metrics.json", "README.md"):
        assert name in pushed, name
    card = pushed["README.md"].decode()
    for text in ("stable-baselines3", "model-index", "success_rate", "A2C", "synchronous form of A3C",
                 "hf_finetune/TextBandit-v0", tiny_bert_dir):
        assert text in card, text
    assert "hf_test_token_123" not in card


def test_agent_config_range_checks_apply_from_python():
    from hf_finetune.rl_env.config import AgentConfig

    with pytest.raises(ValueError, match="agent.total_timesteps=-5"):
        AgentConfig(output_dir="out", total_timesteps=-5)


@pytest.mark.parametrize("shared, bias", [(False, 0.0), (True, 0.0), (True, 20.0)])
def test_attention_pooling_learns_what_only_the_later_sentences_say(tiny_bert_dir, tmp_path, shared, bias):
    # The first sentence (the "mission") is the same in every text: the label is only in the second,
    # which the agent can read only through the learned attention over cached sentence embeddings.
    # Standardized as in the BabyAI recipes: without it the random tiny BERT's sentence embeddings are
    # too alike for 4,000 steps (0.43 measured), while mean pooling reads them straight into the projection.
    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_separator=".", sentence_pooling="attention",
                         attention_dim=16, standardize_embeddings=True, standardize_steps=64,
                         attention_shared_projection=shared, attention_similarity_bias=bias)
    data["env"]["env_kwargs"]["texts"] = [f"which topic. {text}." for text in TEXTS]
    data["env"]["max_length"] = 20
    recipe = parse_recipe(data, BLOCKS)
    metrics = run(recipe)
    assert metrics["eval_success_rate"] >= 0.9, metrics  # random: 1/3
    assert metrics["sentences_encoded"] == 7  # the shared first sentence once, then one per text
    with safe_open(tmp_path / "policy.safetensors", "pt") as f:
        assert any("attention.key" in k for k in f.keys()) != shared  # shared: the query's projection only
    extractor = load_agent(tmp_path).policy.features_extractor
    assert extractor.sentence_pooling == "attention" and (extractor.attention.key is None) == shared
    assert (extractor.attention.similarity_scale is not None) == bool(bias)  # rebuilt from recipe.yaml


def test_attention_pooling_needs_the_sentence_separator(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="sentence_separator: '.' too"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_pooling="attention"), BLOCKS)
    with pytest.raises(ValueError, match="sentence_slots needs agent.sentence_separator"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_slots=2), BLOCKS)
    with pytest.raises(ValueError, match="set agent.sentence_pooling: attention too"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_separator=".",
                                   attention_shared_projection=True), BLOCKS)
    with pytest.raises(ValueError, match="agent.attention_similarity_bias shapes"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_separator=".",
                                   attention_similarity_bias=20.0), BLOCKS)
    with pytest.raises(ValueError, match="use 0 \\(off\\) or a positive scale"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_separator=".", sentence_pooling="attention",
                                   attention_similarity_bias=-1.0), BLOCKS)
    with pytest.raises(ValueError, match="use mean or attention"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", sentence_separator=".", sentence_pooling="max"),
                     BLOCKS)


def test_linear_learning_rate_schedule_decays_to_zero_and_reloads(tiny_bert_dir, tmp_path):
    import csv

    rates = {}
    for schedule in ("constant", "linear"):
        out = tmp_path / schedule
        run(parse_recipe(bandit_recipe(tiny_bert_dir, out, "ppo", total_timesteps=1024,
                                       learning_rate_schedule=schedule), BLOCKS))
        with open(out / "progress.csv") as f:
            rates[schedule] = [float(r["train/learning_rate"]) for r in csv.DictReader(f) if r["train/learning_rate"]]
    # 1,024 steps = 4 rollouts of 4 envs x 64 steps; SB3 sets the rate before each update from the fraction of
    # training left (0.75, 0.5, 0.25, 0) and the csv holds the first three updates' rows.
    assert rates["constant"] == [0.003] * 3
    assert rates["linear"] == pytest.approx([0.00225, 0.0015, 0.00075]), rates
    assert load_agent(tmp_path / "linear").lr_schedule(0.5) == pytest.approx(0.0015)
    with pytest.raises(ValueError, match="learning_rate_schedule='cosine': use constant or linear"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", learning_rate_schedule="cosine"), BLOCKS)


@pytest.mark.parametrize("algorithm", ["ppo", "a2c"])
def test_linear_ent_coef_schedule_decays_the_bonus_train_uses(algorithm, tiny_bert_dir, tmp_path, monkeypatch):
    import stable_baselines3

    used = []  # the coefficient each update's loss reads, recorded inside SB3's own train()
    cls = getattr(stable_baselines3, algorithm.upper())
    train = cls.train

    def recording_train(self):
        used.append(self.ent_coef)
        return train(self)

    monkeypatch.setattr(cls, "train", recording_train)
    kwargs = {**ALGO_KWARGS[algorithm], "ent_coef": 0.01}
    rollout = 4 * kwargs["n_steps"]  # 4 envs
    run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path / "constant", algorithm, total_timesteps=4 * rollout,
                                   algo_kwargs=kwargs), BLOCKS))
    assert used == [0.01] * 4
    used.clear()
    run(parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path / "linear", algorithm, total_timesteps=4 * rollout,
                                   algo_kwargs=kwargs, ent_coef_schedule="linear"), BLOCKS))
    # The fraction of training left after each rollout, as the learning-rate schedule gets it: 0.75 ... 0.
    assert used == pytest.approx([0.0075, 0.005, 0.0025, 0.0]), used
    progress = (tmp_path / "linear" / "progress.csv").read_text()
    assert "train/ent_coef" in progress


def test_ent_coef_schedule_errors_name_the_fix(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="ent_coef_schedule='cosine': use constant or linear"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", ent_coef_schedule="cosine"), BLOCKS)
    with pytest.raises(ValueError, match="but it is None .*set it, e.g. ent_coef: 0.01"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", ent_coef_schedule="linear"), BLOCKS)
    with pytest.raises(ValueError, match="dqn has none"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "dqn", ent_coef_schedule="linear"), BLOCKS)


def test_keep_best_restores_the_best_validation_weights_and_reports_held_out(tiny_bert_dir, tmp_path):
    """agent.keep_best: the run ends with the weights SB3's validation EvalCallback saved as best.

    A callback wrecks the policy when training ends (a stand-in for a late collapse). Without
    keep_best those wrecked weights would be saved and scored; with it, the best validation
    weights come back, and they are scored on the held-out episodes, which the choice never saw.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class Collapse(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            with torch.no_grad():
                for param in self.model.policy.action_net.parameters():
                    param.fill_(7.0)  # every logit equal: argmax is always action 0

    data = bandit_recipe(tiny_bert_dir, tmp_path, "ppo", total_timesteps=3072, eval_freq=1024, keep_best=True)
    metrics = run(parse_recipe(data, BLOCKS), callbacks=[Collapse()])
    validation = np.load(tmp_path / "validation" / "evaluations.npz")
    held_out = np.load(tmp_path / "evaluations.npz")
    assert list(validation["timesteps"]) == list(held_out["timesteps"]) == [1024, 2048, 3072]
    best = int(np.argmax(validation["results"].mean(axis=1)))
    assert metrics["best_step"] == int(validation["timesteps"][best])
    assert metrics["best_validation_success_rate"] == pytest.approx(validation["successes"][best].mean())
    # The held-out figure is the best weights' (the bandit is learnt by then), the last one the wreck's (label 0: 1/3).
    assert metrics["eval_success_rate"] >= 0.9 and metrics["last_eval_success_rate"] < 0.6, metrics
    with safe_open(tmp_path / "policy.safetensors", "pt") as f:
        assert not torch.all(f.get_tensor("action_net.weight") == 7.0)
    assert load_agent(tmp_path).policy.action_net.weight.ne(7.0).any()
    # Validation episodes are other episodes than the held-out ones (another seed of the same env).
    from hf_finetune.rl_env.train import build_envs

    recipe = parse_recipe(data, BLOCKS)
    firsts = []
    for seed in (recipe.env.eval_seed, recipe.env.validation_seed):
        env = build_envs(recipe, evaluation=True, seed=seed)
        firsts.append([env.reset()[0].tolist() for _ in range(20)])
        env.close()
    assert firsts[0] != firsts[1]
    progress = (tmp_path / "progress.csv").read_text().splitlines()[0]
    assert "validation/success_rate" in progress and "eval/success_rate" in progress
    with pytest.raises(ValueError, match="set agent.eval_freq > 0"):
        parse_recipe(bandit_recipe(tiny_bert_dir, tmp_path, "ppo", keep_best=True, eval_freq=0), BLOCKS)
    same = bandit_recipe(tiny_bert_dir, tmp_path, "ppo")
    same["env"]["validation_seed"] = same["env"]["eval_seed"] = 5
    with pytest.raises(ValueError, match="validation episodes would be the held-out ones"):
        parse_recipe(same, BLOCKS)


# ------------------------------------------------------------------ recurrent_ppo (sb3-contrib)


class CueEnv:
    """A cue word ("left" / "right") at step 0, then the same word ("wait") twice; at the last step, say the cue.

    Reward 1 for the right answer at the last step, 0 otherwise. At the decision step every episode
    looks the same, so a memoryless policy cannot beat 0.5: only a memory of step 0 can.
    """

    CUES, LENGTH = ("left", "right"), 3

    @staticmethod
    def make(tokenizer, max_length=8, truncation=True):
        import gymnasium as gym
        from gymnasium import spaces

        from hf_finetune.rl_env.envs import TextObservationWrapper

        class Cue(gym.Env):
            observation_space = spaces.Text(max_length=16)
            action_space = spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.cue, self.t = int(self.np_random.integers(2)), 0
                return CueEnv.CUES[self.cue], {}

            def step(self, action):
                self.t += 1
                if self.t < CueEnv.LENGTH:
                    return "wait", 0.0, False, False, {}
                correct = int(action) == self.cue
                return "wait", float(correct), True, False, {"is_success": correct}

        return TextObservationWrapper(Cue(), tokenizer, max_length=max_length, truncation=truncation)


def cue_recipe(encoder, output_dir, algorithm="recurrent_ppo", **agent):
    import gymnasium as gym

    if "hf_finetune_tests/Cue-v0" not in gym.registry:
        gym.register("hf_finetune_tests/Cue-v0", entry_point=CueEnv.make, disable_env_checker=True)
    data = bandit_recipe(encoder, output_dir, "ppo", **{"total_timesteps": 6144, **agent})
    data["env"].update(env_id="hf_finetune_tests/Cue-v0", env_kwargs={})
    data["agent"].update(algorithm=algorithm, algo_kwargs={"n_steps": 48, "batch_size": 48, "learning_rate": 0.003,
                                                           "n_epochs": 4})
    if algorithm == "recurrent_ppo":
        data["agent"]["lstm_hidden_size"] = 16
    return data


def test_recurrent_ppo_remembers_a_cue_that_memoryless_ppo_cannot(tiny_bert_dir, tmp_path):
    from stable_baselines3.common.callbacks import BaseCallback

    from hf_finetune.rl_env.train import evaluate

    class Initial(BaseCallback):
        def _on_training_start(self):
            self.weights = {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()}

        def _on_step(self):
            return True

    initial = Initial()
    data = cue_recipe(tiny_bert_dir, tmp_path / "lstm")
    metrics = run(parse_recipe(data, BLOCKS), callbacks=[initial])
    assert metrics["eval_success_rate"] >= 0.9, metrics
    assert "train/loss" in (tmp_path / "lstm" / "progress.csv").read_text()
    with safe_open(tmp_path / "lstm" / "policy.safetensors", "pt") as f:
        assert any("lstm_actor" in k for k in f.keys())
        changed = [k for k in f.keys() if not torch.equal(f.get_tensor(k), initial.weights[k])]
    assert any("lstm_actor" in k for k in changed) and any("action_net" in k for k in changed)
    memoryless = run(parse_recipe(cue_recipe(tiny_bert_dir, tmp_path / "ppo", "ppo"), BLOCKS))
    assert memoryless["eval_success_rate"] <= 0.7, memoryless  # the same budget without memory: a coin flip

    # hf-finetune eval and load_agent rebuild the LSTM policy; acting by hand carries the LSTM state.
    recipe = parse_recipe(data, BLOCKS)
    assert evaluate(recipe, str(tmp_path / "lstm"))["eval_success_rate"] == metrics["eval_success_rate"]
    agent = load_agent(tmp_path / "lstm")
    env = agent.get_env()
    env.seed(7)
    obs, state, start, wins = env.reset(), None, np.ones(1, dtype=bool), 0
    for _ in range(20 * CueEnv.LENGTH):
        action, state = agent.predict(obs, state=state, episode_start=start, deterministic=True)
        obs, reward, start, _ = env.step(action)
        wins += int(reward[0])
    assert wins >= 18
    card = (tmp_path / "lstm" / "README.md").read_text()
    assert "sb3-contrib `RecurrentPPO`" in card and "episode_start=episode_start" in card


def test_recurrent_ppo_options_are_checked(tiny_bert_dir, tmp_path):
    data = bandit_recipe(tiny_bert_dir, tmp_path)
    data["agent"]["algorithm"] = "lstm"
    with pytest.raises(ValueError, match="recurrent_ppo"):
        parse_recipe(data, BLOCKS)
    data = bandit_recipe(tiny_bert_dir, tmp_path, lstm_hidden_size=32)
    with pytest.raises(ValueError, match="agent.lstm_hidden_size=32.*recurrent_ppo only"):
        parse_recipe(data, BLOCKS)
    data = cue_recipe(tiny_bert_dir, tmp_path)
    data["agent"]["algo_kwargs"] = {"n_step": 48}
    with pytest.raises(ValueError, match=r"RecurrentPPO \(agent.algorithm=recurrent_ppo\) takes no argument 'n_step'"):
        run(parse_recipe(data, BLOCKS))


def test_recurrent_ppo_without_sb3_contrib_names_the_install(tiny_bert_dir, tmp_path, monkeypatch):
    import sys

    from hf_finetune.rl_env.train import algorithm_class

    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # import sb3_contrib now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "hf_finetune.rl_env.recurrent", raising=False)
    with pytest.raises(ValueError, match="pip install sb3-contrib==2.9.2"):
        algorithm_class("recurrent_ppo")


def test_recurrent_policy_skips_the_padding_of_lstm_sequences(tiny_bert_dir, tmp_path):
    # RecurrentPPO pads its minibatch sequences with all-zero observations: token ids with no text,
    # on which a sentence-reading extractor fails. The policy gives those rows zeros and leaves the rest.
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    from hf_finetune.rl_env.train import build_agent, build_envs

    data = cue_recipe(tiny_bert_dir, tmp_path, sentence_separator=".", sentence_pooling="attention")
    recipe = parse_recipe(data, BLOCKS)
    env = build_envs(recipe)
    policy = build_agent(recipe, env).policy
    real = torch.as_tensor(np.concatenate([env.reset(), env.step(np.zeros(4, dtype=int))[0]])).float()
    batch = torch.cat([real[:3], torch.zeros_like(real[:2]), real[3:]])
    features = policy.extract_features(batch)
    assert torch.equal(features[3:5], torch.zeros_like(features[3:5]))
    assert torch.allclose(torch.cat([features[:3], features[5:]]), policy.extract_features(real), atol=1e-6)
    with pytest.raises(RuntimeError):  # sb3-contrib's own policy hands the padding to the extractor
        RecurrentActorCriticPolicy.extract_features(policy, batch)
