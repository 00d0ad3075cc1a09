"""Instruction SFT for causal LMs: a thin subclass of TRL's ``SFTTrainer`` and the ``sft`` recipe method.

TRL does the work (chat templates, completion-only / assistant-only loss, packing); this layer adds
our recipe blocks (model, data, lora, training), LoRA through :func:`~hf_finetune.models.apply_lora`,
the staged schedule and LLRD of :class:`~hf_finetune.supervised.trainer.StagedMixin`, JSON args
instead of pickles, the non-finite guard, and input checks that fail before step 1.

Datasets (TRL's standard formats): ``prompt`` + ``completion`` columns (text or chat messages),
a ``messages`` column of ``{"role", "content"}`` dicts, or a plain ``text`` column.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import trl
from transformers import AutoModelForCausalLM

from ..callbacks import NonFiniteGuardCallback
from ..config import DataArguments, LoraArguments, ModelArguments, Recipe
from ..data import load_splits
from ..models import apply_lora, check_model_fits, export_model, load_model, load_tokenizer, trainable_parameters
from ..runs import RunTrainerMixin, finish_run, start_run, write_args_json
from .sft_config import InstructionSFTConfig
from .trainer import StagedMixin

logger = logging.getLogger(__name__)

BLOCKS = {"model": ModelArguments, "data": DataArguments, "lora": LoraArguments, "training": InstructionSFTConfig}


class InstructionSFTTrainer(RunTrainerMixin, StagedMixin, trl.SFTTrainer):
    """TRL's ``SFTTrainer`` with staged schedules / LLRD and safe saving.

    Example:
        >>> args = InstructionSFTConfig("out", max_steps=10, schedule="gradual-unfreezing")  # doctest: +SKIP
        >>> InstructionSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()  # doctest: +SKIP
    """


def blocks(method: str) -> dict[str, type]:
    """The recipe blocks of the ``sft`` method."""
    return BLOCKS


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


def run(recipe: Recipe) -> dict:
    """Instruction-tune a causal LM as the recipe says; returns the final evaluation metrics."""
    args: InstructionSFTConfig = recipe.training
    started = start_run(recipe)
    tokenizer, splits, kind, model = build_sft(recipe)
    trainable, total = trainable_parameters(model)
    logger.info(
        "SFT on %s data. Trainable parameters: %d of %d (%.2f%%)", kind, trainable, total, 100 * trainable / total
    )
    trainer = InstructionSFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        callbacks=[NonFiniteGuardCallback()],
    )
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = {"train_loss": train_output.training_loss, **trainer.evaluate()}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    metrics["trainable_parameters"] = trainable
    run_dir = Path(args.output_dir)
    export_model(trainer.model, tokenizer, run_dir, merge_lora=recipe.lora.lora_merge_on_export)
    write_args_json(args, run_dir)
    trainer.log_metrics("eval", metrics)
    return finish_run(trainer, metrics, started, headline=("eval_loss", "eval_perplexity", "eval_mean_token_accuracy"))
