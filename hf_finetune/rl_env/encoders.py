"""The encoders behind :class:`~hf_finetune.rl_env.extractor.LMFeaturesExtractor`, with their caches.

* :class:`FrozenEncoder`: a frozen encoder shared by every extractor that names it, with LRU caches of
  whole-view or per-sentence embeddings (a view seen before costs no forward pass).
* :class:`TrainedSentenceEncoder`: per-sentence embeddings from a trained (LoRA or full) encoder, with
  the work cut to what changes: each distinct sentence of a batch once, embeddings reused while the
  weights stand still, and the frozen layers below the adapted ones cached.

No library caches transformer outputs across RL steps (SB3 has no text observations at all), so
both are written here.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def _load_encoder(encoder: str, revision: str | None = None):
    from transformers import AutoModel

    from ..config import ModelArguments
    from ..models import load_model

    return load_model(ModelArguments(model_name_or_path=encoder, revision=revision), AutoModel)


def _token_ids_of(encoder: str, revision: str | None, text: str) -> tuple[int, ...]:
    """The ids the encoder's tokenizer gives ``text`` (no special tokens)."""
    from ..config import ModelArguments
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=encoder, revision=revision))
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        raise ValueError(f"sentence_separator={text!r} is {len(ids)} tokens for this tokenizer: use one token, e.g. '.'.")
    return ids


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """CLS (first token) or mean over the attention mask of ``hidden`` ``(batch, seq, dim)``."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def split_sentences(row: np.ndarray, pad_token_id: int, sentence_ids: tuple[int, ...]) -> list[np.ndarray]:
    """The sentences of an id row, each wrapped in the row's first and last special tokens."""
    row = row[row != pad_token_id]
    if len(row) < 3:
        return [row]
    first, body, last = row[:1], row[1:-1], row[-1:]
    ends = np.flatnonzero(np.isin(body, sentence_ids)) + 1
    parts = [part for part in np.split(body, ends) if len(part)]
    return [np.concatenate([first, part, last]) for part in parts] or [row]


def pad_rows(parts: list[np.ndarray], pad_token_id: int) -> torch.Tensor:
    """Id rows of different lengths as one ``(rows, longest)`` int64 batch."""
    batch = np.full((len(parts), max(len(p) for p in parts)), pad_token_id, dtype=np.int64)
    for i, part in enumerate(parts):
        batch[i, : len(part)] = part
    return torch.from_numpy(batch)


def index_matrix(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row lists of sentence indices as a padded ``(rows, longest)`` index tensor and its mask."""
    width = max(len(r) for r in rows)
    padded = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, found in enumerate(rows):
        padded[i, : len(found)] = found
        mask[i, : len(found)] = True
    return torch.from_numpy(padded), torch.from_numpy(mask)


def slots_and_mean(table: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, slots: int) -> torch.Tensor:
    """Rows of ``slots`` sentence embeddings (zeros where a row has fewer) and the mean of the rest."""
    vectors = table[indices] * mask[..., None]
    if vectors.shape[1] < slots + 1:
        vectors = torch.nn.functional.pad(vectors, (0, 0, 0, slots + 1 - vectors.shape[1]))
        mask = torch.nn.functional.pad(mask, (0, slots + 1 - mask.shape[1]))
    rest = vectors[:, slots:].sum(1) / mask[:, slots:].sum(1, keepdim=True).clamp(min=1)
    return torch.cat([*vectors[:, :slots].unbind(1), rest], dim=1)


class FrozenEncoder:
    """A frozen encoder with its LRU embedding cache, shared by every extractor that names it.

    Not an ``nn.Module`` on purpose: extractors hold it outside their module tree, so it is neither
    duplicated into DQN's target network nor written into the policy's ``state_dict`` (it is
    reloaded from its Hub id or folder). The cache maps the bytes of an id row to its pooled
    embedding as computed by the encoder in the batch that first met it.

    Args:
        model: The (``AutoModel``) encoder.
        pad_token_id: Id that marks padding.
        pooling: ``"cls"`` or ``"mean"``.
        cache_size: Embeddings kept (LRU); 0 disables the cache.
        sentence_ids: Token ids that end a sentence (e.g. the id of ``"."``). When given, each sentence
            of a row is encoded on its own (between the row's first and last special tokens) and cached
            by its ids; a row's embedding is the first sentence's (a BabyAI mission) concatenated with
            the mean of the others' (``2 * hidden`` wide). A BabyAI-Text view is a few sentences drawn
            from a small set, so after a few thousand steps nearly every sentence is cached and new
            views cost no forward pass (all-MiniLM-L6-v2 is a sentence-embedding model, trained on
            single sentences).
        slots: Leading sentences that each keep their own place in a row's embedding (with
            ``sentence_ids``): the row is ``slots`` sentence embeddings (zeros where a row has fewer)
            followed by the mean of the rest, ``(slots + 1) * hidden`` wide. With a BabyAI-Text view
            written with ``describe_ahead``, ``slots=2`` keeps the mission and what is straight ahead
            out of the mean.

    Example:
        >>> shared = FrozenEncoder(AutoModel.from_pretrained(path), pad_token_id=0, pooling="mean")  # doctest: +SKIP
        >>> shared.embed(torch.tensor([[101, 2054, 102, 0]])).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    _shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __init__(self, model: nn.Module, pad_token_id: int, pooling: str = "mean", cache_size: int = 100_000,
                 sentence_ids: tuple[int, ...] | None = None, slots: int = 1):
        if slots < 1:
            raise ValueError(f"sentence_slots={slots}: use at least 1 (the first sentence, e.g. the mission).")
        self.slots = slots
        self.model = model.eval().requires_grad_(False)
        self.pad_token_id, self.pooling, self.cache_size = pad_token_id, pooling, cache_size
        self.sentence_ids = tuple(sentence_ids) if sentence_ids else None
        self.cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.sentence_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.set_cache: OrderedDict[bytes, list[int]] = OrderedDict()  # row -> indices into sentence_table
        self.sentence_index: dict[bytes, int] = {}
        self.sentence_table: torch.Tensor | None = None
        self.hits = self.misses = 0
        self.sentences_encoded = 0

    @property
    def width(self) -> int:
        """Size of a row's embedding."""
        return self.model.config.hidden_size * (self.slots + 1 if self.sentence_ids else 1)

    @classmethod
    def get(cls, encoder: str, revision: str | None, pad_token_id: int, pooling: str, cache_size: int,
            sentence_ids: tuple[int, ...] | None = None, slots: int = 1) -> FrozenEncoder:
        """The live shared instance for these settings, or a new one (sharing the model of a live one)."""
        key = (encoder, revision, pad_token_id, pooling, cache_size, sentence_ids, slots)
        found = cls._shared.get(key)
        if found is None:
            same_model = next((e.model for k, e in list(cls._shared.items()) if k[:2] == (encoder, revision)), None)
            found = cls(same_model if same_model is not None else _load_encoder(encoder, revision), pad_token_id,
                        pooling, cache_size, sentence_ids, slots)
            cls._shared[key] = found
        return found

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def reset_stats(self) -> None:
        self.hits = self.misses = 0
        self.sentences_encoded = 0

    def clear(self) -> None:
        """Empty every cache."""
        self.cache.clear()
        self.sentence_cache.clear()
        self.set_cache.clear()
        self.sentence_index.clear()
        self.sentence_table = None

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of an id batch, without the cache."""
        device = ids.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        mask = (ids != self.pad_token_id).long()
        # Trailing columns that are padding in every row change nothing: drop them (views are short).
        width = max(int(mask.sum(1).max().item()), 1)
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling)

    def split_sentences(self, row: np.ndarray) -> list[np.ndarray]:
        """The sentences of an id row (see :func:`split_sentences`)."""
        return split_sentences(row, self.pad_token_id, self.sentence_ids)

    def _embed_sentences(self, rows: np.ndarray) -> torch.Tensor:
        """Row embeddings from cached sentence embeddings; new sentences of all rows go in one forward pass."""
        split = [self.split_sentences(row) for row in rows]
        new: dict[bytes, np.ndarray] = {}
        for parts in split:
            for part in parts:
                key = part.tobytes()
                if key not in self.sentence_cache:
                    new[key] = part
        if new:
            for key, vector in zip(new, self.forward(pad_rows(list(new.values()), self.pad_token_id))):
                self.sentence_cache[key] = vector.clone()
            self.sentences_encoded += len(new)
            while len(self.sentence_cache) > max(self.cache_size, 1):
                self.sentence_cache.popitem(last=False)
        out = []
        for parts in split:
            vectors = [self.sentence_cache.get(p.tobytes()) for p in parts]
            if any(v is None for v in vectors):  # evicted within this call (tiny cache): encode directly
                batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(p) for p in parts], batch_first=True,
                                                        padding_value=self.pad_token_id)
                vectors = list(self.forward(batch))
            zero = torch.zeros_like(vectors[0])
            rest = torch.stack(vectors[self.slots:]).mean(0) if len(vectors) > self.slots else zero
            out.append(torch.cat([*vectors[: self.slots], *[zero] * (self.slots - len(vectors)), rest]))
        return torch.stack(out)

    def embed_sets(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's sentence embeddings, unpooled: ``(batch, sentences, hidden)`` and a ``(batch, sentences)`` mask."""
        indices, mask = self.sentence_indices(ids)
        return self.sentence_table[indices.cpu()].to(ids.device), mask

    def sentence_indices(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's sentences as indices into :attr:`sentence_table` ``(batch, sentences)``, and their mask.

        For a learned pooling (:class:`MissionAttentionPool`). Sentences are encoded once into an
        append-only table and a row is cached as the indices of its sentences (a few int64 each,
        not ``sentences x hidden`` floats); new sentences of all rows go through one forward pass.
        When the table would exceed ``cache_size`` it is emptied and rebuilt from the rows at hand.
        """
        if not self.sentence_ids:
            raise ValueError("sentence_indices needs sentence_ids (the extractor's sentence_separator).")
        rows = ids.cpu().numpy()
        keys = [row.tobytes() for row in rows]
        fresh = {key: row for key, row in zip(keys, rows) if key not in self.set_cache}
        if fresh:
            split = {key: self.split_sentences(row) for key, row in fresh.items()}
            new = {p.tobytes(): p for parts in split.values() for p in parts if p.tobytes() not in self.sentence_index}
            if self.sentence_index and len(self.sentence_index) + len(new) > max(self.cache_size, 1):
                # Indices would go stale with LRU eviction: start the table afresh. An empty table takes the
                # whole batch, even a batch with more sentences than cache_size (the next call clears it).
                self.clear()
                return self.sentence_indices(ids)
            if new:
                vectors = self.forward(pad_rows(list(new.values()), self.pad_token_id)).cpu()
                for key in new:
                    self.sentence_index[key] = len(self.sentence_index)
                self.sentence_table = vectors if self.sentence_table is None else torch.cat([self.sentence_table, vectors])
                self.sentences_encoded += len(new)
            for key, parts in split.items():
                self.set_cache[key] = [self.sentence_index[p.tobytes()] for p in parts]
        self.hits += len(keys) - len(fresh)
        self.misses += len(fresh)
        found = []
        for key in keys:  # read this batch's rows, and mark them recent, before evicting the oldest
            self.set_cache.move_to_end(key)
            found.append(self.set_cache[key])
        while len(self.set_cache) > max(self.cache_size, 1):
            self.set_cache.popitem(last=False)
        padded, mask = index_matrix(found)
        if self.cache_size <= 0:
            table = self.sentence_table
            self.clear()
            self.sentence_table = table  # this call's rows still index it
        return padded.to(ids.device), mask.to(ids.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings through the cache (misses are encoded together in one batch)."""
        if self.sentence_ids:
            return self._embed_rows(ids, lambda rows: self._embed_sentences(rows.cpu().numpy()))
        if self.cache_size <= 0:
            self.misses += len(ids)
            return self.forward(ids)
        return self._embed_rows(ids, self.forward)

    def _embed_rows(self, ids: torch.Tensor, compute) -> torch.Tensor:
        if self.cache_size <= 0:
            self.misses += len(ids)
            return compute(ids).to(ids.device)
        rows = ids.cpu().numpy()
        keys = [row.tobytes() for row in rows]
        out: list[torch.Tensor | None] = [None] * len(keys)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is not None:
                self.cache.move_to_end(key)
                out[i] = cached
                self.hits += 1
            else:
                missing.setdefault(key, []).append(i)
        if missing:
            first = [positions[0] for positions in missing.values()]
            fresh = compute(ids[first])
            for (key, positions), vector in zip(missing.items(), fresh):
                vector = vector.clone()
                self.cache[key] = vector
                for i in positions:
                    out[i] = vector
            self.misses += len(first)
            self.hits += sum(len(p) - 1 for p in missing.values())
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return torch.stack(out).to(ids.device)  # type: ignore[arg-type]


def _layer_stack(model: nn.Module) -> nn.Module | None:
    """The module holding a BERT-style encoder's ``layer`` list (``model.encoder``), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = getattr(base, "encoder", None)
    return stack if isinstance(getattr(stack, "layer", None), nn.ModuleList) else None


class TrainedSentenceEncoder:
    """Per-sentence embeddings from a trained (LoRA or full) encoder, cheap enough to train on a CPU.

    A trained encoder's outputs go stale at every update, so :class:`FrozenEncoder`'s caches do not
    apply. Three things still hold, and each removes work:

    * Views share sentences: each distinct sentence of a batch is encoded once. A PPO minibatch of
      64 BabyAI-Text views holds ~180 distinct sentences (~2,400 tokens) against 64 x 160 padded
      tokens read whole.
    * Between updates (collecting a rollout, an evaluation) the weights stand still: with gradients
      off, embeddings are reused until a trainable weight changes. Every in-place update (an
      optimizer step, ``load_state_dict``, SB3's ``set_parameters``) bumps the tensors' version
      counters, which key this cache, so it can never serve an embedding of older weights.
    * The layers below the lowest adapted one (``lora_layers_to_transform``) never change: their
      output per sentence is cached and only the layers from ``first_trained_layer`` up run, with
      gradients. MiniLM with LoRA on its top layer: forward and backward of a 180-sentence batch
      0.23 s against 1.5 s through all six layers (one core). This needs a BERT-style
      ``model.encoder.layer`` list; other encoders run whole (same result, slower).

    Args:
        pad_token_id: Id that marks padding.
        sentence_ids: Token ids that end a sentence (see :class:`FrozenEncoder`).
        pooling: ``"cls"`` or ``"mean"``.
        first_trained_layer: Index of the lowest layer whose weights train (0: all may).
        cache_size: Sentences kept in each cache (LRU); 0 disables both.

    Example:
        >>> sentences = TrainedSentenceEncoder(pad_token_id=0, sentence_ids=(1012,), first_trained_layer=5)
        >>> table, indices, mask = sentences.table(peft_model, ids)  # doctest: +SKIP
        >>> table[indices[0, 0]]  # the first sentence of row 0, with gradients to the adapters  # doctest: +SKIP
    """

    def __init__(self, pad_token_id: int, sentence_ids: tuple[int, ...], pooling: str = "mean",
                 first_trained_layer: int = 0, cache_size: int = 100_000):
        self.pad_token_id, self.sentence_ids, self.pooling = pad_token_id, tuple(sentence_ids), pooling
        self.first_trained_layer, self.cache_size = first_trained_layer, cache_size
        self.prefix: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # sentence -> (tokens, hidden) below it
        self.outputs: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # sentence -> embedding, current weights
        self.version: tuple[int, ...] | None = None
        self.sentences_encoded = 0

    def table(self, model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distinct sentences' embeddings ``(n, hidden)`` and each row's sentences as indices into them, with a mask."""
        index: dict[bytes, int] = {}
        parts: list[np.ndarray] = []
        rows = []
        for row in ids.cpu().numpy():
            found = []
            for part in split_sentences(row, self.pad_token_id, self.sentence_ids):
                found.append(index.setdefault(part.tobytes(), len(parts)))
                if found[-1] == len(parts):
                    parts.append(part)
            rows.append(found)
        indices, mask = index_matrix(rows)
        keys = list(index)
        reuse = not torch.is_grad_enabled() and self.cache_size > 0
        if reuse:
            version = tuple(p._version for p in model.parameters() if p.requires_grad)
            if version != self.version:
                self.outputs.clear()
                self.version = version
        todo = [i for i, key in enumerate(keys) if not (reuse and key in self.outputs)]
        vectors: list[torch.Tensor | None] = [self.outputs.get(key) if reuse else None for key in keys]
        if todo:
            fresh = self._encode(model, [parts[i] for i in todo], [keys[i] for i in todo], ids.device)
            for i, vector in zip(todo, fresh):
                vectors[i] = vector
                if reuse:
                    self.outputs[keys[i]] = vector
            while len(self.outputs) > self.cache_size:
                self.outputs.popitem(last=False)
        return torch.stack(vectors), indices.to(ids.device), mask.to(ids.device)  # type: ignore[arg-type]

    def _encode(self, model: nn.Module, parts: list[np.ndarray], keys: list[bytes], device) -> torch.Tensor:
        batch = pad_rows(parts, self.pad_token_id).to(device)
        mask = (batch != self.pad_token_id).long()
        self.sentences_encoded += len(parts)
        stack = _layer_stack(model) if self.first_trained_layer > 0 else None
        if stack is None:
            return pool(model(input_ids=batch, attention_mask=mask).last_hidden_state, mask, self.pooling)
        below = self._prefix(model, batch, mask, keys)
        layers, first = stack.layer, self.first_trained_layer

        def feed_cached(module, args, kwargs):  # the encoder stack starts from the cached states
            return (below, *args[1:]), kwargs

        # The model's own forward still builds the attention mask the layers expect (its format varies
        # with the attention implementation); only the layer list is cut to the trained ones.
        handle = stack.register_forward_pre_hook(feed_cached, with_kwargs=True)
        stack.layer = nn.ModuleList(list(layers)[first:])
        try:
            hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state
        finally:
            stack.layer = layers
            handle.remove()
        return pool(hidden, mask, self.pooling)

    def _prefix(self, model: nn.Module, batch: torch.Tensor, mask: torch.Tensor, keys: list[bytes]) -> torch.Tensor:
        """What the frozen layers below ``first_trained_layer`` output for each row, from the cache or computed."""
        missing = [i for i, key in enumerate(keys) if key not in self.prefix]
        if missing:
            lengths = mask[missing].sum(1)
            width = int(lengths.max())
            with torch.no_grad():
                states = model(input_ids=batch[missing, :width], attention_mask=mask[missing, :width],
                               output_hidden_states=True).hidden_states[self.first_trained_layer]
            for i, state, length in zip(missing, states, lengths.tolist()):
                self.prefix[keys[i]] = state[:length].clone()
        states = [self.prefix[key] for key in keys]
        out = torch.zeros(len(keys), batch.shape[1], states[0].shape[-1], dtype=states[0].dtype, device=batch.device)
        for i, state in enumerate(states):
            out[i, : len(state)] = state
        for key in keys:
            self.prefix.move_to_end(key)
        while len(self.prefix) > max(self.cache_size, len(keys)):
            self.prefix.popitem(last=False)
        return out
