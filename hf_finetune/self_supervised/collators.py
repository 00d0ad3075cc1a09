"""Collators for self-supervised objectives, all built on ``transformers.DataCollatorForLanguageModeling``.

* :class:`MaskedLMCollator` - dynamic masking with the base collator's 80/10/10 replacement.
* :class:`WholeWordMaskingCollator` - the base collator's ``whole_word_mask`` option, fed with word
  offsets that are correct for WordPiece *and* byte-level BPE (see :func:`word_offsets`).
* :class:`SpanMaskingCollator` - SpanBERT-style contiguous spans with geometric lengths.
* :class:`CausalLMCollator` - next-token prediction; padding is found from the attention mask, so a
  tokenizer whose pad token is its EOS still learns to predict EOS.
* :class:`FIMCollator` - fill-in-the-middle (prefix-suffix-middle order) for causal LMs.

Reproducibility: with ``seed`` set, each batch is masked with a ``torch.Generator`` seeded from
``(seed, epoch, batch content)``. The base collator keeps one generator per process whose state is
not saved in checkpoints, so a resumed run would draw different masks; deriving the generator per
batch makes the masks a pure function of the data order, which ``Trainer`` restores on resume.
:class:`MaskingEpochCallback` keeps ``epoch`` in step with training (new masks every epoch).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, TrainerCallback

FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
EVAL_EPOCH = -1  # the epoch used while evaluating: the same masks at every evaluation


def batch_seed(seed: int, epoch: int, input_ids: Any) -> int:
    """A 63-bit seed from the collator seed, the epoch and the token ids of a batch."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}:{epoch}:".encode())
    if isinstance(input_ids, torch.Tensor):
        digest.update(input_ids.cpu().numpy().astype(np.int64).tobytes())
    else:
        for row in input_ids:
            digest.update(np.asarray(row, dtype=np.int64).tobytes())
            digest.update(b"|")
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


class _BatchSeeded:
    """Mixin: re-seed the base collator's generator per batch (see the module docstring for why)."""

    epoch = 0

    def _check_tensors(self) -> None:
        if self.return_tensors != "pt":
            raise ValueError(f"{type(self).__name__} returns PyTorch tensors only: use return_tensors='pt'.")

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh set of masks for ``epoch`` (called by :class:`MaskingEpochCallback`)."""
        self.epoch = int(epoch)

    def _reseed(self, input_ids: Any) -> None:
        if self.seed is None:  # the base behaviour: the global torch RNG
            return
        self.generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, input_ids))
        self._generator_pid = os.getpid()


def _require_mask_token(tokenizer, what: str) -> None:
    if tokenizer.mask_token is None:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has no mask token, which {what} needs: "
            "use objective 'clm' (causal LM) or 'fim' (fill-in-the-middle) for this tokenizer, "
            "or pick a masked-LM model (BERT, RoBERTa, MiniLM)."
        )


def _check_probability(name: str, value: float | None) -> None:
    if value is None or not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value}: the masking probability must be in (0, 1), e.g. 0.15.")


@dataclass
class MaskedLMCollator(_BatchSeeded, DataCollatorForLanguageModeling):
    """Dynamic masked-LM masking (BERT's 80% [MASK] / 10% random / 10% unchanged), seedable.

    Labels are ``-100`` on every position that is not a prediction target; special tokens and
    padding are never selected.

    Example:
        >>> collator = MaskedLMCollator(tokenizer, mlm_probability=0.15, seed=0)  # doctest: +SKIP
        >>> batch = collator([tokenizer("some text")])  # doctest: +SKIP
    """

    def __post_init__(self):
        _require_mask_token(self.tokenizer, "masked language modelling")
        _check_probability("mlm_probability", self.mlm_probability)
        self._check_tensors()
        super().__post_init__()

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self._reseed(inputs)
        return super().torch_mask_tokens(inputs, special_tokens_mask=special_tokens_mask, offset_mapping=offset_mapping)


@dataclass
class WholeWordMaskingCollator(MaskedLMCollator):
    """Masks all sub-tokens of a word together, through the base collator's ``whole_word_mask``.

    Examples must carry ``offset_mapping`` (character offsets per token) in which a token that
    begins a word does not touch the previous token. WordPiece offsets already are like that;
    byte-level BPE offsets include the leading space (``"Ġworld"`` spans `` world``), which the base
    collator would read as one word with the previous token: :func:`word_offsets` trims the
    leading whitespace, and :func:`hf_finetune.self_supervised.text.tokenize_corpus` applies it.
    As in the base collator, all selected tokens become the mask token (no 10/10 replacement).

    Example:
        >>> collator = WholeWordMaskingCollator(tokenizer, mlm_probability=0.15, seed=0)  # doctest: +SKIP
    """

    whole_word_mask: bool = True
    mask_replace_prob: float = 1.0
    random_replace_prob: float = 0.0

    def torch_call(self, examples):
        if not isinstance(examples[0], Mapping) or "offset_mapping" not in examples[0]:
            raise ValueError(
                "Whole-word masking needs 'offset_mapping' in every example: tokenize with "
                "return_offsets_mapping=True (a fast tokenizer) and pass the offsets through word_offsets()."
            )
        # tokenizer.pad() cannot pad offset_mapping (a list of pairs): keep it aside, pad it ourselves.
        self._offsets = [np.asarray(e["offset_mapping"], dtype=np.int64).reshape(-1, 2) for e in examples]
        stripped = [{k: v for k, v in e.items() if k != "offset_mapping"} for e in examples]
        return super().torch_call(stripped)

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        padded = np.zeros((*inputs.shape, 2), dtype=np.int64)
        for i, off in enumerate(self._offsets):
            n = min(len(off), inputs.shape[1])
            if self.tokenizer.padding_side == "left":
                padded[i, inputs.shape[1] - n :] = off[-n:] if n else off[:0]
            else:
                padded[i, :n] = off[:n]
        return super().torch_mask_tokens(inputs, special_tokens_mask=special_tokens_mask, offset_mapping=padded)


def word_offsets(text: str, offsets: list) -> list[tuple[int, int]]:
    """Trim leading whitespace from each token's character span, so word starts are visible.

    Byte-level BPE and SentencePiece tokens carry the space before a word (``(5, 11)`` for
    ``" world"`` after ``"hello"``); the base collator starts a new word only where a token does
    not touch the previous one, so the span must begin at the ``w``.
    """
    out = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        out.append((start, end))
    return out


@dataclass
class SpanMaskingCollator(MaskedLMCollator):
    """Span masking ("sequence filling", SpanBERT): whole contiguous spans become prediction targets.

    Span lengths are drawn from a geometric distribution with mean ``mean_span_length`` (``p = 1 /
    mean``), clipped at ``max_span_length`` and at special tokens; spans start at uniformly drawn
    free positions until ``mlm_probability`` x (non-special tokens of the row) tokens are covered
    (stochastic rounding, so the rate is exact in expectation). Each span is replaced as a whole:
    by mask tokens with ``mask_replace_prob``, by random tokens with ``random_replace_prob``, else
    left unchanged (SpanBERT uses 0.8 / 0.1; the default here masks every span). Loss is on the
    masked positions only. SpanBERT's setting is ``mean_span_length=5`` (p = 0.2) with
    ``max_span_length=10``, whose clipped mean is 3.8.

    Example:
        >>> collator = SpanMaskingCollator(tokenizer, mlm_probability=0.15, mean_span_length=3, seed=0)  # doctest: +SKIP
    """

    mean_span_length: float = 3.0
    max_span_length: int = 10
    mask_replace_prob: float = 1.0
    random_replace_prob: float = 0.0

    def __post_init__(self):
        if self.mean_span_length is None or self.mean_span_length < 1:
            raise ValueError(
                f"mean_span_length={self.mean_span_length}: spans are at least one token long, use a mean >= 1 "
                "(SpanBERT: 5 with max_span_length 10)."
            )
        if self.max_span_length < 1:
            raise ValueError(f"max_span_length={self.max_span_length}: use at least 1.")
        if self.whole_word_mask:
            raise ValueError("SpanMaskingCollator masks token spans: whole_word_mask is not supported with it.")
        super().__post_init__()

    def sample_spans(self, maskable: torch.Tensor) -> list[tuple[int, int]]:
        """Disjoint ``(start, end)`` spans over the ``True`` positions of a 1-D ``maskable`` mask."""
        g = self.generator
        n = int(maskable.sum())
        target = self.mlm_probability * n
        budget = int(target) + int(torch.rand((), generator=g).item() < target - int(target))
        free = maskable.clone()
        spans: list[tuple[int, int]] = []
        if budget == 0:
            return spans
        p = 1.0 / self.mean_span_length
        lengths = torch.empty(budget).geometric_(p, generator=g).long().clamp_(max=self.max_span_length).tolist()
        draws = torch.rand(budget, generator=g).tolist()
        covered = 0
        for length, u in zip(lengths, draws):
            positions = free.nonzero().flatten()
            if covered >= budget or len(positions) == 0:
                break
            start = int(positions[int(u * len(positions))])
            end = start
            stop = min(start + min(length, budget - covered), len(free))
            while end < stop and free[end]:
                end += 1
            free[start:end] = False
            spans.append((start, end))
            covered += end - start
        return spans

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self._reseed(inputs)
        if self.generator is None:  # seed=None: draw from the global RNG like the base collator
            self.generator = torch.default_generator
        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = [
                self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in labels.tolist()
            ]
        special = torch.as_tensor(special_tokens_mask, dtype=torch.bool)
        if self.tokenizer.pad_token_id is not None:
            special |= inputs == self.tokenizer.pad_token_id
        masked = torch.zeros_like(special)
        mask_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        for i in range(inputs.shape[0]):
            for start, end in self.sample_spans(~special[i]):
                masked[i, start:end] = True
                u = torch.rand((), generator=self.generator).item()
                if u < self.mask_replace_prob:
                    inputs[i, start:end] = mask_id
                elif u < self.mask_replace_prob + self.random_replace_prob:
                    inputs[i, start:end] = torch.randint(
                        len(self.tokenizer), (end - start,), generator=self.generator
                    )
        labels[~masked] = -100
        return inputs, labels


@dataclass
class CausalLMCollator(_BatchSeeded, DataCollatorForLanguageModeling):
    """Next-token prediction: labels are the inputs, ``-100`` on padding only.

    The base collator drops every label equal to the pad id; decoder tokenizers often pad with
    their EOS token, and then the model would never learn to end a document. Here padding is read
    from the attention mask instead.

    Example:
        >>> collator = CausalLMCollator(tokenizer)  # doctest: +SKIP
    """

    mlm: bool = False

    def __post_init__(self):
        self._check_tensors()
        super().__post_init__()

    def torch_call(self, examples):
        if not isinstance(examples[0], Mapping):
            examples = [{"input_ids": list(e)} for e in examples]
        examples = [{k: v for k, v in e.items() if k not in ("labels", "offset_mapping")} for e in examples]
        batch = super().torch_call(examples)
        if "attention_mask" in batch:
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
        return batch


def add_fim_tokens(tokenizer, model=None, tokens: tuple[str, str, str] = FIM_TOKENS) -> int:
    """Add the fill-in-the-middle sentinels the tokenizer lacks; resize ``model``'s embeddings to match.

    Returns the number of tokens added (0 for tokenizers that already have them, like SmolLM2's).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return len(missing)


@dataclass
class FIMCollator(CausalLMCollator):
    """Fill-in-the-middle for causal LMs, prefix-suffix-middle (PSM) order (Bavarian et al., 2022).

    With probability ``fim_rate`` an example ``x`` is cut at two uniform token positions into
    ``prefix, middle, suffix`` and rewritten as ``<fim_prefix> prefix <fim_suffix> suffix
    <fim_middle> middle``: the same tokens plus three sentinels, trained with the causal LM loss.
    Other examples stay plain causal LM. Call :func:`add_fim_tokens` first when the tokenizer lacks
    the sentinels (it resizes the model's embeddings too).

    Example:
        >>> add_fim_tokens(tokenizer, model)  # doctest: +SKIP
        >>> collator = FIMCollator(tokenizer, fim_rate=0.5, seed=0)  # doctest: +SKIP
    """

    fim_rate: float = 0.5
    fim_prefix_token: str = FIM_TOKENS[0]
    fim_suffix_token: str = FIM_TOKENS[1]
    fim_middle_token: str = FIM_TOKENS[2]

    def __post_init__(self):
        if not 0.0 <= self.fim_rate <= 1.0:
            raise ValueError(f"fim_rate={self.fim_rate}: use a probability in [0, 1] (0.5 is common).")
        vocab = self.tokenizer.get_vocab()
        sentinels = (self.fim_prefix_token, self.fim_suffix_token, self.fim_middle_token)
        missing = [t for t in sentinels if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the FIM sentinel token(s) {missing}: call "
                "hf_finetune.self_supervised.collators.add_fim_tokens(tokenizer, model) first "
                "(it adds them and resizes the model's embeddings)."
            )
        self.sentinel_ids = [vocab[t] for t in sentinels]
        super().__post_init__()

    def rearrange(self, ids: list[int]) -> list[int]:
        """Apply FIM to one token sequence with probability ``fim_rate`` (uses ``self.generator``)."""
        g = self.generator
        if torch.rand((), generator=g).item() >= self.fim_rate:
            return list(ids)
        a, b = sorted(torch.randint(0, len(ids) + 1, (2,), generator=g).tolist())
        prefix_id, suffix_id, middle_id = self.sentinel_ids
        return [prefix_id, *ids[:a], suffix_id, *ids[b:], middle_id, *ids[a:b]]

    def torch_call(self, examples):
        rows = [list(e["input_ids"] if isinstance(e, Mapping) else e) for e in examples]
        rows = [[int(t) for t in r] for r in rows]
        self._reseed(rows)
        if self.generator is None:
            self.generator = torch.default_generator
        return super().torch_call([{"input_ids": self.rearrange(r)} for r in rows])


class MaskingEpochCallback(TrainerCallback):
    """Tell a collator which epoch is starting, so each epoch draws new (still reproducible) masks.

    Example:
        >>> trainer = Trainer(..., data_collator=collator, callbacks=[MaskingEpochCallback(collator)])  # doctest: +SKIP
    """

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.collator, "set_epoch"):
            self.collator.set_epoch(math.floor((state.epoch or 0) + 1e-6))
