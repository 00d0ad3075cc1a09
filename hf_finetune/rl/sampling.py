"""Rollout sampling that matches the log-probs RL computes for it, and where a response ends.

Why this is hand-written: ``generate()`` fills every field its ``generation_config`` leaves at
``None`` from the *model's* own ``generation_config`` (transformers 5 ``_prepare_generation_config``),
so a checkpoint that ships ``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``,
``suppress_tokens``, ``top_k``... silently samples from another distribution than the plain
``softmax(logits / temperature)`` whose log-probs PPO's ratio and KL use. Setting a field to its
"off" value is not enough for the list-valued ones (``None`` *is* their off value), so during a
rollout the model's own config is swapped for a neutral one as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import GenerationConfig

# Every GenerationConfig field whose value changes the sampling distribution, at its neutral value.
NEUTRAL_SAMPLING: dict = {
    "do_sample": True, "num_beams": 1, "top_k": 0, "top_p": 1.0, "min_p": None, "top_h": None, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
    "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "guidance_scale": None, "watermarking_config": None, "renormalize_logits": False, "remove_invalid_values": False,
    "low_memory": None,
}


def rollout_generation_config(
    max_new_tokens: int, temperature: float, eos_token_ids: Sequence[int], pad_token_id: int,
    stop_strings: Sequence[str] | None = None,
) -> GenerationConfig:
    """Pure ancestral sampling from ``softmax(logits / temperature)``, ending at any of ``eos_token_ids``."""
    return GenerationConfig(
        **NEUTRAL_SAMPLING, max_new_tokens=max_new_tokens, temperature=temperature,
        eos_token_id=list(eos_token_ids), pad_token_id=pad_token_id,
        stop_strings=list(stop_strings) if stop_strings else None,
    )


@contextlib.contextmanager
def exact_sampling(model):
    """Inside, ``model.generate`` cannot pick up sampling settings from the model's own generation config.

    Under PEFT the config that ``generate`` reads lives on the innermost ``transformers`` model.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = getattr(inner, "generation_config", None)
    if original is None:
        yield model
        return
    neutral = GenerationConfig(**NEUTRAL_SAMPLING, eos_token_id=original.eos_token_id,
                               pad_token_id=original.pad_token_id, bos_token_id=original.bos_token_id)
    inner.generation_config = neutral
    try:
        yield model
    finally:
        inner.generation_config = original


@contextlib.contextmanager
def decoding_threads(model, rows: int, fixed: bool = False):
    """Run a ``generate()`` call with the thread count that measures fastest for its small matmuls.

    Decoding multiplies ``rows x hidden`` activations by the weights one token at a time: small matmuls that
    extra OpenMP threads slow down when another process holds a core (:mod:`hf_finetune.threads`). The
    log-probs RL trains on are unaffected: PPO recomputes them with a full forward, TRL from the sampled ids.
    ``fixed`` (a ``full_determinism`` run) keeps the current count: another count sums in another order,
    which changes the last bits of the logits and so, rarely, a sampled token, and resumes must repeat exactly.
    """
    if fixed:
        yield
        return
    from ..threads import small_matmul_threads

    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 576
    with small_matmul_threads(rows=max(1, int(rows)), hidden=int(hidden)):
        yield


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus every EOS id of the model's generation config (Llama-3, Gemma chat ends).

    Raises ``ValueError`` when an id lies outside the vocabulary (it could never be sampled).
    """
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    configured = getattr(getattr(inner, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        for i in [configured] if isinstance(configured, int) else list(configured):
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("Neither the tokenizer nor the model's generation config has an EOS token: responses could "
                         "never end. Set tokenizer.eos_token (and resize the embeddings if it is new).")
    size = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    bad = [i for i in ids if i < 0 or (size is not None and i >= size)]
    if bad:
        raise ValueError(f"EOS id(s) {bad} lie outside the policy's vocabulary of {size}: fix the tokenizer's "
                         "eos_token or the model's generation_config.eos_token_id.")
    return ids


def response_ends(responses: torch.Tensor, eos_ids: Sequence[int], tokenizer=None,
                  stop_strings: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last token of each response (the first EOS, or the token completing a stop string) and
    whether it ended at all; a response that never ended has its last position as index.

    Returns ``(last_index [B] long, ended [B] bool)``.
    """
    is_end = torch.isin(responses, torch.tensor(list(eos_ids), device=responses.device))
    if stop_strings:
        for b, row in enumerate(responses.tolist()):
            limit = int(is_end[b].float().argmax()) if is_end[b].any() else len(row) - 1
            if not any(s in tokenizer.decode(row[: limit + 1]) for s in stop_strings):
                continue
            for t in range(limit + 1):  # the first token after which a stop string is in the text
                if any(s in tokenizer.decode(row[: t + 1]) for s in stop_strings):
                    is_end[b, t] = True
                    break
    ended = is_end.any(dim=1)
    last = torch.where(ended, is_end.float().argmax(dim=1), torch.full_like(ended, responses.shape[1] - 1, dtype=torch.long))
    return last.long(), ended


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """The completion text up to (and including) the first stop string."""
    if not stop_strings:
        return text
    hits = [text.index(s) + len(s) for s in stop_strings if s in text]
    return text[: min(hits)] if hits else text
