"""GRPO (and the part RLOO shares with it): thin subclasses of TRL's maintained trainers that take the same blocks as our PPO.

What the subclasses add to ``trl.GRPOTrainer`` / ``trl.RLOOTrainer``:

- the constructor of :class:`~hf_finetune.rl.ppo_trainer.PPOTrainer` (``reward_funcs`` +
  ``reward_weights`` + ``reward_model`` + ``eval_metrics``, ``prompt_column``), so ``train.py``
  builds all three methods the same way;
- CPU-safe config defaults (TRL defaults to ``bf16=True`` and ``gradient_checkpointing=True``),
  ``kl_coef`` as an alias of ``beta`` (PPO's name), and checks that fail before step 1;
- evaluation that ``eval_strategy`` drives: greedy generation on held-out prompts scored by the
  rewards and by reward-independent task metrics, with a sample-generations table — the same
  :func:`~hf_finetune.rl.rewards.evaluate_generations` PPO uses (TRL's own evaluation samples
  ``num_generations`` completions per prompt and reports the training loss);
- ``training_args.json`` instead of the pickled ``training_args.bin``, and the non-finite guard.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import trl
from transformers import Trainer

from ..callbacks import NonFiniteGuardCallback
from ..models import ensure_pad_token
from ..trainer_mixin import RunTrainerMixin
from .rewards import RewardModelScorer, check_reward_weights, evaluate_generations, resolve_reward_funcs, write_samples
from .sampling import decoding_threads, eos_token_ids, exact_sampling

logger = logging.getLogger(__name__)


class GroupTrainerMixin(RunTrainerMixin):
    """Shared constructor checks and generation-based evaluation of our GRPO and RLOO trainers."""

    def __init__(self, model, args, train_dataset, eval_dataset=None, processing_class=None,
                 reward_funcs=None, reward_weights=None, reward_model=None, reward_processing_class=None,
                 value_model=None, ref_model=None, peft_config=None, eval_metrics=None, callbacks=None):
        # PPOTrainer's signature, so a recipe switches method by one word; PPO-only models are refused.
        _reject_ppo_only(value_model, ref_model, type(self).__name__)
        funcs, train_dataset, eval_dataset, callbacks = self._setup_rl(
            model, args, train_dataset, eval_dataset, processing_class, reward_funcs, reward_weights,
            reward_model, reward_processing_class, peft_config, eval_metrics, callbacks)
        super().__init__(model=model, reward_funcs=funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config)
        for scorer in funcs:  # TRL moves reward *models*; our scorers wrap one, so put it on the training device
            if isinstance(scorer, RewardModelScorer):
                scorer.to(self.args.device)

    def _setup_rl(self, model, args, train_dataset, eval_dataset, processing_class, reward_funcs, reward_weights,
                  reward_model, reward_processing_class, peft_config, eval_metrics, callbacks):
        funcs = resolve_reward_funcs(list(reward_funcs or []))
        if reward_model is not None:
            if hasattr(reward_model, "config"):  # a raw classifier, not a scorer
                if reward_processing_class is None:
                    raise ValueError("A reward_model given as a model needs its tokenizer as reward_processing_class.")
                reward_model = RewardModelScorer(reward_model, reward_processing_class)
            funcs.append(reward_model)
        if not funcs:
            raise ValueError("No reward: pass reward_funcs and/or a reward_model.")
        if reward_weights is not None:
            args.reward_weights = check_reward_weights(reward_weights, funcs)
        else:  # weights given to the config (as TRL takes them) are checked the same way
            args.reward_weights = check_reward_weights(getattr(args, "reward_weights", None), funcs,
                                                       "args.reward_weights")
        if processing_class is None:
            raise ValueError("Pass the policy tokenizer as processing_class.")
        ensure_pad_token(processing_class, "the policy")
        if processing_class.eos_token_id is None:
            raise ValueError("The policy tokenizer has no EOS token: completions could never end.")
        if hasattr(model, "get_input_embeddings"):
            eos_token_ids(model, processing_class)  # every EOS id TRL stops at must be a token of the policy
        train_dataset = self._prepare_prompts(train_dataset, args, processing_class, "train_dataset")
        if eval_dataset is not None:
            eval_dataset = self._prepare_prompts(eval_dataset, args, processing_class, "eval_dataset")
        elif args.eval_strategy != "no":
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset of held-out prompts.")
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        longest = max(len(ids) for ids in processing_class(list(train_dataset["prompt"]), add_special_tokens=False)["input_ids"])
        if limit is not None and longest + args.max_completion_length > limit:
            raise ValueError(
                f"The longest prompt ({longest} tokens) + max_completion_length ({args.max_completion_length}) exceeds "
                f"the model's max_position_embeddings ({limit}): shorten the prompts or max_completion_length."
            )
        if args.beta > 0 and peft_config is None and not hasattr(model, "peft_config"):
            name = getattr(getattr(model, "config", None), "_name_or_path", "")
            if isinstance(model, str):
                name = model
            if not name or (not os.path.isdir(name) and os.environ.get("HF_HUB_OFFLINE") == "1"
                            and not _in_hub_cache(name)):
                # TRL rebuilds the frozen reference model from model.config._name_or_path.
                raise ValueError(
                    f"beta/kl_coef={args.beta} needs a reference model, which TRL reloads from "
                    f"model.config._name_or_path ({name!r}), not a saved model: save the model with "
                    "save_pretrained() and load it from that folder, use LoRA (the reference is the adapter-disabled "
                    "base), or set kl_coef: 0."
                )
        self._rl_reward_funcs = funcs
        self._rl_eval_metrics = resolve_reward_funcs(list(eval_metrics or []))
        callbacks = [*(callbacks or []), NonFiniteGuardCallback()]
        return funcs, train_dataset, eval_dataset, callbacks

    @staticmethod
    def _prepare_prompts(dataset, args, tokenizer, where: str):
        column = args.prompt_column
        if column not in dataset.column_names:
            raise ValueError(f"{where} has no prompt column '{column}' (columns: {dataset.column_names}): "
                             "set training.prompt_column.")
        if len(dataset) == 0:
            raise ValueError(f"{where} is empty: RL needs at least one prompt.")
        if column != "prompt":
            if "prompt" in dataset.column_names:
                dataset = dataset.remove_columns("prompt")
            dataset = dataset.rename_column(column, "prompt")
        if any(isinstance(p, list) for p in dataset["prompt"]):  # chat messages, as PPO and TRL accept them
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"{where} holds chat-message prompts but the tokenizer has no chat template.")
            dataset = dataset.map(lambda row: {"prompt": tokenizer.apply_chat_template(
                row["prompt"], tokenize=False, add_generation_prompt=True)})
        if not all(isinstance(p, str) and p for p in dataset["prompt"]):
            raise ValueError(f"{where}: every prompt must be a non-empty string or a list of chat messages.")
        if args.max_prompt_length is not None:
            ids = tokenizer(list(dataset["prompt"]), add_special_tokens=False)["input_ids"]
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            if args.truncate_prompts:
                # TRL 1.16 has no prompt truncation: cut the text to its last max_prompt_length tokens here.
                cut = {i: tokenizer.decode(row[-args.max_prompt_length:]) for i, row in enumerate(ids)
                       if len(row) > args.max_prompt_length}
                if cut:
                    dataset = dataset.map(lambda row, i: {"prompt": cut.get(i, row["prompt"])}, with_indices=True)
            elif len(ids[longest]) > args.max_prompt_length:
                raise ValueError(
                    f"{where} row {longest} has {len(ids[longest])} prompt tokens > max_prompt_length="
                    f"{args.max_prompt_length} ({dataset[longest]['prompt'][:60]!r}...): raise max_prompt_length, "
                    "shorten the prompt, or set truncate_prompts to cut prompts from the left.")
        return dataset

    def _generate_single_turn(self, *args, **kwargs):
        # transformers fills the fields TRL leaves unset (no_repeat_ngram_size, min_p, suppress_tokens, ...) from
        # the model's own generation config; TRL's log-probs assume plain softmax(logits / T) sampling.
        model = self.accelerator.unwrap_model(self.model)
        rows = len(args[0]) if args else len(kwargs.get("prompt_ids", [])) or 1
        stops = self.args.stop_strings
        with exact_sampling(model), decoding_threads(model, rows, fixed=self.args.full_determinism), \
                _stopping_at(model, stops, self.processing_class):
            out = super()._generate_single_turn(*args, **kwargs)
        if not stops:
            return out
        # TRL keeps every token up to the first EOS; a finished row is padded (with EOS, when pad == EOS) after its
        # stop string, and those tokens were never sampled: cut each completion right after its stop string.
        ids = out[0] if isinstance(out, tuple) else out  # GRPO returns (ids, logprobs), RLOO the ids
        ids = [_cut_after_stop(row, stops, self.processing_class) for row in ids]
        return (ids, *out[1:]) if isinstance(out, tuple) else ids

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Greedy generation on held-out prompts: mean reward, task metrics and a sample-generations table."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset of held-out prompts.")
        if isinstance(dataset, dict):  # several named eval sets
            out = {}
            for name, part in dataset.items():
                out.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return out
        columns = {c: list(dataset[c]) for c in dataset.column_names if c != "prompt"}
        model = self.accelerator.unwrap_model(self.model)
        raw, table = evaluate_generations(
            model,
            self.processing_class,
            list(dataset["prompt"]),
            columns,
            self._rl_reward_funcs,
            self.args.reward_weights,
            self._rl_eval_metrics,
            max_new_tokens=self.args.max_completion_length,
            batch_size=self.args.per_device_eval_batch_size,
            num_logged=self.args.num_sample_generations,
            stop_strings=self.args.stop_strings,
            fixed_threads=self.args.full_determinism,
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
        # Trainer.log, not TRL's log: TRL's merges (and clears) the pending training metrics.
        Trainer.log(self, metrics)
        if self.is_world_process_zero():
            write_samples(table, Path(self.args.output_dir) / "samples" / f"{metric_key_prefix}_step{self.state.global_step}",
                          self.callback_handler.callbacks, f"{metric_key_prefix}/samples", self.state.global_step)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class GRPOTrainer(GroupTrainerMixin, trl.GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the constructor of our ``PPOTrainer`` and generation-based evaluation.

    Args:
        model: Policy (``AutoModelForCausalLM``, or a PEFT model), loaded from a folder when ``beta > 0``
            without LoRA (TRL reloads the reference from ``model.config._name_or_path``).
        args: A :class:`GRPOConfig`.
        train_dataset: Prompts (``args.prompt_column``) plus any columns the rewards read.
        eval_dataset: Held-out prompts for evaluation.
        processing_class: The policy tokenizer (needs EOS; pad falls back to EOS).
        reward_funcs: Reward functions or recipe names (see :func:`~hf_finetune.rl.rewards.resolve_reward_funcs`).
        reward_weights: One weight per reward (functions first, then ``reward_model``).
        reward_model: A :class:`~hf_finetune.rl.rewards.RewardModelScorer`, or a sequence classifier
            (with ``reward_processing_class``) scored by its first label/logit.
        reward_processing_class: Tokenizer of a raw ``reward_model``.
        peft_config: A ``peft.LoraConfig`` to train adapters; the reference is then the adapter-disabled base.
        eval_metrics: Task metrics (reward-function signature) reported at evaluation only.
        callbacks: Extra ``TrainerCallback``s.

    Example:
        >>> trainer = GRPOTrainer(model, GRPOConfig(output_dir="out", max_steps=20), prompts,
        ...                       processing_class=tok, reward_funcs=["exact_match"])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """


@contextlib.contextmanager
def _stopping_at(model, stop_strings, tokenizer):
    """TRL's generate() call takes no stop strings (they need the tokenizer): add both to the call."""
    if not stop_strings:
        yield
        return
    own = "generate" in vars(model)  # already patched on the instance (a test's spy): restore that, not the class's
    generate = model.generate
    model.generate = functools.partial(generate, stop_strings=list(stop_strings), tokenizer=tokenizer)
    try:
        yield
    finally:
        if own:
            model.generate = generate
        else:
            del model.generate


def _cut_after_stop(ids: list[int], stop_strings, tokenizer) -> list[int]:
    if not any(s in tokenizer.decode(ids) for s in stop_strings):
        return ids
    for end in range(1, len(ids) + 1):  # the first token after which a stop string is in the text
        if any(s in tokenizer.decode(ids[:end]) for s in stop_strings):
            return ids[:end]
    return ids


def _reject_ppo_only(value_model, ref_model, name: str) -> None:
    # Same signature as PPOTrainer so train.py builds all three alike; these two only mean something there.
    if value_model is not None:
        raise ValueError(f"{name} is critic-free: value_model is a PPO argument (use method: ppo).")
    if ref_model is not None:
        raise ValueError(f"{name} builds its own reference model (reloaded by name, or the adapter-disabled base "
                         "with LoRA): do not pass ref_model.")


def _in_hub_cache(name: str) -> bool:
    """Whether ``from_pretrained(name)`` finds ``name`` offline in the Hugging Face cache (bundled models are there)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid Hub id
        return False
