"""LMFeaturesExtractor: exact ids, the embedding cache, the shared frozen encoder, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env

from hf_finetune.rl_env.envs import make_env
from hf_finetune.rl_env.extractor import EncoderLRAdam, FrozenEncoder, LMFeaturesExtractor, pool

TEXTS = ["goal match team", "chip code data", "bank shares profit", "the cup"]


def _ids_space(vocab: int = 100, length: int = 8):
    return spaces.Box(0, vocab - 1, shape=(length,), dtype=np.int64)


def _bandit(tiny_bert_dir, n_envs=1):
    kwargs = {"env_id": "hf_finetune/TextBandit-v0", "tokenizer": tiny_bert_dir, "texts": TEXTS,
              "labels": [0, 1, 2, 0], "max_length": 8}
    return make_vec_env(make_env, n_envs=n_envs, seed=0, env_kwargs=kwargs)


def _observations(tiny_bert_dir):
    env = _bandit(tiny_bert_dir).envs[0]
    rows = []
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        rows.append(obs)
    return torch.as_tensor(np.stack(rows)).float()  # as SB3 hands Box observations over


def test_cache_returns_exactly_what_the_encoder_computes(tiny_bert_dir):
    extractor = LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, features_dim=16, cache_size=100)
    shared = extractor.frozen
    shared.cache.clear()
    shared.reset_stats()
    obs = _observations(tiny_bert_dir)
    ids = extractor.token_ids(obs)
    assert torch.equal(ids.float(), obs)
    distinct = torch.unique(ids, dim=0)
    direct = shared.forward(distinct)
    cold = shared.embed(distinct)
    warm = shared.embed(distinct)
    assert torch.equal(cold, direct) and torch.equal(warm, direct)
    # A batch with repeats: every row equals the encoder's own embedding of that row.
    mixed = shared.embed(ids)
    for row, vector in zip(ids, mixed):
        assert torch.allclose(vector, shared.forward(row[None])[0], atol=1e-6)
    assert shared.misses == len(distinct) and shared.hits == len(distinct) + len(ids)
    assert shared.hit_rate > 0.5


def test_cache_is_bounded_lru(tiny_bert_dir):
    model = LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, features_dim=8).frozen.model
    shared = FrozenEncoder(model, pad_token_id=0, cache_size=2)
    a, b, c = (torch.tensor([[2, t, 3, 0]]) for t in (60, 61, 62))
    shared.embed(a), shared.embed(b), shared.embed(a), shared.embed(c)
    assert len(shared.cache) == 2 and a[0].numpy().tobytes() in shared.cache
    assert b[0].numpy().tobytes() not in shared.cache  # least recently used went first


def test_frozen_encoder_is_not_in_the_policy_and_dqn_target_shares_it(tiny_bert_dir):
    env = _bandit(tiny_bert_dir)
    kwargs = {"features_extractor_class": LMFeaturesExtractor,
              "features_extractor_kwargs": {"encoder": tiny_bert_dir, "features_dim": 16}, "net_arch": [16]}
    model = DQN("MlpPolicy", env, policy_kwargs=kwargs, learning_starts=0, buffer_size=100, seed=0)
    online, target = model.policy.q_net.features_extractor, model.policy.q_net_target.features_extractor
    assert online.frozen is target.frozen and online.frozen.model is target.frozen.model
    encoder_params = {id(p) for p in online.frozen.model.parameters()}
    n_encoder = sum(p.numel() for p in online.frozen.model.parameters())
    assert not encoder_params & {id(p) for p in model.policy.parameters()}
    hidden = online.frozen.model.config.hidden_size
    head = (hidden * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)  # projection, net_arch, Q head
    assert sum(p.numel() for p in model.policy.parameters()) == 2 * head  # online + target, no encoder
    assert n_encoder > 10 * head
    assert not any("frozen" in k or "encoder." in k for k in model.policy.state_dict())


def test_trained_encoder_gets_its_own_learning_rate(tiny_bert_dir):
    env = _bandit(tiny_bert_dir)
    kwargs = {"features_extractor_class": LMFeaturesExtractor,
              "features_extractor_kwargs": {"encoder": tiny_bert_dir, "encoder_mode": "full", "features_dim": 16},
              "optimizer_class": EncoderLRAdam, "optimizer_kwargs": {"encoder_lr_scale": 0.0}}
    model = PPO("MlpPolicy", env, policy_kwargs=kwargs, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    groups = model.policy.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.0]
    encoder = model.policy.features_extractor.encoder
    before_enc = {k: v.clone() for k, v in encoder.state_dict().items()}
    before_proj = model.policy.features_extractor.project[0].weight.clone()
    model.learn(64)
    assert all(torch.equal(before_enc[k], v) for k, v in encoder.state_dict().items())  # scale 0: untouched
    assert not torch.equal(before_proj, model.policy.features_extractor.project[0].weight)
    assert groups[0]["lr"] == groups[1]["lr"] == model.lr_schedule(model._current_progress_remaining)


def test_dict_observation_with_extra_parts(tiny_bert_dir):
    space = spaces.Dict({"text": _ids_space(), "direction": spaces.Discrete(4), "pos": spaces.Box(-1, 1, (2,))})
    extractor = LMFeaturesExtractor(space, encoder=tiny_bert_dir, features_dim=12)
    assert extractor.extra_keys == ["direction", "pos"]
    assert extractor.project[0].in_features == 32 + 4 + 2
    obs = {"text": torch.tensor([[2.0, 60, 3, 0, 0, 0, 0, 0]]), "direction": torch.eye(4)[[1]], "pos": torch.zeros(1, 2)}
    assert extractor(obs).shape == (1, 12)


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 1.0]]))


def test_unreadable_observation_space_lists_the_accepted_ones(tiny_bert_dir):
    with pytest.raises(ValueError, match="cannot read the observation space.*1-D Box of integers"):
        LMFeaturesExtractor(spaces.Discrete(5), encoder=tiny_bert_dir)
    with pytest.raises(ValueError, match="cannot read the observation space"):
        LMFeaturesExtractor(spaces.Box(0, 1, (8,), dtype=np.float32), encoder=tiny_bert_dir)
    with pytest.raises(ValueError, match="cannot read Dict entry 'words'"):
        LMFeaturesExtractor(spaces.Dict({"text": _ids_space(), "words": spaces.Text(5)}), encoder=tiny_bert_dir)


def test_token_id_outside_the_vocabulary(tiny_bert_dir):
    extractor = LMFeaturesExtractor(_ids_space(vocab=10_000), encoder=tiny_bert_dir, features_dim=8)
    with pytest.raises(ValueError, match=r"Token id 5000 is outside the encoder's vocabulary \[0, \d+\)"):
        extractor(torch.tensor([[2.0, 5000.0, 3.0, 0.0, 0, 0, 0, 0]]))


def test_frozen_encoder_with_lora_is_an_error(tiny_bert_dir):
    with pytest.raises(ValueError, match="LoRA was requested for a frozen encoder"):
        LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, encoder_mode="frozen", lora={"lora_r": 4})


def test_observation_longer_than_the_encoder_allows(tiny_bert_dir):
    with pytest.raises(ValueError, match="encoder allows 128 positions"):
        LMFeaturesExtractor(_ids_space(length=200), encoder=tiny_bert_dir)


def test_ortho_init_leaves_a_trained_encoder_pretrained(tiny_bert_dir):
    from transformers import AutoModel

    kwargs = {"features_extractor_class": LMFeaturesExtractor,
              "features_extractor_kwargs": {"encoder": tiny_bert_dir, "encoder_mode": "full", "features_dim": 16}}
    model = PPO("MlpPolicy", _bandit(tiny_bert_dir), policy_kwargs=kwargs, n_steps=32, batch_size=32, seed=0)
    pretrained = AutoModel.from_pretrained(tiny_bert_dir).state_dict()
    encoder = model.policy.features_extractor.encoder.state_dict()
    checked = [k for k in encoder if not k.startswith("pooler.")]  # the pooler is not in the checkpoint: random
    assert len(checked) > 20 and all(torch.equal(encoder[k], pretrained[k]) for k in checked)


def test_sentence_mode_caches_sentences_and_encodes_only_new_ones(tiny_bert_dir):
    from hf_finetune.config import ModelArguments
    from hf_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_bert_dir))

    def ids(text):
        row = tokenizer(text, padding="max_length", max_length=24)["input_ids"]
        return torch.tensor([row], dtype=torch.float32)

    extractor = LMFeaturesExtractor(_ids_space(len(tokenizer), 24), encoder=tiny_bert_dir, features_dim=8,
                                    sentence_separator=".")
    shared = extractor.frozen
    shared.clear()
    shared.reset_stats()
    hidden = shared.model.config.hidden_size
    assert shared.width == 2 * hidden and extractor.project[0].in_features == 2 * hidden
    first = extractor.token_ids(ids("goal match. chip code. the cup."))
    vector = shared.embed(first)[0]
    alone = [shared.forward(extractor.token_ids(ids(s)))[0] for s in ("goal match.", "chip code.", "the cup.")]
    assert torch.allclose(vector[:hidden], alone[0], atol=1e-5)  # the first sentence, encoded on its own
    assert torch.allclose(vector[hidden:], (alone[1] + alone[2]) / 2, atol=1e-5)  # the mean of the others
    assert shared.sentences_encoded == 3
    # A new text made of sentences already seen costs no encoder pass; one new sentence costs one.
    shared.embed(extractor.token_ids(ids("goal match. the cup.")))
    assert shared.sentences_encoded == 3 and len(shared.cache) == 2
    shared.embed(extractor.token_ids(ids("goal match. bank shares.")))
    assert shared.sentences_encoded == 4
    one = shared.embed(extractor.token_ids(ids("goal match.")))[0]  # one sentence: the rest is zeros
    assert torch.allclose(one[:hidden], alone[0], atol=1e-5) and not one[hidden:].any()


def test_sentence_mode_errors(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"the model has 2 layers \(0-1\)"):
        LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, encoder_mode="lora", sentence_separator=".",
                            lora={"lora_r": 4, "lora_layers_to_transform": [2]})
    with pytest.raises(ValueError, match="is 2 tokens for this tokenizer"):
        LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, sentence_separator="goal match")


def test_attention_pooling_reads_cached_sentences_unpooled(tiny_bert_dir):
    from hf_finetune.config import ModelArguments
    from hf_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_bert_dir))

    def ids(*texts):
        rows = [tokenizer(t, padding="max_length", max_length=24)["input_ids"] for t in texts]
        return torch.tensor(rows, dtype=torch.float32)

    extractor = LMFeaturesExtractor(_ids_space(len(tokenizer), 24), encoder=tiny_bert_dir, features_dim=8,
                                    sentence_separator=".", sentence_pooling="attention", attention_dim=16)
    shared = extractor.frozen
    shared.clear()
    shared.reset_stats()
    hidden = shared.model.config.hidden_size
    assert extractor.project[0].in_features == hidden + 16
    batch = extractor.token_ids(ids("goal match. chip code. the cup.", "goal match.", "goal match. the cup."))
    vectors, mask = shared.embed_sets(batch)
    assert vectors.shape == (3, 3, hidden) and mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    alone = [shared.forward(extractor.token_ids(ids(s)))[0] for s in ("goal match.", "chip code.", "the cup.")]
    for (row, i), sentence in {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 0): 0, (2, 0): 0, (2, 1): 2}.items():
        assert torch.allclose(vectors[row, i], alone[sentence], atol=1e-5)  # as encoded on its own
    assert shared.sentences_encoded == 3 and shared.misses == 3
    shared.embed_sets(batch)  # rows cached as sentence indices: no encoder pass
    assert shared.sentences_encoded == 3 and shared.hits == 3
    # The features are learned: a gradient reaches the attention, and the mission alone still works.
    features = extractor(batch)
    assert features.shape == (3, 8) and torch.isfinite(features).all()
    features.sum().backward()
    assert extractor.attention.query.weight.grad.abs().sum() > 0
    # sentence_attention: "nothing seen", then the sentences after the mission in the text's order, 0 where absent
    weights = extractor.sentence_attention(batch)
    assert weights.shape == (3, 3, 4) and torch.allclose(weights.sum(1), torch.ones(3, 4))
    assert not weights[1, 1:].any() and not weights[2, 2].any() and weights[2, 1].all()
    reordered = extractor.sentence_attention(extractor.token_ids(ids("goal match. the cup. chip code.")))
    assert torch.allclose(reordered[0, [0, 2, 1]], weights[0], atol=1e-6)
    # Moving a non-mission sentence changes the features only through the attention (order does not matter).
    swapped = extractor.token_ids(ids("goal match. the cup. chip code."))
    with torch.no_grad():
        assert torch.allclose(extractor(batch[:1]), extractor(swapped), atol=1e-5)


def test_attention_pooling_errors_and_bounded_table(tiny_bert_dir):
    with pytest.raises(ValueError, match="set sentence_separator"):
        LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, sentence_pooling="attention")
    with pytest.raises(ValueError, match="use one of"):
        LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, sentence_separator=".", sentence_pooling="max")
    extractor = LMFeaturesExtractor(_ids_space(), encoder=tiny_bert_dir, features_dim=8, sentence_separator=".",
                                    sentence_pooling="attention", cache_size=2)
    shared = extractor.frozen
    obs = extractor.token_ids(_observations(tiny_bert_dir))
    vectors, mask = shared.embed_sets(obs[:1])
    for row in obs:  # more distinct sentences than the table holds: it starts afresh, rows stay right
        got, got_mask = shared.embed_sets(row[None])
        assert len(shared.sentence_index) <= 2 and got_mask.all()
        assert torch.allclose(got[0, 0], shared.forward(row[None])[0], atol=1e-5)


def test_full_view_cache_keeps_this_batchs_rows_and_a_big_batch_fits(tiny_bert_dir):
    # A 400k-step run crashed with a KeyError once the view cache was full: evicting the oldest views
    # removed one that the batch at hand had just hit. And one batch with more new sentences than the
    # table holds cleared the table and retried forever.
    from hf_finetune.rl_env.encoders import _load_encoder, _token_ids_of

    _, float_ids = _sentence_ids(tiny_bert_dir)

    def ids(*texts):
        return float_ids(*texts).long()

    shared = FrozenEncoder(_load_encoder(tiny_bert_dir), pad_token_id=0, cache_size=3,
                           sentence_ids=_token_ids_of(tiny_bert_dir, None, "."))
    a, b, c, d = "goal match. the cup.", "goal match. chip code.", "goal match. the cup. chip code.", \
        "goal match. chip code. the cup."
    shared.sentence_indices(ids(a, b))
    indices, mask = shared.sentence_indices(ids(a, c, d))  # a is a hit, c and d fill the cache past 3 views
    assert len(shared.set_cache) == 3 and mask.sum(1).tolist() == [2, 3, 3]
    assert indices[1, 1] == indices[0, 1] and indices[2, 1] == indices[1, 2]  # the cup; chip code
    many = ids("goal match. bank shares. the cup. chip code.", "the cup. bank shares.")  # 4 sentences > 3
    indices, mask = shared.sentence_indices(many)
    assert mask.sum(1).tolist() == [4, 2] and len(shared.sentence_index) == 4
    assert torch.equal(shared.sentence_table[indices[0, 1]], shared.sentence_table[indices[1, 1]])  # bank shares


@pytest.mark.parametrize("shared, bias", [(True, 0.0), (False, 0.0), (False, 20.0)])
def test_shared_projection_or_similarity_bias_attend_to_the_sentence_like_the_mission_from_the_start(shared, bias):
    from hf_finetune.rl_env.extractor import MissionAttentionPool

    torch.manual_seed(0)
    pool = MissionAttentionPool(64, dim=32, heads=4, shared_projection=shared, similarity_bias=bias)
    hits = 0
    for _ in range(50):  # a mission (row 0) and 8 sentences, one of them close to the mission
        table = torch.randn(9, 64)
        table[5] = table[0] + 0.3 * torch.randn(64)
        indices, mask = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8]]), torch.ones(1, 9, dtype=torch.bool)
        weights, _ = pool.attend(table, indices, mask)  # (1, 9, heads): "nothing seen", then sentences 1-8
        hits += int(weights[0, 1:].mean(1).argmax()) == 4
    assert hits >= 40 if shared or bias else hits <= 20, hits  # untrained: similarity vs chance (1 in 8)
    if bias:  # learned; the first head starts with the bias, the others are left free
        assert pool.similarity_scale.requires_grad and pool.similarity_scale.tolist() == [bias, 0.0, 0.0, 0.0]


def test_sentence_slots_keep_the_leading_sentences_apart(tiny_bert_dir):
    from hf_finetune.config import ModelArguments
    from hf_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_bert_dir))

    def ids(*texts):
        rows = [tokenizer(t, padding="max_length", max_length=24)["input_ids"] for t in texts]
        return torch.tensor(rows, dtype=torch.float32)

    sentences = ("goal match.", "chip code.", "the cup.", "bank shares.")
    mean = LMFeaturesExtractor(_ids_space(len(tokenizer), 24), encoder=tiny_bert_dir, features_dim=8,
                               sentence_separator=".", sentence_slots=2)
    shared = mean.frozen
    hidden = shared.model.config.hidden_size
    assert shared.width == 3 * hidden and mean.project[0].in_features == 3 * hidden
    with pytest.raises(ValueError, match="sentence_attention needs"):
        mean.sentence_attention(ids("goal match."))
    alone = [shared.forward(mean.token_ids(ids(s)))[0] for s in sentences]
    row, short = shared.embed(mean.token_ids(ids(" ".join(sentences), "goal match.")))
    assert torch.allclose(row[:hidden], alone[0], atol=1e-5) and torch.allclose(row[hidden:2 * hidden], alone[1], atol=1e-5)
    assert torch.allclose(row[2 * hidden:], (alone[2] + alone[3]) / 2, atol=1e-5)
    assert torch.allclose(short[:hidden], alone[0], atol=1e-5) and not short[hidden:].any()  # missing slot: zeros
    attention = LMFeaturesExtractor(_ids_space(len(tokenizer), 24), encoder=tiny_bert_dir, features_dim=8,
                                    sentence_separator=".", sentence_pooling="attention", attention_dim=16,
                                    sentence_slots=2)
    assert attention.project[0].in_features == 2 * hidden + 16
    features = attention._text_features(ids(" ".join(sentences), "goal match."))
    assert torch.allclose(features[0, hidden:2 * hidden], alone[1], atol=1e-5) and not features[1, hidden:2 * hidden].any()
    # the second sentence is a slot, not pooled: changing it leaves the attention's output alone
    other = attention._text_features(ids("goal match. bank shares. the cup. bank shares."))
    assert torch.allclose(other[0, 2 * hidden:], features[0, 2 * hidden:], atol=1e-5)


def _sentence_ids(tiny_bert_dir):
    from hf_finetune.config import ModelArguments
    from hf_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_bert_dir))

    def ids(*texts):
        rows = [tokenizer(t, padding="max_length", max_length=24)["input_ids"] for t in texts]
        return torch.tensor(rows, dtype=torch.float32)

    return tokenizer, ids


@pytest.mark.parametrize("layers", [None, [1]])
def test_trained_sentence_encoder_equals_each_sentence_through_the_whole_model(tiny_bert_dir, layers):
    """Distinct sentences once, the frozen layer 0 cached: the same embeddings and gradients as the plain model."""
    tokenizer, ids = _sentence_ids(tiny_bert_dir)
    lora = {"lora_r": 4, "lora_dropout": 0.0, **({"lora_layers_to_transform": layers} if layers else {})}
    extractor = LMFeaturesExtractor(_ids_space(len(tokenizer), 24), encoder=tiny_bert_dir, features_dim=8,
                                    encoder_mode="lora", lora=lora, sentence_separator=".",
                                    sentence_pooling="attention", attention_dim=16)
    extractor.train()  # SB3's update mode: the encoder's dropout must stay off
    assert not extractor.encoder.training
    torch.manual_seed(0)
    adapters = [p for n, p in extractor.encoder.named_parameters() if "lora_B" in n]
    assert adapters and all(".1." in n for n, _ in extractor.encoder.named_parameters()
                            if "lora_" in n) == bool(layers)
    with torch.no_grad():
        for p in adapters:
            p.normal_(0, 0.5)  # B starts at zero; make the adapters matter
    sentences = ("goal match.", "chip code.", "the cup.")
    batch = extractor.token_ids(ids(" ".join(sentences), "goal match. the cup.", "chip code."))
    table, indices, mask = extractor._sentences(batch)
    assert table.shape[0] == 3 and indices.tolist() == [[0, 1, 2], [0, 2, 0], [1, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    alone = []
    for sentence in sentences:
        row = extractor.token_ids(ids(sentence))
        mask_one = (row != extractor.pad_token_id).long()
        alone.append(pool(extractor.encoder(input_ids=row, attention_mask=mask_one).last_hidden_state, mask_one,
                          "mean")[0])
    assert torch.allclose(table, torch.stack(alone), atol=1e-5)
    assert len(extractor.sentences.prefix) == (3 if layers else 0)  # layer 0's output, cached per sentence
    table.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    assert all(p.grad is None for n, p in extractor.encoder.named_parameters() if "lora_" not in n)

    # Gradients off (a rollout): reused until a weight changes in place, as an optimizer step does.
    encoded = extractor.sentences.sentences_encoded
    with torch.no_grad():
        first = extractor._sentences(batch)[0]
        again = extractor._sentences(batch)[0]
        assert torch.equal(first, again) and extractor.sentences.sentences_encoded == encoded + 3
        adapters[0].add_(0.1)
        moved = extractor._sentences(batch)[0]
    assert extractor.sentences.sentences_encoded == encoded + 6 and not torch.allclose(moved, first)
