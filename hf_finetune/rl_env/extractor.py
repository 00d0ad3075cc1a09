"""``LMFeaturesExtractor``: a pretrained transformers encoder as the features extractor of SB3 policies.

SB3 has no text observations (SB3 issue #1704) and no LM encoder, so this module is written for
this package. It reads token ids from a ``Box`` of integers (SB3 hands them over as float32, exact
for ids < 2**24, and we convert back), pools the encoder's last hidden state (CLS or mean over the
attention mask), concatenates any extra non-text ``Dict`` entries (flattened) and projects.

A *frozen* encoder is shared: it is kept out of the module tree (in :class:`FrozenEncoder`), so
DQN's ``q_net_target`` and A2C/PPO's separate actor/critic extractors reuse one copy and one
embedding cache instead of each holding (and saving) the 22M weights again. Its embeddings go
through a bounded LRU cache keyed by the token ids, so a view seen before costs no forward pass.
A trained (LoRA or full) encoder is a child module; reading sentences, it goes through
:class:`TrainedSentenceEncoder` (both in :mod:`hf_finetune.rl_env.encoders`).
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from .encoders import FrozenEncoder, TrainedSentenceEncoder, _load_encoder, _token_ids_of, pool, slots_and_mean

__all__ = ["EncoderLRAdam", "FrozenEncoder", "LMFeaturesExtractor", "MissionAttentionPool", "TrainedSentenceEncoder",
           "frozen_encoders", "lm_extractors", "pool"]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_MODES = ("frozen", "lora", "full")
POOLINGS = ("cls", "mean")
ACCEPTED_SPACES = (
    "a 1-D Box of integers (token ids, e.g. from TextObservationWrapper), or a Dict holding one such Box "
    "under text_key plus other Box/Discrete/MultiBinary/MultiDiscrete entries (flattened and concatenated)"
)


def _is_token_box(space: gym.Space) -> bool:
    return isinstance(space, spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.integer)


class MissionAttentionPool(nn.Module):
    """Pool a view's sentence embeddings with attention whose query is the mission's embedding.

    The mean of a view's sentences weighs "a red ball 2 steps left" as much as each grey
    distractor, so the more the view holds, the less of the target is left in it. Here the mission
    ("go to the red ball") asks which sentences to read (multi-head scaled dot-product attention).
    A learned "nothing seen" key/value is always present, so a view with no sentence besides the
    mission (or a head that finds nothing relevant) still has somewhere to attend.

    Written by hand rather than with ``nn.MultiheadAttention``, which projects every key of every
    row: views in a batch reuse a few distinct sentences, so keys and values are projected once per
    distinct sentence (the ``table`` rows) and gathered, about 10x less work on BabyAI-Text.

    Args:
        hidden: Size of a sentence embedding.
        dim: Size of the attention (query/key/value projections and output).
        heads: Attention heads (e.g. one for the target, others for walls and doors).
        shared_projection: Project the mission (query) and the sentences (keys) with one matrix, so a
            score is a learned similarity between the two, high from the start for the sentence that
            resembles the mission ("go to the blue ball" and "You see a blue ball ..."). With separate
            projections the matching is learned for each goal on its own: on GoToRedBlueBall the
            failed runs had learned it for one goal colour and turned on the spot for the other. Measured
            there over 10 seeds: as many runs reach 0.8 (5), fewer end below 0.5 (1 vs 4). On goals held out
            of training (GoToLocalS6N2, 8 seeds): 0.85 against 0.65, seen goals 0.89 against 0.79. Off by default.
        similarity_bias: Add a learned scale times the cosine between the mission's and each sentence's embedding
            to the attention scores; the first head's scale starts at this value, the others' at 0 (0: off).
            Unlike the projections, the cosine itself cannot be trained away: a head that has learned to find
            the red ball for "go to the red ball" is still pulled towards the blue ball for "go to the blue
            ball". On GoToRedBlueBall, in 3 of 5 failed runs no head had learned to find one goal's ball (best
            head 0.19-0.39 on it, against 0.9-1.0 in runs that succeed; ``bench/bench_agents_loops.py``). With
            standardized MiniLM embeddings the goal's sentence has cosine ~0.28 with the mission, the next
            sentence ~0.11, so 20 starts it ~3 logits ahead.
            Measured there with the shared projection, 10 seeds: 9 runs >= 0.8 (mean 0.90) against 5 (0.77).

    Example:
        >>> pool = MissionAttentionPool(384, dim=128, heads=4)
        >>> table = torch.randn(10, 384)  # distinct sentence embeddings
        >>> pool(table, torch.tensor([[0, 3, 4], [1, 2, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()).shape
        torch.Size([2, 128])
    """

    def __init__(self, hidden: int, dim: int = 128, heads: int = 4, shared_projection: bool = False,
                 similarity_bias: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim={dim} is not a multiple of heads={heads}.")
        self.heads, self.dim = heads, dim
        self.query = nn.Linear(hidden, dim)
        # Not a second reference to self.query: safetensors refuses tensors saved twice.
        self.key = None if shared_projection else nn.Linear(hidden, dim)
        self.value = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, dim)
        self.empty_key = nn.Parameter(torch.zeros(1, 1, dim))
        self.empty_value = nn.Parameter(torch.zeros(1, 1, dim))
        # The first head only: the others must stay free to read walls, doors and the cell ahead (a bias on all four
        # heads lost GoToRedBall seed 1: 0.60).
        self.similarity_scale = (nn.Parameter(torch.tensor([similarity_bias] + [0.0] * (heads - 1)))
                                 if similarity_bias else None)

    def forward(self, table: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``table`` ``(n, hidden)`` distinct sentences; ``indices`` ``(batch, s)`` into it, column 0 the mission;
        ``mask`` True where a sentence is."""
        weights, values = self.attend(table, indices, mask)
        return self.out((weights[..., None] * values).sum(1).reshape(indices.shape[0], self.dim))

    def attend(self, table: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights ``(batch, s, heads)`` over "nothing seen" (slot 0) and the sentences after the
        mission, and their values ``(batch, s, heads, head_dim)``."""
        batch, head_dim = indices.shape[0], self.dim // self.heads
        # Project only the distinct sentences this batch uses: the table grows with every sentence seen.
        used, local = torch.unique(indices, return_inverse=True)
        rows = table[used]
        query = self.query(rows)[local[:, 0]].view(batch, 1, self.heads, head_dim)
        # Row 0 of the key/value tables is "nothing seen"; sentence i is row i + 1.
        others = torch.cat([torch.zeros_like(local[:, :1]), local[:, 1:] + 1], dim=1)
        keys = torch.cat([self.empty_key[0], (self.query if self.key is None else self.key)(rows)])[others].view(batch, -1, self.heads, head_dim)
        values = torch.cat([self.empty_value[0], self.value(rows)])[others].view(batch, -1, self.heads, head_dim)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
        # Elementwise rather than matmul: one query per row, so the products are tiny and bmm's overhead dominates.
        scores = (keys * query).sum(-1) / head_dim**0.5  # (batch, s, heads)
        if self.similarity_scale is not None:
            unit = nn.functional.normalize(rows, dim=-1)
            cosine = (unit[local[:, 1:]] * unit[local[:, :1]]).sum(-1)  # mission vs each sentence, (batch, s - 1)
            scores = scores + torch.cat([torch.zeros_like(cosine[:, :1]), cosine], 1)[..., None] * self.similarity_scale
        return scores.masked_fill(~valid[:, :, None], float("-inf")).softmax(1), values


SENTENCE_POOLINGS = ("mean", "attention")


class LMFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 features extractor over a pretrained ``AutoModel`` encoder reading token-id observations.

    Args:
        observation_space: See :data:`ACCEPTED_SPACES`.
        encoder: Hub id or folder of the encoder (bundled offline copies resolve through
            :func:`hf_finetune.models.resolve_model_path`).
        encoder_mode: ``"frozen"`` (shared, cached, not trained), ``"lora"`` (PEFT adapters) or ``"full"``.
        pooling: ``"mean"`` over the attention mask or ``"cls"``.
        features_dim: Output size of the projection (``Linear`` + ``ReLU``).
        pad_token_id: Padding id; default: the encoder config's ``pad_token_id`` (else 0).
        text_key: The ``Dict`` entry with the token ids.
        cache_size: LRU embedding cache size for the frozen encoder (0: off).
        lora: LoRA settings (``LoraArguments`` fields) for ``encoder_mode="lora"``.
        revision: Hub revision of the encoder.
        standardize: Standardize each embedding dimension with a mean and std fitted before training
            (:meth:`fit_standardization`; saved with the policy). Pooled MiniLM embeddings of different
            views point almost the same way (mean cosine 0.86 on GoToObj), so the part that tells
            views apart is small next to the shared part; the zoo's MiniGrid settings normalize
            observations (``normalize: true``) for the same reason. Token ids cannot be normalized
            by ``VecNormalize``, so it happens here, on the embedding.
        sentence_separator: Encode each sentence on its own (cached when frozen; with a trained encoder,
            each distinct sentence of a batch once, see :class:`TrainedSentenceEncoder`).
        sentence_pooling: With ``sentence_separator``: ``"mean"`` (the first sentence joined to the mean
            of the others) or ``"attention"`` (the others pooled by :class:`MissionAttentionPool`, queried
            by the first; learned, while each sentence's frozen embedding stays cached).
        attention_dim: Size of the attention pooling's output (``sentence_pooling="attention"``).
        attention_shared_projection: One projection for the mission's query and the sentences' keys
            (see :class:`MissionAttentionPool`).
        attention_similarity_bias: Start of the first head's learned scale on the mission-sentence cosine added
            to the attention scores (``similarity_bias`` of :class:`MissionAttentionPool`; 0: off).
        sentence_slots: Leading sentences kept in their own place, outside the mean or attention (the
            first, e.g. the mission, always is); see :class:`FrozenEncoder`.

    Example:
        >>> policy_kwargs = {"features_extractor_class": LMFeaturesExtractor,
        ...                  "features_extractor_kwargs": {"encoder": "sentence-transformers/all-MiniLM-L6-v2"}}
        >>> model = PPO("MlpPolicy", env, policy_kwargs=policy_kwargs)  # doctest: +SKIP
    """

    def __init__(self, observation_space: gym.Space, encoder: str = DEFAULT_ENCODER, encoder_mode: str = "frozen",
                 pooling: str = "mean", features_dim: int = 256, pad_token_id: int | None = None,
                 text_key: str = "text", cache_size: int = 100_000, lora: dict[str, Any] | None = None,
                 revision: str | None = None, standardize: bool = False, sentence_separator: str | None = None,
                 sentence_pooling: str = "mean", attention_dim: int = 128, sentence_slots: int = 1,
                 attention_shared_projection: bool = False, attention_similarity_bias: float = 0.0):
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode={encoder_mode!r}: use one of {ENCODER_MODES}.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: use one of {POOLINGS}.")
        if encoder_mode == "frozen" and lora:
            raise ValueError(
                "LoRA was requested for a frozen encoder: set encoder_mode='lora' to train adapters, "
                "or drop the lora settings to keep the encoder frozen."
            )
        if features_dim < 1:
            raise ValueError(f"features_dim={features_dim}: use a positive size, e.g. 256.")
        if sentence_pooling not in SENTENCE_POOLINGS:
            raise ValueError(f"sentence_pooling={sentence_pooling!r}: use one of {SENTENCE_POOLINGS}.")
        if sentence_pooling == "attention" and not sentence_separator:
            raise ValueError("sentence_pooling='attention' pools sentence embeddings: set sentence_separator "
                             "(e.g. '.') too.")
        extra_spaces = self._split_space(observation_space, text_key)
        super().__init__(observation_space, features_dim)
        self.text_key = text_key if isinstance(observation_space, spaces.Dict) else None
        self.encoder_mode, self.pooling = encoder_mode, pooling
        self.extra_keys = sorted(extra_spaces)
        extra_dim = sum(get_flattened_obs_dim(extra_spaces[k]) for k in self.extra_keys)

        if encoder_mode == "frozen":
            from transformers import AutoConfig

            from ..config import ModelArguments
            from ..models import model_source

            config = AutoConfig.from_pretrained(model_source(ModelArguments(model_name_or_path=encoder)),
                                                revision=revision)
            pad = pad_token_id if pad_token_id is not None else (getattr(config, "pad_token_id", None) or 0)
            sentence_ids = _token_ids_of(encoder, revision, sentence_separator) if sentence_separator else None
            mean_slots = sentence_slots if sentence_pooling == "mean" else 1
            shared = FrozenEncoder.get(encoder, revision, pad, pooling, cache_size, sentence_ids, mean_slots)
            # object.__setattr__ keeps the shared encoder out of this module's children (see module doc).
            object.__setattr__(self, "frozen", shared)
            object.__setattr__(self, "sentences", None)
            self.encoder = None
            model = shared.model
        else:
            model = _load_encoder(encoder, revision)
            if encoder_mode == "lora":
                from ..config import LoraArguments
                from ..models import apply_lora

                model = apply_lora(model, LoraArguments(use_lora=True, **(lora or {})), task_type=None)
            object.__setattr__(self, "frozen", None)
            object.__setattr__(self, "sentences", None)
            self.encoder = model
            config = model.config
            pad = pad_token_id if pad_token_id is not None else (getattr(config, "pad_token_id", None) or 0)
            if sentence_separator:
                layers = (lora or {}).get("lora_layers_to_transform") if encoder_mode == "lora" else None
                object.__setattr__(self, "sentences", TrainedSentenceEncoder(
                    pad, _token_ids_of(encoder, revision, sentence_separator), pooling,
                    min(layers) if layers else 0, cache_size))
            for param in self.encoder.parameters():
                if param.requires_grad:
                    param._hf_encoder_param = True  # read by EncoderLRAdam to give the encoder its own lr
        self.pad_token_id = pad
        embeddings = model.get_input_embeddings()
        self.vocab_size = embeddings.num_embeddings
        hidden = self.frozen.width if self.frozen is not None else model.config.hidden_size
        if self.frozen is None and sentence_separator and sentence_pooling == "mean":
            hidden = model.config.hidden_size * (sentence_slots + 1)  # the layout FrozenEncoder gives
        self.sentence_pooling = sentence_pooling if sentence_separator else "mean"
        text_dim = hidden
        if self.sentence_pooling == "attention":
            hidden = model.config.hidden_size  # standardized per sentence
            self.attention = MissionAttentionPool(hidden, attention_dim, shared_projection=attention_shared_projection,
                                                  similarity_bias=attention_similarity_bias)
            text_dim = sentence_slots * hidden + attention_dim
        self.sentence_slots = sentence_slots
        limit = getattr(model.config, "max_position_embeddings", None)
        length = self._text_space(observation_space, text_key).shape[0]
        if limit is not None and length > limit:
            raise ValueError(f"Token observations have {length} ids but the encoder allows {limit} positions: "
                             f"lower the wrapper's max_length to <= {limit}.")
        self.standardize = standardize
        if standardize:  # buffers, not parameters: saved in policy.safetensors, never trained
            self.register_buffer("embedding_mean", torch.zeros(hidden))
            self.register_buffer("embedding_std", torch.ones(hidden))
        self.project = nn.Sequential(nn.Linear(text_dim + extra_dim, features_dim), nn.ReLU())

    def apply(self, fn):
        """``nn.Module.apply`` that leaves the pretrained encoder alone.

        A2C/PPO's ``ortho_init`` calls ``features_extractor.apply(init_weights)``, which would
        re-initialise every ``Linear`` of a trained (lora/full) encoder and throw the pretraining away.
        """
        for name, module in self.named_children():
            if name != "encoder":
                module.apply(fn)
        fn(self)
        return self

    def train(self, mode: bool = True):
        """``nn.Module.train`` that keeps a trained encoder's dropout off.

        SB3 switches the policy to train mode for its updates and to eval mode for rollouts. With
        dropout on in one and off in the other, PPO's first ratio is not 1 and the clip bites on
        noise (TRL's PPO turns dropout off in its models for the same reason); the prefix cache of
        :class:`TrainedSentenceEncoder` also assumes deterministic layers.
        """
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    @staticmethod
    def _text_space(space: gym.Space, text_key: str) -> spaces.Box:
        return space[text_key] if isinstance(space, spaces.Dict) else space

    @staticmethod
    def _split_space(space: gym.Space, text_key: str) -> dict[str, gym.Space]:
        if _is_token_box(space):
            return {}
        if isinstance(space, spaces.Dict) and _is_token_box(space.spaces.get(text_key)):
            extra = {k: v for k, v in space.spaces.items() if k != text_key}
            for key, sub in extra.items():
                if not isinstance(sub, (spaces.Box, spaces.Discrete, spaces.MultiBinary, spaces.MultiDiscrete)):
                    raise ValueError(f"LMFeaturesExtractor cannot read Dict entry {key!r} ({sub}): it accepts "
                                     f"{ACCEPTED_SPACES}.")
            return extra
        raise ValueError(f"LMFeaturesExtractor cannot read the observation space {space}: it accepts "
                         f"{ACCEPTED_SPACES}. Wrap a text env with TextObservationWrapper.")

    def token_ids(self, observations: torch.Tensor) -> torch.Tensor:
        """Back from SB3's float32 to integer ids, checked against the encoder's vocabulary."""
        ids = observations.round().long()
        if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise ValueError(f"Token id {bad} is outside the encoder's vocabulary [0, {self.vocab_size}): the env's "
                             "tokenizer does not match the encoder. Use the encoder's own tokenizer in the wrapper.")
        return ids

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled encoder embeddings of integer ids (through the cache when frozen)."""
        if self.frozen is not None:
            return self.frozen.embed(ids)
        mask = (ids != self.pad_token_id).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling)

    @torch.no_grad()
    def fit_standardization(self, observations: torch.Tensor, min_std: float = 1e-3) -> None:
        """Fit the per-dimension mean and std of the embeddings of ``observations`` (token-id rows).

        Distinct rows count once, so a view met often (the start of every episode) does not dominate.
        """
        if not self.standardize:
            raise ValueError("fit_standardization: this extractor was built with standardize=False.")
        ids = torch.unique(self.token_ids(observations), dim=0)
        if len(ids) < 2:
            raise ValueError("fit_standardization needs at least two distinct observations.")
        if self.sentence_pooling == "attention":  # every distinct sentence once (the mission included)
            vectors = torch.unique(torch.cat([self._sentences(chunk)[0] for chunk in ids.split(256)]), dim=0)
        else:
            vectors = torch.cat([self._row_vectors(chunk) for chunk in ids.split(64)])
        self.embedding_mean.copy_(vectors.mean(0))
        self.embedding_std.copy_(vectors.std(0).clamp(min=min_std))

    def _sentences(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The embeddings of the distinct sentences of ``ids`` and each row's sentences as indices into them."""
        if self.frozen is None:
            return self.sentences.table(self.encoder, ids)
        indices, mask = self.frozen.sentence_indices(ids)
        distinct, indices = torch.unique(indices, return_inverse=True)  # project each sentence once
        return self.frozen.sentence_table[distinct.cpu()].to(ids.device), indices, mask

    def _row_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """One pooled vector per row (whole text, or sentence slots and the mean of the rest)."""
        if self.sentences is not None:  # a trained encoder reading sentences
            return slots_and_mean(*self._sentences(ids), self.sentence_slots)
        return self.encode(ids)

    def _attention_inputs(self, observations: torch.Tensor):
        """The standardized sentence table, each row's sentences as indices into it and their mask (padded to at
        least ``sentence_slots`` columns), and the indices and mask the attention pools: the mission (column 0, the
        query) and the sentences after the slots, which are not pooled again."""
        table, indices, mask = self._sentences(self.token_ids(observations))
        if self.standardize:
            table = (table - self.embedding_mean) / self.embedding_std
        slots = self.sentence_slots
        if indices.shape[1] < slots:  # rows with fewer sentences than slots: pad (masked out)
            indices = torch.nn.functional.pad(indices, (0, slots - indices.shape[1]))
            mask = torch.nn.functional.pad(mask, (0, slots - mask.shape[1]))
        pooled = torch.cat([indices[:, :1], indices[:, slots:]], 1), torch.cat([mask[:, :1], mask[:, slots:]], 1)
        return table, indices, mask, pooled

    @torch.no_grad()
    def sentence_attention(self, observations: torch.Tensor) -> torch.Tensor:
        """Which sentences the mission reads: attention weights ``(batch, 1 + n, heads)`` of
        ``sentence_pooling="attention"``, column 0 for "nothing seen" and column ``1 + i`` for the i-th sentence
        after the ``sentence_slots`` kept ones, in the order of the text (0 where a row has fewer).

        Example:
            >>> weights = agent.policy.features_extractor.sentence_attention(torch.as_tensor(obs))  # doctest: +SKIP
        """
        if self.sentence_pooling != "attention":
            raise ValueError("sentence_attention needs an extractor built with sentence_pooling='attention'.")
        table, _, _, pooled = self._attention_inputs(observations)
        return self.attention.attend(table, *pooled)[0]

    def _text_features(self, observations: torch.Tensor) -> torch.Tensor:
        if self.sentence_pooling == "attention":
            table, indices, mask, pooled = self._attention_inputs(observations)
            kept = [table[indices[:, j]] * mask[:, j, None] for j in range(self.sentence_slots)]
            return torch.cat([*kept, self.attention(table, *pooled)], dim=1)
        vectors = self._row_vectors(self.token_ids(observations))
        if self.standardize:
            vectors = (vectors - self.embedding_mean) / self.embedding_std
        return vectors

    def forward(self, observations) -> torch.Tensor:
        if self.text_key is None:
            return self.project(self._text_features(observations))
        parts = [self._text_features(observations[self.text_key])]
        parts += [observations[k].flatten(1).float() for k in self.extra_keys]
        return self.project(torch.cat(parts, dim=1))


class EncoderLRAdam(torch.optim.Adam):
    """Adam whose encoder parameters step at ``encoder_lr_scale`` times the policy's learning rate.

    SB3 builds the optimizer from a flat parameter list and rewrites every group's ``lr`` from its
    schedule before each update, so the encoder's own rate is kept as a ratio applied at step time
    (``lr`` stays the schedule's value). Parameters are recognised by the mark the extractor sets.

    Example:
        >>> policy_kwargs = {"optimizer_class": EncoderLRAdam, "optimizer_kwargs": {"encoder_lr_scale": 0.1}}
    """

    def __init__(self, params, lr: float = 1e-3, encoder_lr_scale: float = 1.0, **kwargs: Any):
        params = [p for p in params if p.requires_grad]
        encoder = [p for p in params if getattr(p, "_hf_encoder_param", False)]
        rest = [p for p in params if not getattr(p, "_hf_encoder_param", False)]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if encoder:
            groups.append({"params": encoder, "lr_scale": encoder_lr_scale})
        super().__init__(groups, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        base = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, base):
                group["lr"] = lr


def lm_extractors(policy: nn.Module) -> list[LMFeaturesExtractor]:
    """Every ``LMFeaturesExtractor`` of a policy (DQN's target network and separate actor/critic ones included)."""
    return [module for module in policy.modules() if isinstance(module, LMFeaturesExtractor)]


def frozen_encoders(policy: nn.Module) -> list[FrozenEncoder]:
    """The distinct shared frozen encoders used by a policy's extractors."""
    found: dict[int, FrozenEncoder] = {}
    for module in policy.modules():
        shared = getattr(module, "frozen", None) if isinstance(module, LMFeaturesExtractor) else None
        if shared is not None:
            found[id(shared)] = shared
    return list(found.values())
