"""Entry point of the ``ppo``, ``grpo`` and ``rloo`` recipe methods.

The three methods take the same ``model``, ``data``, ``lora`` and ``reward`` blocks; only the
``training`` block's class differs (:class:`~hf_finetune.rl.ppo_config.PPOConfig`,
:class:`~hf_finetune.rl.grpo_config.GRPOConfig`, :class:`~hf_finetune.rl.rloo_config.RLOOConfig`), and their
shared fields (``prompt_column``, ``max_prompt_length``, ``max_completion_length``,
``temperature``, ``kl_coef``, ``num_sample_generations`` and every ``TrainingArguments`` field)
have one name and meaning. A recipe that sticks to those switches algorithm with its ``method``.
"""

from __future__ import annotations

import logging
import math

from transformers import AutoModelForCausalLM

from ..config import LoraArguments, MethodEntry, ModelArguments, Recipe
from ..data import load_splits
from ..models import apply_lora, check_model_fits, export_model, load_model, load_tokenizer
from ..runs import TrainingRun
from ..threads import thread_policy_callback
from .config import RewardArguments, RLDataArguments
from .rewards import load_reward_model, resolve_reward_funcs, score_per_function

logger = logging.getLogger(__name__)

RL_METHODS = ("ppo", "grpo", "rloo")


def _trainer_classes(method: str) -> tuple[type, type]:
    # Imported on demand: each pulls in a different part of TRL / our PPO.
    if method == "ppo":
        from .ppo_config import PPOConfig
        from .ppo_trainer import PPOTrainer

        return PPOConfig, PPOTrainer
    if method == "grpo":
        from .grpo_config import GRPOConfig
        from .grpo_trainer import GRPOTrainer

        return GRPOConfig, GRPOTrainer
    if method == "rloo":
        from .rloo_config import RLOOConfig
        from .rloo_trainer import RLOOTrainer

        return RLOOConfig, RLOOTrainer
    raise ValueError(f"Unknown RL method {method!r}: use one of {list(RL_METHODS)}.")


def blocks(method: str) -> dict[str, type]:
    """The recipe blocks of ``method`` (``ppo``, ``grpo`` or ``rloo``): all alike but ``training``."""
    return {
        "model": ModelArguments,
        "data": RLDataArguments,
        "lora": LoraArguments,
        "reward": RewardArguments,
        "training": _trainer_classes(method)[0],
    }


def render_prompts(dataset, tokenizer, column: str, data: RLDataArguments):
    """Turn the prompt column into model-ready text: the chat template (with generation prompt) when asked and
    available, else the raw text. A column of chat messages is always rendered with the template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))

    if data.use_chat_template and not has_template:
        raise ValueError("data.use_chat_template is true but the policy's tokenizer has no chat template: set it to "
                         "false (raw prompt text) or null (the template only when there is one).")
    use_template = has_template if data.use_chat_template is None else data.use_chat_template

    def render(row):
        prompt = row[column]
        if isinstance(prompt, str) and not use_template:
            return {column: prompt, "raw_prompt": prompt}
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not has_template:
            raise ValueError(f"The prompt column '{column}' holds chat messages but the tokenizer has no chat template.")
        if data.system_prompt and prompt[0].get("role") != "system":
            prompt = [{"role": "system", "content": data.system_prompt}, *prompt]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        # The prompt as the dataset gave it: a reward model that reads the prompt formats it its own way.
        return {column: text, "raw_prompt": row[column]}

    return dataset.map(render, desc="rendering prompts")


def build_rewards(reward: RewardArguments) -> tuple[list, list[float] | None, list]:
    """Reward functions (then the reward model), their weights, and the evaluation-only task metrics."""
    funcs = resolve_reward_funcs(reward.reward_funcs or [])
    if reward.reward_model is not None:
        label = reward.reward_model_label
        funcs.append(
            load_reward_model(
                reward.reward_model,
                label=int(label) if label is not None and label.lstrip("-").isdigit() else label,
                output=reward.reward_model_output,
                batch_size=reward.reward_model_batch_size,
                include_prompt=reward.reward_model_include_prompt,
            )
        )
    return funcs, reward.reward_weights, resolve_reward_funcs(reward.eval_metrics or [])


def _preflight(funcs, metrics, dataset, column: str) -> None:
    """Score two rows with empty completions, so a missing column or a broken reward fails before step 1."""
    rows = dataset.select(range(min(2, len(dataset))))
    prompts = list(rows[column])
    columns = {c: list(rows[c]) for c in rows.column_names if c != column}
    for group in (funcs, metrics):
        if group:
            score_per_function(group, prompts, [""] * len(prompts), columns)


def _last_logged(log_history: list[dict], words: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval") or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if any(w in key for w in words):
                out[f"train_last_{key.replace('/', '_')}"] = float(value)
    return out


def prepare_prompts(recipe: Recipe, tokenizer):
    """The recipe's prompt splits, checked and rendered (chat template when asked)."""
    args, data = recipe.training, recipe.data
    splits = load_splits(data)
    for name, split in splits.items():
        if args.prompt_column not in split.column_names:
            raise ValueError(
                f"The {name} split of {data.dataset} has no prompt column '{args.prompt_column}' (columns: "
                f"{split.column_names}): set training.prompt_column."
            )
    return {name: render_prompts(split, tokenizer, args.prompt_column, data) for name, split in splits.items()}


def run(recipe: Recipe, callbacks: list | None = None) -> dict:
    """RL fine-tuning of a causal LM as the recipe says; returns final metrics (``eval_*``, ``before_eval_*``).

    ``callbacks`` are extra ``TrainerCallback`` instances (the trainers add the non-finite guard themselves).
    """
    args = recipe.training
    _, trainer_class = _trainer_classes(recipe.method)
    with TrainingRun(recipe, callbacks) as run_:
        tokenizer = load_tokenizer(recipe.model, require_pad=True, padding_side="left")
        if tokenizer.eos_token is None:
            raise ValueError("The policy tokenizer has no EOS token, so completions could never end: use a model with one.")
        splits = prepare_prompts(recipe, tokenizer)
        funcs, weights, task_metrics = build_rewards(recipe.reward)
        _preflight(funcs, task_metrics, splits["train"], args.prompt_column)

        model = load_model(recipe.model, AutoModelForCausalLM)
        check_model_fits(model, tokenizer, None)
        model.config.pad_token_id = tokenizer.pad_token_id
        if recipe.lora.use_lora:
            model = apply_lora(model, recipe.lora, task_type="CAUSAL_LM")

        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            processing_class=tokenizer,
            reward_funcs=funcs,
            reward_weights=weights,
            eval_metrics=task_metrics,
            # The trainers add the non-finite guard; the thread policy times the update's matmuls as elsewhere.
            callbacks=[*run_.callbacks(guard=False), thread_policy_callback()],
        )
        # After the trainer is built: PPO's count includes its critic (a full backbone unless it shares the policy's).
        run_.log_trainable(trainer.model, f"{recipe.method} (policy{' + critic' if recipe.method == 'ppo' else ''}): ")
        metrics: dict[str, float] = {}
        if recipe.reward.evaluate_before_training and not args.resume_from_checkpoint:
            metrics.update(trainer.evaluate(metric_key_prefix="before_eval"))
        run_.train(trainer)
        metrics.update(trainer.evaluate())
        metrics.update(_last_logged(trainer.state.log_history, ("kl", "reward", "scores")))
        policy = getattr(trainer, "policy", None) or trainer.accelerator.unwrap_model(trainer.model)
        if recipe.lora.use_lora and recipe.lora.lora_merge_on_export:
            if trainer.is_world_process_zero():
                export_model(policy, tokenizer, args.output_dir, merge_lora=True)
        else:
            trainer.save_model(args.output_dir)
        headline = ("before_eval_reward", "eval_reward", *(f"eval_{getattr(f, '__name__', '')}" for f in task_metrics))
        trainer.log_metrics("eval", metrics)  # on stdout, as every other Trainer method prints them
        return run_.finish(metrics, headline, trainer=trainer)


def evaluate(recipe: Recipe, run_dir: str) -> dict:
    """Greedy generation of the policy in ``run_dir`` on the recipe's held-out prompts: rewards and task metrics.

    The same scoring as the run's own evaluation (:func:`~hf_finetune.rl.rewards.evaluate_generations`).
    """
    from transformers import AutoTokenizer

    from ..models import ensure_pad_token, load_trained
    from .rewards import evaluate_generations

    args = recipe.training
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(run_dir, padding_side="left"), run_dir)
    prompts = prepare_prompts(recipe, tokenizer)["validation"]
    funcs, weights, task_metrics = build_rewards(recipe.reward)
    model = load_trained(run_dir, AutoModelForCausalLM)
    model.eval()
    columns = {c: list(prompts[c]) for c in prompts.column_names if c != args.prompt_column}
    raw, _ = evaluate_generations(
        model, tokenizer, list(prompts[args.prompt_column]), columns, funcs, weights, task_metrics,
        max_new_tokens=args.max_completion_length, batch_size=args.per_device_eval_batch_size, num_logged=0,
    )
    return {f"eval_{k}": v for k, v in raw.items()}


def card_details(recipe: dict, metrics: dict) -> dict:
    """Model-card fields of an RL run on a language model: a text-generation model, tagged with its algorithm."""
    return {"task_type": "text-generation", "tags": ["reinforcement-learning", recipe.get("method", "rl")]}


PPO_ENTRY = MethodEntry("ppo", blocks=lambda: blocks("ppo"), run=run, evaluate=evaluate, card_details=card_details)
GRPO_ENTRY = MethodEntry("grpo", blocks=lambda: blocks("grpo"), run=run, evaluate=evaluate, card_details=card_details)
RLOO_ENTRY = MethodEntry("rloo", blocks=lambda: blocks("rloo"), run=run, evaluate=evaluate, card_details=card_details)
