"""A sequence classifier as a reward: :class:`RewardModelScorer` and :func:`load_reward_model`.

Kept apart from :mod:`hf_finetune.rl.rewards` (plain reward functions, their weighted sum and evaluation)
because only this part needs a second model: its own tokenizer and chat template, its label choice and the
device it runs on. Both names are re-exported from ``hf_finetune.rl.rewards``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["RewardModelScorer", "load_reward_model"]


class RewardModelScorer:
    """A sequence classifier as a reward function: probability (or logit) of one chosen label.

    Any ``AutoModelForSequenceClassification`` works: a one-output reward model gives its logit; a
    classifier with several labels gives the softmax probability (``output="prob"``) or the raw
    logit (``output="logit"``) or the log-probability (``output="logprob"``) of ``label``. So a topic or
    sentiment classifier — e.g. the MiniLM BBC News classifier of ``recipes/quickstart.yaml`` — becomes a
    reward for steering generations.

    Args:
        model: The classifier (kept frozen, in eval mode).
        tokenizer: Its own tokenizer (may differ from the policy's).
        label: Label id or name (``model.config.label2id``); optional for one-output models.
        output: ``"prob"``, ``"logit"`` or ``"logprob"`` (log-softmax: graded where the probability is near 0,
            so a rollout batch with no clear hit still ranks its completions, and bounded above by 0 unlike
            the logit, which keyword stuffing can push up without end).
        batch_size: Texts scored per forward pass.
        max_length: Truncation length of the scored text.
        include_prompt: Score the prompt with the completion, in the reward model's own format: its chat
            template (user prompt, assistant completion) when its tokenizer has one, else ``prompt + completion``.
            The prompt is the one the dataset gave (column ``raw_prompt`` when the recipe runner rendered it with
            the *policy's* chat template), never the policy's template text.
        name: Name in logs (default ``reward_model`` or ``reward_model_<label>``).

    Example:
        >>> scorer = RewardModelScorer(classifier, tokenizer, label="sports")  # doctest: +SKIP
        >>> scorer(["Write a headline:"], ["Arsenal win the cup"])  # doctest: +SKIP
        [0.93]
    """

    def __init__(
        self,
        model,
        tokenizer,
        label: int | str | None = None,
        output: str = "prob",
        batch_size: int = 16,
        max_length: int | None = 256,
        include_prompt: bool = False,
        name: str | None = None,
    ):
        if output not in ("prob", "logit", "logprob"):
            raise ValueError(f"RewardModelScorer output={output!r}: use 'prob', 'logit' or 'logprob'.")
        num_labels = int(getattr(model.config, "num_labels", 1))
        if num_labels == 1:
            self.label_id = 0
        elif label is None:
            names = list((getattr(model.config, "id2label", None) or {}).values())
            raise ValueError(f"The reward model has {num_labels} labels {names}: choose one with label=<id or name>.")
        else:
            self.label_id = self._label_id(model, label, num_labels)
        from ..models import ensure_pad_token  # lazy: reward functions alone need no transformers

        ensure_pad_token(tokenizer, "the reward model")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self.output = output
        self.batch_size = batch_size
        self.max_length = max_length
        self.include_prompt = include_prompt
        id2label = getattr(model.config, "id2label", None) or {}
        suffix = "" if num_labels == 1 else f"_{id2label.get(self.label_id, self.label_id)}"
        self.__name__ = name or f"reward_model{suffix}"

    @staticmethod
    def _label_id(model, label: int | str, num_labels: int) -> int:
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            label2id = getattr(model.config, "label2id", None) or {}
            if label not in label2id:
                raise ValueError(f"Reward label {label!r} is not one of the model's labels {sorted(label2id)}.")
            return int(label2id[label])
        label_id = int(label)
        if not 0 <= label_id < num_labels:
            raise ValueError(f"Reward label id {label_id} is out of range for a model with {num_labels} labels.")
        return label_id

    def texts(self, prompts: list, completions: list[str], raw_prompt: list | None = None) -> list[str]:
        """What the reward model reads for each completion (see ``include_prompt``)."""
        if not self.include_prompt:
            return list(completions)
        out = []
        for prompt, completion in zip(raw_prompt if raw_prompt is not None else prompts, completions):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if getattr(self.tokenizer, "chat_template", None):
                out.append(self.tokenizer.apply_chat_template(
                    [*messages, {"role": "assistant", "content": completion}], tokenize=False))
            else:
                out.append("\n".join(m["content"] for m in messages) if isinstance(prompt, list) else prompt)
                out[-1] += completion
        return out

    def to(self, device) -> RewardModelScorer:
        """Move the reward model (the trainers put it on their training device)."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str], raw_prompt: list | None = None, **_: Any) -> list[float]:
        texts = self.texts(prompts, completions, raw_prompt)
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            logits = self.model(**batch).logits.float()
            if self.num_labels > 1 and self.output == "prob":
                values = logits.softmax(dim=-1)[:, self.label_id]
            elif self.num_labels > 1 and self.output == "logprob":
                values = logits.log_softmax(dim=-1)[:, self.label_id]
            else:
                values = logits[:, self.label_id]
            scores += values.cpu().tolist()
        return scores


def load_reward_model(
    path: str, label: int | str | None = None, output: str = "prob", batch_size: int = 16, include_prompt: bool = False
) -> RewardModelScorer:
    """Load a classifier (a run directory — full or LoRA — a local folder or a Hub id) as a reward.

    Args:
        path: Where the classifier is; ``hf_finetune.models.load_trained`` handles adapters.
        label, output, batch_size, include_prompt: See :class:`RewardModelScorer`.

    Returns:
        A :class:`RewardModelScorer`.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..config import ModelArguments
    from ..models import load_trained, model_source

    if Path(path).is_dir():
        model = load_trained(path, AutoModelForSequenceClassification)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        source = model_source(ModelArguments(model_name_or_path=path))
        model = AutoModelForSequenceClassification.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    return RewardModelScorer(model, tokenizer, label=label, output=output, batch_size=batch_size,
                             include_prompt=include_prompt)
