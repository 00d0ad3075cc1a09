"""One reward interface for PPO, GRPO and RLOO: reward functions, a reward-model scorer, and evaluation.

A reward function has TRL GRPO's signature::

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

``columns`` holds the dataset's other columns for the batch (for example ``answer``); TRL also
passes ``completion_ids``, ``trainer_state``, ``log_extra`` and ``log_metric``, so functions must
accept ``**kwargs``. ``None`` means "not applicable to this row" and is ignored in the weighted sum.

Built-ins (:func:`exact_match`, :func:`regex_match`, :func:`format_reward`, :func:`length_reward`)
and :class:`~hf_finetune.rl.reward_model.RewardModelScorer` (a sequence classifier turned into a reward; it
lives in ``reward_model.py`` and is re-exported here) all follow it, so the same callables go to our
:class:`~hf_finetune.rl.ppo_trainer.PPOTrainer` and to TRL's trainers.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import numbers
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import check_reward_weights
from .reward_model import RewardModelScorer, load_reward_model
from .sampling import cut_at_stop, decoding_threads, exact_sampling, response_ends
from .sampling import eos_token_ids as all_eos_ids

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., Sequence[float | None]]

__all__ = [
    "RewardFunc",
    "RewardModelScorer",
    "check_reward_weights",
    "compute_rewards",
    "evaluate_generations",
    "exact_match",
    "format_reward",
    "brevity_reward",
    "length_reward",
    "load_reward_model",
    "regex_match",
    "resolve_reward_funcs",
    "reward_name",
    "score_per_function",
    "weighted_sum",
    "write_samples",
]


def reward_name(fn: Any) -> str:
    """The name a reward function is logged under (its ``__name__``, else its class name)."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


# ---------------------------------------------------------------------------------------------
# Validation and combination
# ---------------------------------------------------------------------------------------------


def weighted_sum(scores: torch.Tensor, weights: Sequence[float] | None, all_none: str = "nan") -> torch.Tensor:
    """``sum_j w_j * scores[:, j]`` skipping NaN (= None) entries, as TRL's GRPO does (``nansum``).

    A row where every reward is NaN gets NaN (``all_none="nan"``) or 0.0 (``"zero"``).
    """
    weights = [1.0] * scores.shape[1] if weights is None else weights
    total = (scores * torch.tensor([float(w) for w in weights], dtype=scores.dtype)).nansum(dim=1)
    total[torch.isnan(scores).all(dim=1)] = math.nan if all_none == "nan" else 0.0
    return total


def _as_list(output: Any, name: str) -> list:
    if isinstance(output, torch.Tensor):
        return output.detach().float().cpu().reshape(-1).tolist()
    if hasattr(output, "tolist") and not isinstance(output, (str, bytes)):  # numpy arrays
        return list(output.tolist())
    if isinstance(output, (str, bytes, dict)) or not isinstance(output, Sequence):
        raise ValueError(
            f"Reward function '{name}' returned {type(output).__name__}; it must return a list with one "
            "float (or None) per completion."
        )
    return list(output)


def _check_value(value: Any, name: str, index: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Reward function '{name}' returned {value!r} ({type(value).__name__}) for completion {index}: "
            "rewards must be numbers (or None when the reward does not apply)."
        )
    value = float(value)
    if math.isinf(value):
        raise ValueError(f"Reward function '{name}' returned {value} for completion {index}: rewards must be finite.")
    return value  # NaN is kept and treated like None


def _failing_row(fn, prompts, completions, columns, extra) -> str:
    """`` on row i (prompt ...)`` for the first row that raises alone, or "" when every row passes alone."""
    for i in range(len(prompts)):
        try:
            fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1],
               **{k: v[i : i + 1] for k, v in columns.items()},
               **{k: v[i : i + 1] if isinstance(v, list) and len(v) == len(prompts) else v for k, v in extra.items()})
        except Exception:
            return f" on row {i} (prompt {prompts[i][:80]!r}, completion {completions[i][:80]!r})"
    return ""


def score_per_function(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list] | None = None,
    **extra: Any,
) -> torch.Tensor:
    """Call every reward function and check its output; returns float32 ``[batch, n_funcs]`` (NaN = None).

    Args:
        reward_funcs: Reward functions with the shared signature.
        prompts: Prompt texts, one per completion.
        completions: Completion texts.
        columns: Other dataset columns for the batch, each a list of ``len(prompts)`` values.
        **extra: Further keyword arguments for the functions (e.g. ``completion_ids``).

    Returns:
        A ``float32`` tensor of shape ``[len(prompts), len(reward_funcs)]``.

    Raises:
        ValueError: naming the function, when it raises (with the first row that fails), returns the
            wrong number of rewards, a non-number or an infinite value.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: give one prompt per completion.")
    columns = dict(columns or {})
    for key, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"Column '{key}' has {len(values)} values for {len(prompts)} completions.")
    scores = torch.empty(len(prompts), len(reward_funcs), dtype=torch.float32)
    for j, fn in enumerate(reward_funcs):
        name = reward_name(fn)
        try:
            output = fn(prompts=prompts, completions=completions, **columns, **extra)
        except Exception as err:  # name the function and the first row it fails on, not a deep stack
            raise ValueError(f"Reward function '{name}' raised {type(err).__name__}: {err}"
                             f"{_failing_row(fn, prompts, completions, columns, extra)}") from err
        output = _as_list(output, name)
        if len(output) != len(prompts):
            raise ValueError(
                f"Reward function '{name}' returned {len(output)} rewards for {len(prompts)} completions: "
                "return exactly one reward (or None) per completion, in order."
            )
        scores[:, j] = torch.tensor([_check_value(v, name, i) for i, v in enumerate(output)], dtype=torch.float32)
    return scores


def compute_rewards(
    reward_funcs: Sequence[RewardFunc],
    weights: Sequence[float] | None,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list] | None = None,
    *,
    all_none: str = "error",
    **extra: Any,
) -> torch.Tensor:
    """Weighted sum of several reward functions, one float per completion.

    ``None`` (NaN) rewards are skipped in the sum, as in TRL's GRPO (``nansum`` over functions). A
    completion for which *every* function returned None has no reward: ``all_none`` decides what
    happens — ``"error"`` (default) raises, ``"zero"`` gives it 0.0, ``"nan"`` leaves NaN for the
    caller to mask.

    Args:
        reward_funcs: Reward functions with the shared signature.
        weights: One weight per function (default: all 1.0).
        prompts: Prompt texts.
        completions: Completion texts.
        columns: Other dataset columns for the batch.
        all_none: ``"error"``, ``"zero"`` or ``"nan"``, see above.
        **extra: Further keyword arguments for the functions.

    Returns:
        A ``float32`` tensor of shape ``[len(prompts)]``.

    Example:
        >>> compute_rewards([length_reward(2)], None, ["q"], ["two words"]).tolist()
        [1.0]
    """
    if not reward_funcs:
        raise ValueError("No reward functions given: name at least one reward function or a reward model.")
    weights = check_reward_weights(weights, reward_funcs)
    if all_none not in ("error", "zero", "nan"):
        raise ValueError(f"all_none={all_none!r}: use 'error', 'zero' or 'nan'.")
    scores = score_per_function(reward_funcs, prompts, completions, columns, **extra)
    unscored = torch.isnan(scores).all(dim=1)
    if unscored.any() and all_none == "error":
        i = int(unscored.nonzero()[0, 0])
        names = [reward_name(f) for f in reward_funcs]
        raise ValueError(
            f"Every reward function ({names}) returned None for completion {i} (prompt {prompts[i][:80]!r}): "
            "add a reward that applies to every row."
        )
    return weighted_sum(scores, weights, "zero" if all_none == "zero" else "nan")


# ---------------------------------------------------------------------------------------------
# Built-in reward functions
# ---------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the and extra whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _candidate_answer(completion: str) -> str:
    # Instruct models often write "Answer: X" or put the answer on the first line.
    match = re.search(r"answer\s*(?:is|:)\s*(.+)", completion, flags=re.IGNORECASE)
    text = match.group(1) if match else completion
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _answers(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def exact_match(answer_column: str = "answer", mode: str = "exact") -> RewardFunc:
    """1.0 when the completion's answer equals a reference answer after normalization, else 0.0.

    Args:
        answer_column: Dataset column with the reference answer (a string or a list of accepted answers).
        mode: ``"exact"`` compares the first line of the completion (or the text after "Answer:")
            with the answer; ``"contains"`` accepts any completion containing the answer as whole words.

    Returns:
        A reward function named ``exact_match`` (or ``contains_answer``); rows without an answer get None.

    Example:
        >>> exact_match()(["2+2?"], ["4."], answer=["4"])
        [1.0]
    """
    if mode not in ("exact", "contains"):
        raise ValueError(f"exact_match mode={mode!r}: use 'exact' or 'contains'.")

    def reward(prompts, completions, **columns):
        if answer_column not in columns:
            raise ValueError(
                f"exact_match needs the dataset column '{answer_column}' (columns here: {sorted(columns)})."
            )
        out: list[float | None] = []
        for completion, answer in zip(completions, columns[answer_column]):
            refs = _answers(answer)
            if refs is None:
                out.append(None)
                continue
            refs = [normalize_answer(r) for r in refs]
            if mode == "exact":
                hit = normalize_answer(_candidate_answer(completion)) in refs
            else:
                padded = f" {normalize_answer(completion)} "
                hit = any(r and f" {r} " in padded for r in refs)
            out.append(1.0 if hit else 0.0)
        return out

    return _named(reward, "exact_match" if mode == "exact" else "contains_answer")


def regex_match(pattern: str, name: str = "regex_match") -> RewardFunc:
    """1.0 when ``re.search(pattern, completion)`` finds a match, else 0.0.

    Example:
        >>> regex_match(r"\\d+")(["q", "q"], ["it is 42", "none"])
        [1.0, 0.0]
    """
    compiled = re.compile(pattern)

    def reward(prompts, completions, **_):
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    return _named(reward, name)


def format_reward(pattern: str, name: str = "format_reward") -> RewardFunc:
    """1.0 when the whole stripped completion matches ``pattern`` (``re.fullmatch``, DOTALL), else 0.0.

    Example:
        >>> format_reward(r"Answer: \\w+")(["q", "q"], ["Answer: Paris", "Paris, I think"])
        [1.0, 0.0]
    """
    compiled = re.compile(pattern, flags=re.DOTALL)

    def reward(prompts, completions, **_):
        return [1.0 if compiled.fullmatch(c.strip()) else 0.0 for c in completions]

    return _named(reward, name)


def brevity_reward(unit: str = "words", name: str = "brevity") -> RewardFunc:
    """``1 / n`` for a completion of ``n >= 1`` words (or characters), 0 for an empty one.

    A dense push towards short answers: unlike ``length:1``, which pays only for exactly one word,
    every word dropped pays a little, so a policy that answers in sentences gets a signal at once.

    Example:
        >>> brevity_reward()(["q", "q", "q"], ["Paris", "It is Paris", ""])
        [1.0, 0.3333333333333333, 0.0]
    """
    if unit not in ("words", "chars"):
        raise ValueError(f"brevity unit={unit!r}: use 'words' or 'chars'.")

    def reward(prompts, completions, **_):
        sizes = [len(c.split()) if unit == "words" else len(c.strip()) for c in completions]
        return [1.0 / n if n else 0.0 for n in sizes]

    return _named(reward, name)


def length_reward(target: int, unit: str = "words", name: str = "length_reward") -> RewardFunc:
    """``max(0, 1 - |n - target| / target)`` where ``n`` is the completion length in words or characters.

    Example:
        >>> length_reward(4)(["q", "q"], ["one two three four", "one two"])
        [1.0, 0.5]
    """
    if target < 1:
        raise ValueError(f"length_reward target={target}: use a positive length.")
    if unit not in ("words", "chars"):
        raise ValueError(f"length_reward unit={unit!r}: use 'words' or 'chars'.")

    def reward(prompts, completions, **_):
        sizes = [len(c.split()) if unit == "words" else len(c) for c in completions]
        return [max(0.0, 1.0 - abs(n - target) / target) for n in sizes]

    return _named(reward, name)


# ---------------------------------------------------------------------------------------------
# Recipe strings -> reward functions
# ---------------------------------------------------------------------------------------------

BUILTIN_SPECS = ("exact_match", "contains_answer", "regex", "format", "length", "brevity")


def resolve_reward_funcs(specs: Sequence[str | RewardFunc]) -> list[RewardFunc]:
    """Turn recipe reward names into functions; callables pass through unchanged.

    Recipe strings (YAML is only ever read with ``safe_load``; nothing in it is executed):

    - ``exact_match`` / ``exact_match:COLUMN`` — :func:`exact_match` against ``COLUMN`` (default ``answer``)
    - ``contains_answer`` / ``contains_answer:COLUMN`` — :func:`exact_match` with ``mode="contains"``
    - ``regex:PATTERN`` — :func:`regex_match`; ``format:PATTERN`` — :func:`format_reward`
    - ``length:N`` (words) or ``length:N:chars`` — :func:`length_reward`; ``brevity[:chars]`` — :func:`brevity_reward`
    - ``package.module:function`` — an explicit import path to YOUR function, as TRL's ``reward_funcs``
      accepts: the module is imported, which runs its code, so only name modules you trust.

    Example:
        >>> [f.__name__ for f in resolve_reward_funcs(["exact_match", "length:20"])]
        ['exact_match', 'length_reward']
    """
    funcs: list[RewardFunc] = []
    for spec in specs:
        if callable(spec):
            funcs.append(spec)
            continue
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"Reward {spec!r}: give a name such as 'exact_match' or 'regex:PATTERN', or a function.")
        head, _, rest = spec.partition(":")
        if head in ("exact_match", "contains_answer"):
            mode = "exact" if head == "exact_match" else "contains"
            funcs.append(exact_match(rest or "answer", mode=mode))
        elif head == "regex":
            funcs.append(regex_match(rest))
        elif head == "format":
            funcs.append(format_reward(rest))
        elif head == "brevity":
            funcs.append(brevity_reward(unit=rest or "words"))
        elif head == "length":
            target, _, unit = rest.partition(":")
            if not target.isdigit():
                raise ValueError(f"Reward {spec!r}: write length:N or length:N:chars with N a positive integer.")
            funcs.append(length_reward(int(target), unit=unit or "words"))
        elif rest and re.fullmatch(r"[A-Za-z_][\w.]*", head) and re.fullmatch(r"[A-Za-z_]\w*", rest):
            try:
                fn = getattr(importlib.import_module(head), rest)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"Reward {spec!r}: cannot import {rest} from {head} ({err}).") from None
            if not callable(fn):
                raise ValueError(f"Reward {spec!r} is not callable.")
            funcs.append(fn)
        else:
            raise ValueError(
                f"Unknown reward {spec!r}: use one of {list(BUILTIN_SPECS)} (e.g. 'regex:PATTERN', 'length:50') "
                "or an import path 'package.module:function'."
            )
    return funcs


# ---------------------------------------------------------------------------------------------
# Evaluation shared by PPO, GRPO and RLOO
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_generations(
    model,
    tokenizer,
    prompts: list[str],
    columns: dict[str, list] | None,
    reward_funcs: Sequence[RewardFunc],
    reward_weights: Sequence[float] | None = None,
    task_metrics: Sequence[RewardFunc] = (),
    max_new_tokens: int = 64,
    batch_size: int = 8,
    num_logged: int = 8,
    eos_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    fixed_threads: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy generation on held-out prompts, scored by the rewards and by reward-independent task metrics.

    Task metrics (e.g. :func:`exact_match`) use the reward-function signature but do not enter the
    reward, so reward hacking shows up as reward rising while the task metric does not.

    Args:
        model: The policy (unwrapped; PEFT models are fine).
        tokenizer: Policy tokenizer with a pad token.
        prompts: Prompt texts (already chat-formatted when the model needs it).
        columns: Other dataset columns for these prompts.
        reward_funcs: Reward functions, weighted by ``reward_weights``.
        reward_weights: One weight per reward function.
        task_metrics: Metric functions averaged over rows where they are not None.
        max_new_tokens: Completion length limit.
        batch_size: Prompts per ``generate`` call.
        num_logged: Rows kept for the sample-generations table.
        eos_token_ids: Every id that ends a completion (default: the tokenizer's and the model's generation config's).
        stop_strings: Strings that end a completion too.
        fixed_threads: Keep the current thread count for decoding (``full_determinism`` runs); otherwise
            decoding uses the faster of the policy's count and one thread (:func:`~hf_finetune.rl.sampling.decoding_threads`).

    Returns:
        ``(metrics, table)``: metrics without prefix (``reward``, ``reward_std``, ``reward/<name>``,
        each task metric by name, ``completion_length``, ``eos_rate``) and the first ``num_logged``
        rows as dicts with ``prompt``, ``completion``, ``reward`` and task metric values.
    """
    columns = dict(columns or {})
    eos_ids = list(eos_token_ids) if eos_token_ids is not None else all_eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    device = next(model.parameters()).device
    completions: list[str] = []
    lengths: list[int] = []
    ended: list[bool] = []
    try:
        # Greedy generation over hundreds of held-out prompts takes minutes on a CPU: show it with an ETA.
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="evaluating generations", unit="batch", leave=False, disable=len(starts) < 2):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            # Greedy on the policy's own logits: the model's generation config (repetition penalty, ...) is left
            # out, as in the rollouts, so before/after figures measure what RL changed.
            with exact_sampling(model), decoding_threads(model, batch["input_ids"].shape[0], fixed=fixed_threads):
                out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids,
                                     stop_strings=list(stop_strings) if stop_strings else None,
                                     tokenizer=tokenizer if stop_strings else None)
            new = out[:, batch["input_ids"].shape[1] :]
            last, has_end = response_ends(new, eos_ids, tokenizer, stop_strings)
            for row, n, end in zip(new, (last + 1).tolist(), has_end.tolist()):
                lengths.append(n)
                ended.append(bool(end))
                completions.append(cut_at_stop(tokenizer.decode(row[:n], skip_special_tokens=True), stop_strings))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    scores = score_per_function(reward_funcs, prompts, completions, columns)
    total = weighted_sum(scores, check_reward_weights(reward_weights, reward_funcs))
    metrics: dict[str, float] = {
        "reward": float(total.nanmean()),
        "reward_std": float(total[~total.isnan()].std()) if (~total.isnan()).sum() > 1 else 0.0,
        "completion_length": sum(lengths) / max(len(lengths), 1),
        "eos_rate": sum(ended) / max(len(ended), 1),
    }
    for j, fn in enumerate(reward_funcs):
        metrics[f"reward/{reward_name(fn)}"] = float(scores[:, j].nanmean())
    task = score_per_function(task_metrics, prompts, completions, columns) if task_metrics else None
    for j, fn in enumerate(task_metrics):
        metrics[reward_name(fn)] = float(task[:, j].nanmean())
    table = []
    for i in range(min(num_logged, len(prompts))):
        row = {"prompt": prompts[i], "completion": completions[i], "reward": float(total[i])}
        for j, fn in enumerate(task_metrics):
            row[reward_name(fn)] = float(task[i, j])
        table.append(row)
    return metrics, table


def write_samples(table: list[dict], stem: Path, callbacks: Sequence[Any] = (), tag: str = "eval/samples",
                  step: int = 0) -> str:
    """The sample-generations table as ``<stem>.jsonl`` and ``<stem>.md``, and in TensorBoard's text tab when a
    callback holds a writer (PPO, GRPO and RLOO write it alike). Returns the Markdown ("" for an empty table)."""
    if not table:
        return ""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".jsonl").write_text("".join(json.dumps(row) + "\n" for row in table))
    keys = list(table[0])

    def cell(value):
        return (f"{value:.4f}" if isinstance(value, float) else str(value)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in table]
    markdown = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(markdown)
    for callback in callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            writer.add_text(tag, markdown, step)
    return markdown
