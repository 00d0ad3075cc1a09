"""Entry point of the ``supervised`` recipe method."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ..callbacks import NonFiniteGuardCallback, plot_confusion
from ..config import DataArguments, LoraArguments, ModelArguments, Recipe
from ..data import load_splits
from ..metrics import confusion_matrix
from ..models import apply_lora, check_model_fits, export_model, load_model, load_tokenizer, trainable_parameters
from ..runs import finish_run, start_run
from .config import SupervisedConfig
from .tasks import classification_metrics, prepare_classification
from .trainer import SupervisedTrainer

logger = logging.getLogger(__name__)

BLOCKS = {"model": ModelArguments, "data": DataArguments, "lora": LoraArguments, "training": SupervisedConfig}


def blocks(method: str) -> dict[str, type]:
    """The recipe blocks of the ``supervised`` method."""
    return BLOCKS


def build_classifier(recipe: Recipe):
    """Tokenizer, tokenized splits, label names and model (LoRA-wrapped when asked), all validated."""
    model_args, data, lora = recipe.model, recipe.data, recipe.lora
    tokenizer = load_tokenizer(model_args)
    splits = load_splits(data, label_column=data.label_column)
    tokenized, names = prepare_classification(splits, tokenizer, data)
    model = load_model(
        model_args,
        AutoModelForSequenceClassification,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    check_model_fits(model, tokenizer, data.max_length)
    if lora.use_lora:
        model = apply_lora(model, lora, task_type="SEQ_CLS")
    return tokenizer, splits, tokenized, names, model


def run(recipe: Recipe) -> dict:
    """Fine-tune a sequence classifier as the recipe says; returns the final evaluation metrics."""
    args: SupervisedConfig = recipe.training
    started = start_run(recipe)
    tokenizer, raw, tokenized, names, model = build_classifier(recipe)
    trainable, total = trainable_parameters(model)
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    trainer = SupervisedTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics(names),
        callbacks=[NonFiniteGuardCallback()],
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    output = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
    metrics = dict(output.metrics)
    metrics["trainable_parameters"] = trainable
    run_dir = Path(args.output_dir)
    export_model(trainer.model, tokenizer, run_dir, merge_lora=recipe.lora.lora_merge_on_export)
    if trainer.is_world_process_zero():
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        predicted = np.argmax(logits, axis=-1)
        plot_confusion(confusion_matrix(predicted, output.label_ids, len(names)), names, run_dir / "confusion_matrix.png")
        if args.predictions_file:
            text_column = recipe.data.text_column
            with open(run_dir / "predictions.jsonl", "w") as f:
                for text, label, pred in zip(raw["validation"][text_column], output.label_ids, predicted):
                    row = {"text": text[:200], "label": names[int(label)], "prediction": names[int(pred)]}
                    f.write(json.dumps(row) + "\n")
    trainer.log_metrics("eval", metrics)
    return finish_run(trainer, metrics, started, headline=("eval_accuracy", "eval_f1_macro"))
