"""PPO for causal language models, on ``transformers.Trainer``.

TRL removed its ``PPOTrainer`` in 1.13 (huggingface/trl#7020) and no maintained library ships PPO
for ``transformers`` models, so the rollout and update loop is written here; everything else
(optimizer and scheduler creation, accelerate, checkpoints, RNG state, callbacks, logging,
``push_to_hub``) is ``Trainer``'s own.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import TrainOutput, speed_metrics

from ..callbacks import NonFiniteGuardCallback, NonFiniteLossError
from ..models import ensure_pad_token
from ..trainer_mixin import RunTrainerMixin, write_args_json
from .ppo_config import PPOConfig
from .ppo_utils import (  # noqa: F401 - re-exported: the public PPO math lives beside the trainer
    AdaptiveKLController,
    PolicyAndValue,
    _adapter,
    _freeze_starting_adapter,
    _logprobs_and_entropy,
    _position_ids,
    _value_head,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimates,
    masked_mean,
    masked_whiten,
    value_model_from_policy,
)
from .rewards import RewardModelScorer, check_reward_weights, compute_rewards, evaluate_generations, write_samples
from .sampling import (
    cut_at_stop,
    decoding_threads,
    eos_token_ids,
    exact_sampling,
    response_ends,
    rollout_generation_config,
)

logger = logging.getLogger(__name__)

VALUE_DIR = "value_model"
VALUE_HEAD_FILE = "value_head.safetensors"
PPO_STATE_FILE = "ppo_state.json"


class PPOTrainer(RunTrainerMixin, Trainer):
    r"""Proximal Policy Optimization (Schulman et al., 2017) of a causal LM against rewards, with a KL penalty.

    Each PPO step (one ``global_step``):

    1. **Rollout.** ``B = args.rollout_batch_size`` prompts come from the train dataloader (left-padded);
       the policy samples responses ``y ~ pi_old(. | x)`` at ``temperature`` until EOS or
       ``max_completion_length`` (then the response is truncated there; ``missing_eos_penalty``
       optionally lowers its score). Tokens after EOS are masked.
    2. **Score.** ``s = sum_i w_i R_i(x, y)`` from the reward functions / reward model.
    3. **Per-token rewards** with the KL penalty to the frozen reference ``pi_ref``:
       ``k1_t = log pi_old(y_t) - log pi_ref(y_t)``, ``k3_t = (rho - 1) - log rho`` with
       ``rho = pi_ref / pi_old`` (both logged; ``kl_estimator`` picks the penalized one), and
       ``r_t = -beta * kl_t + [t = T] * s`` where ``T`` is the last response token.
    4. **GAE**: ``delta_t = r_t + gamma V(t+1) - V(t)``, ``A_t = sum_l (gamma lam)^l delta_{t+l}``,
       returns ``R_t = A_t + V(t)``; advantages whitened, ``A <- (A - mean) / std``, over response tokens.
    5. **Update**: ``num_ppo_epochs`` passes over ``num_mini_batches`` shuffled minibatches, each
       accumulated over ``gradient_accumulation_steps`` micro-batches, minimizing

       ``L = E_t[max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps))]``
       ``  + vf_coef * 0.5 E_t[max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)]``
       ``  - entropy_coef * E_t[H_t]``,   ``rho_t = pi_theta(y_t) / pi_old(y_t)``.
    6. **KL coefficient**: fixed ``kl_coef``, or with ``adaptive_kl_target`` the adaptive controller of
       Ziegler et al. (2019): ``beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) B / kl_horizon)``, never
       below ``kl_coef_min``.

    Dropout is disabled (the module runs in eval mode) and the sampled log-probs come from the same
    full forward as training, so ``rho = 1`` exactly at the first pass.

    Rollouts sample from exactly ``softmax(logits / temperature)`` (the model's own generation config
    is neutralised, see :mod:`~hf_finetune.rl.sampling`) and end at every EOS id of the tokenizer and
    the model's generation config, or at ``stop_strings``.

    Models: ``model`` is the policy (an ``AutoModelForCausalLM``, optionally a PEFT model). The critic
    is ``value_model`` (a ``AutoModelForSequenceClassification`` with one label; by default built
    from the policy's backbone with a zero head) when ``args.value_model == "separate"``, or a linear
    head on the policy's last hidden state when ``"shared"`` (``"auto"``: shared under PEFT, so the
    critic shares the one frozen base). The reference is ``ref_model``; by default the starting
    policy: with PEFT the policy with its adapter disabled (a fresh adapter adds zero) or, when the
    adapter already changes the policy (carried in), a frozen copy of that adapter; else a frozen
    deep copy of the policy.

    Args:
        model: The policy (``AutoModelForCausalLM`` or a ``PeftModel`` around one).
        args: A :class:`PPOConfig`.
        train_dataset: Rows with a ``args.prompt_column`` column (text, or chat messages that the
            tokenizer's chat template renders); other columns go to the reward functions.
        eval_dataset: Held-out prompts, evaluated greedily when ``eval_strategy`` says so.
        processing_class: The policy's tokenizer (needs an EOS token; pad defaults to EOS).
        reward_funcs: A reward function or a list (``fn(prompts, completions, **columns) -> list[float | None]``).
        reward_weights: One weight per reward (reward functions first, then the reward model).
        reward_model: A one-output ``AutoModelForSequenceClassification`` scored through :class:`RewardModelScorer`
            (for a classifier with several labels, pass ``RewardModelScorer(model, tok, label=...)`` in ``reward_funcs``).
        reward_processing_class: The reward model's tokenizer (default: ``processing_class``).
        value_model: The critic when ``args.value_model == "separate"`` (see above).
        ref_model: The frozen reference policy (see above).
        peft_config: A PEFT config to wrap ``model`` with (LoRA), when it is not a PEFT model yet.
        eval_metrics: Task metrics with the reward signature, reported in evaluation but never used as reward.
        callbacks: Extra ``TrainerCallback``\ s (``NonFiniteGuardCallback`` is always added).

    Example:
        >>> trainer = PPOTrainer(model, PPOConfig(output_dir="out", max_steps=50), train_dataset=prompts,
        ...                      processing_class=tokenizer, reward_funcs=[my_reward])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        args: PPOConfig,
        train_dataset,
        eval_dataset=None,
        processing_class=None,
        reward_funcs: Callable | Sequence[Callable] | None = None,
        reward_weights: Sequence[float] | None = None,
        reward_model: nn.Module | None = None,
        reward_processing_class=None,
        value_model: nn.Module | None = None,
        ref_model: nn.Module | None = None,
        peft_config=None,
        eval_metrics: Sequence[Callable] | None = None,
        callbacks: list | None = None,
    ):
        if not isinstance(args, PPOConfig):
            raise ValueError(f"PPOTrainer needs a PPOConfig, got {type(args).__name__}.")
        tokenizer = processing_class
        if tokenizer is None:
            raise ValueError("PPOTrainer needs the policy's tokenizer: pass processing_class=tokenizer.")
        if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has neither an EOS nor a pad token: rollouts could never stop. Add one with "
                "tokenizer.add_special_tokens({'eos_token': ...}) and resize the model's embeddings."
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token: set tokenizer.eos_token so responses can end.")
        ensure_pad_token(tokenizer, "the policy")
        tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
        tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the response
        self._check_dataset(train_dataset, args, "train_dataset")
        if eval_dataset is not None:
            self._check_dataset(eval_dataset, args, "eval_dataset")

        funcs = [] if reward_funcs is None else [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        if reward_model is not None:
            funcs.append(RewardModelScorer(reward_model, reward_processing_class or tokenizer))
        if not funcs:
            raise ValueError("PPOTrainer needs a reward: pass reward_funcs=[...] and/or reward_model=...")
        self.reward_funcs, self.reward_weights = funcs, check_reward_weights(reward_weights, funcs)
        self.eval_metrics = list(eval_metrics or [])

        if peft_config is not None and not hasattr(model, "disable_adapter"):
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.is_peft = hasattr(model, "disable_adapter")
        embeddings = model.get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the policy's embedding has {embeddings.num_embeddings}: "
                "call model.resize_token_embeddings(len(tokenizer))."
            )
        model.config.pad_token_id = model.config.pad_token_id or tokenizer.pad_token_id
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        # LoRA: a head on the policy, so the critic shares the one frozen copy of the base weights.
        self.value_kind = args.value_model if args.value_model != "auto" else "shared" if self.is_peft else "separate"
        if self.value_kind != "shared" and args.detach_value_head:
            raise ValueError("detach_value_head applies to a shared value head (value_model='shared', or 'auto' with "
                             "LoRA); a separate critic never trains the policy: unset detach_value_head.")
        if self.value_kind == "shared":
            if value_model is not None:
                raise ValueError("value_model='shared' uses a head on the policy: do not pass a value_model too.")
            hidden = model.get_input_embeddings().embedding_dim
            value = nn.Linear(hidden, 1, dtype=embeddings.weight.dtype, device=embeddings.weight.device)
            nn.init.zeros_(value.weight)
            nn.init.zeros_(value.bias)
        else:
            value = value_model if value_model is not None else value_model_from_policy(model)
            _value_head(value)
        self.ref_adapter = None
        if ref_model is None and self.is_peft:
            self.ref_adapter = _freeze_starting_adapter(model)
        elif ref_model is None:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self.ref_model = ref_model
        self.policy, self.value = model, value

        callbacks = list(callbacks or [])
        if not any(isinstance(c, NonFiniteGuardCallback) for c in callbacks):
            callbacks.append(NonFiniteGuardCallback())
        super().__init__(
            model=PolicyAndValue(model, value, detach_value_input=args.detach_value_head),
            args=args,
            data_collator=lambda rows: rows,  # prompts are tokenized per rollout, with left padding
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        self._train_batch_size = args.rollout_batch_size
        for dataset, name in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            if dataset is not None and args.max_prompt_length is not None and not args.truncate_prompts:
                self._check_prompt_lengths(dataset, name)
        self.kl_ctl = AdaptiveKLController(args.kl_coef, args.adaptive_kl_target, args.kl_horizon, args.kl_coef_min)
        if self.ref_model is not None:
            self.ref_model.to(self.args.device)
        for scorer in self.reward_funcs:  # reward models score on the training device
            if isinstance(scorer, RewardModelScorer):
                scorer.to(self.args.device)
        self.generation_config = rollout_generation_config(
            args.max_completion_length, args.temperature, self.eos_token_ids, tokenizer.pad_token_id, args.stop_strings)

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameters of policy and critic together, each shared tensor counted once."""
        seen, trainable, total = set(), 0, 0
        for param in self.model.parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            total += param.numel()
            trainable += param.numel() if param.requires_grad else 0
        return trainable, total

    @staticmethod
    def _check_dataset(dataset, args: PPOConfig, name: str) -> None:
        if dataset is not None and not hasattr(dataset, "__len__"):
            raise ValueError(f"{name} must be a sized dataset (datasets.Dataset or a list of rows), not a stream.")
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"{name} is empty: PPO needs prompts.")
        columns = getattr(dataset, "column_names", None)
        if columns is not None and args.prompt_column not in columns:
            raise ValueError(f"{name} has no '{args.prompt_column}' column (columns: {columns}): set prompt_column.")

    def _check_prompt_lengths(self, dataset, name: str) -> None:
        texts = self._prompt_texts([dataset[i] for i in range(len(dataset))])
        sizes = [len(ids) for ids in self.processing_class(texts, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(sizes)), key=sizes.__getitem__)
        if sizes[longest] > self.args.max_prompt_length:
            raise ValueError(
                f"{name} row {longest} has {sizes[longest]} prompt tokens > max_prompt_length="
                f"{self.args.max_prompt_length} ({texts[longest][:60]!r}...): raise max_prompt_length, shorten the "
                "prompt, or set truncate_prompts=True to cut prompts from the left."
            )

    # -- prompts and rollouts ----------------------------------------------------------------------

    def _prompt_texts(self, rows: list[dict]) -> list[str]:
        texts = []
        for row in rows:
            prompt = row[self.args.prompt_column]
            if isinstance(prompt, list):  # chat messages
                prompt = self.processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            texts.append(prompt)
        return texts

    def _columns(self, rows: list[dict]) -> dict[str, list]:
        keys = [k for k in rows[0] if k != self.args.prompt_column]
        return {k: [row[k] for row in rows] for k in keys}

    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model_wrapped)

    @torch.no_grad()
    def _rollout(self, rows: list[dict]) -> dict[str, Any]:
        args, tok = self.args, self.processing_class
        prompts = self._prompt_texts(rows)
        enc = tok(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False,
            truncation=args.truncate_prompts, max_length=args.max_prompt_length if args.truncate_prompts else None,
        ).to(args.device)
        policy = self._unwrapped().policy
        # Samples from softmax(logits / T), as the log-probs below assume; decoding at its fastest thread count.
        with exact_sampling(policy), decoding_threads(policy, len(rows), fixed=args.full_determinism):
            sequences = policy.generate(**enc, generation_config=self.generation_config,
                                        tokenizer=tok if args.stop_strings else None)
        prompt_len = enc["input_ids"].shape[1]
        responses = sequences[:, prompt_len:]
        first_eos, has_eos = response_ends(responses, self.eos_token_ids, tok, args.stop_strings)
        arange = torch.arange(responses.shape[1], device=responses.device)
        response_mask = (arange[None, :] <= first_eos[:, None]).long()
        responses = torch.where(response_mask.bool(), responses, tok.pad_token_id)
        input_ids = torch.cat([enc["input_ids"], responses], dim=1)
        attention_mask = torch.cat([enc["attention_mask"], response_mask], dim=1)
        position_ids = _position_ids(attention_mask)

        length = responses.shape[1]
        # A full forward rather than generate()'s logits: the KV-cache path is not bitwise reproducible
        # (its first call on a model differs in the last bits), and resume must be. In chunks of
        # rollout_forward_batch_size rows, so B x length x vocab logits never exist in fp32 at once.
        logprobs, values, ref_logprobs = [], [], []
        for i in range(0, len(rows), args.rollout_forward_batch_size):
            part = slice(i, i + args.rollout_forward_batch_size)
            logits, value = self.model_wrapped(input_ids[part], attention_mask[part], position_ids[part], length)
            logprobs.append(_logprobs_and_entropy(logits[:, :-1], responses[part], args.temperature)[0])
            del logits
            values.append(value[:, prompt_len - 1 : -1].float())
            ref_logprobs.append(self._ref_logprobs(input_ids[part], attention_mask[part], position_ids[part],
                                                   responses[part]))
        logprobs, values, ref_logprobs = torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs)

        # Decode without the EOS itself; a stop string's last token stays (and the text is cut after the string).
        last_tokens = responses[torch.arange(len(rows)), first_eos]
        ended_by_eos = has_eos & torch.isin(last_tokens, torch.tensor(self.eos_token_ids, device=last_tokens.device))
        text_ends = first_eos + 1 - ended_by_eos.long()
        completions = [cut_at_stop(tok.decode(r[:n], skip_special_tokens=True), args.stop_strings)
                       for r, n in zip(responses, text_ends.tolist())]
        # completion_ids as TRL's GRPO passes them (without the EOS), for rewards defined on tokens.
        completion_ids = [r[:n].tolist() for r, n in zip(responses, text_ends.tolist())]
        scores = compute_rewards(
            self.reward_funcs, self.reward_weights, prompts, completions, self._columns(rows), all_none="zero",
            completion_ids=completion_ids,
        ).to(args.device)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()

        mask = response_mask.float()
        k1, k3 = kl_estimates(logprobs, ref_logprobs)
        kl = (k1 if args.kl_estimator == "k1" else k3) * mask
        non_score = -self.kl_ctl.value * kl
        rewards = non_score.clone()
        rewards[torch.arange(len(rows)), first_eos] += scores
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=self._sum_over_ranks)
        advantages, returns = gae(rewards, values, mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, mask, reduce=self._sum_over_ranks)  # global batch statistics
        return {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "responses": responses, "mask": mask, "logprobs": logprobs, "values": values,
            "advantages": advantages, "returns": returns,
            "stats": {
                "scores": scores, "k1": (k1 * mask).sum(1), "k3": (k3 * mask).sum(1),
                "non_score_reward": non_score.sum(1), "length": mask.sum(1), "eos": has_eos.float(),
                "values": values, "returns": returns, "mask": mask,
            },
        }

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(x, "sum") if self.args.world_size > 1 else x

    def _ref_logprobs(self, input_ids, attention_mask, position_ids, responses) -> torch.Tensor:
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False, logits_to_keep=responses.shape[1] + 1)
        if self.ref_model is not None:
            logits = self.ref_model(**kwargs).logits
        else:
            policy = self._unwrapped().policy
            with _adapter(policy, self.ref_adapter):
                logits = policy(**kwargs).logits
        return _logprobs_and_entropy(logits[:, :-1], responses, self.args.temperature)[0]

    # -- the update ------------------------------------------------------------------------------

    def _ppo_update(self, batch: dict[str, Any]) -> dict[str, float]:
        args = self.args
        n = batch["input_ids"].shape[0]
        micro = args.per_device_train_batch_size
        mini = micro * args.gradient_accumulation_steps
        length = batch["responses"].shape[1]
        totals: dict[str, list[torch.Tensor]] = {}
        grad_norm = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n, device=batch["input_ids"].device)
            for start in range(0, n, mini):
                mb = order[start : start + mini]
                for m_start in range(0, len(mb), micro):
                    idx = mb[m_start : m_start + micro]
                    last = m_start + micro >= len(mb)
                    sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model_wrapped)
                    with sync, self.compute_loss_context_manager():
                        logits, values = self.model_wrapped(
                            batch["input_ids"][idx], batch["attention_mask"][idx], batch["position_ids"][idx], length
                        )
                        logprobs, entropy = _logprobs_and_entropy(logits[:, :-1], batch["responses"][idx],
                                                                  args.temperature, args.entropy_coef != 0)
                        values = values[:, -length - 1 : -1].float()
                        mask = batch["mask"][idx]
                        pg_loss, clipfrac, approxkl = clipped_policy_loss(
                            logprobs, batch["logprobs"][idx], batch["advantages"][idx], mask, args.cliprange)
                        vf_loss, vf_clipfrac = clipped_value_loss(
                            values, batch["values"][idx], batch["returns"][idx], mask, args.cliprange_value)
                        mean_entropy = masked_mean(entropy, mask)
                        loss = pg_loss + args.vf_coef * vf_loss - args.entropy_coef * mean_entropy
                        if not torch.isfinite(loss):
                            raise NonFiniteLossError(
                                f"Non-finite PPO loss ({loss.item()}) at step {self.state.global_step + 1}: training "
                                "stopped before that update. Lower the learning rate or check the rewards."
                            )
                        self.accelerator.backward(loss / math.ceil(len(mb) / micro))
                    for key, value in (("loss", loss), ("policy_loss", pg_loss), ("value_loss", vf_loss),
                                       ("clipfrac", clipfrac), ("vf_clipfrac", vf_clipfrac), ("approxkl", approxkl),
                                       ("entropy", mean_entropy)):
                        totals.setdefault(key, []).append(value.detach())
                self.control = self.callback_handler.on_pre_optimizer_step(args, self.state, self.control)
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    grad_norm = self.accelerator.clip_grad_norm_(params, args.max_grad_norm)
                self.optimizer.step()
                self.control = self.callback_handler.on_optimizer_step(args, self.state, self.control)
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        stats = {k: torch.stack(v).mean().item() for k, v in totals.items()}
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        return stats

    # -- the loop --------------------------------------------------------------------------------

    def _inner_training_loop(self, batch_size=None, args=None, resume_from_checkpoint=None, trial=None,
                             ignore_keys_for_eval=None) -> TrainOutput:
        args = self.args
        self.accelerator.free_memory()
        dataloader = self.get_train_dataloader()
        steps_per_epoch = len(dataloader)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(max_steps / steps_per_epoch)
        updates_per_step = args.num_ppo_epochs * math.ceil(args.rollout_batch_size / (
            args.per_device_train_batch_size * args.gradient_accumulation_steps))
        self._init_training_state(max_steps, steps_per_epoch, num_epochs, resume_from_checkpoint, trial)
        # The scheduler counts optimizer updates; Trainer's state counts PPO steps.
        model, dataloader = self._prepare_for_training(max_steps * updates_per_step, dataloader,
                                                       resume_from_checkpoint)
        if resume_from_checkpoint is not None:
            self._load_ppo_state(resume_from_checkpoint)
        model.eval()  # no dropout: the first PPO pass must see ratio == 1
        if resume_from_checkpoint is None and args.world_size > 1:
            # Trainer seeds every rank alike, so ranks would draw correlated samples; give each its own stream
            # (checkpoints keep one RNG state per rank, so a resume continues each stream).
            torch.manual_seed(args.seed + args.process_index)
        start_time = time.time()
        self._last_loss = 0.0
        self._initial_global_step = self.state.global_step
        self._globalstep_last_logged = self.state.global_step
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start and self.eval_dataset is not None:
            self._evaluate(trial, ignore_keys_for_eval, skip_scheduler=True)

        epochs_trained, skip = divmod(self.state.global_step, steps_per_epoch)
        for epoch in range(epochs_trained, num_epochs):
            loader = dataloader
            if epoch == epochs_trained and skip > 0 and resume_from_checkpoint is not None:
                from accelerate import skip_first_batches

                loader = skip_first_batches(dataloader, skip)
            elif epoch == epochs_trained and resume_from_checkpoint is not None:
                self._load_rng_state(resume_from_checkpoint)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            rng_to_sync = epoch == epochs_trained and skip > 0 and resume_from_checkpoint is not None
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            for rows in loader:
                if rng_to_sync:  # as Trainer does: the skipped batches must not shift the RNG stream
                    self._load_rng_state(resume_from_checkpoint)
                    rng_to_sync = False
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                step_start = time.time()
                batch = self._rollout(rows)
                rollout_time = time.time() - step_start
                stats = self._ppo_update(batch)
                self.state.global_step += 1
                self.state.epoch = self.state.global_step / steps_per_epoch
                logs = self._step_logs(batch["stats"], stats, rollout_time, time.time() - step_start)
                self.kl_ctl.update(logs["objective/kl"], args.rollout_batch_size * args.world_size)
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                self._log_save_evaluate(logs, trial, ignore_keys_for_eval)
                if self.control.should_training_stop or self.state.global_step >= max_steps:
                    break
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            self._log_save_evaluate(None, trial, ignore_keys_for_eval)
            if self.control.should_training_stop or self.state.global_step >= max_steps:
                break

        steps = self.state.global_step - self._initial_global_step
        metrics = speed_metrics("train", start_time, num_samples=steps * args.rollout_batch_size, num_steps=steps)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self._finish_current_push()
        self.is_in_train = False
        return TrainOutput(self.state.global_step, self._last_loss, metrics)

    def _gather_mean(self, x: torch.Tensor) -> float:
        return self.accelerator.gather(x.reshape(-1).float()).mean().item()

    def _step_logs(self, rollout: dict, update: dict[str, float], rollout_s: float, step_s: float) -> dict:
        scores = self.accelerator.gather(rollout["scores"].float())
        valid = rollout["mask"].bool()
        values, returns = rollout["values"][valid], rollout["returns"][valid]
        self._last_loss = update["loss"]
        logs = {"objective/scores": scores.mean().item(), "objective/scores_std": scores.std().item() if len(scores) > 1
                else 0.0, "objective/kl": self._gather_mean(rollout[self.args.kl_estimator])}
        for key, name in (("k1", "objective/kl_k1"), ("k3", "objective/kl_k3"), ("length", "completion/length"),
                          ("non_score_reward", "objective/non_score_reward"), ("eos", "completion/eos_rate")):
            logs[name] = self._gather_mean(rollout[key])
        for key, name in (("entropy", "objective/entropy"), ("loss", "loss"), ("policy_loss", "loss/policy"),
                          ("value_loss", "loss/value"), ("clipfrac", "policy/clipfrac"), ("grad_norm", "grad_norm"),
                          ("approxkl", "policy/approxkl"), ("vf_clipfrac", "value/clipfrac")):
            if key in update:
                logs[name] = update[key]
        logs["objective/rlhf_reward"] = logs["objective/scores"] + logs["objective/non_score_reward"]
        logs["objective/kl_coef"] = self.kl_ctl.value
        logs["value/explained_variance"] = (1.0 - (returns - values).var() / returns.var().clamp(min=1e-8)).item()
        logs.update({"learning_rate": self._get_learning_rate(), "time/rollout_s": rollout_s, "time/step_s": step_s})
        return logs

    def _log_save_evaluate(self, logs: dict | None, trial, ignore_keys_for_eval) -> None:
        if logs is not None and self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            self._globalstep_last_logged = self.state.global_step
            self.log(logs)
        if self.control.should_evaluate and self.eval_dataset is not None:
            metrics = self._evaluate(trial, ignore_keys_for_eval)
            is_best = self._determine_best_metric(metrics=metrics, trial=trial)
            if self.args.save_strategy == "best":
                self.control.should_save = is_best
        self.control.should_evaluate = False
        if self.control.should_save:
            self._save_checkpoint(self.model_wrapped, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Greedy generations on the eval prompts: mean reward, task metrics, and a samples table."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset.")
        rows = [dataset[i] for i in range(len(dataset))]
        start = time.time()
        raw, table = evaluate_generations(
            self._unwrapped().policy, self.processing_class, self._prompt_texts(rows), self._columns(rows),
            self.reward_funcs, self.reward_weights, self.eval_metrics,
            max_new_tokens=self.args.max_completion_length, batch_size=self.args.per_device_eval_batch_size,
            num_logged=self.args.num_sample_generations, eos_token_ids=self.eos_token_ids,
            stop_strings=self.args.stop_strings, fixed_threads=self.args.full_determinism,
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self._write_samples(table, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _write_samples(self, table: list[dict], prefix: str) -> None:
        if self.is_world_process_zero():
            write_samples(table, Path(self.args.output_dir) / "samples" / f"{prefix}_step{self.state.global_step}",
                          self.callback_handler.callbacks, f"{prefix}/samples", self.state.global_step)

    # -- checkpoints -----------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Policy (or its adapter) at the top level, like any run; the critic under ``value_model/``."""
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.ref_adapter is not None:  # the frozen starting adapter is not part of the result
            unwrapped.policy.save_pretrained(output_dir, selected_adapters=["default"])
        else:
            unwrapped.policy.save_pretrained(output_dir, safe_serialization=True)
        if unwrapped.shared:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in unwrapped.value.state_dict().items()}, output_dir / VALUE_HEAD_FILE)
        else:
            unwrapped.value.save_pretrained(output_dir / VALUE_DIR, safe_serialization=True)
        self.processing_class.save_pretrained(output_dir)
        write_args_json(self.args, output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            (folder / PPO_STATE_FILE).write_text(json.dumps({"kl_coef": self.kl_ctl.value}))

    def _load_ppo_state(self, checkpoint: str) -> None:
        path = Path(checkpoint) / PPO_STATE_FILE
        if path.is_file():
            self.kl_ctl.value = float(json.loads(path.read_text())["kl_coef"])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Trainer's own loader, once for the policy (full weights or adapter) and once for the critic.
        unwrapped = self.accelerator.unwrap_model(model or self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=unwrapped.policy)
        if unwrapped.shared:
            from safetensors.torch import load_file

            unwrapped.value.load_state_dict(load_file(Path(resume_from_checkpoint) / VALUE_HEAD_FILE))
        else:
            super()._load_from_checkpoint(os.path.join(resume_from_checkpoint, VALUE_DIR), model=unwrapped.value)

    def _issue_warnings_after_load(self, load_result) -> None:
        # Trainer only warns (and reads attributes our two-model wrapper lacks); a partial resume must fail.
        unwrapped = self.accelerator.unwrap_model(self.model)
        tied = {k for m in (unwrapped.policy, unwrapped.value) for k in (getattr(m, "_tied_weights_keys", None) or ())}
        missing = [k for k in load_result.missing_keys if k not in tied]
        if missing or load_result.unexpected_keys:
            raise ValueError(
                f"The checkpoint does not match the model: missing {missing[:5]}, unexpected "
                f"{load_result.unexpected_keys[:5]}. Resume with the same model (and value_model) as the run."
            )
