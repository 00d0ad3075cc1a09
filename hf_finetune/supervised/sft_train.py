"""Entry point of the ``sft`` recipe method: instruction SFT of causal LMs with TRL.

The recipe blocks (model, data, lora, training), LoRA through :func:`~hf_finetune.models.apply_lora`,
and input checks that fail before step 1; the trainer is
:class:`~hf_finetune.supervised.sft_trainer.InstructionSFTTrainer`.

Datasets (TRL's standard formats): ``prompt`` + ``completion`` columns (text or chat messages),
a ``messages`` column of ``{"role", "content"}`` dicts, or a plain ``text`` column.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config import DataArguments, LoraArguments, MethodEntry, ModelArguments, Recipe
from ..data import load_splits
from ..models import apply_lora, check_model_fits, export_model, load_model, load_tokenizer, load_trained
from ..runs import TrainingRun
from .sft_config import InstructionSFTConfig
from .sft_trainer import InstructionSFTTrainer

logger = logging.getLogger(__name__)

BLOCKS = {"model": ModelArguments, "data": DataArguments, "lora": LoraArguments, "training": InstructionSFTConfig}


def _check_messages(value, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of chat messages, got {type(value).__name__}.")
    for message in value:
        if not isinstance(message, dict) or "role" not in message or message.get("content") is None:
            raise ValueError(
                f"{where}: chat messages need a 'role' (system/user/assistant) and a 'content'; got {message!r}. "
                "A chat dataset without roles cannot be rendered with the chat template."
            )


def dataset_format(splits, text_field: str) -> str:
    """Check the SFT columns of every split and return ``prompt_completion``, ``messages`` or ``text``."""
    columns = splits["train"].column_names
    if "prompt" in columns and "completion" in columns:
        kind = "prompt_completion"
    elif "messages" in columns:
        kind = "messages"
    elif text_field in columns:
        kind = "text"
    else:
        raise ValueError(
            f"SFT data needs 'prompt' + 'completion' columns, a 'messages' column, or a '{text_field}' column "
            f"(training.dataset_text_field); the train split has {columns}."
        )
    for split, ds in splits.items():
        for i, row in enumerate(ds):
            where = f"Row {i} of the {split} split"
            if kind == "messages":
                _check_messages(row["messages"], where)
            elif kind == "prompt_completion":
                for column in ("prompt", "completion"):
                    value = row[column]
                    if isinstance(value, list):
                        _check_messages(value, f"{where} ('{column}')")
                    elif not value:
                        raise ValueError(f"{where} has an empty '{column}': drop it or fill it in.")
            elif not row[text_field]:
                raise ValueError(f"{where} has an empty '{text_field}': drop empty texts.")
    return kind


def build_sft(recipe: Recipe):
    """Tokenizer, splits and model (LoRA-wrapped when asked), validated before training."""
    model_args, data, lora, args = recipe.model, recipe.data, recipe.lora, recipe.training
    args.max_length = data.max_length
    args.trust_remote_code = model_args.trust_remote_code
    tokenizer = load_tokenizer(model_args)
    splits = load_splits(data)
    kind = dataset_format(splits, args.dataset_text_field)
    conversational = kind == "messages" or isinstance(splits["train"][0].get("prompt"), list)
    if conversational and not getattr(tokenizer, "chat_template", None) and not args.chat_template_path:
        raise ValueError(
            "Chat data needs a chat template, and this tokenizer has none: set training.chat_template_path "
            "(a tokenizer or a Jinja file) or use an instruct model."
        )
    model = load_model(model_args, AutoModelForCausalLM)
    check_model_fits(model, tokenizer, data.max_length)
    if lora.use_lora:
        model = apply_lora(model, lora, task_type="CAUSAL_LM")
    return tokenizer, splits, kind, model


def run(recipe: Recipe, callbacks: list | None = None) -> dict:
    """Instruction-tune a causal LM as the recipe says; returns the final evaluation metrics."""
    args: InstructionSFTConfig = recipe.training
    with TrainingRun(recipe, callbacks) as run_:
        tokenizer, splits, kind, model = build_sft(recipe)
        run_.log_trainable(model, what=f"SFT on {kind} data. ")
        trainer = InstructionSFTTrainer(
            model=model,
            args=args,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            processing_class=tokenizer,
            callbacks=run_.callbacks(),
        )
        train_output = run_.train(trainer)
        metrics = {"train_loss": train_output.training_loss, **trainer.evaluate()}
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        export_model(trainer.model, tokenizer, Path(args.output_dir), merge_lora=recipe.lora.lora_merge_on_export)
        trainer.log_metrics("eval", metrics)
        return run_.finish(metrics, ("eval_loss", "eval_perplexity", "eval_mean_token_accuracy"), trainer=trainer)


def evaluate(recipe: Recipe, run_dir: str) -> dict:
    """Eval loss, perplexity and token accuracy of the model (or adapter) in ``run_dir`` on the recipe's held-out data."""
    args: InstructionSFTConfig = recipe.training
    args.max_length = recipe.data.max_length
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    splits = load_splits(recipe.data)
    dataset_format(splits, args.dataset_text_field)
    trainer = InstructionSFTTrainer(
        model=load_trained(run_dir, AutoModelForCausalLM),
        args=args,
        train_dataset=splits["validation"],  # not trained on: TRL's SFTTrainer requires one
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    return metrics


def card_details(recipe: dict, metrics: dict) -> dict:
    """Model-card fields of an SFT run."""
    return {"task_type": "text-generation", "task": "instruction-sft"}


ENTRY = MethodEntry("sft", blocks=lambda: BLOCKS, run=run, evaluate=evaluate, card_details=card_details)
