"""Property tests (seeded loops) of the self-supervised collators on WordPiece and byte-level BPE tokenizers."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import WORDS, build_bert_tokenizer, build_bpe_tokenizer, make_topic_rows

from hf_finetune.self_supervised.collators import (
    FIM_TOKENS,
    CausalLMCollator,
    FIMCollator,
    MaskedLMCollator,
    SpanMaskingCollator,
    WholeWordMaskingCollator,
    add_fim_tokens,
    word_offsets,
)


@pytest.fixture(scope="module")
def bert_tok(tmp_path_factory):
    return build_bert_tokenizer(tmp_path_factory.mktemp("wp"))


@pytest.fixture(scope="module")
def bpe_tok():
    return build_bpe_tokenizer(with_pad=True)


def _texts(n, seed=0, length=12):
    return [r["text"] for r in make_topic_rows(n, seed=seed, length=length)][:n]


def _features(tok, texts, offsets=False):
    enc = tok(texts, return_special_tokens_mask=True, return_offsets_mapping=offsets)
    feats = []
    for i, text in enumerate(texts):
        f = {"input_ids": enc["input_ids"][i], "special_tokens_mask": enc["special_tokens_mask"][i]}
        if offsets:
            f["offset_mapping"] = word_offsets(text, enc["offset_mapping"][i])
        feats.append(f)
    return feats


def _special(tok, ids):
    return torch.isin(ids, torch.tensor(sorted(set(tok.all_special_ids))))


@pytest.mark.parametrize("cls", [MaskedLMCollator, SpanMaskingCollator, WholeWordMaskingCollator])
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_masked_fraction_matches_rate_and_skips_special_tokens(bert_tok, cls, rate):
    collator = cls(bert_tok, mlm_probability=rate, seed=1)
    rng = random.Random(0)
    targets = maskable = 0
    for _step in range(60):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(8)]
        feats = _features(bert_tok, texts, offsets=cls is WholeWordMaskingCollator)
        original = bert_tok.pad([{"input_ids": f["input_ids"]} for f in feats], return_tensors="pt")["input_ids"]
        batch = collator(feats)
        chosen = batch["labels"] != -100
        special = _special(bert_tok, original)
        assert not (chosen & special).any(), "a special or pad token became a target"
        assert torch.equal(batch["labels"][chosen], original[chosen]), "labels must hold the original tokens"
        assert torch.equal(batch["input_ids"][~chosen], original[~chosen]), "non-targets must stay unchanged"
        targets += int(chosen.sum())
        maskable += int((~special).sum())
    assert abs(targets / maskable - rate) < 0.03, (targets / maskable, rate)


def test_mlm_replacement_split_80_10_10(bert_tok):
    collator = MaskedLMCollator(bert_tok, mlm_probability=0.3, seed=0)
    feats = _features(bert_tok, _texts(120))
    batch = collator(feats)
    chosen = batch["labels"] != -100
    masked = (batch["input_ids"] == bert_tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == batch["labels"]) & chosen
    n = int(chosen.sum())
    assert abs(int(masked.sum()) / n - 0.8) < 0.06
    assert abs(int(kept.sum()) / n - 0.1) < 0.05


def test_spans_are_disjoint_contiguous_and_within_text(bert_tok):
    collator = SpanMaskingCollator(bert_tok, mlm_probability=0.3, mean_span_length=3.0, max_span_length=6, seed=0)
    collator.generator = torch.Generator().manual_seed(0)
    lengths = []
    for _trial in range(200):
        n = 40
        maskable = torch.ones(n, dtype=torch.bool)
        maskable[0] = maskable[-1] = False  # CLS / SEP
        maskable[20] = False  # a separator in the middle: spans must not cross it
        spans = collator.sample_spans(maskable)
        covered = torch.zeros(n, dtype=torch.bool)
        for start, end in spans:
            assert 0 < end - start <= 6
            assert maskable[start:end].all(), "a span covers a special token"
            assert not covered[start:end].any(), "spans overlap"
            covered[start:end] = True
            lengths.append(end - start)
    # Spans are mostly longer than one token: the mean of a geometric(1/3) clipped at 6 is ~2.4;
    # the last span of a row is cut to the budget and spans stop at taken/special positions.
    assert 1.7 < sum(lengths) / len(lengths) < 3.0, sum(lengths) / len(lengths)


def test_span_masking_replaces_whole_spans(bert_tok):
    collator = SpanMaskingCollator(bert_tok, mlm_probability=0.3, mean_span_length=4, seed=3)
    batch = collator(_features(bert_tok, _texts(16, length=30)))
    chosen = batch["labels"] != -100
    assert (batch["input_ids"][chosen] == bert_tok.mask_token_id).all()
    # Contiguity: far fewer runs of targets than targets.
    runs = int((chosen[:, 1:] & ~chosen[:, :-1]).sum() + chosen[:, 0].sum())
    assert runs < 0.6 * int(chosen.sum())


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_whole_words_masked_together(bert_tok, bpe_tok, tokenizer):
    tok = bert_tok
    if tokenizer == "bpe":  # RoBERTa-style: byte-level BPE with a <mask> token
        tok = build_bpe_tokenizer(with_pad=True)
        tok.add_special_tokens({"mask_token": "<mask>"})
    collator = WholeWordMaskingCollator(tok, mlm_probability=0.3, seed=0)
    # Words out of the toy vocabulary split into several pieces (WordPiece ##x, BPE bytes).
    texts = ["tokenizers disagree about xylophones and quizzical zebras" for _ in range(8)]
    enc = tok(texts, return_offsets_mapping=True)
    feats = _features(tok, texts, offsets=True)
    batch = collator(feats)
    chosen = batch["labels"] != -100
    assert chosen.any()
    multi_piece_words = 0
    for i in range(len(texts)):
        words = enc.word_ids(i)  # the fast tokenizer's own word segmentation, as the reference
        by_word = {}
        for pos, w in enumerate(words):
            if w is not None:
                by_word.setdefault(w, []).append(bool(chosen[i, pos]))
        for flags in by_word.values():
            multi_piece_words += len(flags) > 1
            assert all(flags) or not any(flags), "a word was partly masked"
    assert multi_piece_words > 8


def test_bpe_offsets_without_fix_would_join_words(bpe_tok):
    # The reason for word_offsets(): byte-level BPE spans include the leading space.
    text = "hello world"
    raw = bpe_tok(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    fixed = word_offsets(text, raw)
    starts = [s for s, _ in fixed]
    assert 6 in starts and 5 not in starts


def test_fim_rearranges_exactly_the_input_tokens(bpe_tok):
    tok = build_bpe_tokenizer(with_pad=True)
    assert add_fim_tokens(tok) == 3
    assert add_fim_tokens(tok) == 0
    sentinels = tok.convert_tokens_to_ids(list(FIM_TOKENS))
    collator = FIMCollator(tok, fim_rate=0.5, seed=0)
    rearranged = 0
    for trial in range(40):
        texts = _texts(6, seed=trial, length=random.Random(trial).randint(1, 20))
        rows = [tok(t)["input_ids"] for t in texts]
        batch = collator([{"input_ids": r} for r in rows])
        for i, row in enumerate(rows):
            n_out = int(batch["attention_mask"][i].sum())
            out = batch["input_ids"][i, :n_out].tolist()
            assert batch["labels"][i, :n_out].tolist() == out
            assert (batch["labels"][i, n_out:] == -100).all()
            if out == row:
                continue
            rearranged += 1
            p, s, m = (out.index(t) for t in sentinels)
            assert p == 0 and p < s < m
            prefix, suffix, middle = out[1:s], out[s + 1 : m], out[m + 1 :]
            assert prefix + middle + suffix == row, "FIM must rearrange exactly the input tokens"
    assert 80 < rearranged < 160  # ~ half of 240 examples


def test_fim_needs_sentinels(bpe_tok):
    with pytest.raises(ValueError, match="add_fim_tokens"):
        FIMCollator(build_bpe_tokenizer(with_pad=True))


def test_causal_lm_keeps_eos_targets_when_pad_is_eos(bpe_tok):
    collator = CausalLMCollator(bpe_tok)
    eos = bpe_tok.eos_token_id
    batch = collator([{"input_ids": [5, 6, eos]}, {"input_ids": [7, eos]}])
    assert batch["labels"].tolist() == [[5, 6, eos], [7, eos, -100]]


@pytest.mark.parametrize("cls", [MaskedLMCollator, SpanMaskingCollator, WholeWordMaskingCollator, FIMCollator])
def test_masks_are_reproducible_across_instances_and_vary_by_epoch(bert_tok, cls):
    tok = bert_tok
    if cls is FIMCollator:
        tok = build_bpe_tokenizer(with_pad=True)
        add_fim_tokens(tok)
    feats = _features(tok, _texts(8), offsets=cls is WholeWordMaskingCollator)
    first, resumed = cls(tok, seed=7), cls(tok, seed=7)
    a = first([dict(f) for f in feats])
    first([dict(f) for f in _features(tok, _texts(8, seed=5), offsets=cls is WholeWordMaskingCollator)])
    b = resumed([dict(f) for f in feats])  # a fresh collator (as after resume) masks the batch the same way
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    resumed.set_epoch(1)
    c = resumed([dict(f) for f in feats])
    assert not torch.equal(a["input_ids"], c["input_ids"])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda bpe: MaskedLMCollator(bpe), "no mask token.*'clm'.*'fim'"),
        (lambda bpe: SpanMaskingCollator(bpe), "no mask token"),
        (lambda bpe: MaskedLMCollator(_bert(), mlm_probability=0.0), r"in \(0, 1\)"),
        (lambda bpe: MaskedLMCollator(_bert(), mlm_probability=1.0), r"in \(0, 1\)"),
        (lambda bpe: SpanMaskingCollator(_bert(), mean_span_length=0.5), "mean_span_length"),
        (lambda bpe: FIMCollator(bpe, fim_rate=1.5), "fim_rate"),
    ],
)
def test_collator_bad_input(bpe_tok, make, match):
    with pytest.raises(ValueError, match=match):
        make(bpe_tok)


_BERT = {}


def _bert():
    if "tok" not in _BERT:
        import tempfile

        _BERT["tok"] = build_bert_tokenizer(tempfile.mkdtemp())
    return _BERT["tok"]
